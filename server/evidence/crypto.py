"""Encryption at rest: AES-256-GCM in chunks, a data key per item, wrapped by a master key.

Every item in the evidence store is a *sealed container*::

    header   MAGIC (8) | master key id (8) | wrap nonce (12) | wrapped data key (32 + 16)
    records  length (4, big-endian) | salt (8) | final (1) | AES-256-GCM(data key, chunk) ...

The data key is random per item and wrapped (AES-256-GCM) by the master key with the
item's store key as associated data, so a container moved under another key does not
open. Each record holds up to :data:`CHUNK` bytes of plaintext; its nonce is its index
(4 bytes) and a random salt (8 bytes; a resumable upload may rewrite a record it
discarded, and must never reuse a nonce), and its associated data is the header and
the final flag, set on the last record only: records cannot be reordered, dropped,
swapped between items or cut off at the end without the reader noticing. Reading
streams record by record: memory stays constant whatever the size.

The master key (32 bytes) comes from configuration (``master_key``: base64, or the
path of a file holding it) or is generated under ``DATA/keys/`` at first start. Keep
it away from the content (another disk, a secrets manager): whoever has both can
read everything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..keys import write_private

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from ..config import Settings

MAGIC = b"EVRSEAL1"
KEY_BYTES = 32
TAG = 16
#: Plaintext bytes per record at most.
CHUNK = 1024 * 1024
HEADER_LEN = len(MAGIC) + 8 + 12 + KEY_BYTES + TAG
_PREFIX = struct.Struct(">I8s?")
DEFAULT_KEY_FILE = "keys/master-aes256.key"


class IntegrityError(ValueError):
    """A container does not open: wrong master key, or its bytes were altered."""


@dataclass(frozen=True)
class MasterKey:
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError("the master key must be 32 bytes (AES-256)")

    @property
    def id(self) -> bytes:
        """Which master key sealed a container (not secret: a hash prefix)."""
        return hashlib.sha256(b"evr-master-key-id:" + self.key).digest()[:8]

    def _wrap_aad(self, item_key: str) -> bytes:
        return MAGIC + self.id + item_key.encode()

    def new_header(self, item_key: str) -> tuple[bytes, AESGCM]:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        wrapped = AESGCM(self.key).encrypt(nonce, data_key, self._wrap_aad(item_key))
        return MAGIC + self.id + nonce + wrapped, AESGCM(data_key)

    def open_header(self, header: bytes, item_key: str) -> AESGCM:
        if len(header) != HEADER_LEN or header[: len(MAGIC)] != MAGIC:
            raise IntegrityError(f"{item_key}: not a sealed evidence container")
        key_id = header[len(MAGIC) : len(MAGIC) + 8]
        if key_id != self.id:
            raise IntegrityError(f"{item_key}: sealed with another master key (id {key_id.hex()})")
        nonce = header[len(MAGIC) + 8 : len(MAGIC) + 20]
        try:
            data_key = AESGCM(self.key).decrypt(nonce, header[len(MAGIC) + 20 :], self._wrap_aad(item_key))
        except InvalidTag:
            raise IntegrityError(
                f"{item_key}: the data key does not unwrap (altered, or moved from another key)") from None
        return AESGCM(data_key)


def _nonce(index: int, salt: bytes) -> bytes:
    return struct.pack(">I", index) + salt


def _aad(header: bytes, final: bool) -> bytes:
    return header + (b"\x01" if final else b"\x00")


class Sealer:
    """Seals plaintext chunks into records, one at a time (a new container, or one
    resumed after ``records`` records, e.g. a resumable upload after a restart)."""

    def __init__(self, master: MasterKey, item_key: str, header: Optional[bytes] = None, records: int = 0) -> None:
        if header is None:
            self.header, self._aead = master.new_header(item_key)
        else:
            self.header, self._aead = header, master.open_header(header, item_key)
        self.records = records

    def seal(self, plaintext: bytes, final: bool) -> bytes:
        if len(plaintext) > CHUNK:
            raise ValueError("a record holds at most CHUNK bytes")
        salt = secrets.token_bytes(8)
        sealed = self._aead.encrypt(_nonce(self.records, salt), plaintext, _aad(self.header, final))
        self.records += 1
        return _PREFIX.pack(len(sealed), salt, final) + sealed


def rechunk(chunks: Iterable[bytes], size: int = CHUNK) -> Iterator[tuple[bytes, bool]]:
    """Chunks of exactly ``size`` bytes (the last may be shorter, or empty for no
    input at all), each with whether it is the last."""
    buffer = bytearray()
    pending: Optional[bytes] = None
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            if pending is not None:
                yield pending, False
            pending = bytes(buffer[:size])
            del buffer[:size]
    if pending is not None:
        if not buffer:
            yield pending, True
            return
        yield pending, False
    yield bytes(buffer), True


def seal_stream(master: MasterKey, item_key: str, chunks: Iterable[bytes],
                on_plaintext: Callable[[bytes], None]) -> Iterator[bytes]:
    """The container of ``chunks`` (header, then one record per :data:`CHUNK`), calling
    ``on_plaintext`` with every plaintext chunk as it goes (hashing, counting)."""
    sealer = Sealer(master, item_key)
    yield sealer.header
    for chunk, final in rechunk(chunks):
        on_plaintext(chunk)
        yield sealer.seal(chunk, final)


def open_record(aead: AESGCM, header: bytes, index: int, salt: bytes, final: bool, sealed: bytes,
                item_key: str) -> bytes:
    try:
        return aead.decrypt(_nonce(index, salt), sealed, _aad(header, final))
    except InvalidTag:
        raise IntegrityError(f"{item_key}: record {index} was altered") from None


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Opener:
    """Reads a container from a binary stream and returns its plaintext record by record."""

    def __init__(self, master: MasterKey, item_key: str, f: BinaryIO) -> None:
        self.item_key = item_key
        self.f = f
        header = _read_exact(f, HEADER_LEN)
        self.header = header
        self._aead = master.open_header(header, item_key)
        self.index = 0
        self.done = False

    def next_chunk(self) -> Optional[bytes]:
        """The next record's plaintext; None after the last. Raises IntegrityError
        on any alteration, truncation or trailing bytes."""
        if self.done:
            return None
        head = _read_exact(self.f, _PREFIX.size)
        if len(head) != _PREFIX.size:
            raise IntegrityError(f"{self.item_key}: truncated (no final record)")
        length, salt, final = _PREFIX.unpack(head)
        if not TAG <= length <= CHUNK + TAG:
            raise IntegrityError(f"{self.item_key}: bad record length at record {self.index}")
        sealed = _read_exact(self.f, length)
        if len(sealed) != length:
            raise IntegrityError(f"{self.item_key}: truncated in record {self.index}")
        plaintext = open_record(self._aead, self.header, self.index, salt, final, sealed, self.item_key)
        self.index += 1
        if final:
            self.done = True
            if self.f.read(1):
                raise IntegrityError(f"{self.item_key}: bytes after the final record")
        return plaintext

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk


class SealedReader(io.RawIOBase):
    """A seekable, read-only view of a sealed file's plaintext (for PyAV and Pillow,
    which seek). Decrypts one record at a time; nothing is written in the clear."""

    def __init__(self, master: MasterKey, item_key: str, path: Path) -> None:
        super().__init__()
        self._f = open(path, "rb")
        try:
            opener = Opener(master, item_key, self._f)
            self._aead = opener._aead
            self._header = opener.header
            # Index the records: (file offset of the sealed bytes, sealed length,
            # plaintext start, salt, final).
            self._records: list[tuple[int, int, int, bytes, bool]] = []
            offset, start = HEADER_LEN, 0
            size = os.fstat(self._f.fileno()).st_size
            while offset < size:
                self._f.seek(offset)
                head = self._f.read(_PREFIX.size)
                if len(head) != _PREFIX.size:
                    raise IntegrityError(f"{item_key}: truncated")
                length, salt, final = _PREFIX.unpack(head)
                self._records.append((offset + _PREFIX.size, length, start, salt, final))
                offset += _PREFIX.size + length
                start += length - TAG
        except BaseException:
            self._f.close()
            raise
        self.item_key = item_key
        self.length = start
        self._pos = 0
        self._cached: tuple[int, bytes] = (-1, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _record(self, i: int) -> bytes:
        if self._cached[0] != i:
            offset, length, _, salt, final = self._records[i]
            if final != (i == len(self._records) - 1):
                raise IntegrityError(f"{self.item_key}: the final record is not last")
            self._f.seek(offset)
            sealed = self._f.read(length)
            self._cached = (i, open_record(self._aead, self._header, i, salt, final, sealed, self.item_key))
        return self._cached[1]

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._pos >= self.length:
            return 0
        i = self._find(self._pos)
        plain = self._record(i)
        start = self._records[i][2]
        # Released on return: the caller may resize a bytearray it lent (RawIOBase.read does).
        with memoryview(buffer) as raw, raw.cast("B") as view:
            piece = plain[self._pos - start : self._pos - start + len(view)]
            view[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def _find(self, pos: int) -> int:
        lo, hi = 0, len(self._records) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._records[mid][2] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def close(self) -> None:
        self._f.close()
        super().close()


# -- the master key ----------------------------------------------------------


def parse_master_key(value: str) -> MasterKey:
    """``master_key`` is base64 of 32 bytes, or the path of a file holding that."""
    text = value.strip()
    if Path(text).is_file():
        text = Path(text).read_text().strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("master_key must be base64 of 32 random bytes, or a file holding that") from None
    return MasterKey(raw)


def master_key_path(data_dir: Path) -> Path:
    """Where the master key is kept when none is configured: ``DATA/keys/master-aes256.key``."""
    return Path(data_dir) / DEFAULT_KEY_FILE


def load_master_key(settings: "Settings", create: bool = True) -> MasterKey:
    """The configured master key, else ``DATA/keys/master-aes256.key`` (made at first use)."""
    if settings.master_key:
        return parse_master_key(settings.master_key)
    return load_key_file(master_key_path(settings.data_dir), create)


def load_key_file(path: Path, create: bool = True) -> MasterKey:
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"master key {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_private(path, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
        except FileExistsError:  # made a moment ago by another process
            return load_key_file(path, create=False)
    return parse_master_key(str(path))
