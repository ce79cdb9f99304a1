"""Capture: one participant's encoded media remuxed into WebM segments, off the live path.

The event loop side (:class:`Recorder`) is a frame sink of the media bridge
(:class:`evr.media.bridge.FrameSink`): it sees every frame the room forwards. It
anchors each track to wall-clock arrival (RTP timestamps within a connection, the
arrival of a connection's first frame across connections), decides where segments
end and where gaps are, and hands packets to a writer thread through a bounded
queue. When the disk stalls the queue fills, frames are counted as dropped and a
``writer_stall`` gap is recorded: memory stays bounded.

The writer thread (:class:`SegmentWriter`) muxes packets with PyAV (no codec runs),
closes a segment when told, fsyncs and hashes it, and reports each closed segment,
gap and the end back to the loop in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Union

import av

from evr.media.passthrough import CLOCK_RATE, EncodedFrame

from .manifest import segment_name

log = logging.getLogger(__name__)

#: No packet for this long is a gap in the recording.
GAP_THRESHOLD = 1.0
#: Ask for a keyframe this long before a segment is due to end, and cut at it.
KEYFRAME_LEAD = 1.0
#: Matroska clusters are written out at least this often (ms): what a crash can lose
#: of the segment being written.
CLUSTER_MS = 1000
MS = Fraction(1, 1000)
#: How often an idle writer thread looks for packets.
POLL_SECONDS = 0.1
DEFAULT_SIZE = (640, 480)


@dataclass(frozen=True)
class Packet:
    kind: str
    data: bytes
    pts_ms: int
    keyframe: bool
    size: Optional[tuple[int, int]] = None


@dataclass(frozen=True)
class Cut:
    """End the current segment here (the next packet starts a new one)."""


@dataclass(frozen=True)
class Gap:
    reason: str
    #: Seconds since the recording's start.
    start_s: float
    end_s: float
    dropped_packets: int = 0


@dataclass(frozen=True)
class End:
    reason: str
    at_s: float


@dataclass(frozen=True)
class SegmentClosed:
    seq: int
    path: Path
    sha256: str
    size: int
    start_s: float
    end_s: float
    keyframe_start: bool
    packets: int
    recovered: bool = False


Event = Union[SegmentClosed, Gap, End]
EventSink = Callable[[Event], Awaitable[None]]


def vp8_size(data: bytes) -> Optional[tuple[int, int]]:
    """Width and height from a VP8 keyframe header (RFC 6386, 9.1)."""
    if len(data) < 10 or data[3:6] != b"\x9d\x01\x2a":
        return None
    return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class SegmentWriter:
    """Runs in its own thread: muxes packets into numbered segment files."""

    def __init__(self, directory: Path, report: Callable[[Event], None], first_seq: int = 1,
                 kinds: tuple[str, ...] = ("video", "audio")) -> None:
        self.directory = directory
        #: The streams of every segment: video and audio, or video alone (a screen).
        self.kinds = kinds
        self.report = report
        self.seq = first_seq - 1
        self.container: Optional[Any] = None
        self.streams: dict[str, Any] = {}
        self.path: Optional[Path] = None
        self.size = DEFAULT_SIZE
        self.first_ms: Optional[int] = None
        self.last_ms = 0
        self.keyframe_start = False
        self.packets = 0

    def run(self, items: "queue.Queue[Any]") -> None:
        while True:
            try:
                item = items.get_nowait()
            except queue.Empty:
                # Poll rather than block: a blocked reader is woken by every packet
                # put, and those wake-ups cost more than the muxing itself.
                time.sleep(POLL_SECONDS)
                continue
            try:
                if isinstance(item, Packet):
                    self.write(item)
                elif isinstance(item, Cut):
                    self.close_segment()
                elif isinstance(item, Gap):
                    self.close_segment()
                    self.report(item)
                elif isinstance(item, End):
                    self.close_segment()
                    self.report(item)
                    return
            except Exception:  # noqa: BLE001 - the recording must go on; the gap is reported
                log.exception("recording writer failed on %s", type(item).__name__)
                self.abandon()

    def open_segment(self, first: Packet) -> None:
        self.seq += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / segment_name(self.seq)
        container = av.open(str(self.path), "w", format="webm",
                            options={"cluster_time_limit": str(CLUSTER_MS)})
        width, height = first.size or self.size
        video = container.add_mux_stream("vp8", width=width, height=height)
        video.time_base = MS
        self.streams = {"video": video}
        if "audio" in self.kinds:
            audio = container.add_stream("libopus", rate=CLOCK_RATE["audio"], layout="stereo")
            audio.time_base = MS
            self.streams["audio"] = audio
        container.start_encoding()
        self.container = container
        self.first_ms = first.pts_ms
        self.keyframe_start = first.kind == "video" and first.keyframe
        self.packets = 0

    def write(self, item: Packet) -> None:
        if item.size:
            self.size = item.size
        if self.container is None:
            self.open_segment(item)
        assert self.container is not None
        packet = av.Packet(item.data)
        packet.pts = packet.dts = item.pts_ms
        packet.time_base = MS
        packet.stream = self.streams[item.kind]
        if item.keyframe and item.kind == "video":
            packet.is_keyframe = True
        self.container.mux(packet)
        self.packets += 1
        self.last_ms = max(self.last_ms, item.pts_ms + (20 if item.kind == "audio" else 33))

    def close_segment(self) -> None:
        if self.container is None or self.path is None:
            return
        container, path = self.container, self.path
        self.container = None
        container.close()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sha256, size = hash_file(path)
        self.report(SegmentClosed(self.seq, path, sha256, size, (self.first_ms or 0) / 1000,
                                  self.last_ms / 1000, self.keyframe_start, self.packets))

    def abandon(self) -> None:
        """After a write error: drop the container; the next packet opens a new segment."""
        container, self.container = self.container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass
            self.close_segment_file_after_error()

    def close_segment_file_after_error(self) -> None:
        if self.path is not None and self.path.exists():
            sha256, size = hash_file(self.path)
            self.report(SegmentClosed(self.seq, self.path, sha256, size, (self.first_ms or 0) / 1000,
                                      self.last_ms / 1000, self.keyframe_start, self.packets))


@dataclass
class _Anchor:
    """Maps one connection's RTP timestamps of one kind to recording time."""

    base_s: float
    last_rtp: int
    ext: int = 0


