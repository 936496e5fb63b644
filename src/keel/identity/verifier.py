"""Bearer-token verification with a bounded cache of verified claims.

Verifying a JWT costs about as much as the rest of a request (SPIKES.md: /protected at 0.55x /public), so a
client's repeated requests reuse the claims verified the first time. A hit still honours `exp` and the
denylist, so the cache never extends a token's life nor outlives a revocation.
"""

from __future__ import annotations

import time
from typing import Final

from keel.identity.denylist import Denylist
from keel.identity.errors import InvalidToken
from keel.identity.tokens import LEEWAY, Claims, Keyring

CACHE_ENTRIES: Final = 10_000


class TokenVerifier:
    def __init__(self, keyring: Keyring, denylist: Denylist, *, max_entries: int = CACHE_ENTRIES) -> None:
        self.keyring = keyring
        self._denylist = denylist
        self._max_entries = max_entries
        self._cache: dict[str, Claims] = {}

    def verify(self, token: str) -> Claims:
        """The token's claims, or InvalidToken (bad, expired or revoked)."""
        claims = self._cache.get(token)
        if claims is None:
            claims = self.keyring.verify_access(token)
            if len(self._cache) >= self._max_entries:
                # drop the oldest entry (dicts keep insertion order): O(1), and a hot token just comes back
                del self._cache[next(iter(self._cache))]
            self._cache[token] = claims
        elif claims.expires_at + LEEWAY < time.time():
            del self._cache[token]
            raise InvalidToken("The token has expired.")
        if self._denylist.is_revoked(claims):
            raise InvalidToken("The token has been revoked.")
        return claims

    def is_revoked(self, claims: Claims) -> bool:
        """Whether the session of claims verified earlier (a ticket's) has been revoked since."""
        return self._denylist.is_revoked(claims)
