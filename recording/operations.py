"""What a redaction does to a recording: mute ranges, boxes to blur or mask, faces.

One declaration, read in three places: the API checks a request against the recording
it names (:func:`parse`, before anything is queued), the redaction process applies it
(:mod:`evr.recording.redact`), and the redacted copy's signed manifest names it
(:meth:`Operations.json`), so what was asked, what ran and what the manifest says are
the same thing. Times are seconds from the recording's start (the recording's own
timeline, on which its segments' timestamps lie); a box is fractions of the frame
(x, y, width, height), so it means the same whatever the resolution of the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from evr.errors import ApiError

#: At most this many mute ranges and boxes in one request (an editor's worth).
MAX_OPERATIONS = 200
#: Box styles: ``blur`` (a strong blur: shapes go, colours stay) and ``mask`` (solid black).
STYLES = ("blur", "mask")


@dataclass(frozen=True)
class Span:
    """Seconds from the recording's start, ``start`` < ``end``."""

    start: float
    end: float

    def covers(self, seconds: float) -> bool:
        return self.start <= seconds < self.end

    def overlaps(self, start: float, end: float) -> bool:
        return start < self.end and self.start < end


@dataclass(frozen=True)
class Box:
    """A box over a span: x, y, width, height as fractions of the frame."""

    span: Span
    x: float
    y: float
    width: float
    height: float
    style: str = "blur"

    def pixels(self, frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels, grown outwards to whole pixels and
        clipped to the frame: a box never covers less than it was drawn over."""
        left = max(0, math.floor(self.x * frame_width))
        top = max(0, math.floor(self.y * frame_height))
        right = min(frame_width, math.ceil((self.x + self.width) * frame_width))
        bottom = min(frame_height, math.ceil((self.y + self.height) * frame_height))
        return left, top, right, bottom


@dataclass(frozen=True)
class Operations:
    mute: tuple[Span, ...] = ()
    boxes: tuple[Box, ...] = ()
    blur_faces: bool = False
    #: Faces are blurred over these spans only (empty: the whole recording).
    faces: tuple[Span, ...] = field(default=())

    def muted(self, start: float, end: float) -> bool:
        """Whether any of [start, end) is to be silent."""
        return any(span.overlaps(start, end) for span in self.mute)

    def boxes_at(self, seconds: float) -> list[Box]:
        return [box for box in self.boxes if box.span.covers(seconds)]

    def faces_at(self, seconds: float) -> bool:
        return self.blur_faces and (not self.faces or any(span.covers(seconds) for span in self.faces))

    def empty(self) -> bool:
        return not self.mute and not self.boxes and not self.blur_faces

    def json(self) -> dict[str, Any]:
        """The request's form (what the manifest names and the redaction process reads)."""
        return {
            "mute": [{"from": s.start, "to": s.end} for s in self.mute],
            "blur": [{"from": b.span.start, "to": b.span.end, "box": [b.x, b.y, b.width, b.height],
                      "style": b.style} for b in self.boxes],
            "blur_faces": self.blur_faces,
            **({"faces": [{"from": s.start, "to": s.end} for s in self.faces]} if self.faces else {}),
        }


def invalid(code: str, message: str, field_name: str) -> ApiError:
    return ApiError(422, code, message, fields=[field_name])


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid("invalid_time", f"{where} must be a number of seconds.", where.split("[")[0])
    return float(value)


def _span(item: Any, where: str, duration: Optional[float]) -> Span:
    if not isinstance(item, dict):
        raise invalid("invalid_range", f"{where} must be an object with \"from\" and \"to\".", where.split("[")[0])
    start, end = _seconds(item.get("from"), f"{where}.from"), _seconds(item.get("to"), f"{where}.to")
    if start < 0 or end <= start:
        raise invalid("invalid_range", f"{where}: \"from\" must be 0 or more and before \"to\".", where.split("[")[0])
    if duration is not None and end > duration + 0.001:
        raise invalid("range_past_end", f"{where} ends at {end:g} s, past the recording's end "
                                        f"({duration:.3f} s).", where.split("[")[0])
    return Span(start, end)


def _box(item: Any, where: str, duration: Optional[float]) -> Box:
    span = _span(item, where, duration)
    value = item.get("box")
    if not isinstance(value, list) or len(value) != 4:
        raise invalid("invalid_box", f"{where}.box must be [x, y, width, height] as fractions of the frame.", "blur")
    x, y, width, height = (_seconds(v, f"{where}.box") for v in value)
    if x < 0 or y < 0 or width <= 0 or height <= 0 or x + width > 1.000001 or y + height > 1.000001:
        raise invalid("box_outside_frame", f"{where}.box must lie inside the frame: x and y from 0, width and "
                                           "height above 0, x + width and y + height at most 1.", "blur")
    style = item.get("style", "blur")
    if style not in STYLES:
        raise invalid("invalid_style", f"{where}.style must be one of {', '.join(STYLES)}.", "blur")
    return Box(span, x, y, min(width, 1 - x), min(height, 1 - y), style)


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("invalid_operations", f"{name} must be a list.", name)
    if len(value) > MAX_OPERATIONS:
        raise invalid("too_many_operations", f"{name} holds more than {MAX_OPERATIONS} items.", name)
    return value


def parse(body: dict[str, Any], duration: Optional[float], *, has_video: bool = True,
          has_audio: bool = True) -> Operations:
    """The operations of a request (or of a manifest), checked against the recording's
    ``duration`` in seconds (None: not checked). 422 with a code naming what is wrong;
    a request that would change nothing is refused too."""
    mute = tuple(_span(item, f"mute[{n}]", duration) for n, item in enumerate(_list(body, "mute")))
    boxes = tuple(_box(item, f"blur[{n}]", duration) for n, item in enumerate(_list(body, "blur")))
    faces_flag = body.get("blur_faces", False)
    if not isinstance(faces_flag, bool):
        raise invalid("invalid_operations", "blur_faces must be true or false.", "blur_faces")
    faces = tuple(_span(item, f"faces[{n}]", duration) for n, item in enumerate(_list(body, "faces")))
    if (boxes or faces_flag) and not has_video:
        raise invalid("no_video", "This recording holds no video to blur.", "blur")
    if mute and not has_audio:
        raise invalid("no_audio", "This recording holds no sound to mute.", "mute")
    operations = Operations(mute, boxes, faces_flag, faces)
    if operations.empty():
        raise invalid("nothing_to_redact", "Give at least one range to mute, one box to blur, or blur_faces.",
                      "mute")
    return operations