@dataclass
class Recorder:
    """The event-loop side of one participant's recording: the bridge's
    :class:`~evr.media.bridge.FrameSink` (``on_frame``, ``on_gap``, ``on_close``)."""

    recording_id: str
    directory: Path
    sink: EventSink
    request_keyframe: Callable[[], None]
    segment_seconds: float = 10.0
    max_queued: int = 1500
    #: What it records: ``("video", "audio")`` of a camera, ``("video",)`` of a screen.
    kinds: tuple[str, ...] = ("video", "audio")
    first_seq: int = 1
    t0: Optional[float] = None
    last_arrival: Optional[float] = None
    pending_reason: Optional[str] = None
    dropped: int = 0
    dropped_since: Optional[float] = None
    segment_started: Optional[float] = None
    keyframe_asked: bool = False
    await_keyframe: bool = True
    anchors: dict[tuple[int, str], _Anchor] = field(default_factory=dict)
    last_pts: dict[str, int] = field(default_factory=lambda: {"audio": -1, "video": -1})
    finished: bool = False
    #: The peer connection the last frame came on.
    connection: object = None

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.items: "queue.Queue[Any]" = queue.Queue(maxsize=self.max_queued)
        self.events: "asyncio.Queue[Event]" = asyncio.Queue()
        self.writer = SegmentWriter(self.directory, self._report, self.first_seq, self.kinds)
        self.thread = threading.Thread(target=self.writer.run, args=(self.items,),
                                       name=f"recording-{self.recording_id[:8]}", daemon=True)
        self.thread.start()
        # Owned here: finish() awaits it; _deliver() logs and survives a failing event.
        self.task = self.loop.create_task(self._deliver(), name=f"recording {self.recording_id}: store events")

    # -- loop side ------------------------------------------------------------

    def on_gap(self, reason: str) -> None:
        """Why the next gap (if any) happens: pause, rejoin, disconnected."""
        self.pending_reason = reason

    def on_frame(self, kind: str, frame: EncodedFrame, connection: object) -> None:
        """Take one frame (on the loop, on the live path: it only queues for the writer)."""
        if self.finished or kind not in self.kinds:
            return
        now = frame.arrival
        if self.t0 is None:
            self.t0 = now
        if self.last_arrival is not None and now - self.last_arrival > GAP_THRESHOLD:
            self._gap(self.pending_reason or "network_loss", self.last_arrival, now)
        self.last_arrival = now
        self.pending_reason = None
        if connection is not self.connection:  # a rejoin, however quick: restart at a keyframe
            self.connection = connection
            self.await_keyframe = True
            self.anchors.clear()
        if self.dropped_since is not None and not self._stall_over(now):
            self._dropped(now)
            return
        if kind == "video" and self.await_keyframe:
            if not frame.is_keyframe:
                self.request_keyframe()
                return
            self.await_keyframe = False
        if self.segment_started is None:
            self.segment_started = now
        elapsed = now - self.segment_started
        if elapsed >= self.segment_seconds - KEYFRAME_LEAD and not self.keyframe_asked:
            self.keyframe_asked = True
            self.request_keyframe()
        if (kind == "video" and frame.is_keyframe and elapsed >= self.segment_seconds - KEYFRAME_LEAD) or (
            elapsed >= self.segment_seconds
        ):
            self._cut(now)
        pts_ms = self._pts_ms(kind, frame, connection, now)
        size = vp8_size(frame.data) if kind == "video" and frame.is_keyframe else None
        if not self._put(Packet(kind, frame.data, pts_ms, frame.is_keyframe, size)):
            self._dropped(now)

    def _pts_ms(self, kind: str, frame: EncodedFrame, connection: object, now: float) -> int:
        assert self.t0 is not None
        wall_s = now - self.t0
        key = (id(connection), kind)
        anchor = self.anchors.get(key)
        if anchor is None:
            anchor = self.anchors[key] = _Anchor(wall_s, frame.pts)
        else:
            anchor.ext += (frame.pts - anchor.last_rtp + (1 << 31)) % (1 << 32) - (1 << 31)
            anchor.last_rtp = frame.pts
        media_s = anchor.base_s + anchor.ext / CLOCK_RATE[kind]
        if abs(media_s - wall_s) > GAP_THRESHOLD:  # the sender's clock jumped: re-anchor
            self.anchors[key] = _Anchor(wall_s, frame.pts)
            media_s = wall_s
        pts = max(int(media_s * 1000), self.last_pts[kind] + 1)
        self.last_pts[kind] = pts
        return pts

    def _put(self, item: Any) -> bool:
        try:
            self.items.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _cut(self, now: float) -> None:
        if self._put(Cut()):
            self.segment_started = now
            self.keyframe_asked = False

    def _gap(self, reason: str, start: float, end: float) -> None:
        assert self.t0 is not None
        if self._put(Gap(reason, start - self.t0, end - self.t0)):
            self._after_gap()
        else:
            self._dropped(start)

    def _after_gap(self) -> None:
        """The next segment starts afresh: at a video keyframe, with new anchors."""
        self.segment_started = None
        self.keyframe_asked = False
        self.await_keyframe = True
        self.anchors.clear()

    def _dropped(self, now: float) -> None:
        self.dropped += 1
        if self.dropped_since is None:
            self.dropped_since = now
            log.warning("recording %s: the disk is not keeping up; dropping media", self.recording_id)

    def _stall_over(self, now: float) -> bool:
        """After drops: record the stall as a gap once the queue has room again."""
        assert self.t0 is not None and self.dropped_since is not None
        if not self._put(Gap("writer_stall", self.dropped_since - self.t0, now - self.t0, self.dropped)):
            return False
        log.warning("recording %s: the disk caught up; %d packets were dropped", self.recording_id, self.dropped)
        self.dropped_since, self.dropped = None, 0
        self._after_gap()
        return True

    async def on_close(self, reason: str) -> None:
        """End the recording: flush, close the last segment, wait for every event."""
        if self.finished:
            await asyncio.shield(self.task)
            return
        self.finished = True
        at = (time.monotonic() - self.t0) if self.t0 is not None else 0.0
        end = End(reason, at)
        await asyncio.to_thread(self.items.put, end)  # waits for room when the queue is full
        await asyncio.shield(self.task)

    # -- events back from the writer, in order -----------------------------------

    def _report(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def _deliver(self) -> None:
        while True:
            event = await self.events.get()
            try:
                await self.sink(event)
            except Exception:  # noqa: BLE001 - keep delivering: later entries must still land
                log.exception("recording %s: storing %s failed", self.recording_id, type(event).__name__)
            if isinstance(event, End):
                return
