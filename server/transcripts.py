"""Sealed chat transcripts: the signed document, its verification, ``evr chat verify``.

A consultation's chat is sealed at close into the evidence store under
``chat/<consultation id>/`` as ``transcript.json`` and ``transcript.sig``, exactly as a
recording's manifest is (:mod:`evr.recording.manifest`): every message is an entry
chained with :func:`~evr.recording.manifest.chain` (its ``index``, the previous
entry's hash ``prev`` and its own ``hash``, the SHA-256 of its canonical JSON), the
document names the head hash and the signing key's fingerprint, and
``transcript.sig`` is the service's Ed25519 signature of the exact bytes of
``transcript.json``. The entries are the very hashes kept with each message in the
database as it was sent (``chat_messages.prev_hash`` and ``hash``), so a row changed
after it was sent is found when the transcript is sealed.

A download (``GET /api/consultations/{id}/chat/transcript``) is a zip of both files,
the public key and a note on how to verify; ``evr chat verify`` checks a zip, an
unpacked folder, a ``transcript.json`` (its ``.sig`` beside it) or a consultation's
sealed transcript in this service's store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .integrity import GENESIS
from .keys import fingerprint, load_public_pem
from .recording.manifest import Problem, check_signature, entry_hash
from .recording.verify import DirPackage, Package, StoredPackage, ZipPackage

FORMAT = "evr-chat/1"
TRANSCRIPT = "transcript.json"
SIGNATURE = "transcript.sig"
PUBLIC_KEY = "public_key.pem"
README = "HOW-TO-VERIFY.txt"
#: What a download holds.
PACKAGE_FILES = {TRANSCRIPT, SIGNATURE, PUBLIC_KEY, README}


def prefix(consultation_id: str) -> str:
    """Where a consultation's sealed transcript is kept in the evidence store."""
    return f"chat/{consultation_id}/"


#: Chat items' ids are derived from their consultation's: one transcript per
#: consultation, and a seal repeated after a crash finds the item it made.
_ITEM_NAMESPACE = uuid.UUID("6f0f6a52-3c1e-4d8e-9b5e-2a7c1d0c4e11")


def item_id(consultation_id: str) -> str:
    """The evidence item id of a consultation's chat transcript."""
    return str(uuid.uuid5(_ITEM_NAMESPACE, consultation_id))


