"""Redaction's media engine: a recording's segments re-encoded with boxes blurred or
masked, faces blurred and ranges muted, on the recording's own timeline.

A redacted copy is disclosed in place of the original (to a defence team, to the
public), so what it hides must be gone from its bytes, not merely hidden by a player:
every video frame is decoded, the boxes and faces are drawn over in its YUV planes
(pixelated then blurred, or solid black) and the frame is encoded afresh. Nothing
else changes: each segment becomes one output segment with the same timestamps
(milliseconds since the recording's start), the same container (WebM) and codecs
(VP8, Opus), so the copy plays, joins (:mod:`evr.recording.playback`) and is hashed
and signed like the original. Sound outside every mute range is copied bit for bit;
a packet touching a mute range is swapped for encoded silence of the same length at
the same time, so audio and video stay together. Silence therefore covers a range
rounded out to whole packets (20 ms from a browser); what remains of the range's
edges is the codec's 2.5 ms overlap into the packet before, and after it the decoder
takes a few packets to come back up to the sound's level (never above it).

A frame whose size changes mid-segment (a phone turned) is scaled to the segment's
first size: one WebM stream has one size, and the next segment starts afresh at the
new one.

One VP8 decoder runs across the segments, as the recording was one stream (a segment
written after a crash may not start with a keyframe; frames that cannot be decoded
before the first keyframe are dropped and counted). Each output segment gets a fresh
encoder, so each starts with a keyframe and plays on its own.

The engine holds no keys and touches no database: the server runs it in a child
process (``python -m evr.recording.redact``) under memory limits, reading a JSON job
on stdin and answering JSON lines on stdout. It works frame by frame, so its memory
does not grow with the recording's length.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import av
import cv2
import numpy as np

from .operations import Box, Operations, Span, parse

MS = Fraction(1, 1000)
#: Matroska clusters at least this often (ms), as the recorder writes them.
CLUSTER_MS = 1000
#: How the recorder counts a segment's end: its last packet's start plus this (ms).
PACKET_MS = {"audio": 20, "video": 33}
#: The re-encode's bitrate follows the source's, within these bounds (bits/s).
MIN_BITRATE, MAX_BITRATE = 200_000, 2_500_000
#: What Opus takes of a camera segment's bytes, left out of the video's estimate.
AUDIO_BITRATE_GUESS = 40_000
#: A blur's pixelation: blocks of at least BLOCK pixels of luma, and about CELLS blocks
#: across the box's shorter side, then smoothed over two blocks. Finer is not enough: with
#: 6 blocks across a face's box OpenCV's own face detectors still find a face in most
#: frames; with 4 and the smoothing, none (tests/test_redact_media.py).
BLOCK = 8
CELLS = 4
#: Faces: looked for every this many ms of media, in the luma scaled to this width, at
#: sizes from FACE_MIN pixels of that (48 pixels of a 640-pixel frame: a face across a
#: room) up, each size FACE_STEP times the last. Haar cascades cost most on the small
#: sizes and on busy pictures: these keep a face search within about a third of one
#: core per second of media.
FACE_EVERY_MS = 150
FACE_WIDTH = 320
FACE_MIN = 24
FACE_STEP = 1.2
#: A face is blurred for this long after it was last seen (a missed detection, a turn
#: of the head, never unblurs it) ...
FACE_HOLD_MS = 700
#: ... over its detected box grown by this fraction of its size on each side.
FACE_MARGIN = 0.25
#: A detection continues a tracked face when their boxes overlap this much (IoU).
FACE_IOU = 0.2
#: progress() is called at most this often (seconds of wall time).
PROGRESS_EVERY = 0.25

#: Exit statuses of the child process.
EXIT_FAILED = 1
EXIT_CANCELLED = 3


class Cancelled(Exception):
    """The redaction was stopped on request; no output is left behind."""


class RedactionFailed(Exception):
    """The sources cannot be redacted; the message is a plain sentence for a person."""


@dataclass(frozen=True)
class Segment:
    """One source segment and where its redacted copy goes. ``start_ms`` and
    ``end_ms`` are its span on the recording's timeline (what progress counts)."""

    path: Path
    output: Path
    start_ms: int
    end_ms: int


