"""The service's Ed25519 signing key (recording manifests, audit checkpoints).

Configured with ``signing_key`` (a PEM file); when none is configured the key is
generated at first start under ``DATA/keys/`` (mode 0600) and kept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .config import Settings

DEFAULT_NAME = "keys/signing-ed25519.pem"


def signing_key_path(settings: Settings) -> Path:
    return Path(settings.signing_key) if settings.signing_key else settings.data_dir / DEFAULT_NAME


def load_signing_key(settings: Settings, create: bool = True) -> Ed25519PrivateKey:
    """The service's signing key, generated on first use when none is configured."""
    path = signing_key_path(settings)
    if not path.exists():
        if settings.signing_key or not create:
            raise FileNotFoundError(f"signing key {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(path, pem)
        return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600; ``FileExistsError`` when it exists) holding ``data``, on disk.

    The one way the service creates a file that only it may read and that must not
    replace another (keys, staged uploads, spool metadata)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_pem(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: what a force publishes for recipients to compare."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()
