"""Access JWTs: round trips, and every way a token must be refused."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import given
from hypothesis import strategies as st

from keel.identity.errors import InvalidToken
from keel.identity.tokens import LEEWAY, Claims, Keyring

ISSUER: Final = "keel"
AUDIENCE: Final = "keel-api"
SECRET: Final = b"0123456789abcdef0123456789abcdef-for-tests"
NOW: Final = 1_800_000_000
USER_ID: Final = uuid.UUID("7d3c5f7e-1f0a-4d8a-9a55-0d6a1e1c2b3a")
SESSION_ID: Final = uuid.UUID("0b9f1a44-54a6-4c55-8d40-6a1c5e0e7f21")

# RFC 8037 §A.1-A.3: an Ed25519 key and its RFC 7638 thumbprint
RFC8037_D: Final = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X: Final = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT: Final = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def private_pem(key: Ed25519PrivateKey | Ed448PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_pem(key: Ed25519PrivateKey | Ed448PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def hs256_keyring(secret: bytes = SECRET) -> Keyring:
    return Keyring.hs256(secret, issuer=ISSUER, audience=AUDIENCE)


def eddsa_keyring(private_pem: bytes, public_pems: tuple[bytes, ...] = ()) -> Keyring:
    return Keyring.eddsa(private_pem, public_pems, issuer=ISSUER, audience=AUDIENCE)


def issue(keyring: Keyring, *, scopes: tuple[str, ...] = (), ttl: float = 900, now: float = NOW) -> tuple[str, Claims]:
    return keyring.issue_access(user_id=USER_ID, username="ada", session_id=SESSION_ID, scopes=scopes, ttl=ttl, now=now)


def valid_payload() -> dict[str, Any]:
    """The claims issue_access would write at NOW, for hand-built tokens."""
    return {
        "sub": str(USER_ID),
        "preferred_username": "ada",
        "sid": str(SESSION_ID),
        "iat": NOW,
        "exp": NOW + 900,
        "jti": uuid.uuid4().hex,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": "access",
        "scope": "",
    }


def hmac_token(header: dict[str, Any], payload: object, key: bytes) -> str:
    """An HS256 token built by hand, so any key (even a PEM, which PyJWT refuses) can sign it."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def kid_of(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def segments(token: str) -> list[str]:
    return token.split(".")


KEY_A: Final = Ed25519PrivateKey.generate()
KEY_B: Final = Ed25519PrivateKey.generate()
PRIVATE_PEM_A: Final = private_pem(KEY_A)
PRIVATE_PEM_B: Final = private_pem(KEY_B)
HS256_KEYRING: Final = hs256_keyring()
EDDSA_KEYRING: Final = eddsa_keyring(PRIVATE_PEM_A)


# --- round trips -------------------------------------------------------------------------------------------


def test_hs256_round_trip_keeps_the_claims() -> None:
    token, issued = issue(HS256_KEYRING, scopes=("admin",))

    claims = HS256_KEYRING.verify_access(token, now=NOW + 1)

    assert claims == issued
    assert (claims.user_id, claims.session_id) == (USER_ID, SESSION_ID)
    assert (claims.issued_at, claims.expires_at) == (NOW, NOW + 900)
    assert claims.is_admin
    assert HS256_KEYRING.algorithm == "HS256"
    expected_kid = b64url(hashlib.sha256(SECRET).digest())[:16]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": expected_kid}


def test_eddsa_round_trip_keeps_the_claims() -> None:
    token, issued = issue(EDDSA_KEYRING)

    claims = EDDSA_KEYRING.verify_access(token, now=NOW + 1)

    assert claims == issued
    assert not claims.is_admin
    assert claims.scopes == frozenset()
    assert EDDSA_KEYRING.algorithm == "EdDSA"
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": EDDSA_KEYRING.jwks()["keys"][0]["kid"]}


def test_issued_payload_carries_the_spec_claims() -> None:
    token, claims = issue(HS256_KEYRING, scopes=("admin",))

    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER, leeway=10**10)

    assert payload == {
        "sub": str(USER_ID),
        "preferred_username": "ada",
        "sid": str(SESSION_ID),
        "iat": NOW,
        "exp": NOW + 900,
        "jti": claims.jti,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": "access",
        "scope": "admin",
    }
    assert len(claims.jti) == 32
    assert int(claims.jti, 16) >= 0


