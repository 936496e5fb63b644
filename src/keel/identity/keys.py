"""JWT key material on disk: the development secret, Ed25519 key files, and the keyring built from them."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from keel.identity.tokens import (
    MIN_SECRET_BYTES,
    Keyring,
    ed25519_thumbprint,
    parse_ed25519_private_key,
    parse_ed25519_public_key,
)

log = logging.getLogger("keel.accounts")  # the name operators and tests already filter on

DEVELOPMENT_KEY_FILE: Final = "jwt-secret"
DEVELOPMENT_KEY_BYTES: Final = 64


def load_keyring(
    *,
    secret: str | None,
    private_key_file: Path | None,
    public_keys_dir: Path | None,
    var_dir: Path,
    issuer: str,
    audience: str,
) -> Keyring:
    """EdDSA when a private key file is given (HS256 is then off), else HS256 with `secret` or a development one.

    Raises ValueError with one line naming the file when key material is missing or unusable.
    """
    if private_key_file is not None:
        private_pem = _read_key_file(private_key_file)
        _check_pem(parse_ed25519_private_key, private_pem, private_key_file)
        public_pems = [] if public_keys_dir is None else _read_public_keys(public_keys_dir)
        return Keyring.eddsa(private_pem, public_pems, issuer=issuer, audience=audience)
    if public_keys_dir is not None:  # verification keys but nothing to sign with: half configured
        raise ValueError(f"{public_keys_dir}: public keys are used only with an Ed25519 private key file")
    key = secret.encode() if secret is not None else _development_secret(var_dir)
    return Keyring.hs256(key, issuer=issuer, audience=audience)


def generate_ed25519_keypair(directory: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as `<kid>.key` (PKCS#8 PEM, owner-only) and `<kid>.pem` (SPKI PEM)."""
    private_key = Ed25519PrivateKey.generate()
    public_key = private_key.public_key()
    kid = ed25519_thumbprint(public_key)
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pem_path = directory / f"{kid}.key", directory / f"{kid}.pem"
    private_pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    if not _create_private_file(key_path, private_pem):
        raise FileExistsError(f"{key_path} already exists")
    pem_path.write_bytes(public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key_path, pem_path


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None


def _check_pem(parse: Callable[[bytes], object], pem: bytes, path: Path) -> None:
    try:
        parse(pem)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _read_public_keys(directory: Path) -> list[bytes]:
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory of public keys")
    pems = []
    for path in sorted(directory.glob("*.pem")):
        pem = _read_key_file(path)
        _check_pem(parse_ed25519_public_key, pem, path)
        pems.append(pem)
    return pems


def _development_secret(var_dir: Path) -> bytes:
    """The secret in `var_dir`, generated on first use; a development convenience (production sets one)."""
    path = var_dir / DEVELOPMENT_KEY_FILE
    if not path.exists():
        try:
            var_dir.mkdir(parents=True, exist_ok=True)
            created = _create_private_file(path, secrets.token_bytes(DEVELOPMENT_KEY_BYTES))
        except OSError as exc:
            raise ValueError(f"{path}: cannot create the development JWT key ({exc.strerror or exc})") from None
        if created:
            log.warning(
                "generated a development JWT key in %s; set KEEL_JWT_SECRET or KEEL_JWT_PRIVATE_KEY_FILE in production",
                path,
            )
    secret = _read_key_file(path)
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: the development JWT key is shorter than {MIN_SECRET_BYTES} bytes; delete it")
    return secret


def _create_private_file(path: Path, data: bytes) -> bool:
    """Write `data` to a new owner-only file at `path`; False, leaving it alone, if `path` already exists."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # link, unlike rename, never replaces: workers starting together all end up with the first one's file,
        # and nobody ever reads a half-written one
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    return True