def build(consultation: dict[str, Any], entries: list[dict[str, Any]], key_fingerprint: str) -> bytes:
    """The bytes of ``transcript.json``: the same layout as a recording manifest's."""
    document = {
        "format": FORMAT,
        "consultation": consultation,
        "entries": entries,
        "head": entries[-1]["hash"] if entries else GENESIS,
        "signing_key": {"algorithm": "Ed25519", "sha256": key_fingerprint},
    }
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def parse(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise Problem(f"{TRANSCRIPT}: not valid JSON") from None
    if not isinstance(parsed, dict) or parsed.get("format") != FORMAT or not isinstance(parsed.get("entries"), list):
        raise Problem(f"{TRANSCRIPT}: not an {FORMAT} transcript")
    return parsed


def check_chain(entries: list[Any], head: Any) -> None:
    """Each message in its place, following the one before, unaltered; the head hash
    that of the last (none removed). :class:`Problem` names the first bad message."""
    prev = GENESIS
    for index, entry in enumerate(entries):
        where = f"{TRANSCRIPT}: message {index}"
        if not isinstance(entry, dict) or entry.get("index") != index:
            raise Problem(f"{where} is out of place")
        if entry.get("prev") != prev:
            raise Problem(f"{where} does not follow message {index - 1} (chain broken)")
        if entry_hash(entry) != entry.get("hash"):
            raise Problem(f"{where} was altered (its hash does not match)")
        prev = entry["hash"]
    if head != prev:
        raise Problem(f"{TRANSCRIPT}: the head hash does not match the last message (messages removed?)")


@dataclass
class Report:
    consultation_id: str
    messages: int
    key_sha256: str


class FilePackage(Package):
    """A ``transcript.json`` given by itself: its signature and key beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def names(self) -> set[str]:
        return {TRANSCRIPT}  # only the named file is read: what else is in its folder is not ours to judge

    async def read(self, name: str) -> Optional[bytes]:
        path = self.path if name == TRANSCRIPT else self.path.with_name(
            self.path.stem + ".sig" if name == SIGNATURE else name)
        return path.read_bytes() if path.is_file() else None


async def verify(package: Package, trusted_key: Optional[Ed25519PublicKey] = None) -> Report:
    """Check a sealed transcript; raises :class:`Problem` naming the first failure."""
    body = await package.read(TRANSCRIPT)
    if body is None:
        raise Problem(f"{TRANSCRIPT} is missing")
    signature = await package.read(SIGNATURE)
    if signature is None:
        raise Problem(f"{SIGNATURE} is missing")
    key = trusted_key
    shipped = await package.read(PUBLIC_KEY)
    if shipped is not None:
        try:
            shipped_key = load_public_pem(shipped)
        except ValueError:
            raise Problem(f"{PUBLIC_KEY} is not an Ed25519 public key") from None
        if trusted_key is not None and fingerprint(shipped_key) != fingerprint(trusted_key):
            raise Problem(f"{PUBLIC_KEY} is not the key you trust")
        key = key or shipped_key
    if key is None:
        raise Problem("no public key to check the signature with (give --key)")
    try:
        check_signature(key, body, signature)
    except Problem:
        raise Problem(f"{TRANSCRIPT}: the signature does not match "
                      "(the transcript was changed or signed by another key)") from None
    parsed = parse(body)
    check_chain(parsed["entries"], parsed.get("head"))
    extra = sorted(await package.names() - PACKAGE_FILES)
    if extra:
        raise Problem(f"{extra[0]} is not part of the signed transcript")
    consultation = parsed.get("consultation")
    return Report(str(consultation.get("id") if isinstance(consultation, dict) else None), len(parsed["entries"]),
                  fingerprint(key))


HOW_TO_VERIFY = """\
EVR chat transcript
===================

The in-call chat of consultation {consultation} (CAD {cad_ref}), sealed when it closed.
Downloaded {downloaded_at} by {by} for: {reason}

What is here
- transcript.json: every message in the order sent, with who sent it (role and
  name), when, and its text; each message carries the hash of the one before.
- transcript.sig: the Ed25519 signature of transcript.json's exact bytes.
- public_key.pem: the public key of the service that signed it. Its SHA-256
  fingerprint is {fingerprint}; compare it with the fingerprint your police
  force publishes before trusting it.

How to verify
1. With EVR installed:  evr chat verify THIS-ARCHIVE.zip
   (exit status 0 = intact; otherwise the first failure is named).
2. By hand: check the signature of transcript.json against public_key.pem
   (e.g. openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin
   -in transcript.json -sigfile transcript.sig).
"""


# -- the command line ---------------------------------------------------------------


def register(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    chat = commands.add_parser("chat", help="in-call chat transcripts")
    sub = chat.add_subparsers(dest="chat_command", required=True)
    check = sub.add_parser(
        "verify", help="check a sealed chat transcript's signature and hash chain",
        description="Check a downloaded transcript (.zip), an unpacked one (a folder, or its transcript.json "
                    "with transcript.sig beside it), or a consultation id's transcript in this service's "
                    "evidence store. Exit 0 when intact, 1 naming the first failure.")
    common(check)
    check.add_argument("target", metavar="DIR_OR_FILE", help="download .zip, folder, transcript.json, "
                                                             "or consultation id")
    check.add_argument("--key", type=Path, default=None, metavar="PEM",
                       help="the public key you trust (default: the one shipped in a download, "
                            "or this service's key for a stored transcript)")
    check.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_verify(args))
    except Problem as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"OK: the chat transcript of consultation {report.consultation_id} is intact: "
          f"{report.messages} message(s); signed by Ed25519 key {report.key_sha256}")
    return 0


async def _verify(args: argparse.Namespace) -> Report:
    trusted = None
    if args.key is not None:
        try:
            trusted = load_public_pem(args.key.read_bytes())
        except (OSError, ValueError) as exc:
            raise Problem(f"--key {args.key}: {exc}") from None
    target = Path(args.target)
    if target.is_file():
        return await verify(ZipPackage(target) if zipfile.is_zipfile(target) else FilePackage(target), trusted)
    if target.is_dir():
        return await verify(DirPackage(target), trusted)
    try:
        consultation_id = str(uuid.UUID(args.target))
    except ValueError:
        raise Problem(f"{args.target}: no such file, folder or consultation") from None
    return await _verify_stored(args, consultation_id, trusted)


async def _verify_stored(args: argparse.Namespace, consultation_id: str,
                         trusted: Optional[Ed25519PublicKey]) -> Report:
    """A consultation's transcript as kept in the evidence store, read through the
    store, checked with this service's key unless another is given."""
    from .cli import load_settings
    from .evidence import make_store
    from .keys import load_signing_key

    settings = load_settings(args)
    store = make_store(settings)
    try:
        if not await store.keys(prefix(consultation_id)):
            raise Problem(f"{consultation_id}: no sealed chat transcript in this service's evidence store")
        key = trusted or load_signing_key(settings, create=False).public_key()
        return await verify(StoredPackage(store, prefix(consultation_id)), key)
    finally:
        await store.close()
