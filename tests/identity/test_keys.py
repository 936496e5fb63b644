"""Key material on disk: the development secret, Ed25519 key files, rotation, and bad files."""

from __future__ import annotations

import logging
import stat
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import jwt
import pytest

from keel.identity.errors import InvalidToken
from keel.identity.keys import generate_ed25519_keypair, load_keyring
from keel.identity.tokens import Claims, Keyring

ISSUER: Final = "keel"
AUDIENCE: Final = "keel-api"
SECRET: Final = "a configured secret, long enough for HS256"


def load(
    tmp_path: Path,
    *,
    secret: str | None = None,
    private_key_file: Path | None = None,
    public_keys_dir: Path | None = None,
) -> Keyring:
    return load_keyring(
        secret=secret,
        private_key_file=private_key_file,
        public_keys_dir=public_keys_dir,
        var_dir=tmp_path / "var",
        issuer=ISSUER,
        audience=AUDIENCE,
    )


def issue(keyring: Keyring) -> tuple[str, Claims]:
    return keyring.issue_access(user_id=uuid.uuid4(), username="ada", session_id=uuid.uuid4(), scopes=(), ttl=60)


def kids(keyring: Keyring) -> set[str]:
    return {key["kid"] for key in keyring.jwks()["keys"]}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_development_secret_is_generated_once_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret_file = tmp_path / "var" / "jwt-secret"

    with caplog.at_level(logging.WARNING, logger="keel.accounts"):
        first = load(tmp_path)
    secret = secret_file.read_bytes()
    warnings = [record for record in caplog.records if record.name == "keel.accounts"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keel.accounts"):
        second = load(tmp_path)

    assert first.algorithm == second.algorithm == "HS256"
    assert len(secret) == 64
    assert mode(secret_file) == 0o600
    assert secret_file.read_bytes() == secret
    assert sorted(path.name for path in secret_file.parent.iterdir()) == ["jwt-secret"]  # no temporary left
    assert len(warnings) == 1
    assert "development" in warnings[0].getMessage()
    assert secret.hex() not in warnings[0].getMessage()
    assert not caplog.records  # reusing it is not news
    token, claims = issue(first)
    assert second.verify_access(token) == claims


def test_workers_starting_together_agree_on_one_development_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workers = 8
    barrier = threading.Barrier(workers)

    def start() -> Keyring:
        barrier.wait()
        return load(tmp_path)

    with caplog.at_level(logging.WARNING, logger="keel.accounts"), ThreadPoolExecutor(workers) as pool:
        keyrings = list(pool.map(lambda _: start(), range(workers)))

    token, claims = issue(keyrings[0])
    assert all(keyring.verify_access(token) == claims for keyring in keyrings)
    assert len([record for record in caplog.records if record.name == "keel.accounts"]) == 1
    assert sorted(path.name for path in (tmp_path / "var").iterdir()) == ["jwt-secret"]


def test_development_secret_that_is_too_short_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "var" / "jwt-secret"
    secret_file.parent.mkdir()
    secret_file.write_bytes(b"short")

    with pytest.raises(ValueError, match="jwt-secret") as raised:
        load(tmp_path)
    assert str(secret_file) in str(raised.value)


def test_development_secret_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file where the directory belongs")

    with pytest.raises(ValueError, match="cannot create") as raised:
        load(tmp_path)
    assert str(tmp_path / "var" / "jwt-secret") in str(raised.value)


def test_configured_secret_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    keyring = load(tmp_path, secret=SECRET)

    token, claims = issue(Keyring.hs256(SECRET.encode(), issuer=ISSUER, audience=AUDIENCE))

    assert keyring.algorithm == "HS256"
    assert keyring.verify_access(token) == claims
    assert not (tmp_path / "var").exists()


def test_generated_keypair_files(tmp_path: Path) -> None:
    key_file, pem_file = generate_ed25519_keypair(tmp_path / "keys" / "new")

    assert key_file.parent == pem_file.parent == tmp_path / "keys" / "new"
    assert key_file.suffix == ".key"
    assert pem_file.suffix == ".pem"
    assert key_file.stem == pem_file.stem
    assert mode(key_file) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pem_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert kids(load(tmp_path, private_key_file=key_file)) == {key_file.stem}  # named for its kid


def test_eddsa_mode_from_generated_files(tmp_path: Path) -> None:
    key_file, _ = generate_ed25519_keypair(tmp_path / "keys")

    keyring = load(tmp_path, private_key_file=key_file)
    token, claims = issue(keyring)

    assert keyring.algorithm == "EdDSA"
    assert keyring.verify_access(token) == claims
    assert jwt.get_unverified_header(token)["kid"] == key_file.stem


def test_hs256_is_off_in_eddsa_mode_even_with_a_secret(tmp_path: Path) -> None:
    key_file, _ = generate_ed25519_keypair(tmp_path / "keys")

    keyring = load(tmp_path, secret=SECRET, private_key_file=key_file)
    hs256_token, _ = issue(Keyring.hs256(SECRET.encode(), issuer=ISSUER, audience=AUDIENCE))

    assert keyring.algorithm == "EdDSA"
    with pytest.raises(InvalidToken):
        keyring.verify_access(hs256_token)
    assert not (tmp_path / "var").exists()


def test_rotation_directory_with_two_public_keys(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    current, _ = generate_ed25519_keypair(keys_dir)
    previous, _ = generate_ed25519_keypair(keys_dir)
    stranger, _ = generate_ed25519_keypair(tmp_path / "elsewhere")

    keyring = load(tmp_path, private_key_file=current, public_keys_dir=keys_dir)  # the .key files are not read
    from_previous, claims = issue(load(tmp_path, private_key_file=previous))

    assert kids(keyring) == {current.stem, previous.stem}
    assert keyring.verify_access(from_previous) == claims
    with pytest.raises(InvalidToken):
        keyring.verify_access(issue(load(tmp_path, private_key_file=stranger))[0])


def test_an_empty_rotation_directory_still_verifies_the_signing_key(tmp_path: Path) -> None:
    key_file, _ = generate_ed25519_keypair(tmp_path / "keys")
    (tmp_path / "empty").mkdir()

    keyring = load(tmp_path, private_key_file=key_file, public_keys_dir=tmp_path / "empty")

    assert kids(keyring) == {key_file.stem}


GARBAGE_PEMS: Final = [
    pytest.param(b"not a pem", id="text"),
    pytest.param(b"\xff\xfe\x00 binary", id="binary"),
    pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="truncated-private"),
    pytest.param(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", id="truncated-public"),
]


def assert_names_the_file(error: ValueError, path: Path) -> None:
    message = str(error)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


@pytest.mark.parametrize("content", [*GARBAGE_PEMS, pytest.param(None, id="a-public-key")])
def test_a_bad_private_key_file_raises_a_value_error_naming_it(tmp_path: Path, content: bytes | None) -> None:
    _, pem_file = generate_ed25519_keypair(tmp_path / "keys")
    bad = tmp_path / "bad.key"
    bad.write_bytes(pem_file.read_bytes() if content is None else content)

    with pytest.raises(ValueError, match="private key") as raised:
        load(tmp_path, private_key_file=bad)
    assert_names_the_file(raised.value, bad)


@pytest.mark.parametrize("content", [*GARBAGE_PEMS, pytest.param(None, id="a-private-key")])
def test_a_bad_public_key_file_raises_a_value_error_naming_it(tmp_path: Path, content: bytes | None) -> None:
    key_file, _ = generate_ed25519_keypair(tmp_path / "keys")
    bad = tmp_path / "keys" / "bad.pem"
    bad.write_bytes(key_file.read_bytes() if content is None else content)

    with pytest.raises(ValueError, match="public key") as raised:
        load(tmp_path, private_key_file=key_file, public_keys_dir=tmp_path / "keys")
    assert_names_the_file(raised.value, bad)


def test_missing_key_paths_raise_a_value_error_naming_them(tmp_path: Path) -> None:
    key_file, _ = generate_ed25519_keypair(tmp_path / "keys")
    missing = tmp_path / "missing.key"

    with pytest.raises(ValueError, match=r"missing\.key"):
        load(tmp_path, private_key_file=missing)
    with pytest.raises(ValueError, match="no-such-dir"):
        load(tmp_path, private_key_file=key_file, public_keys_dir=tmp_path / "no-such-dir")


def test_public_keys_without_a_private_key_are_refused(tmp_path: Path) -> None:
    # they would be ignored silently in HS256 mode: a half-configured start
    generate_ed25519_keypair(tmp_path / "keys")

    with pytest.raises(ValueError, match="private key"):
        load(tmp_path, secret=SECRET, public_keys_dir=tmp_path / "keys")
