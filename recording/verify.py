"""Verify a recording: an export archive, a folder, or a recording in the evidence store.

Checks, in order, stopping at the first failure: the manifest's Ed25519 signature
(against the key shipped with an export, a key given by the caller, or the service's
own key for a stored recording), the hash chain of its entries, then every segment's
presence, size and SHA-256, and that nothing else is in the package.

The packages and the first checks (:func:`check_signed`: the document, its signature
and the key, then its hash chain) serve every signed document of
:mod:`evr.recording.manifest`'s layout, a chat transcript's too
(:mod:`evr.transcripts`), so they are checked the one way.
"""

from __future__ import annotations

import hashlib
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from evr.evidence import EvidenceStore, ItemMissing
from evr.keys import fingerprint, load_public_pem

from . import manifest as mf
from .manifest import Problem

#: Files an export holds beside the segments.
PACKAGE_FILES = {mf.MANIFEST, mf.SIGNATURE, mf.PUBLIC_KEY, mf.README}
#: And a redacted copy, its original's manifest and signature, as signed.
SOURCE_MANIFEST = "source-manifest.json"
SOURCE_SIGNATURE = "source-manifest.sig"
#: Where a stored recording keeps copies derived from it (playback): not evidence.
DERIVED = "derived/"


class Package(ABC):
    """Named files of one signed document (a recording, a chat transcript)."""

    @abstractmethod
    async def names(self) -> set[str]: ...

    @abstractmethod
    async def read(self, name: str) -> Optional[bytes]:
        """The file's bytes, or None when it is missing."""


class ZipPackage(Package):
    """An export archive, or (``within``, a folder's name ending in ``/``) one folder of
    a larger archive: a disclosure bundle holds a package per item."""

    def __init__(self, path: Path, within: str = "", archive: Optional[zipfile.ZipFile] = None) -> None:
        self.within = within
        if archive is not None:
            self.zip = archive
            return
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise Problem(f"{path.name}: not a readable export archive ({exc})") from None

    async def names(self) -> set[str]:
        return {n[len(self.within):] for n in self.zip.namelist()
                if n.startswith(self.within) and not n.endswith("/")}

    async def read(self, name: str) -> Optional[bytes]:
        try:
            return self.zip.read(self.within + name)
        except KeyError:
            return None


class DirPackage(Package):
    def __init__(self, path: Path) -> None:
        self.path = path

    async def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.is_file() and not p.name.startswith(".")}

    async def read(self, name: str) -> Optional[bytes]:
        path = self.path / name
        return path.read_bytes() if path.is_file() else None


