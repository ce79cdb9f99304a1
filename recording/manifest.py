"""Recording manifests: hash-chained entries, signed with the service's Ed25519 key.

A recording is a run of entries, in order: ``segment`` (a file, its SHA-256, size and
wall-clock span), ``gap`` (a span with no media and its reason) and one ``end``. Each
entry carries its ``index``, the previous entry's hash (``prev``) and its own ``hash``,
the SHA-256 of its canonical JSON without ``hash``. The manifest holds the recording's
metadata and every entry; ``manifest.sig`` is the Ed25519 signature of the exact bytes
of ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evr.integrity import GENESIS, canonical

FORMAT = "evr-recording/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
README = "HOW-TO-VERIFY.txt"


def segment_name(seq: int) -> str:
    return f"seg-{seq:06d}.webm"


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def chain(entry: dict[str, Any], index: int, prev: str) -> dict[str, Any]:
    """``entry`` with its place in the chain: ``index``, ``prev`` and ``hash``."""
    linked = {**entry, "index": index, "prev": prev}
    linked["hash"] = entry_hash(linked)
    return linked


def build(recording: dict[str, Any], entries: list[dict[str, Any]], key_fingerprint: str) -> bytes:
    """The bytes of ``manifest.json``."""
    manifest = {
        "format": FORMAT,
        "recording": recording,
        "entries": entries,
        "head": entries[-1]["hash"] if entries else GENESIS,
        "signing_key": {"algorithm": "Ed25519", "sha256": key_fingerprint},
    }
    return json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def sign(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    return key.sign(manifest)


class Problem(Exception):
    """The first thing found wrong with a recording."""


def check_signature(public_key: Ed25519PublicKey, manifest: bytes, signature: bytes) -> None:
    try:
        public_key.verify(signature, manifest)
    except InvalidSignature:
        raise Problem(f"{MANIFEST}: the signature does not match "
                      "(the manifest was changed or signed by another key)") from None


def parse(manifest: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(manifest)
    except ValueError:
        raise Problem(f"{MANIFEST}: not valid JSON") from None
    if not isinstance(parsed, dict) or parsed.get("format") != FORMAT or not isinstance(parsed.get("entries"), list):
        raise Problem(f"{MANIFEST}: not an {FORMAT} manifest")
    return parsed


def check_chain(entries: list[dict[str, Any]], head: Optional[str]) -> None:
    prev = GENESIS
    for index, entry in enumerate(entries):
        where = f"{MANIFEST}: entry {index}"
        if not isinstance(entry, dict) or entry.get("index") != index:
            raise Problem(f"{where} is out of place")
        if entry.get("prev") != prev:
            raise Problem(f"{where} does not follow entry {index - 1} (chain broken)")
        if entry_hash(entry) != entry.get("hash"):
            raise Problem(f"{where} was altered (its hash does not match)")
        prev = entry["hash"]
    if head != prev:
        raise Problem(f"{MANIFEST}: the head hash does not match the last entry (entries removed?)")
    if not entries or entries[-1].get("type") != "end":
        raise Problem(f"{MANIFEST}: the recording has no end entry")


def segments(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("type") == "segment"]