@pytest.mark.parametrize(
    ("scopes", "claim"),
    [((), ""), (("admin",), "admin"), (("ops", "admin", "ops"), "admin ops")],
)
def test_scopes_are_a_space_separated_claim(scopes: tuple[str, ...], claim: str) -> None:
    token, issued = issue(HS256_KEYRING, scopes=scopes)

    payload = jwt.decode(token, options={"verify_signature": False})
    claims = HS256_KEYRING.verify_access(token, now=NOW)

    assert payload["scope"] == claim
    assert claims.scopes == issued.scopes == frozenset(scopes)
    assert claims.is_admin == ("admin" in scopes)


@pytest.mark.parametrize("scope", ["", "two words", "tab\there"])
def test_issue_refuses_a_scope_that_would_not_survive_the_round_trip(scope: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        issue(HS256_KEYRING, scopes=(scope,))


@pytest.mark.parametrize("ttl", [0, -1, float("nan")])
def test_issue_refuses_a_non_positive_ttl(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        issue(HS256_KEYRING, ttl=ttl)


def test_issue_defaults_to_the_clock() -> None:
    before = int(time.time())
    token, claims = HS256_KEYRING.issue_access(
        user_id=USER_ID, username="ada", session_id=SESSION_ID, scopes=(), ttl=60
    )

    assert before <= claims.issued_at <= time.time()
    assert claims.expires_at - claims.issued_at in (60, 61)  # int(now + ttl) may round up by one
    assert HS256_KEYRING.verify_access(token) == claims


def test_hand_built_tokens_are_accepted_when_valid() -> None:
    # the control for the rejection tests below: only their one change makes them fail
    token = hmac_token({"alg": "HS256", "typ": "JWT"}, valid_payload(), SECRET)

    assert HS256_KEYRING.verify_access(token, now=NOW).user_id == USER_ID


# --- time --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyring", [HS256_KEYRING, EDDSA_KEYRING], ids=["HS256", "EdDSA"])
def test_expiry_allows_the_leeway_and_no_more(keyring: Keyring) -> None:
    token, _ = issue(keyring, ttl=60)
    expires_at = NOW + 60

    assert keyring.verify_access(token, now=expires_at + LEEWAY - 1).expires_at == expires_at
    with pytest.raises(InvalidToken, match="expired"):
        keyring.verify_access(token, now=expires_at + LEEWAY)
    with pytest.raises(InvalidToken, match="expired"):
        keyring.verify_access(token, now=expires_at + 3600)


def test_a_token_issued_in_the_future_is_accepted_only_within_the_leeway() -> None:
    token, _ = issue(HS256_KEYRING)

    assert HS256_KEYRING.verify_access(token, now=NOW - LEEWAY)
    with pytest.raises(InvalidToken, match="not valid yet"):
        HS256_KEYRING.verify_access(token, now=NOW - LEEWAY - 1)


# --- attacks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyring", [HS256_KEYRING, EDDSA_KEYRING], ids=["HS256", "EdDSA"])
@pytest.mark.parametrize("signature", ["", "AAAA"], ids=["empty-signature", "some-signature"])
def test_alg_none_is_rejected(keyring: Keyring, signature: str) -> None:
    kid = kid_of(issue(keyring)[0])
    token = f"{b64url_json({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64url_json(valid_payload())}.{signature}"

    with pytest.raises(InvalidToken):
        keyring.verify_access(token, now=NOW)


def test_hs256_signed_with_another_secret_is_rejected() -> None:
    other = hs256_keyring(b"another secret that is long enough!!")
    token, _ = issue(other)

    with pytest.raises(InvalidToken, match="unknown"):  # its kid gives it away
        HS256_KEYRING.verify_access(token, now=NOW)
    without_kid = jwt.encode(valid_payload(), b"another secret that is long enough!!", algorithm="HS256")
    with pytest.raises(InvalidToken, match="signature"):
        HS256_KEYRING.verify_access(without_kid, now=NOW)


def test_hs256_with_a_wrong_kid_is_rejected_even_when_correctly_signed() -> None:
    token = hmac_token({"alg": "HS256", "typ": "JWT", "kid": "not-our-kid"}, valid_payload(), SECRET)

    with pytest.raises(InvalidToken, match="unknown"):
        HS256_KEYRING.verify_access(token, now=NOW)


def _public_key_as_hmac_keys() -> list[bytes]:
    pem = public_pem(KEY_A)
    raw = KEY_A.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return [pem, pem.strip(), raw, base64.b64decode(b"".join(pem.splitlines()[1:-1]))]


@pytest.mark.parametrize("key", _public_key_as_hmac_keys(), ids=["pem", "stripped-pem", "raw", "der"])
@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no-kid"])
def test_eddsa_keyring_rejects_hs256_signed_with_its_public_key(key: bytes, with_kid: bool) -> None:
    header = {"alg": "HS256", "typ": "JWT"}
    if with_kid:
        header["kid"] = kid_of(issue(EDDSA_KEYRING)[0])
    token = hmac_token(header, valid_payload(), key)

    with pytest.raises(InvalidToken):
        EDDSA_KEYRING.verify_access(token, now=NOW)


def test_hs256_keyring_rejects_an_eddsa_token() -> None:
    token = jwt.encode(valid_payload(), KEY_A, algorithm="EdDSA", headers={"kid": kid_of(issue(HS256_KEYRING)[0])})

    with pytest.raises(InvalidToken, match="algorithm"):
        HS256_KEYRING.verify_access(token, now=NOW)


def without(claim: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.pop(claim)


def setting(claim: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.update({claim: value})


BAD_CLAIMS: Final = [
    *(
        pytest.param(without(claim), id=f"missing-{claim}")
        for claim in ("exp", "iat", "iss", "aud", "sub", "jti", "sid", "preferred_username")
    ),
    pytest.param(setting("preferred_username", 7), id="username-not-string"),
    pytest.param(without("typ"), id="missing-typ"),
    pytest.param(setting("typ", "refresh"), id="typ-refresh"),
    pytest.param(setting("typ", "ACCESS"), id="typ-other"),
    pytest.param(setting("iss", "someone-else"), id="wrong-iss"),
    pytest.param(setting("aud", "another-api"), id="wrong-aud"),
    pytest.param(setting("aud", [AUDIENCE, "another-api"]), id="aud-list"),
    pytest.param(setting("sub", "42"), id="sub-not-uuid"),
    pytest.param(setting("sub", 42), id="sub-not-string"),
    pytest.param(setting("sid", "not-a-uuid"), id="sid-not-uuid"),
    pytest.param(setting("sid", ["7d3c5f7e-1f0a-4d8a-9a55-0d6a1e1c2b3a"]), id="sid-not-string"),
    pytest.param(setting("jti", ""), id="jti-empty"),
    pytest.param(setting("jti", 7), id="jti-not-string"),
    pytest.param(setting("scope", ["admin"]), id="scope-not-string"),
    pytest.param(setting("exp", str(NOW + 900)), id="exp-string"),
    pytest.param(setting("exp", float(NOW + 900)), id="exp-float"),
    pytest.param(setting("exp", True), id="exp-bool"),
    pytest.param(setting("iat", None), id="iat-null"),
    pytest.param(setting("nbf", NOW + LEEWAY + 1), id="nbf-future"),
    pytest.param(setting("nbf", "soon"), id="nbf-string"),
]


@pytest.mark.parametrize("mutate", BAD_CLAIMS)
def test_bad_claims_are_rejected(mutate: Callable[[dict[str, Any]], None]) -> None:
    payload = valid_payload()
    mutate(payload)
    token = jwt.encode(payload, SECRET, algorithm="HS256")

    with pytest.raises(InvalidToken):
        HS256_KEYRING.verify_access(token, now=NOW)


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[" * 2000, b'"a string"'])
def test_a_signed_payload_that_is_not_a_json_object_is_rejected(payload: bytes) -> None:
    signing_input = f"{b64url_json({'alg': 'HS256'})}.{b64url(payload)}"
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()

    with pytest.raises(InvalidToken, match="payload"):
        HS256_KEYRING.verify_access(f"{signing_input}.{b64url(signature)}", now=NOW)


def test_eddsa_keyring_requires_a_kid() -> None:
    token = jwt.encode(valid_payload(), KEY_A, algorithm="EdDSA")

    with pytest.raises(InvalidToken, match="names no key"):
        EDDSA_KEYRING.verify_access(token, now=NOW)


def test_a_token_from_another_eddsa_key_is_rejected() -> None:
    other = eddsa_keyring(PRIVATE_PEM_B)
    token, _ = issue(other)
    # the same token claiming our kid: only the signature can tell
    posing = jwt.encode(valid_payload(), KEY_B, algorithm="EdDSA", headers={"kid": kid_of(issue(EDDSA_KEYRING)[0])})

    with pytest.raises(InvalidToken, match="unknown"):
        EDDSA_KEYRING.verify_access(token, now=NOW)
    with pytest.raises(InvalidToken, match="signature"):
        EDDSA_KEYRING.verify_access(posing, now=NOW)


@pytest.mark.parametrize("keyring", [HS256_KEYRING, EDDSA_KEYRING], ids=["HS256", "EdDSA"])
def test_a_tampered_token_is_rejected(keyring: Keyring) -> None:
    token, _ = issue(keyring)
    header, payload, signature = segments(token)
    elevated = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    elevated["scope"] = "admin"
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]

    with pytest.raises(InvalidToken, match="signature"):
        keyring.verify_access(f"{header}.{b64url_json(elevated)}.{signature}", now=NOW)
    with pytest.raises(InvalidToken, match="signature"):
        keyring.verify_access(f"{header}.{payload}.{flipped}", now=NOW)
    with pytest.raises(InvalidToken):
        keyring.verify_access(f"{header}.{payload}.{signature[:-4]}", now=NOW)


HUGE_NUMBER_HEADER: Final = b'{"alg": ' + b"9" * 5000 + b"}"
GARBAGE: Final = [
    "",
    ".",
    "..",
    "a.b",
    "a.b.c",
    "a.b.c.d",
    "Bearer abc.def.ghi",
    f"{b64url(b'not json')}.{b64url_json({})}.AAAA",
    f"{b64url_json([1, 2])}.{b64url_json({})}.AAAA",
    f"{b64url_json({'alg': 'HS256', 'kid': 5})}.{b64url_json({})}.AAAA",
    f"{b64url_json({'alg': 'HS256', 'kid': {'x': 1}})}.{b64url_json({})}.AAAA",
    f"{b64url_json({'alg': ['HS256'], 'typ': 'JWT'})}.{b64url_json({})}.AAAA",
    f"{b64url_json({'alg': 'HS256', 'crit': ['exp']})}.{b64url_json(valid_payload())}.AAAA",
    f"{b64url_json({'alg': 'HS256', 'b64': False, 'crit': ['b64']})}.{b64url_json(valid_payload())}.AAAA",
    f"{b64url(b'{' * 2000)}.{b64url_json({})}.AAAA",
    f"{b64url(b'[' * 1500)}.e30.AAAA",
    f"{b64url(HUGE_NUMBER_HEADER)}.e30.AAAA",
    f"{b64url(bytes(range(256)))}.e30.AAAA",
    "eyJhbGciOiJIUzI1NiJ9A.e30.AAAA",  # a segment of length 1 mod 4
    "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA",
    "é.é.é",
    "\ud800.\udfff.x",
    "a.b.c\n",
    "a" * 100_000 + ".b.c",
    ".".join(["A" * 3000] * 3),
]


@pytest.mark.parametrize("keyring", [HS256_KEYRING, EDDSA_KEYRING], ids=["HS256", "EdDSA"])
@pytest.mark.parametrize("token", GARBAGE)
def test_garbage_is_an_invalid_token(keyring: Keyring, token: str) -> None:
    with pytest.raises(InvalidToken):
        keyring.verify_access(token, now=NOW)


def latin1(data: bytes) -> str:
    return data.decode("latin-1")


def verifies_or_refuses(token: str, keyrings: tuple[Keyring, ...] = (HS256_KEYRING, EDDSA_KEYRING)) -> None:
    for keyring in keyrings:
        with contextlib.suppress(InvalidToken):
            assert isinstance(keyring.verify_access(token, now=NOW), Claims)


@given(st.one_of(st.text(), st.binary().map(latin1)))
def test_arbitrary_strings_raise_nothing_but_invalid_token(token: str) -> None:
    verifies_or_refuses(token)


JSON_VALUES: Final = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
HEADERS: Final = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "x5c"]),
    st.sampled_from(["HS256", "EdDSA", "none", "RS256", ""]) | JSON_VALUES,
)


@given(header=HEADERS | JSON_VALUES, payload=JSON_VALUES, signature=st.binary(max_size=80))
def test_well_formed_garbage_raises_nothing_but_invalid_token(
    header: object, payload: object, signature: bytes
) -> None:
    # gets past the compact-form check, so PyJWT's own decoding runs on it
    verifies_or_refuses(f"{b64url_json(header)}.{b64url_json(payload)}.{b64url(signature)}")


CLAIM_NAMES: Final = st.sampled_from([*sorted(valid_payload()), "nbf"])
# a valid payload with some claims dropped or replaced by anything, or not an object at all
SIGNED_PAYLOADS: Final = JSON_VALUES | st.tuples(st.sets(CLAIM_NAMES), st.dictionaries(CLAIM_NAMES, JSON_VALUES)).map(
    lambda change: {**{k: v for k, v in valid_payload().items() if k not in change[0]}, **change[1]}
)


@given(payload=SIGNED_PAYLOADS)
def test_signed_garbage_raises_nothing_but_invalid_token(payload: object) -> None:
    # correctly signed, so the claim checks after PyJWT's see it too
    token = hmac_token({"alg": "HS256", "typ": "JWT"}, payload, SECRET)
    verifies_or_refuses(token, (HS256_KEYRING,))


# --- rotation and JWKS -------------------------------------------------------------------------------------


def test_rotation_verifies_tokens_of_every_listed_key() -> None:
    rotated = eddsa_keyring(PRIVATE_PEM_A, (public_pem(KEY_B),))
    from_b, claims_b = issue(eddsa_keyring(PRIVATE_PEM_B))
    from_a, claims_a = issue(rotated)

    assert rotated.verify_access(from_b, now=NOW) == claims_b
    assert rotated.verify_access(from_a, now=NOW) == claims_a  # the signing key need not be listed
    assert {key["kid"] for key in rotated.jwks()["keys"]} == {kid_of(from_a), kid_of(from_b)}
    with pytest.raises(InvalidToken):
        EDDSA_KEYRING.verify_access(from_b, now=NOW)


def test_the_signing_key_listed_again_is_published_once() -> None:
    keyring = eddsa_keyring(PRIVATE_PEM_A, (public_pem(KEY_A), public_pem(KEY_B)))

    kids = [key["kid"] for key in keyring.jwks()["keys"]]

    assert len(kids) == len(set(kids)) == 2
    assert kids[0] == kid_of(issue(keyring)[0])


def test_jwks_publishes_the_rfc_7638_thumbprint_as_kid() -> None:
    private_key = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(RFC8037_D + "="))
    keyring = eddsa_keyring(private_pem(private_key))

    assert keyring.jwks() == {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "kid": RFC8037_THUMBPRINT, "alg": "EdDSA", "use": "sig"}
        ]
    }
    assert kid_of(issue(keyring)[0]) == RFC8037_THUMBPRINT


