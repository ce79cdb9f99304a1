"""Recording manifests: hash-chained entries, signed with the service's Ed25519 key.

A recording is a run of entries, in order: ``segment`` (a file, its SHA-256, size and
wall-clock span), ``gap`` (a span with no media and its reason) and one ``end``. Each
entry carries its ``index``, the previous entry's hash (``prev``) and its own ``hash``,
the SHA-256 of its canonical JSON without ``hash``. The manifest holds the recording's
metadata and every entry; ``manifest.sig`` is the Ed25519 signature of the exact bytes
of ``manifest.json``.

The same signed, hash-chained document serves the other records sealed into the
evidence store (a consultation's chat transcript, :mod:`evr.transcripts`): what
differs between them (the format, the files' names, the words in a failure) is a
:class:`Kind`, and building, parsing, checking and storing one take it, so there is
one implementation of each for all of them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evr.evidence import EvidenceStore, ItemExists
from evr.integrity import GENESIS, canonical

FORMAT = "evr-recording/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
README = "HOW-TO-VERIFY.txt"


@dataclass(frozen=True)
class Kind:
    """One kind of signed, hash-chained document: its format, its files and the words
    its failures are told in."""

    format: str
    document: str  #: the file of the document (``manifest.json``)
    signature: str  #: the file of its signature (``manifest.sig``)
    noun: str  #: what the document is called (``manifest``)
    subject: str  #: the key of what it describes (``recording``)
    entry: str  #: what an entry is called (``entry``)
    entries: str  #: and more than one (``entries``)


RECORDING = Kind(FORMAT, MANIFEST, SIGNATURE, "manifest", "recording", "entry", "entries")


def segment_name(seq: int) -> str:
    return f"seg-{seq:06d}.webm"


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def chain(entry: dict[str, Any], index: int, prev: str) -> dict[str, Any]:
    """``entry`` with its place in the chain: ``index``, ``prev`` and ``hash``."""
    linked = {**entry, "index": index, "prev": prev}
    linked["hash"] = entry_hash(linked)
    return linked


def build(recording: dict[str, Any], entries: list[dict[str, Any]], key_fingerprint: str,
          kind: Kind = RECORDING) -> bytes:
    """The bytes of ``manifest.json`` (of ``kind``'s document, ``recording`` being
    what it describes)."""
    manifest = {
        "format": kind.format,
        kind.subject: recording,
        "entries": entries,
        "head": entries[-1]["hash"] if entries else GENESIS,
        "signing_key": {"algorithm": "Ed25519", "sha256": key_fingerprint},
    }
    return json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def sign(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    return key.sign(manifest)


class Problem(Exception):
    """The first thing found wrong with a recording."""


def check_signature(public_key: Ed25519PublicKey, manifest: bytes, signature: bytes,
                    kind: Kind = RECORDING) -> None:
    try:
        public_key.verify(signature, manifest)
    except InvalidSignature:
        raise Problem(f"{kind.document}: the signature does not match "
                      f"(the {kind.noun} was changed or signed by another key)") from None


def parse(manifest: bytes, kind: Kind = RECORDING) -> dict[str, Any]:
    try:
        parsed = json.loads(manifest)
    except ValueError:
        raise Problem(f"{kind.document}: not valid JSON") from None
    if not isinstance(parsed, dict) or parsed.get("format") != kind.format \
            or not isinstance(parsed.get("entries"), list):
        raise Problem(f"{kind.document}: not an {kind.format} {kind.noun}")
    return parsed


def check_chain(entries: list[Any], head: Any, kind: Kind = RECORDING) -> None:
    """Each entry in its place, following the one before, unaltered; the head hash
    that of the last (none removed). :class:`Problem` names the first bad entry."""
    prev = GENESIS
    for index, entry in enumerate(entries):
        where = f"{kind.document}: {kind.entry} {index}"
        if not isinstance(entry, dict) or entry.get("index") != index:
            raise Problem(f"{where} is out of place")
        if entry.get("prev") != prev:
            raise Problem(f"{where} does not follow {kind.entry} {index - 1} (chain broken)")
        if entry_hash(entry) != entry.get("hash"):
            raise Problem(f"{where} was altered (its hash does not match)")
        prev = entry["hash"]
    if head != prev:
        raise Problem(f"{kind.document}: the head hash does not match the last {kind.entry} "
                      f"({kind.entries} removed?)")


def check_end(entries: list[dict[str, Any]]) -> None:
    """A recording's chain closes with its ``end`` entry."""
    if not entries or entries[-1].get("type") != "end":
        raise Problem(f"{MANIFEST}: the recording has no end entry")


async def keep(store: EvidenceStore, key: Ed25519PrivateKey, base: str, body: bytes, head: str,
               kind: Kind = RECORDING) -> bytes:
    """Store a document and its signature under ``base``; the bytes kept. A seal cut
    short after storing them (the store never overwrites) is finished with what it
    stored, when that is this service's signed document of the same chain."""
    try:
        await store.add_bytes(base + kind.document, body)
    except ItemExists:
        stored = await store.read_bytes(base + kind.document)
        if parse(stored, kind).get("head") != head:
            raise
        body = stored
    signature = sign(key, body)  # Ed25519 is deterministic: the same bytes again
    try:
        await store.add_bytes(base + kind.signature, signature)
    except ItemExists:
        check_signature(key.public_key(), body, await store.read_bytes(base + kind.signature), kind)
    return body


def segments(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("type") == "segment"]
