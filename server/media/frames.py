"""Whole encoded frames from RTP packets, for the recording only: pure, no aiortc state.

The live path forwards packets (:mod:`evr.media.passthrough`); a recording wants
frames. aiortc's jitter buffer would make them, but only in its own receive path (a
queue and a task per packet, a 128-slot buffer scanned per packet) and only when the
next frame starts, a frame interval late. An assembler here is given each packet
after it has been forwarded and costs a few dictionary operations per packet:

- :class:`Vp8Frames` (RFC 7741): the packets of one timestamp, from the one that
  starts partition 0 (S bit, PID 0) to the one with the marker bit, with no sequence
  number missing between, are one frame; their payloads without descriptors,
  joined. Frames are given out whole and in timestamp order, each as soon as every
  older one has been: a frame missing a packet, or one that does not start right
  after the last frame given out (a whole frame lost between), holds the newer ones
  back while the repair (a retransmission the live path asked for) can still come, up to
  :data:`MAX_PENDING_FRAMES` frames; then it is given up (:attr:`Vp8Frames.dropped`
  counts it, and the caller asks for a keyframe: the frames after a lost one cannot
  be decoded without one). A packet of a frame already given out or given up is
  ignored.
- :class:`OpusFrames`: each Opus packet is a frame (RFC 7587).

Both bound what they keep, so a hostile or broken sender cannot grow them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .rtp import SEQ_MOD, TS_MOD, vp8_descriptor_size, vp8_is_keyframe, vp8_partition_start

#: Frames kept waiting at most: an incomplete frame holds newer ones back until this
#: many are waiting (about half a second of video at 30 fps: time for a retransmission
#: over a slow mobile link), then it is given up.
MAX_PENDING_FRAMES = 16
#: Packets kept for one frame at most (a 1080p keyframe at 1200 bytes a packet is
#: well under this).
MAX_FRAME_PACKETS = 1024


@dataclass(slots=True)
class Frame:
    """One encoded frame as the sender's RTP timestamp dates it."""

    timestamp: int
    data: bytes
    keyframe: bool


def _newer(a: int, b: int) -> bool:
    """RTP timestamp ``a`` is after ``b`` (RFC 3550's modular comparison)."""
    return 0 < (a - b) % TS_MOD < TS_MOD // 2


def _behind(a: int, b: int) -> int:
    """How far timestamp ``a`` is behind ``b`` (negative: ahead)."""
    distance = (b - a) % TS_MOD
    return distance if distance < TS_MOD // 2 else distance - TS_MOD


class _Partial:
    """The packets of one VP8 frame seen so far."""

    __slots__ = ("packets", "first", "last")

    def __init__(self) -> None:
        #: Sequence number -> the packet's payload without its descriptor.
        self.packets: dict[int, bytes] = {}
        #: The sequence numbers of the frame's first and last packets, once seen.
        self.first: Optional[int] = None
        self.last: Optional[int] = None

    def whole(self) -> Optional[bytes]:
        first, last = self.first, self.last
        if first is None or last is None:
            return None
        count = (last - first) % SEQ_MOD + 1
        if count > len(self.packets):
            return None
        packets = self.packets
        parts = []
        for i in range(count):
            part = packets.get((first + i) % SEQ_MOD)
            if part is None:
                return None
            parts.append(part)
        return b"".join(parts)


class Vp8Frames:
    """Assembles VP8 frames from one RTP stream's packets (see the module docstring)."""

    def __init__(self) -> None:
        self._pending: dict[int, _Partial] = {}
        #: The timestamp of the last frame given out or given up.
        self._last: Optional[int] = None
        #: The sequence number the next frame starts at (None: not known).
        self._next: Optional[int] = None
        #: Frames given up for a packet that never came.
        self.dropped = 0

    def add(self, sequence_number: int, timestamp: int, marker: int, payload: bytes) -> list[Frame]:
        """Take one packet; the frames that are now whole and next in order (usually
        none or one; several when a repair completes a frame that held others back)."""
        if self._last is not None and not _newer(timestamp, self._last):
            return []  # a frame already given out (or given up)
        size = vp8_descriptor_size(payload)
        if size < 0 or size >= len(payload):
            return []  # no VP8 data in it
        partial = self._pending.get(timestamp)
        if partial is None:
            partial = self._pending[timestamp] = _Partial()
        if len(partial.packets) >= MAX_FRAME_PACKETS:
            return []
        partial.packets[sequence_number] = payload[size:]
        if vp8_partition_start(payload):
            partial.first = sequence_number
        if marker:
            partial.last = sequence_number
        return self._ready(timestamp)

    def _ready(self, newest: int) -> list[Frame]:
        frames = []
        while self._pending:
            oldest = max(self._pending, key=lambda ts: _behind(ts, newest))
            partial = self._pending[oldest]
            data = partial.whole()
            # Whole, and right after the last frame given out (no frame lost between)?
            follows = self._next is None or partial.first == self._next
            if (data is None or not follows) and len(self._pending) <= MAX_PENDING_FRAMES:
                break  # its repair may still come
            del self._pending[oldest]
            self._last = oldest
            if data is None:
                self.dropped += 1
                self._next = None  # start again at the next whole frame
                continue
            if not follows:
                self.dropped += 1  # a frame (or its end) was lost before this one
            assert partial.last is not None  # whole: it has its last packet
            self._next = (partial.last + 1) % SEQ_MOD
            frames.append(Frame(oldest, data, vp8_is_keyframe(data)))
        return frames


class OpusFrames:
    """Opus: every packet is one frame (RFC 7587, 4.2)."""

    dropped = 0

    def add(self, sequence_number: int, timestamp: int, marker: int, payload: bytes) -> list[Frame]:
        return [Frame(timestamp, payload, True)] if payload else []


def assembler(kind: str) -> "Vp8Frames | OpusFrames":
    """The assembler for a stream of ``kind`` (``audio`` or ``video``)."""
    return OpusFrames() if kind == "audio" else Vp8Frames()