def test_jwks_is_empty_in_hs256_mode_and_never_shares_state() -> None:
    assert HS256_KEYRING.jwks() == {"keys": []}
    EDDSA_KEYRING.jwks()["keys"][0]["x"] = "changed"
    assert EDDSA_KEYRING.jwks()["keys"][0]["x"] != "changed"


def test_repr_never_shows_key_material() -> None:
    assert SECRET.decode() not in repr(HS256_KEYRING)
    assert "HS256" in repr(HS256_KEYRING)


# --- construction ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [b"x" * 31, b"", public_pem(KEY_A), b'{"kty": "oct", "k": "c2VjcmV0IHRoYXQgaXMgbG9uZyBlbm91Z2gh"}'],
    ids=["short", "empty", "pem", "jwk"],
)
def test_hs256_refuses_an_unusable_secret(secret: bytes) -> None:
    with pytest.raises(ValueError, match="secret"):
        hs256_keyring(secret)


def test_eddsa_refuses_keys_that_are_not_ed25519() -> None:
    ed448 = Ed448PrivateKey.generate()

    with pytest.raises(ValueError, match="Ed25519 private key"):
        eddsa_keyring(private_pem(ed448))
    with pytest.raises(ValueError, match="Ed25519 public key"):
        eddsa_keyring(PRIVATE_PEM_A, (public_pem(ed448),))
    with pytest.raises(ValueError, match="PKCS#8"):
        eddsa_keyring(b"not a pem")
    with pytest.raises(ValueError, match="SPKI"):
        eddsa_keyring(PRIVATE_PEM_A, (PRIVATE_PEM_B,))
