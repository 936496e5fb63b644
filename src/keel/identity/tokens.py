"""Access JWTs: issue and verify them with one pinned algorithm (HS256 or EdDSA), and publish the public keys.

Framework-free and configuration-free: callers hand in key material and plain values. Every rejection is
InvalidToken, whatever the input; anything else escaping `verify_access` would be a bug.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from jwt.algorithms import Algorithm, HMACAlgorithm

from keel.identity.errors import InvalidToken

LEEWAY: Final = 30  # seconds of clock skew allowed on exp, iat and nbf (SPEC §4)
MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
# Our tokens are ~400 characters; refusing anything far larger bounds the work an anonymous caller can cause.
MAX_TOKEN_LENGTH: Final = 4096
REQUIRED_CLAIMS: Final = ("exp", "iat", "iss", "aud", "sub", "jti", "sid", "preferred_username")

HS256: Final = "HS256"
EDDSA: Final = "EdDSA"

# The compact JWS form we issue: three non-empty base64url segments, no padding. Checked first, at C speed,
# so garbage, non-ASCII and `alg: none` tokens with an empty signature never reach the decoders.
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def session_key(session_id: uuid.UUID) -> str:
    """The denylist's key for a session (a refresh-token family): what logout and password changes revoke."""
    return f"sid:{session_id}"


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified access token."""

    user_id: uuid.UUID
    username: str  # OIDC's preferred_username: usernames never change, so endpoints need no lookup for it
    session_id: uuid.UUID  # the refresh-token family: logout and password changes revoke a whole session
    jti: str
    issued_at: int
    expires_at: int
    scopes: frozenset[str]
    # user_id as text and the session's denylist key, made once per verified token (claims are cached):
    # str(UUID) is ~1 500 instructions, and the rate limiter's key, the access line and the denylist's check want
    # them on every request (the key made per check cost /protected ~10 000 instructions, bench/stack_cpu.py)
    subject: str = field(default="", init=False, repr=False, compare=False)
    revocation_key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", str(self.user_id))
        object.__setattr__(self, "revocation_key", session_key(self.session_id))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def parse_ed25519_private_key(pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PKCS#8 PEM, or ValueError saying what is wrong."""
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: the PEM is encrypted
        raise ValueError("not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def parse_ed25519_public_key(pem: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key in an SPKI PEM, or ValueError saying what is wrong."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not an SPKI PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _okp_members(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The required members of the key's JWK (RFC 8037 §2)."""
    x = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(x)}


def ed25519_thumbprint(public_key: Ed25519PublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint: base64url SHA-256 of its required members in canonical JSON."""
    canonical = json.dumps(_okp_members(public_key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _secret_kid(secret: bytes) -> str:
    # 96 bits of a hash of a ≥ 256-bit secret: enough to tell keys apart, nothing to recover the secret from
    return _b64url(hashlib.sha256(secret).digest())[:16]


_SigningKey: TypeAlias = bytes | Ed25519PrivateKey
_VerificationKey: TypeAlias = bytes | Ed25519PublicKey


class _VettedHMAC(HMACAlgorithm):
    """HS256 under one secret, vetted once by PyJWT's own checks when this object is made.

    PyJWS prepares the key on every sign and verify, and HMAC's preparation (sniffing the secret for PEM, DER
    and JWK shapes, against algorithm confusion) costs several times the HMAC itself. The keyring hands in
    only this very secret, so those checks need not run again.
    """

    def __init__(self, secret: bytes) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self.secret = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is not self.secret:
            raise jwt.InvalidKeyError("this HS256 algorithm only uses the secret it was made with")
        return self.secret


def _pinned_jws(algorithm: str, implementation: Algorithm | None = None) -> jwt.PyJWS:
    """A PyJWS that knows one algorithm and nothing else: no `none`, no other family to confuse it with."""
    jws = jwt.PyJWS(algorithms=[algorithm], options={"enforce_minimum_key_length": True})
    if implementation is not None:
        jws.unregister_algorithm(algorithm)
        jws.register_algorithm(algorithm, implementation)
    return jws


class Keyring:
    """Signing and verification keys for access tokens, with the algorithm pinned to one.

    Build it with `Keyring.hs256` or `Keyring.eddsa`. The PyJWS object and the key objects are made once
    here: `verify_access` runs on every authenticated request that misses the verified-claims cache.
    """

    __slots__ = (
        "_algorithms",
        "_audience",
        "_default_key",
        "_issuer",
        "_jwks",
        "_jws",
        "_keys",
        "_signing_key",
        "_signing_kid",
        "algorithm",
    )

    algorithm: str

    def __init__(
        self,
        *,
        jws: jwt.PyJWS,
        algorithm: str,
        signing_key: _SigningKey,
        signing_kid: str,
        verification_keys: Mapping[str, _VerificationKey],
        default_key: _VerificationKey | None,
        jwks: Sequence[Mapping[str, str]],
        issuer: str,
        audience: str,
    ) -> None:
        self._jws = jws
        self.algorithm = algorithm
        self._algorithms = (algorithm,)
        self._signing_key = signing_key
        self._signing_kid = signing_kid
        self._keys = dict(verification_keys)
        self._default_key = default_key  # the key for a token without a kid, if any may lack one
        self._jwks = tuple(dict(entry) for entry in jwks)
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def hs256(cls, secret: bytes, *, issuer: str, audience: str) -> Keyring:
        """A keyring that signs and verifies with HMAC-SHA256 under `secret` (at least 32 bytes)."""
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
        try:
            vetted = _VettedHMAC(bytes(secret))
        except jwt.InvalidKeyError as exc:  # it looks like an asymmetric key or a JWK
            raise ValueError(f"unusable HS256 secret: {exc}") from None
        kid = _secret_kid(vetted.secret)
        return cls(
            jws=_pinned_jws(HS256, vetted),
            algorithm=HS256,
            signing_key=vetted.secret,
            signing_kid=kid,
            verification_keys={kid: vetted.secret},
            default_key=vetted.secret,  # one key only, so a token without a kid can only mean it
            jwks=(),
            issuer=issuer,
            audience=audience,
        )

    @classmethod
    def eddsa(cls, private_key_pem: bytes, public_key_pems: Sequence[bytes], *, issuer: str, audience: str) -> Keyring:
        """A keyring that signs with an Ed25519 key and verifies with its public half and `public_key_pems`."""
        private_key = parse_ed25519_private_key(private_key_pem)
        public_keys = [private_key.public_key(), *map(parse_ed25519_public_key, public_key_pems)]
        keys: dict[str, Ed25519PublicKey] = {}
        jwks: list[dict[str, str]] = []
        for public_key in public_keys:
            kid = ed25519_thumbprint(public_key)
            if kid not in keys:  # the signing key may also sit in the rotation directory
                keys[kid] = public_key
                jwks.append({**_okp_members(public_key), "kid": kid, "alg": EDDSA, "use": "sig"})
        return cls(
            jws=_pinned_jws(EDDSA),
            algorithm=EDDSA,
            signing_key=private_key,
            signing_kid=ed25519_thumbprint(public_keys[0]),
            verification_keys=keys,
            default_key=None,  # with several keys possible, a token must say which one signed it
            jwks=jwks,
            issuer=issuer,
            audience=audience,
        )

    def __repr__(self) -> str:  # never the key material
        return f"Keyring(algorithm={self.algorithm!r}, kids={list(self._keys)!r})"

    def issue_access(
        self,
        *,
        user_id: uuid.UUID,
        username: str,
        session_id: uuid.UUID,
        scopes: Iterable[str],
        ttl: float,
        now: float | None = None,
    ) -> tuple[str, Claims]:
        """A signed access token for `ttl` seconds from `now` (default: the clock), and its claims."""
        if not ttl > 0:  # also rejects NaN
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        scope_set = frozenset(scopes)
        for scope in scope_set:
            if not scope or scope.split() != [scope]:  # the claim is a space-separated list
                raise ValueError(f"a scope must be non-empty without whitespace, got {scope!r}")
        issued = time.time() if now is None else now
        claims = Claims(
            user_id=user_id,
            username=username,
            session_id=session_id,
            jti=uuid.uuid4().hex,
            issued_at=int(issued),
            expires_at=int(issued + ttl),
            scopes=scope_set,
        )
        payload = {
            "sub": str(user_id),
            "preferred_username": username,
            "sid": str(session_id),
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "jti": claims.jti,
            "iss": self._issuer,
            "aud": self._audience,
            "typ": "access",
            "scope": " ".join(sorted(scope_set)),
        }
        token = self._jws.encode(
            json.dumps(payload, separators=(",", ":")).encode(),
            self._signing_key,
            algorithm=self.algorithm,
            headers={"kid": self._signing_kid},
        )
        return token, claims

    def derive_key(self, purpose: str) -> bytes:
        """A 256-bit secret for `purpose` (an idempotency fingerprint's key), derived from the signing key: the same
        on every instance that shares that key, and never the key itself."""
        signing = self._signing_key
        material = signing if isinstance(signing, bytes) else signing.private_bytes_raw()
        return hmac.new(material, b"keel key derivation\0" + purpose.encode(), hashlib.sha256).digest()

    def verify_access(self, token: str, *, now: float | None = None) -> Claims:
        """The claims of a valid access token signed by one of our keys, or InvalidToken."""
        if len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWS.fullmatch(token):
            raise InvalidToken("The token is malformed.")
        kid = _read_kid(token)
        key = self._default_key if kid is None else self._keys.get(kid)
        if key is None:
            raise InvalidToken("The token's key is unknown." if kid else "The token names no key.")
        try:
            signed = self._jws.decode_complete(token, key, algorithms=self._algorithms)
        # PyJWS wraps what it knows in PyJWTError; ValueError covers binascii.Error and UnicodeDecodeError,
        # should any decoding step let one through
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidToken(_reason(exc)) from exc
        return self._claims(signed["payload"], time.time() if now is None else now)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public verification keys as a JWK Set (RFC 7517); empty in HS256 mode."""
        return {"keys": [dict(entry) for entry in self._jwks]}

    def _claims(self, signed_payload: bytes, now: float) -> Claims:
        """The claims of a payload whose signature is good, once they pass every check of SPEC §4."""
        try:
            payload = json.loads(signed_payload)
        except (ValueError, RecursionError):
            raise InvalidToken("The token's payload is malformed.") from None
        if not isinstance(payload, dict):
            raise InvalidToken("The token's payload is malformed.")
        for claim in REQUIRED_CLAIMS:
            if payload.get(claim) is None:
                raise InvalidToken(f"The token lacks the {claim!r} claim.")
        if payload["iss"] != self._issuer:
            raise InvalidToken("The token's issuer is not accepted.")
        if payload["aud"] != self._audience:  # one string, as issued; a list is refused too
            raise InvalidToken("The token's audience is not accepted.")
        exp, iat, nbf = payload["exp"], payload["iat"], payload.get("nbf")
        if not (_is_int(exp) and _is_int(iat) and (nbf is None or _is_int(nbf))):
            raise InvalidToken("The token's times are malformed.")
        if exp <= now - LEEWAY:
            raise InvalidToken("The token has expired.")
        if iat > now + LEEWAY or (nbf is not None and nbf > now + LEEWAY):
            raise InvalidToken("The token is not valid yet.")
        if payload.get("typ") != "access":  # a refresh JWT or anything else is never an access token
            raise InvalidToken("The token is not an access token.")
        jti, scope, username = payload["jti"], payload.get("scope", ""), payload["preferred_username"]
        if not (isinstance(jti, str) and jti) or not isinstance(scope, str) or not isinstance(username, str):
            raise InvalidToken("The token is malformed.")
        return Claims(
            user_id=_uuid_claim(payload, "sub"),
            username=username,
            session_id=_uuid_claim(payload, "sid"),
            jti=jti,
            issued_at=iat,
            expires_at=exp,
            scopes=frozenset(scope.split()),
        )


def _read_kid(token: str) -> str | None:
    """The `kid` of the token's header, to pick the key before verifying.

    Only the short header segment is decoded here: PyJWS.get_unverified_header would decode all three
    segments a second time (a per-byte Python loop, ~30 µs). The signature PyJWS then checks covers these
    very bytes, so a kid read here cannot differ from the one that was signed.
    """
    segment = token[: token.index(".")]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors; deep nesting is a RecursionError
    except (ValueError, RecursionError):
        raise InvalidToken("The token header is malformed.") from None
    if not isinstance(header, dict):
        raise InvalidToken("The token header is malformed.")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("The token header is malformed.")
    return kid


def _reason(exc: Exception) -> str:
    if isinstance(exc, jwt.InvalidSignatureError):
        return "The token's signature is invalid."
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "The token's algorithm is not accepted."
    return "The token is malformed."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _uuid_claim(payload: Mapping[str, Any], claim: str) -> uuid.UUID:
    value = payload[claim]
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidToken(f"The token's {claim!r} claim is not a UUID.")