class StoredPackage(Package):
    """A signed document as kept in the evidence store (read through the store)."""

    def __init__(self, store: EvidenceStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    async def names(self) -> set[str]:
        names = (k[len(self.prefix):] for k in await self.store.keys(self.prefix))
        return {n for n in names if not n.startswith(DERIVED)}

    async def read(self, name: str) -> Optional[bytes]:
        try:
            return await self.store.read_bytes(self.prefix + name)
        except ItemMissing:
            return None


@dataclass(frozen=True)
class Source:
    """What a redacted copy was made from, checked: the original and the operations."""

    recording_id: str
    manifest_sha256: str
    operations: dict[str, Any]


@dataclass
class Report:
    recording_id: str
    segments: int
    gaps: int
    end_reason: str
    key_sha256: str
    manifest: dict[str, Any]
    #: For a redacted copy: its original, whose signed manifest was checked with it.
    source: Optional[Source] = None


def choose_key(shipped: Optional[bytes], trusted_key: Optional[Ed25519PublicKey]) -> Ed25519PublicKey:
    """The key a package is checked with: the one trusted, else the one it ships
    (``public_key.pem``), which must then be the same. :class:`Problem` otherwise."""
    key = trusted_key
    if shipped is not None:
        try:
            shipped_key = load_public_pem(shipped)
        except ValueError:
            raise Problem(f"{mf.PUBLIC_KEY} is not an Ed25519 public key") from None
        if trusted_key is not None and fingerprint(shipped_key) != fingerprint(trusted_key):
            raise Problem(f"{mf.PUBLIC_KEY} is not the key you trust")
        key = key or shipped_key
    if key is None:
        raise Problem("no public key to check the signature with (give --key)")
    return key


async def check_signed(package: Package, kind: mf.Kind,
                       trusted_key: Optional[Ed25519PublicKey] = None) -> tuple[dict[str, Any], Ed25519PublicKey]:
    """The parsed document of ``kind`` in ``package`` and the key it was checked with:
    present, signed (by the key trusted, else the one shipped, which must then be the
    same), of its format, its chain whole. Raises :class:`Problem` naming the first failure."""
    body = await package.read(kind.document)
    if body is None:
        raise Problem(f"{kind.document} is missing")
    signature = await package.read(kind.signature)
    if signature is None:
        raise Problem(f"{kind.signature} is missing")
    key = choose_key(await package.read(mf.PUBLIC_KEY), trusted_key)
    mf.check_signature(key, body, signature, kind)
    parsed = mf.parse(body, kind)
    mf.check_chain(parsed["entries"], parsed.get("head"), kind)
    return parsed, key


async def verify(package: Package, trusted_key: Optional[Ed25519PublicKey] = None) -> Report:
    """Check a recording; raises :class:`Problem` naming the first failure."""
    parsed, key = await check_signed(package, mf.RECORDING, trusted_key)
    entries = parsed["entries"]
    mf.check_end(entries)
    segments = mf.segments(entries)
    expected: list[str] = []
    for entry in segments:
        want = mf.segment_name(entry["seq"]) if isinstance(entry.get("seq"), int) else None
        if want is None or entry.get("file") != want or (expected and want <= expected[-1]):
            raise Problem(f"{mf.MANIFEST}: segment entry {entry.get('index')} names {entry.get('file')!r} "
                          "out of order")
        expected.append(want)
        data = await package.read(want)
        if data is None:
            raise Problem(f"segment {want} is missing")
        if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise Problem(f"segment {want} does not match its SHA-256 in the manifest (changed or swapped)")
    names = await package.names()
    described = parsed.get("recording")
    recording: dict[str, Any] = described if isinstance(described, dict) else {}
    allowed = PACKAGE_FILES
    source = None
    if recording.get("kind") == "redacted":
        source = await check_source(package, recording, segments, key)
        allowed = PACKAGE_FILES | {SOURCE_MANIFEST, SOURCE_SIGNATURE}
    extra = sorted(names - set(expected) - allowed)
    if extra:
        raise Problem(f"{extra[0]} is not part of the signed recording")
    return Report(
        recording_id=str(recording.get("id")),
        segments=len(segments),
        gaps=sum(1 for e in entries if e.get("type") == "gap"),
        end_reason=str(entries[-1].get("reason")),
        key_sha256=fingerprint(key),
        manifest=parsed,
        source=source,
    )


async def check_source(package: Package, recording: dict[str, Any], segments: list[dict[str, Any]],
                       key: Ed25519PublicKey) -> Source:
    """A redacted copy's provenance: the original's manifest shipped with it is the
    one the copy names (its SHA-256), signed by the same key, whole; every segment of
    the copy was made from one of the original's; the operations are named."""
    from .operations import parse as parse_operations

    named = recording.get("source")
    redaction = recording.get("redaction")
    if not isinstance(named, dict) or not isinstance(redaction, dict):
        raise Problem(f"{mf.MANIFEST}: a redacted copy that does not name its original and its operations")
    body = await package.read(SOURCE_MANIFEST)
    signature = await package.read(SOURCE_SIGNATURE)
    if body is None or signature is None:
        raise Problem(f"{SOURCE_MANIFEST if body is None else SOURCE_SIGNATURE} (the original's manifest) is missing")
    if hashlib.sha256(body).hexdigest() != named.get("manifest_sha256"):
        raise Problem(f"{SOURCE_MANIFEST}: not the original's manifest the copy names (its SHA-256 differs)")
    try:
        mf.check_signature(key, body, signature)
    except Problem:
        raise Problem(f"{SOURCE_MANIFEST}: the original's signature does not match") from None
    original = mf.parse(body)
    mf.check_chain(original["entries"], original.get("head"))
    mf.check_end(original["entries"])
    if not isinstance(original.get("recording"), dict) or original["recording"].get("id") != named.get("recording_id"):
        raise Problem(f"{SOURCE_MANIFEST}: it describes another recording than the copy names")
    sources = {e.get("sha256") for e in mf.segments(original["entries"])}
    for entry in segments:
        if entry.get("source_sha256") not in sources:
            raise Problem(f"{mf.MANIFEST}: segment {entry.get('file')} names no segment of the original")
    operations = redaction.get("operations")
    if not isinstance(operations, dict):
        raise Problem(f"{mf.MANIFEST}: the redaction names no operations")
    try:
        parse_operations(operations, None)
    except Exception:  # noqa: BLE001 - ApiError: the words of the check are what matter here
        raise Problem(f"{mf.MANIFEST}: the redaction's operations are not readable") from None
    return Source(str(named["recording_id"]), str(named["manifest_sha256"]), operations)


HOW_TO_VERIFY = """\
EVR recording export
====================

Recording {id}, consultation {consultation} (CAD {cad_ref}).
Exported {exported_at} by {by} for: {reason}

What is here
- seg-NNNNNN.webm: the original recording segments, exactly as captured (WebM,
  VP8 video and Opus audio). Play them in order, or together with any player
  that reads WebM (VLC, Firefox, Chrome).
- manifest.json: every segment's SHA-256, size and wall-clock start and end,
  every gap (pause, rejoin, network loss, server restart) with its reason, and
  the end of the recording; each entry carries the hash of the one before.
- manifest.sig: the Ed25519 signature of manifest.json's exact bytes.
- public_key.pem: the public key of the service that signed it. Its SHA-256
  fingerprint is {fingerprint}; compare it with the fingerprint your police
  force publishes before trusting it.

How to verify
1. With EVR installed:  evr recording verify THIS-ARCHIVE.zip
   (exit status 0 = intact; otherwise the first failure is named).
2. By hand: check the signature of manifest.json against public_key.pem
   (e.g. openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin
   -in manifest.json -sigfile manifest.sig), then compute the SHA-256 of each
   seg-NNNNNN.webm (sha256sum) and compare it with its entry in manifest.json.
"""

REDACTED_NOTE = """
This is a redacted copy
- It was made from recording {source}, whose manifest has SHA-256
  {source_sha256}: that manifest and its signature are here as
  source-manifest.json and source-manifest.sig. The original itself is
  unchanged and held by the force.
- manifest.json names every operation (ranges muted, boxes blurred or
  masked, faces blurred) and, for each segment, the SHA-256 of the original
  segment it was made from. Video was decoded and encoded again (VP8); sound
  outside the muted ranges is the original's, unchanged.
- evr recording verify checks the copy and its provenance (the original's
  manifest, its signature and the link of every segment to it).
"""
