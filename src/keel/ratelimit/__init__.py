"""Rate limiting: GCRA as one atomic script, and the Limiter that batches and fails open (SPEC §5)."""
