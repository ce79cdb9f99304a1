"""What an upload is: its type from its content, a safe file name, its embedded
metadata (EXIF, media streams) and a preview. Works on a seekable decrypting view of
the sealed file: nothing is written in the clear."""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from fnmatch import fnmatchcase
from typing import Any, BinaryIO, Optional

import av
import magic
from PIL import ExifTags, Image, ImageOps

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
#: Images larger than this (pixels) get no preview (decompression bombs).
MAX_PREVIEW_PIXELS = 80_000_000

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
    control or reserved characters, no leading dots, at most 200 characters (the
    extension kept)."""
    name = unicodedata.normalize("NFC", name or "")
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


def _plain(value: Any) -> Any:
    """EXIF values as JSON: numbers, text, lists; bytes as short hex."""
    if isinstance(value, bytes):
        return value[:64].hex()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    try:
        return float(value)  # IFDRational
    except (TypeError, ValueError, ZeroDivisionError):
        return str(value)


def _exif(image: Image.Image) -> dict[str, Any]:
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
            key = names.get(tag, f"0x{tag:04x}")
            found[("GPS" + key if ifd_id == ExifTags.IFD.GPSInfo and not key.startswith("GPS") else key)] = _plain(value)
    return found


def _jpeg(image: Image.Image) -> bytes:
    image = image.convert("RGB")
    image.thumbnail(PREVIEW_SIZE)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def inspect_image(f: BinaryIO, preview: bool) -> tuple[dict[str, Any], Optional[bytes]]:
    with Image.open(f) as image:
        meta: dict[str, Any] = {"format": image.format, "width": image.width, "height": image.height}
        exif = _exif(image)
        if exif:
            meta["exif"] = exif
        thumbnail = None
        if preview and image.width * image.height <= MAX_PREVIEW_PIXELS:
            image.draft("RGB", (PREVIEW_SIZE[0] * 2, PREVIEW_SIZE[1] * 2))  # JPEG: decode small
            thumbnail = _jpeg(ImageOps.exif_transpose(image))
    return meta, thumbnail


def inspect_media(f: BinaryIO, preview: bool) -> tuple[dict[str, Any], Optional[bytes]]:
    with av.open(f, mode="r") as container:
        meta: dict[str, Any] = {
            "format": container.format.name,
            "duration_s": round(container.duration / 1_000_000, 3) if container.duration else None,
            "tags": {str(k): str(v) for k, v in (container.metadata or {}).items()},
            "streams": [
                {"type": s.type, "codec": s.codec_context.name if s.codec_context else None,
                 **({"width": s.codec_context.width, "height": s.codec_context.height} if s.type == "video" else {})}
                for s in container.streams
            ],
        }
        thumbnail = None
        if preview and container.streams.video:
            for frame in container.decode(video=0):
                thumbnail = _jpeg(frame.to_image())
                break
    return meta, thumbnail


def inspect(f: BinaryIO, content_type: str, preview: bool) -> tuple[dict[str, Any], Optional[bytes]]:
    """Embedded metadata and, when ``preview``, a small JPEG (an image's thumbnail or
    a video's first frame). Never fails: a file it cannot read gets neither."""
    try:
        if content_type.startswith("image/"):
            return inspect_image(f, preview)
        if content_type.startswith(("video/", "audio/")):
            return inspect_media(f, preview)
    except Exception as exc:  # damaged or exotic files are still evidence
        log.info("no metadata or preview for a %s upload: %s", content_type, exc)
    return {}, None
