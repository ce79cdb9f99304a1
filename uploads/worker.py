"""Previews and embedded metadata of uploads, read in a worker process of their own.

Images and videos from outside are the most hostile input EVR parses (Pillow,
libavformat, libavcodec). A 10 KB PNG can declare 8900x8900 pixels and a 1 MB AVI a
8192x8192 frame: decoded inside the server, each took it from 335 MB to 1.2 GB and
most of that stayed; and a decoder bug would run in the process that holds the master
key. So the server (:class:`Inspector`) never decodes an upload: for each one it starts
a worker, ``python -m evr.uploads.worker``, that reads the metadata and makes the
preview (:func:`evr.uploads.content.inspect`).

- **Limits.** The worker limits itself before it reads a byte of the file: address
  space (``upload_preview_memory_mb``, ``RLIMIT_AS``), CPU seconds, no core dump (it
  would hold plaintext), no file written (``RLIMIT_FSIZE`` 0). The server runs at most
  ``upload_preview_workers`` at once and kills one (by its own handle) after
  ``upload_preview_timeout`` seconds. Before decoding, the worker refuses an image or
  frame of more than ``upload_preview_max_pixels`` (see :mod:`.content`).
- **One process per upload.** Nothing of one victim's file stays in a process that
  reads the next one, and a worker that dies takes no other job with it; the next
  upload gets a fresh worker. Starting one costs about 0.1 s.
- **No key, no path, no plaintext on disk.** The file is sealed in staging; the server
  holds the seekable decrypting view of it (:class:`evr.evidence.crypto.SealedReader`)
  and answers the worker's reads over a pipe ("N bytes at offset P", at most
  :data:`MAX_READ` each). Pillow and PyAV seek, so the worker reads through a seekable
  file (:class:`RemoteFile`) backed by those answers. Passing the item's data key
  instead would let the worker open the file itself, but a worker taken over by a
  crafted file would then hold a key (and with the master key, every key); this way it
  holds only the plaintext it was asked to look at. The worker gets no ``EVR_*`` or
  cloud credentials in its environment and no inherited descriptors.
- **Its answers are untrusted too.** Length-prefixed frames of JSON and bytes, never
  pickle (unpickling would run a taken-over worker's code in the server), bounded in
  size, parsed with :func:`evr.text.parse_json`; the preview must be a JPEG (it is
  served inline, ``nosniff``).
- **Evidence first.** The metadata is sent before anything is decoded, so a worker
  that dies while decoding still leaves it. Whatever happens here the upload is kept;
  :attr:`Inspection.skipped` says why it has no preview.

Frames: ``kind`` (1 byte) and length (4 bytes, big-endian), then the payload. The
server sends ``J`` (the job), then ``D`` (data) for each read; the worker sends ``J``
(``{"read": [pos, n]}``, ``{"meta": {...}}``, ``{"done": {"skipped": ...}}``) and
``P`` (the preview JPEG) before ``done``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import struct
import sys
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

from ..text import TextError, clean_header, parse_json
from .content import Inspection

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">cI")
#: Largest read the server answers at once.
MAX_READ = 1024 * 1024
#: Largest JSON frame and preview the server takes from a worker.
MAX_JSON = 1024 * 1024
MAX_PREVIEW = 1024 * 1024
#: The worker's exit status when it ran out of its address space.
EXIT_MEMORY = 3
#: Environment variables a worker keeps (no EVR_* settings, keys or cloud credentials).
_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT")


class WorkerFault(Exception):
    """The worker broke the protocol: its answer is not used."""


def worker_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ}


# -- the server's side -----------------------------------------------------------


class Inspector:
    """Runs :func:`evr.uploads.content.inspect` for uploads in worker processes."""

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(max(1, settings.upload_preview_workers))
        self._running: set[asyncio.subprocess.Process] = set()

    async def inspect(self, f: BinaryIO | io.RawIOBase, length: int, content_type: str, preview: bool) -> Inspection:
        """Metadata and a preview of the plaintext ``f`` (a seekable view of ``length``
        bytes, read only in threads); never raises for what the file holds."""
        settings = self.settings
        job = {"content_type": content_type, "preview": preview, "length": length,
               "max_pixels": settings.upload_preview_max_pixels, "memory_mb": settings.upload_preview_memory_mb,
               "cpu_seconds": int(settings.upload_preview_timeout) + 5}
        found = Inspection({})
        async with self._slots:
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-B", "-m", "evr.uploads.worker", stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=worker_environment(),
                    cwd="/", close_fds=True)
            except OSError as exc:  # out of processes or memory: the upload is kept all the same
                log.error("could not start an upload preview worker: %s", exc)
                found.skipped = "The preview process could not start: no preview."
                return found
            self._running.add(proc)
            try:
                await asyncio.wait_for(self._converse(proc, f, length, job, found), settings.upload_preview_timeout)
                await _stop(proc, grace=2.0)  # it exits after its answer
            except asyncio.TimeoutError:
                found.skipped = ("Reading this file for a preview took longer than "
                                 f"{settings.upload_preview_timeout:g} s; stopped: no preview.")
            except WorkerFault as exc:
                log.warning("upload preview worker misbehaved (%s); stopped", exc)
                found.meta, found.preview = {}, None  # nothing it said is used
                found.skipped = "The preview process answered wrongly and was stopped: no preview."
            except (asyncio.IncompleteReadError, ConnectionError):  # it died
                code = await _stop(proc, grace=2.0)
                found.preview, found.skipped = None, (
                    f"Making the preview needed more memory than allowed ({settings.upload_preview_memory_mb} MiB):"
                    " no preview." if code == EXIT_MEMORY else
                    f"The preview process stopped ({_exit_text(code)}): no preview.")
                log.info("upload preview worker stopped (%s)", _exit_text(code))
            finally:
                await _stop(proc, grace=0.0)
                self._running.discard(proc)
        return found

    async def _converse(self, proc: asyncio.subprocess.Process, f: BinaryIO | io.RawIOBase, length: int,
                        job: dict[str, Any], found: Inspection) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        stdin.write(_frame(b"J", json.dumps({"job": job}).encode()))
        await stdin.drain()
        preview: Optional[bytes] = None
        while True:
            kind, size = _FRAME.unpack(await stdout.readexactly(_FRAME.size))
            if kind == b"P":
                if size > MAX_PREVIEW:
                    raise WorkerFault("preview too large")
                preview = await stdout.readexactly(size)
                if not preview.startswith(b"\xff\xd8\xff"):
                    raise WorkerFault("preview is not a JPEG")
                continue
            if kind != b"J" or size > MAX_JSON:
                raise WorkerFault(f"unexpected frame {kind!r} of {size} bytes")
            try:
                message = parse_json((await stdout.readexactly(size)).decode("utf-8"))
            except (TextError, UnicodeDecodeError):
                raise WorkerFault("not JSON") from None
            if not isinstance(message, dict) or len(message) != 1:
                raise WorkerFault("not a message")
            if "read" in message:
                pos, n = _read_request(message["read"])
                data = await asyncio.to_thread(_read_at, f, pos, min(n, MAX_READ, max(0, length - pos)))
                stdin.write(_frame(b"D", data))
                await stdin.drain()
            elif "meta" in message and isinstance(message["meta"], dict):
                found.meta = message["meta"]
            elif "done" in message and isinstance(message["done"], dict):
                skipped = message["done"].get("skipped")
                found.preview = preview
                found.skipped = clean_header(skipped, 300) if isinstance(skipped, str) else None
                return
            else:
                raise WorkerFault("unknown message")

    async def close(self) -> None:
        """Stop the workers still running (the server is stopping), and reap them."""
        await asyncio.gather(*(_stop(proc, grace=0.0) for proc in list(self._running)), return_exceptions=True)


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> int:
    """The worker's exit status, once it has exited (killed after ``grace`` seconds).
    Killing only a worker still running: signalling one that exited but was not yet
    waited for would reap it under asyncio's child watcher, which then loses its status."""
    if proc.returncode is None and grace > 0:
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            pass
    if proc.returncode is None:
        proc.kill()
    return await proc.wait()


