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

A transcript is the recording manifest's document of another kind (:data:`CHAT`), so
it is built, parsed, stored, checked and verified on the command line by the very
code that does it for recordings (:mod:`evr.recording.manifest`,
:mod:`evr.recording.verify`, :mod:`evr.recording.cli`); only what a chat has of its
own is here: its names and words, where it is kept and what a download holds.
"""

from __future__ import annotations

import argparse
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .keys import fingerprint
from .recording import manifest
from .recording.cli import add_target, check_target, outcome, verify_parser
from .recording.manifest import Problem
from .recording.verify import Package, ZipPackage, check_signed

FORMAT = "evr-chat/1"
TRANSCRIPT = "transcript.json"
SIGNATURE = "transcript.sig"
PUBLIC_KEY = "public_key.pem"
README = "HOW-TO-VERIFY.txt"
#: What a download holds.
PACKAGE_FILES = {TRANSCRIPT, SIGNATURE, PUBLIC_KEY, README}
CHAT = manifest.Kind(FORMAT, TRANSCRIPT, SIGNATURE, "transcript", "consultation", "message", "messages")


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
    return manifest.build(consultation, entries, key_fingerprint, CHAT)


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
    parsed, key = await check_signed(package, CHAT, trusted_key)
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
    check = verify_parser(
        commands, common, "chat", "in-call chat transcripts",
        "check a sealed chat transcript's signature and hash chain",
        "Check a downloaded transcript (.zip), an unpacked one (a folder, or its transcript.json "
        "with transcript.sig beside it), or a consultation id's transcript in this service's "
        "evidence store. Exit 0 when intact, 1 naming the first failure.")
    add_target(check, "DIR_OR_FILE", "download .zip, folder, transcript.json, or consultation id",
               "the public key you trust (default: the one shipped in a download, "
               "or this service's key for a stored transcript)")
    check.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    return outcome(_verify(args))


async def _verify(args: argparse.Namespace) -> list[str]:
    report = await check_target(args, verify, _stored, _open_file)
    return [f"OK: the chat transcript of consultation {report.consultation_id} is intact: "
            f"{report.messages} message(s); signed by Ed25519 key {report.key_sha256}"]


def _open_file(path: Path) -> Package:
    return ZipPackage(path) if zipfile.is_zipfile(path) else FilePackage(path)


async def _stored(settings: Any, store: Any, target: str) -> str:
    """Where a consultation's sealed transcript is in this service's evidence store."""
    try:
        consultation_id = str(uuid.UUID(target))
    except ValueError:
        raise Problem(f"{target}: no such file, folder or consultation") from None
    if not await store.keys(prefix(consultation_id)):
        raise Problem(f"{consultation_id}: no sealed chat transcript in this service's evidence store")
    return prefix(consultation_id)
