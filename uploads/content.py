"""What an upload is: its type from its content, a safe file name, its embedded
metadata (EXIF, media streams) and a preview.

Type detection (libmagic, on the first MiB) runs in the server. Metadata and previews
(:func:`inspect`: Pillow and PyAV, the decoders a hostile file aims at) run only in the
worker process of :mod:`evr.uploads.worker`, on a seekable view of the plaintext that
the server serves it from the sealed file: nothing is written in the clear. Before
decoding, the pixels to decode are counted (an image's width x height after a JPEG's
reduced decoding, a video's frame size from its header) and nothing past
``max_pixels`` is decoded: a 10 KB PNG can declare 8900x8900 pixels.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, BinaryIO, Callable, Optional

import magic

from ..text import storable, strip_bidi

log = logging.getLogger(__name__)

#: Evidence types (detected from content): images, video, audio, PDF, office
#: documents and zip (CCTV exports). Never SVG, HTML, scripts or executables.
DEFAULT_ALLOWED = (
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif", "image/avif",
    "image/tiff", "image/bmp", "image/x-ms-bmp",
    "video/*", "audio/*",
    "application/pdf",
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint", "application/vnd.ms-office",
    "application/vnd.openxmlformats-officedocument.*", "application/vnd.oasis.opendocument.*",
    "application/rtf", "text/rtf",
    "application/zip",
)
#: Bytes of the start of a file that type detection looks at.
SNIFF_BYTES = 1024 * 1024
PREVIEW_SIZE = (320, 320)
#: A video's first picture is looked for in at most this many packets.
MAX_PREVIEW_PACKETS = 64
#: Longest metadata text value kept (EXIF comments, container tags).
MAX_META_TEXT = 1000

_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*\ufffd]+')


def allowed_types(setting: str) -> tuple[str, ...]:
    configured = tuple(t.strip().lower() for t in setting.split(",") if t.strip())
    return configured or DEFAULT_ALLOWED


def is_allowed(content_type: str, allowed: tuple[str, ...]) -> bool:
    return any(fnmatchcase(content_type.lower(), pattern) for pattern in allowed)


def detect(head: bytes) -> str:
    """The MIME type libmagic finds in the first bytes of a file."""
    if not head:
        return "application/x-empty"
    return magic.from_buffer(head, mime=True) or "application/octet-stream"


def sanitise_filename(name: Optional[str], fallback: str = "upload") -> str:
    """A name safe to show and to offer in Content-Disposition: no directories, no
    control, bidi (``gpj.exe`` shown as ``exe.jpg``) or reserved characters, no
    leading dots, at most 200 characters (the extension kept)."""
    name = strip_bidi(unicodedata.normalize("NFC", name or ""))
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("_", name)
    name = " ".join(name.split()).strip(" .")
    if not name or set(name) <= {"_", "."}:
        return fallback
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        name = name[: 200 - len(ext) - 1].rstrip(" .") + ("." + ext if ext else "")
    return name



def inspectable(content_type: str) -> bool:
    """Whether :func:`inspect` reads this type (images, video, audio)."""
    return content_type.startswith(("image/", "video/", "audio/"))


@dataclass
class Inspection:
    """What :func:`inspect` found: metadata, a small JPEG, and why there is none."""

    meta: dict[str, Any]
    preview: Optional[bytes] = None
    #: Why an image or video got no preview (None when it has one, or none was asked).
    skipped: Optional[str] = None


def _text(value: str) -> str:
    """Metadata text as stored and shown (:func:`evr.text.storable`), bounded; the NUL
    padding of fixed-size EXIF fields dropped."""
    return storable(value.rstrip("\x00"))[:MAX_META_TEXT]


def _plain(value: Any) -> Any:
    """EXIF values as JSON: numbers, text, lists; bytes as short hex."""
    if isinstance(value, bytes):
        return value[:64].hex()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value[:64]]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (int, bool)) or value is None:
        return value
    try:
        number = float(value)  # IFDRational
    except (TypeError, ValueError, ZeroDivisionError):
        return _text(str(value))
    return number if number == number and abs(number) != float("inf") else None  # JSON has no NaN


def _exif(image: Any, may_decode: bool) -> dict[str, Any]:
    from PIL import ExifTags

    if image.format == "PNG" and "exif" not in image.info and not may_decode:
        return {}  # Pillow decodes a whole PNG to look for EXIF after its pixels
    exif = image.getexif()
    found: dict[str, Any] = {}
    for ifd_id, tags in ((None, exif), (ExifTags.IFD.Exif, None), (ExifTags.IFD.GPSInfo, None)):
        if ifd_id is not None:
            try:
                tags = exif.get_ifd(ifd_id)
            except Exception:  # a damaged IFD: keep what else there is
                continue
        names = ExifTags.GPSTAGS if ifd_id == ExifTags.IFD.GPSInfo else ExifTags.TAGS
        for tag, value in (tags or {}).items():
            if tag in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
                continue
            key = names.get(tag, f"0x{tag:04x}") if isinstance(tag, int) else _text(str(tag))
            if ifd_id == ExifTags.IFD.GPSInfo and not key.startswith("GPS"):
                key = "GPS" + key
            found[key] = _plain(value)
    return found


def _jpeg(image: Any) -> bytes:
    """A small JPEG of an image no larger than the decoding cap."""
    from PIL import ImageOps

    image.thumbnail(PREVIEW_SIZE)  # decodes (draft already applied), then reduces
    image = ImageOps.exif_transpose(image).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def inspect_image(f: BinaryIO, preview: bool, max_pixels: int,
                  report: Callable[[dict[str, Any]], None]) -> Inspection:
    from PIL import Image

    with Image.open(f) as image:  # reads the header only
        width, height = image.size
        meta: dict[str, Any] = {"format": image.format, "width": width, "height": height}
        report(meta)  # before anything that may decode
        exif = _exif(image, may_decode=width * height <= max_pixels)
        if exif:
            meta["exif"] = exif
            report(meta)
        if not preview:
            return Inspection(meta)
        # JPEG decodes at 1/2 to 1/8 scale when asked: a 200 MP photo costs 3 MP.
        image.draft("RGB", (PREVIEW_SIZE[0] * 2, PREVIEW_SIZE[1] * 2))
        if image.width * image.height > max_pixels:
            return Inspection(meta, skipped=f"Image too large to preview ({width}x{height} pixels).")
        return Inspection(meta, _jpeg(image))


def inspect_media(f: BinaryIO, preview: bool, max_pixels: int,
                  report: Callable[[dict[str, Any]], None]) -> Inspection:
    import av

    # Opening reads the container's headers; no frame is decoded yet.
    with av.open(f, mode="r", metadata_errors="replace") as container:
        meta: dict[str, Any] = {
            "format": container.format.name,
            "duration_s": round(container.duration / 1_000_000, 3) if container.duration else None,
            "tags": {_text(str(k)): _text(str(v)) for k, v in list((container.metadata or {}).items())[:100]},
            "streams": [
                {"type": s.type, "codec": s.codec_context.name if s.codec_context else None,
                 **({"width": s.codec_context.width, "height": s.codec_context.height}
                    if isinstance(s.codec_context, av.VideoCodecContext) else {})}
                for s in list(container.streams)[:32]
            ],
        }
        report(meta)
        if not preview or not container.streams.video:
            return Inspection(meta)
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None:
            return Inspection(meta, skipped="No decoder for this video format: no preview.")
        width, height = codec.width, codec.height
        if not width or not height:
            return Inspection(meta, skipped="The video does not say its frame size: no preview.")
        if width * height > max_pixels:
            return Inspection(meta, skipped=f"Video too large to preview ({width}x{height} pixels).")
        # A frame larger than the header said is refused by libavcodec itself.
        codec.options = {"max_pixels": str(max_pixels)}
        codec.thread_count = 1
        for count, packet in enumerate(container.demux(stream)):
            if count >= MAX_PREVIEW_PACKETS:
                break
            for frame in packet.decode():
                return Inspection(meta, _jpeg(frame.to_image()))
        return Inspection(meta, skipped=f"No picture in the first {MAX_PREVIEW_PACKETS} packets: no preview.")


def inspect(f: BinaryIO, content_type: str, preview: bool, max_pixels: int,
            report: Callable[[dict[str, Any]], None] = lambda meta: None) -> Inspection:
    """Embedded metadata (given to ``report`` as it is read, before any decoding) and,
    when ``preview``, a small JPEG (an image's thumbnail or a video's first frame) of at
    most ``max_pixels`` decoded. A file it cannot read gets neither
    and a reason; ``MemoryError`` is left to the caller (the worker's limit)."""
    seen: dict[str, Any] = {}

    def keep(meta: dict[str, Any]) -> None:
        seen.update(meta)
        report(meta)

    kind = "an image" if content_type.startswith("image/") else "a video or audio file"
    try:
        if content_type.startswith("image/"):
            return inspect_image(f, preview, max_pixels, keep)
        if content_type.startswith(("video/", "audio/")):
            return inspect_media(f, preview, max_pixels, keep)
    except MemoryError:
        raise
    except Exception as exc:  # damaged or exotic files are still evidence
        log.info("no metadata or preview for a %s upload: %s", content_type, type(exc).__name__)
        return Inspection(seen, skipped=f"The file could not be read as {kind} (damaged or unsupported): no preview."
                          if preview else None)
    return Inspection({})