def _read_request(value: Any) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise WorkerFault("bad read request")
    return value[0], value[1]


def _read_at(f: BinaryIO | io.RawIOBase, pos: int, n: int) -> bytes:
    if n <= 0:
        return b""
    f.seek(pos)
    parts, got = [], 0
    while got < n:
        data = f.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _FRAME.pack(kind, len(payload)) + payload


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit status {code}"


# -- the worker's side ------------------------------------------------------------


class Channel:
    """The worker's end of the pipe: frames on stdin and stdout."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self.reader, self.writer = reader, writer

    def send(self, kind: bytes, payload: bytes) -> None:
        self.writer.write(_frame(kind, payload))
        self.writer.flush()

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(b"J", json.dumps(message).encode())

    def receive(self, expected: bytes) -> bytes:
        head = self.reader.read(_FRAME.size)
        if len(head) != _FRAME.size:
            raise EOFError("the server went away")
        kind, size = _FRAME.unpack(head)
        payload = self.reader.read(size)
        if kind != expected or len(payload) != size:
            raise EOFError("unexpected frame from the server")
        return payload


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file of ``length`` bytes whose reads the server answers."""

    def __init__(self, channel: Channel, length: int) -> None:
        super().__init__()
        self.channel, self.length, self.pos = channel, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), MAX_READ, self.length - self.pos)
        if want <= 0:
            return 0
        self.channel.send_json({"read": [self.pos, want]})
        data = self.channel.receive(b"D")
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _limit(memory_mb: int, cpu_seconds: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write to a file fails instead of killing
    memory = memory_mb * 1024 * 1024
    for name, value in (("RLIMIT_AS", memory), ("RLIMIT_CPU", cpu_seconds), ("RLIMIT_CORE", 0), ("RLIMIT_FSIZE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))


def main() -> None:
    """The worker: one job from stdin, answers on stdout, then exit."""
    import av  # noqa: F401  (the decoders load before the limits)
    from PIL import Image

    from . import content

    channel = Channel(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    Image.init()  # every image plugin imported now, before the limits
    Image.MAX_IMAGE_PIXELS = None  # the pixel cap below is checked before decoding instead
    job = json.loads(channel.receive(b"J"))["job"]
    _limit(int(job["memory_mb"]), int(job["cpu_seconds"]))
    try:
        source = io.BufferedReader(RemoteFile(channel, int(job["length"])), buffer_size=MAX_READ)
        found = content.inspect(source, job["content_type"], bool(job["preview"]), int(job["max_pixels"]),
                                report=lambda meta: channel.send_json({"meta": meta}))
        if found.preview is not None:
            channel.send(b"P", found.preview)
        channel.send_json({"done": {"skipped": found.skipped}})
    except MemoryError:
        os._exit(EXIT_MEMORY)


if __name__ == "__main__":
    main()
