"""Idempotency keys (SPEC §6): a keyed write is done once, and its answer is kept 24 h for the caller's retries."""