@dataclass
class SegmentResult:
    """What was written for one segment (times in ms on the recording's timeline;
    ``last_ms`` is the end as the recorder counts it: the last packet's start plus
    20 ms of audio or 33 ms of video)."""

    output: Path
    packets: int = 0
    first_ms: Optional[int] = None
    last_ms: Optional[int] = None
    #: The output's video starts with a keyframe (or it holds no video).
    keyframe_start: bool = True
    video_frames: int = 0
    frames_with_faces: int = 0
    muted_packets: int = 0
    #: Source frames that could not be decoded (before the first keyframe, or corrupt).
    dropped_frames: int = 0

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output)}


def _no_progress(fraction: float, eta: Optional[float]) -> None:
    pass


def _never() -> bool:
    return False


# -- pictures ------------------------------------------------------------------


def _pixelate(region: np.ndarray, block: int) -> None:
    """Replace ``region`` (a view into a plane) by block averages, then smooth them over
    two blocks: shapes and text go, the colours stay. Irreversible: each block keeps one
    number for all its pixels. Only the region's own pixels are read (nothing from
    outside bleeds in) and only they are written."""
    height, width = region.shape
    if height == 0 or width == 0:
        return
    small = cv2.resize(region, (max(1, -(-width // block)), max(1, -(-height // block))),
                       interpolation=cv2.INTER_AREA)
    blocks = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    kernel = (min(2 * block, width), min(2 * block, height))
    region[...] = cv2.blur(blocks, kernel, borderType=cv2.BORDER_REPLICATE)


def _cover(planes: tuple[np.ndarray, np.ndarray, np.ndarray], rect: tuple[int, int, int, int], style: str) -> None:
    """Draw over ``rect`` (left, top, right, bottom in luma pixels) of a yuv420p picture."""
    left, top, right, bottom = rect
    if right <= left or bottom <= top:
        return
    y, u, v = planes
    # Chroma is half the resolution: its box grows outwards to cover every luma pixel.
    c_rect = (left // 2, top // 2, -(-right // 2), -(-bottom // 2))
    if style == "mask":
        y[top:bottom, left:right] = 16
        u[c_rect[1]:c_rect[3], c_rect[0]:c_rect[2]] = 128
        v[c_rect[1]:c_rect[3], c_rect[0]:c_rect[2]] = 128
        return
    block = max(BLOCK, -(-min(right - left, bottom - top) // CELLS))
    _pixelate(y[top:bottom, left:right], block)
    for plane in (u, v):
        _pixelate(plane[c_rect[1]:c_rect[3], c_rect[0]:c_rect[2]], max(2, block // 2))


def _planes(picture: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a yuv420p picture as PyAV's to_ndarray lays it out."""
    quarter = height // 4
    u = picture[height:height + quarter].reshape(height // 2, width // 2)
    v = picture[height + quarter:height + 2 * quarter].reshape(height // 2, width // 2)
    return picture[:height], u, v


# -- faces -----------------------------------------------------------------------


@dataclass
class _Track:
    #: left, top, right, bottom as fractions of the frame (sizes may change).
    box: tuple[float, float, float, float]
    seen_ms: int


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@dataclass
class Faces:
    """Finds faces every :data:`FACE_EVERY_MS` of media with OpenCV's Haar cascades and
    keeps each face blurred until it has been unseen for :data:`FACE_HOLD_MS`. The
    frontal cascade runs every time; the profile one (which costs twice as much) every
    other time, on the picture and on its mirror in turn (it knows faces turned one way
    only), so a face in profile is looked for at least every 4 x 150 ms, within the hold.
    The cascades ship inside the opencv wheel: nothing is fetched, nothing leaves the
    machine."""

    tracks: list[_Track] = field(default_factory=list)
    last_ms: Optional[int] = None
    runs: int = 0

    def __post_init__(self) -> None:
        cv2.setNumThreads(1)
        base = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
        self.frontal = cv2.CascadeClassifier(str(base / "haarcascade_frontalface_alt2.xml"))
        self.profile = cv2.CascadeClassifier(str(base / "haarcascade_profileface.xml"))
        if self.frontal.empty() or self.profile.empty():
            raise RedactionFailed("The face detector could not be loaded.")

    def due(self, t_ms: int) -> bool:
        return self.last_ms is None or t_ms - self.last_ms >= FACE_EVERY_MS or t_ms < self.last_ms

    def detect(self, luma: np.ndarray, t_ms: int) -> None:
        """Look for faces in ``luma`` (the Y plane) and update the tracks."""
        self.last_ms = t_ms
        height, width = luma.shape
        scale = min(1.0, FACE_WIDTH / width)
        small = luma if scale == 1.0 else cv2.resize(luma, (round(width * scale), round(height * scale)),
                                                     interpolation=cv2.INTER_AREA)
        small = cv2.equalizeHist(small)
        sw, sh = small.shape[1], small.shape[0]
        found: list[tuple[float, float, float, float]] = []
        size = (FACE_MIN, FACE_MIN)
        for x, y, w, h in self.frontal.detectMultiScale(small, FACE_STEP, 3, minSize=size):
            found.append((x / sw, y / sh, (x + w) / sw, (y + h) / sh))
        if self.runs % 2 == 0:
            mirrored = self.runs % 4 == 2
            for x, y, w, h in self.profile.detectMultiScale(cv2.flip(small, 1) if mirrored else small, FACE_STEP,
                                                            3, minSize=size):
                if mirrored:
                    x = sw - x - w
                found.append((x / sw, y / sh, (x + w) / sw, (y + h) / sh))
        self.runs += 1
        for box in found:
            best = max(self.tracks, key=lambda track: _iou(track.box, box), default=None)
            if best is not None and _iou(best.box, box) >= FACE_IOU:
                best.box, best.seen_ms = box, t_ms
            else:
                self.tracks.append(_Track(box, t_ms))

    def boxes(self, t_ms: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The faces to blur at ``t_ms``, in pixels, grown by :data:`FACE_MARGIN`."""
        self.tracks = [t for t in self.tracks if 0 <= t_ms - t.seen_ms <= FACE_HOLD_MS]
        rects = []
        for track in self.tracks:
            x0, y0, x1, y1 = track.box
            mx, my = (x1 - x0) * FACE_MARGIN, (y1 - y0) * FACE_MARGIN
            grown = Box(Span(0, 1), x0 - mx, y0 - my, x1 - x0 + 2 * mx, y1 - y0 + 2 * my)
            rects.append(grown.pixels(width, height))
        return rects


# -- sound -------------------------------------------------------------------------


def opus_samples(data: bytes) -> Optional[int]:
    """Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716, 3.1)."""
    if not data:
        return None
    config, code = data[0] >> 3, data[0] & 3
    if config < 12:
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:
        frame = (480, 960)[config % 2]
    else:
        frame = (120, 240, 480, 960)[config % 4]
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(data) < 2:
        return None
    else:
        frames = data[1] & 0x3F
    return frame * frames if 0 < frame * frames <= 5760 else None


class Silence:
    """Opus packets of silence of any length: zeros encoded by libopus (a CELT frame of
    2.5 to 20 ms), repeated in one packet (code 3, RFC 6716 3.2.5) to the length asked."""

    def __init__(self, channels: int) -> None:
        self.channels = max(1, min(2, channels))
        self.frames: dict[int, bytes] = {}

    def _frame(self, samples: int) -> bytes:
        """One code 0 packet of ``samples`` of silence (TOC byte first)."""
        if samples not in self.frames:
            codec = av.CodecContext.create("libopus", "w")
            codec.sample_rate = 48000
            codec.layout = "stereo" if self.channels == 2 else "mono"
            codec.format = "s16"
            codec.bit_rate = 32000
            codec.options = {"frame_duration": f"{samples / 48:g}"}
            packets: list[bytes] = []
            for n in range(3):  # past the encoder's start-up: a steady silent frame
                frame = av.AudioFrame.from_ndarray(np.zeros((1, samples * self.channels), np.int16), format="s16",
                                                   layout="stereo" if self.channels == 2 else "mono")
                frame.sample_rate = 48000
                frame.pts = n * samples
                packets.extend(bytes(p) for p in codec.encode(frame))
            if not packets or packets[-1][0] & 3 != 0:
                raise RedactionFailed("Silence could not be encoded.")
            self.frames[samples] = packets[-1]
        return self.frames[samples]

    def packet(self, samples: int) -> bytes:
        for size in (960, 480, 240, 120):
            if samples % size == 0 and samples // size <= 48:
                frame = self._frame(size)
                count = samples // size
                if count == 1:
                    return frame
                return bytes([frame[0] | 3, count]) + frame[1:] * count
        return self._frame(960)


# -- the engine --------------------------------------------------------------------


class _Progress:
    def __init__(self, segments: list[Segment], report: Callable[[float, Optional[float]], None]) -> None:
        self.total = sum(max(1, s.end_ms - s.start_ms) for s in segments)
        self.before = 0
        self.report = report
        self.started = time.monotonic()
        self.last = 0.0

    def at(self, segment: Segment, t_ms: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        span = max(1, segment.end_ms - segment.start_ms)
        fraction = min(1.0, (self.before + min(span, max(0, t_ms - segment.start_ms))) / self.total)
        elapsed = now - self.started
        self.report(fraction, elapsed * (1 - fraction) / fraction if fraction > 0.001 else None)

    def finished(self, segment: Segment) -> None:
        self.before += max(1, segment.end_ms - segment.start_ms)


def _is_keyframe(packet: av.Packet) -> bool:
    """From the VP8 frame tag (RFC 6386, 9.1): bit 0 clear is a keyframe."""
    return packet.size > 0 and memoryview(packet)[0] & 1 == 0


@dataclass
class _Recording:
    """What lasts across a recording's segments: the decoder and the faces."""

    operations: Operations
    cancelled: Callable[[], bool]
    progress: _Progress
    decoder: Any = None
    keyed: bool = False
    faces: Optional[Faces] = None
    silence: Optional[Silence] = None
    video_packets: int = 0
    decoded: int = 0

    def decode(self, packet: av.Packet, result: SegmentResult) -> Iterator[tuple[Any, bool]]:
        """Frames of a video packet, with whether the source frame was a keyframe."""
        self.video_packets += 1
        keyframe = _is_keyframe(packet)
        if not keyframe and not self.keyed:
            result.dropped_frames += 1
            return
        if self.decoder is None:
            self.decoder = av.CodecContext.create("vp8", "r")
            self.decoder.thread_count = 1
        try:
            frames = self.decoder.decode(packet)
        except av.FFmpegError:
            result.dropped_frames += 1
            return
        self.keyed = self.keyed or keyframe
        for frame in frames:
            self.decoded += 1
            yield frame, keyframe


def _open_source(path: Path, number: int) -> Any:
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, OSError) as e:
        raise RedactionFailed(f"Segment {number} of the recording could not be read as a WebM file.") from e


def _bitrate(segment: Segment, has_audio: bool, duration_s: float) -> int:
    seconds = (segment.end_ms - segment.start_ms) / 1000 if segment.end_ms > segment.start_ms else duration_s
    if seconds <= 0:
        return MAX_BITRATE // 2
    rate = segment.path.stat().st_size * 8 / seconds - (AUDIO_BITRATE_GUESS if has_audio else 0)
    return int(min(MAX_BITRATE, max(MIN_BITRATE, rate)))


def _partial(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _redact_segment(segment: Segment, number: int, state: _Recording) -> SegmentResult:
    operations = state.operations
    result = SegmentResult(segment.output)
    source = _open_source(segment.path, number)
    partial = _partial(segment.output)
    output: Any = None
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        video_in = next((s for s in source.streams if s.type == "video"), None)
        audio_in = next((s for s in source.streams if s.type == "audio"), None)
        if video_in is None and audio_in is None:
            raise RedactionFailed(f"Segment {number} of the recording holds neither video nor sound.")
        output = av.open(str(partial), "w", format="webm",  # bitexact: no random segment id, no date
                         options={"cluster_time_limit": str(CLUSTER_MS), "fflags": "+bitexact"})
        video_out = audio_out = None
        width = height = 0
        if video_in is not None:
            width = (video_in.codec_context.width or 640) & ~1
            height = (video_in.codec_context.height or 480) & ~1
            video_out = output.add_stream("libvpx", rate=30)
            video_out.width, video_out.height, video_out.pix_fmt = width, height, "yuv420p"
            duration = float(source.duration / av.time_base) if source.duration else 0.0
            video_out.bit_rate = _bitrate(segment, audio_in is not None, duration)
            video_out.time_base = MS
            codec = video_out.codec_context
            codec.time_base = MS
            codec.thread_count = 1
            codec.gop_size = 300
            # A negative cpu-used fixes libvpx's speed; a positive one lets VP8's realtime
            # mode pick it (4 to 16) by timing frames against the wall clock, so the
            # bytes, and the CPU spent, would depend on how busy the machine was.
            codec.options = {"deadline": "realtime", "cpu-used": "-8", "lag-in-frames": "0", "auto-alt-ref": "0"}
        if audio_in is not None:
            audio_out = output.add_stream_from_template(audio_in)
            audio_out.time_base = MS
            if state.silence is None:
                state.silence = Silence(audio_in.codec_context.channels or 2)
        first_video: Optional[bool] = None

        def mux(packets: Any, kind: str) -> None:
            nonlocal first_video
            for packet in packets:
                ms = int(packet.pts)
                if kind == "video" and first_video is None:
                    first_video = bool(packet.is_keyframe)
                result.packets += 1
                result.first_ms = ms if result.first_ms is None else min(result.first_ms, ms)
                end = ms + PACKET_MS[kind]
                result.last_ms = end if result.last_ms is None else max(result.last_ms, end)
                output.mux(packet)

        for packet in _demux(source):
            if state.cancelled():
                raise Cancelled()
            if packet.pts is None or packet.size == 0:
                continue
            ms = int(packet.pts * packet.time_base * 1000)
            state.progress.at(segment, ms)
            if video_in is not None and video_out is not None and packet.stream.index == video_in.index:
                for frame, keyframe in state.decode(packet, result):
                    picture = _redact_frame(frame, ms, width, height, operations, state, result)
                    picture.pts, picture.time_base = ms, MS
                    picture.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
                    result.video_frames += 1
                    mux(video_out.encode(picture), "video")
            elif audio_in is not None and audio_out is not None and packet.stream.index == audio_in.index:
                mux([_audio(packet, ms, audio_out, operations, state, result)], "audio")
        if video_out is not None:
            mux(video_out.encode(None), "video")
        result.keyframe_start = first_video is not False
        output.close()
        output = None
        os.replace(partial, segment.output)
        return result
    finally:
        source.close()
        if output is not None:
            try:
                output.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file goes below
                pass
        partial.unlink(missing_ok=True)


def _demux(source: Any) -> Iterator[av.Packet]:
    """The source's packets; a segment cut short (a crash while it was written) ends
    where its readable data ends."""
    packets = source.demux()
    while True:
        try:
            packet = next(packets)
        except (StopIteration, av.FFmpegError):
            return
        yield packet


def _redact_frame(frame: Any, t_ms: int, width: int, height: int, operations: Operations, state: _Recording,
                  result: SegmentResult) -> Any:
    """The picture to encode for one decoded frame: at the segment's size, boxes and faces drawn over."""
    if frame.width != width or frame.height != height or frame.format.name != "yuv420p":
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    seconds = t_ms / 1000
    boxes = operations.boxes_at(seconds)
    faces = operations.faces_at(seconds)
    if not boxes and not faces:
        return frame
    picture = frame.to_ndarray()
    planes = _planes(picture, width, height)
    rects: list[tuple[int, int, int, int]] = []
    if faces:
        if state.faces is None:
            state.faces = Faces()
        if state.faces.due(t_ms):  # on the picture as it came: a box over half a face hides only half
            state.faces.detect(planes[0], t_ms)
        rects = state.faces.boxes(t_ms, width, height)
        result.frames_with_faces += bool(rects)
    for box in boxes:
        _cover(planes, box.pixels(width, height), box.style)
    for rect in rects:
        _cover(planes, rect, "blur")
    return av.VideoFrame.from_ndarray(picture, format="yuv420p")


def _audio(packet: av.Packet, ms: int, stream: Any, operations: Operations, state: _Recording,
           result: SegmentResult) -> av.Packet:
    """The packet itself outside every mute range; inside, silence of its length at its time."""
    data = bytes(packet)
    samples = opus_samples(data) or 960
    if not operations.muted(ms / 1000, (ms + samples / 48) / 1000):
        packet.pts = packet.dts = ms
        packet.time_base = MS
        packet.stream = stream
        return packet
    assert state.silence is not None
    result.muted_packets += 1
    silent = av.Packet(state.silence.packet(samples))
    silent.pts = silent.dts = ms
    silent.time_base = MS
    silent.duration = samples // 48
    silent.stream = stream
    return silent


def redact(inputs: list[Segment], operations: Operations,
           progress: Callable[[float, Optional[float]], None] = _no_progress,
           cancelled: Callable[[], bool] = _never) -> list[SegmentResult]:
    """Redact a recording's segments (in order) into their outputs. Raises
    :class:`Cancelled` when ``cancelled()`` turns true and :class:`RedactionFailed`
    when a source cannot be read; either way no output is left behind."""
    cv2.setNumThreads(1)  # one core's worth, wherever it runs: the server's CPU is for calls
    state = _Recording(operations, cancelled, _Progress(inputs, progress))
    results: list[SegmentResult] = []
    try:
        for number, segment in enumerate(inputs, 1):
            results.append(_redact_segment(segment, number, state))
            state.progress.finished(segment)
        if state.video_packets and not state.decoded:
            raise RedactionFailed("The recording's video could not be decoded.")
    except BaseException:
        for segment in inputs:
            segment.output.unlink(missing_ok=True)
        raise
    progress(1.0, 0.0)
    return results


# -- the child process -------------------------------------------------------------


def segment_from_json(item: dict[str, Any]) -> Segment:
    return Segment(Path(item["path"]), Path(item["output"]), int(item["start_ms"]), int(item["end_ms"]))


def _limit(memory_mb: Optional[int]) -> None:
    """No core dumps (the process holds a recording's plaintext) and, when given, a
    ceiling on its address space."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb:
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def main() -> int:
    """One job from stdin; JSON lines on stdout; exit 0 done, 1 failed, 3 cancelled."""
    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)

    def say(message: dict[str, Any]) -> None:
        nonlocal stop
        try:
            out.write(json.dumps(message) + "\n")
            out.flush()
        except OSError:  # nobody is reading any more: stop and clean up
            stop = True

    def report(fraction: float, eta: Optional[float]) -> None:
        say({"progress": round(fraction, 4), "eta_s": None if eta is None else round(eta, 1)})

    try:
        job = json.loads(sys.stdin.read())
        inputs = [segment_from_json(item) for item in job["inputs"]]
        memory_mb = job.get("memory_mb")
        operations = parse(job["operations"], None)
    except Exception as e:  # noqa: BLE001 - any malformed job is answered the same way
        message = getattr(e, "message", None) or "The redaction job could not be read."
        say({"error": message})
        return EXIT_FAILED
    _limit(int(memory_mb) if memory_mb else None)
    try:
        done = redact(inputs, operations, report, lambda: stop)
    except Cancelled:
        say({"error": "The redaction was cancelled.", "cancelled": True})
        return EXIT_CANCELLED
    except RedactionFailed as e:
        say({"error": str(e)})
        return EXIT_FAILED
    except MemoryError:
        say({"error": "The redaction ran out of memory."})
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - the type only: messages may name files
        print(f"redaction failed: {type(e).__name__}", file=sys.stderr)
        say({"error": "The redaction failed."})
        return EXIT_FAILED
    say({"done": {"segments": [r.json() for r in done]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
