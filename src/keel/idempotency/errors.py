"""Why a keyed request is refused; the codes are SPEC §6's."""

from __future__ import annotations

from keel.errors import Conflict, Invalid

HEADER = "Idempotency-Key"


class KeyReused(Invalid):
    code = "http.idempotency_key_reused"
    title = "Idempotency key reused"

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used with a different request; use a new key for a new request.",
            loc=("header", HEADER),
        )


class KeyInUse(Conflict):
    code = "http.idempotency_key_in_use"
    title = "Idempotency key in use"

    def __init__(self) -> None:
        super().__init__("A request with this Idempotency-Key is still being processed; retry in a moment.")
