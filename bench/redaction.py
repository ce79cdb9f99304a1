#!/usr/bin/env python3
"""Benchmark: redacting a recording, through the child process the server runs.

    python bench/redaction.py                 # a 10-minute recording
    python bench/redaction.py --minutes 30    # memory must not grow with the length

What it does:

1. Writes a synthetic camera recording (not timed): 640x480 VP8 at about 30 fps and
   1 Mbit/s with Opus stereo at 48 kHz, in 10-second segments cut at keyframes, by the
   recorder's own segment writer (:class:`evr.recording.recorder.SegmentWriter`), so
   the files are laid out as a real recording's are (WebM, millisecond timestamps on
   the recording's timeline). The picture moves all the time (a drifting textured
   background, moving blocks, a face walking across, from tests/data/face.jpg), so the
   decoder, the encoder and the face detector all have work.
2. Redacts it twice with ``python -m evr.recording.redact`` (the engine's child
   process, fed its JSON job on stdin), pinned to one CPU:
   (a) two blur boxes over most of the recording and a mute range;
   (b) the same with ``blur_faces``.
   Prints each run's wall time and real-time factor (media seconds per wall second),
   its CPU time and media seconds per CPU second (what the wall figure would be on an
   otherwise idle CPU: other work on the machine lengthens the wall time, hardly the
   CPU time), and the child's peak resident memory (``wait4``'s
   ``ru_maxrss``; its resident memory is also read a tenth of the way through, to show
   it does not grow).
3. Runs the peer, FFmpeg, when an ``ffmpeg`` binary is on PATH (Debian: ``apt-get
   install ffmpeg``; the bench installs nothing), in the same run, on the same segments
   and pinned to the same CPU: the equivalent of (a) as a video unit would do it by
   hand. One ``ffmpeg`` process reads the segments in order through the concat demuxer
   (a list giving each file's length, so every segment keeps its place on the
   recording's timeline), pixelates and blurs the same two boxes over the same spans
   (``split``, ``crop``, ``scale`` down by area and back up, ``boxblur``, ``overlay``
   with ``enable='between(t,a,b)'``: the engine's blocks and smoothing), mutes the same
   range (``volume=0`` with ``enable``) and writes one WebM file: VP8 by libvpx with the
   engine's settings (deadline realtime, cpu-used -8, no lag or alt-ref, millisecond
   time base, the source's timestamps, keyframes at least every 300 frames and at each
   segment's start, the bitrate the engine derives from the source's size, here over
   the whole recording), ``-threads 1``. Unlike the engine, it decodes and re-encodes
   all of the sound (libopus, 32 kbit/s): the engine copies every packet outside the
   mute range. Its figures are measured as the engine's are and printed beside them,
   with the ratio of the engine's CPU time to FFmpeg's; they never fail the bench.
   FFmpeg has no peer for (b): Debian's build has no face detector.

libvpx's VP8 realtime mode with a positive cpu-used chooses its speed (4 to 16) from how
long its frames take by the clock, so its output and its CPU time would depend on what
else the machine does; the engine and the peer both fix it with a negative one (-8:
speed 8), so both are measured at the same, fixed speed.

Targets (from the issue): (a) >= 2x real time, (b) >= 1x real time, on one core; peak
memory < 300 MB whatever the length. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

import av
import numpy as np
import psutil

from evr.recording.operations import Box, Operations, Span
from evr.recording.recorder import Packet, SegmentClosed, SegmentWriter
from evr.recording.redact import AUDIO_BITRATE_GUESS, BLOCK, CELLS, MAX_BITRATE, MIN_BITRATE

ROOT = Path(__file__).resolve().parent.parent
FACE = ROOT / "tests" / "data" / "face.jpg"
WIDTH, HEIGHT, FPS = 640, 480, 30
SEGMENT_S = 10
MB = 1024 * 1024
TARGET_BOXES_X = 2.0
TARGET_FACES_X = 1.0
TARGET_PEAK_MB = 300


# -- the recording -------------------------------------------------------------------


def face_luma() -> np.ndarray:
    import cv2

    image = cv2.imread(str(FACE))
    assert image is not None, f"{FACE} is missing"
    face = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return cv2.resize(face, (200, 200), interpolation=cv2.INTER_CUBIC)


class Scene:
    """Frame i of a picture that never stands still."""

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        x = np.arange(2 * WIDTH)[None, :]
        y = np.arange(HEIGHT)[:, None]
        smooth = 110 + 50 * np.sin(x / 53) * np.cos(y / 41) + 30 * np.sin((x + y) / 17)
        self.texture = (smooth + rng.normal(0, 6, smooth.shape)).clip(16, 235).astype(np.uint8)
        self.face = face_luma()
        self.u = np.full((HEIGHT // 2, WIDTH // 2), 120, np.uint8)
        self.v = np.full((HEIGHT // 2, WIDTH // 2), 136, np.uint8)

    def frame(self, i: int) -> av.VideoFrame:
        shift = (i * 3) % WIDTH
        y = self.texture[:, shift:shift + WIDTH].copy()
        for n in range(4):  # blocks bouncing about
            bx = int((WIDTH - 80) * (0.5 + 0.5 * math.sin(i / (23 + 7 * n) + n)))
            by = int((HEIGHT - 60) * (0.5 + 0.5 * math.cos(i / (31 + 5 * n) + 2 * n)))
            y[by:by + 60, bx:bx + 80] = 40 + 50 * n
        fx = int((WIDTH - 200) * (0.5 + 0.5 * math.sin(i / 90)))  # a face walking to and fro
        y[140:340, fx:fx + 200] = self.face
        u, v = self.u.copy(), self.v.copy()
        u[(i // 2) % (HEIGHT // 2 - 40):][:40, 40:120] = 90
        picture = np.concatenate([y, u.reshape(-1, WIDTH), v.reshape(-1, WIDTH)])
        return av.VideoFrame.from_ndarray(picture, format="yuv420p")


def write_recording(directory: Path, minutes: float) -> list[SegmentClosed]:
    """The synthetic recording's segments, as the recorder writes them."""
    closed: list[SegmentClosed] = []
    writer = SegmentWriter(directory, lambda e: closed.append(e) if isinstance(e, SegmentClosed) else None)
    video = av.CodecContext.create("libvpx", "w")
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    video.bit_rate = 1_000_000
    video.time_base = Fraction(1, 1000)
    video.framerate = Fraction(FPS)
    video.gop_size = 100_000
    video.thread_count = 2
    video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "auto-alt-ref": "0"}
    audio = av.CodecContext.create("libopus", "w")
    audio.sample_rate, audio.layout, audio.format, audio.bit_rate = 48000, "stereo", "s16", 32000
    scene = Scene()
    rng = np.random.default_rng(3)
    total_ms = int(minutes * 60_000)
    next_audio = 0
    next_cut = SEGMENT_S * 1000
    for i in range(total_ms * FPS // 1000):
        pts = i * 1000 // FPS
        frame = scene.frame(i)
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        cut = pts >= next_cut
        if i == 0 or cut:  # the recorder cuts a segment at a keyframe it asked for
            frame.pict_type = av.video.frame.PictureType.I
        for packet in video.encode(frame):
            if cut:
                writer.close_segment()
                next_cut += SEGMENT_S * 1000
                cut = False
            key = bool(packet.is_keyframe)
            assert packet.pts is not None
            writer.write(Packet("video", bytes(packet), packet.pts, key, (WIDTH, HEIGHT) if key else None))
        while next_audio <= pts:  # 20 ms of a warbling tone with some noise
            t = (np.arange(960) + next_audio * 48) / 48000
            wave = 6000 * np.sin(2 * np.pi * (300 + 100 * np.sin(t * 3)) * t) + rng.normal(0, 300, 960)
            samples = np.repeat(wave.astype(np.int16), 2)[None, :]
            sound = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
            sound.sample_rate, sound.pts = 48000, next_audio * 48
            for packet in audio.encode(sound):
                writer.write(Packet("audio", bytes(packet), next_audio, True))
            next_audio += 20
    writer.close_segment()
    return closed


# -- the runs --------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    media_s: float
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_mb: float = 0.0
    early_mb: float = 0.0
    returncode: int = 0
    #: What the run did (frames, faces, output size), or why it did not run.
    note: str = ""
    ran: bool = True

    @property
    def ok(self) -> bool:
        return self.ran and self.returncode == 0

    @property
    def factor(self) -> float:
        return self.media_s / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_factor(self) -> float:
        return self.media_s / self.cpu_s if self.cpu_s else 0.0


def operations(media_s: float, faces: bool) -> Operations:
    """Two boxes over most of the recording and a mute range of a tenth of it."""
    return Operations(
        mute=(Span(media_s * 0.1, media_s * 0.2),),
        boxes=(Box(Span(2.0, media_s - 2.0), 0.05, 0.05, 0.3, 0.25),
               Box(Span(media_s * 0.05, media_s * 0.95), 0.55, 0.55, 0.35, 0.4)),
        blur_faces=faces,
    )


def timed(result: Run, argv: list[str], cpu: int, stdin: Union[IO[bytes], int], stderr: Optional[IO[bytes]],
          fraction: Callable[[bytes], Optional[float]]) -> None:
    """Run ``argv`` pinned to ``cpu`` and fill in ``result``'s wall and CPU time and peak
    memory. Each line of its stdout goes to ``fraction``, which says how far it has got
    (or None); its resident memory is read when that first reaches a tenth."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
                             preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert child.stdout is not None
    process = psutil.Process(child.pid)
    for line in child.stdout:
        done = fraction(line)
        if not result.early_mb and done is not None and done >= 0.1:
            try:
                result.early_mb = process.memory_info().rss / MB
            except psutil.NoSuchProcess:
                pass
    _, status, usage = os.wait4(child.pid, 0)
    result.wall_s = time.perf_counter() - start
    child.returncode = result.returncode = os.waitstatus_to_exitcode(status)
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.peak_mb = usage.ru_maxrss / 1024


def run_evr(name: str, closed: list[SegmentClosed], ops: Operations, out: Path, cpu: int,
            memory_mb: Optional[int]) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    job = {"inputs": [{"path": str(c.path), "output": str(out / c.path.name), "start_ms": round(c.start_s * 1000),
                       "end_ms": round(c.end_s * 1000)} for c in closed],
           "operations": ops.json(), "memory_mb": memory_mb}
    (out / "job.json").write_text(json.dumps(job))
    result = Run(name, closed[-1].end_s - closed[0].start_s)
    done: dict[str, Any] = {}

    def fraction(line: bytes) -> Optional[float]:
        message = json.loads(line)
        if "done" in message:
            done.update(message["done"])
        if "error" in message:
            print(f"{name}: the child said: {message['error']}", file=sys.stderr)
        return message.get("progress")

    with open(out / "job.json", "rb") as stdin:
        timed(result, [sys.executable, "-m", "evr.recording.redact"], cpu, stdin, None, fraction)
    if not done:
        result.returncode = result.returncode or -1
    size = sum(path.stat().st_size for path in out.glob("*.webm"))
    for path in out.iterdir():
        path.unlink()
    frames = sum(s["video_frames"] for s in done.get("segments", ()))
    faces = sum(s["frames_with_faces"] for s in done.get("segments", ()))
    result.note = (f"{frames} frames ({faces} with faces) in {len(done.get('segments', ()))} files of "
                   f"{size / MB:.0f} MB; {result.early_mb:.0f} MB resident at 10%")
    return result


def start_times(ffmpeg: str, closed: list[SegmentClosed]) -> list[float]:
    """Each segment's start as FFmpeg reads it (its earliest packet: a segment's first
    Opus packet may come a little before its first frame), from ffprobe when it is there."""
    ffprobe = shutil.which("ffprobe", path=str(Path(ffmpeg).parent)) or shutil.which("ffprobe")
    if ffprobe is None:
        return [c.start_s for c in closed]
    starts = []
    for c in closed:
        answer = subprocess.run([ffprobe, "-v", "error", "-show_entries", "format=start_time", "-of", "csv=p=0",
                                 str(c.path)], capture_output=True, text=True, check=True).stdout.strip()
        starts.append(float(answer) if answer and answer != "N/A" else c.start_s)
    return starts


def box_filter(box: Box, label: str) -> tuple[str, str]:
    """The engine's blur of one box as FFmpeg filters: the crop (grown outwards to even
    pixels, as the engine's chroma box is), pixelated into blocks of ``block`` pixels by
    area and smoothed over two blocks; and the overlay's position."""
    left, top, right, bottom = box.pixels(WIDTH, HEIGHT)
    left, top = left & ~1, top & ~1
    right, bottom = min(WIDTH, right + (right & 1)), min(HEIGHT, bottom + (bottom & 1))
    width, height = right - left, bottom - top
    block = max(BLOCK, -(-min(width, height) // CELLS))
    luma = min(block, min(width, height) // 2)
    chroma = max(1, min(block // 2, min(width, height) // 4))
    chain = (f"[{label}]crop={width}:{height}:{left}:{top},"
             f"scale={-(-width // block)}:{-(-height // block)}:flags=area,scale={width}:{height}:flags=neighbor,"
             f"boxblur=luma_radius={luma}:luma_power=1:chroma_radius={chroma}:chroma_power=1[{label}b]")
    return chain, f"{left}:{top}"


def run_ffmpeg(ffmpeg: str, closed: list[SegmentClosed], ops: Operations, work: Path, cpu: int) -> Run:
    """(a) by FFmpeg: the segments joined by the concat demuxer, the boxes blurred over
    their spans, the range muted, video re-encoded as the engine does it; one WebM file."""
    work.mkdir(parents=True, exist_ok=True)
    result = Run("(a) FFmpeg", closed[-1].end_s - closed[0].start_s)
    starts = start_times(ffmpeg, closed)
    # A segment's own Duration counts from the recording's start, not the segment's: the
    # list gives each file's length so the next one starts where it does in the recording.
    lines = ["ffconcat version 1.0"]
    for n, c in enumerate(closed):
        lines.append("file '" + str(c.path).replace("'", "'\\''") + "'")
        if n + 1 < len(closed):
            lines.append(f"duration {starts[n + 1] - starts[n]:.6f}")
    (work / "segments.txt").write_text("\n".join(lines) + "\n")
    origin = starts[0]  # FFmpeg's t = 0

    def between(span: Span) -> str:
        return f"between(t,{span.start - origin:.3f},{span.end - origin:.3f})"

    boxes = len(ops.boxes)
    graph = [f"[0:v]split={boxes + 1}[v0]" + "".join(f"[c{n}]" for n in range(boxes))]
    for n, box in enumerate(ops.boxes):
        label = f"c{n}"
        chain, at = box_filter(box, label)
        graph.append(chain)
        graph.append(f"[v{n}][{label}b]overlay={at}:enable='{between(box.span)}'[v{n + 1}]")
    mute = "+".join(between(span) for span in ops.mute) or "0"
    graph.append(f"[0:a]volume=volume=0:enable='{mute}'[a]")
    media_s = result.media_s
    bitrate = int(min(MAX_BITRATE, max(MIN_BITRATE, sum(c.size for c in closed) * 8 / media_s - AUDIO_BITRATE_GUESS)))
    output = work / "redacted.webm"
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
            "-threads", "1", "-f", "concat", "-safe", "0", "-i", str(work / "segments.txt"),
            "-filter_complex", ";".join(graph), "-filter_complex_threads", "1",
            "-map", f"[v{boxes}]", "-map", "[a]", "-fps_mode", "passthrough", "-enc_time_base", "1:1000",
            "-c:v", "libvpx", "-threads", "1", "-deadline", "realtime", "-cpu-used", "-8", "-lag-in-frames", "0",
            "-auto-alt-ref", "0", "-b:v", str(bitrate), "-g", "300",
            "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT_S})",
            "-c:a", "libopus", "-b:a", "32k", "-cluster_time_limit", "1000",
            "-progress", "pipe:1", "-f", "webm", str(output)]
    frames = [0]

    def fraction(line: bytes) -> Optional[float]:
        key, _, value = line.decode(errors="replace").strip().partition("=")
        if key == "frame" and value.isdigit():
            frames[0] = int(value)
        if key == "out_time_us" and value.lstrip("-").isdigit():
            return int(value) / 1e6 / media_s
        return None

    with open(work / "stderr.txt", "wb") as stderr:
        timed(result, argv, cpu, subprocess.DEVNULL, stderr, fraction)
    size = output.stat().st_size if output.exists() else 0
    if result.returncode != 0:
        said = (work / "stderr.txt").read_text(errors="replace").strip().splitlines()[-5:]
        print("(a) FFmpeg failed:\n  " + "\n  ".join(said), file=sys.stderr)
    for path in work.iterdir():
        path.unlink()
    result.note = (f"{frames[0]} frames in 1 file of {size / MB:.0f} MB; {result.early_mb:.0f} MB resident at 10%; "
                   f"video at {bitrate / 1000:.0f} kbit/s")
    return result


def ffmpeg_version(ffmpeg: str) -> str:
    try:
        first = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "?"
    return first.removeprefix("ffmpeg version ").split(" Copyright")[0]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the recording (default 10)")
    parser.add_argument("--memory-mb", type=int, default=None,
                        help="the child's address-space limit, as the server would pass it (default: none)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    cpu = max(os.sched_getaffinity(0))
    ffmpeg = shutil.which("ffmpeg")
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        closed = write_recording(work / "source", args.minutes)
        size = sum(c.size for c in closed)
        print(f"recording: {args.minutes:g} min of 640x480 VP8 ~{FPS} fps + Opus, {len(closed)} segments, "
              f"{size / MB:.0f} MB (written in {time.perf_counter() - started:.0f} s, not timed)")
        media_s = closed[-1].end_s - closed[0].start_s
        a = run_evr("(a) EVR: boxes + mute", closed, operations(media_s, False), work / "a", cpu, args.memory_mb)
        peer = Run("(a) FFmpeg", media_s, ran=False, note="skipped: no ffmpeg on PATH")
        if ffmpeg is not None:  # straight after (a), so the two see the same load
            try:
                peer = run_ffmpeg(ffmpeg, closed, operations(media_s, False), work / "peer", cpu)
            except (OSError, subprocess.SubprocessError) as e:  # the peer never fails the bench
                peer.note = f"could not run: {e}"
        b = run_evr("(b) EVR: (a) + faces", closed, operations(media_s, True), work / "b", cpu, args.memory_mb)
    no_peer = Run("(b) FFmpeg", media_s, ran=False, note="no peer: Debian's FFmpeg has no face detector")
    print(f"EVR: python -m evr.recording.redact (PyAV {av.__version__}); FFmpeg: "
          + (f"{ffmpeg} ({ffmpeg_version(ffmpeg)})" if ffmpeg else "none") + f"; each pinned to CPU {cpu}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on that CPU lengthens the "
          f"wall time, hardly the CPU time)")
    header = (f"{'run':<22} {'media s':>7} {'wall s':>7} {'CPU s':>7} {'x real time':>12} {'x real time':>12} "
              f"{'peak MB':>7}  result")
    print(header)
    print(f"{'':<22} {'':>7} {'':>7} {'':>7} {'(wall)':>12} {'(CPU)':>12}")
    for r in (a, peer, b, no_peer):
        if not r.ok:
            print(f"{r.name:<22} " + (f"FAILED (exit {r.returncode}), after {r.wall_s:.1f} s" if r.ran else r.note))
            continue
        print(f"{r.name:<22} {r.media_s:>7.1f} {r.wall_s:>7.1f} {r.cpu_s:>7.1f} {r.factor:>12.2f} "
              f"{r.cpu_factor:>12.2f} {r.peak_mb:>7.0f}  ok")
    for r in (a, peer, b):
        if r.ok:
            print(f"  {r.name}: {r.note}")
    if peer.ok:
        print(f"EVR/FFmpeg CPU time for (a): {a.cpu_s / peer.cpu_s:.2f} (FFmpeg also re-encodes the sound; "
              f"EVR copies it outside the mute range)")
    elif ffmpeg is None:
        print("FFmpeg peer skipped: no ffmpeg on PATH (to compare, install it: apt-get install ffmpeg)")
    checks = [
        (f"(a) >= {TARGET_BOXES_X:g}x real time", a.ok and a.factor >= TARGET_BOXES_X),
        (f"(b) >= {TARGET_FACES_X:g}x real time", b.ok and b.factor >= TARGET_FACES_X),
        (f"peak memory < {TARGET_PEAK_MB} MB", max(a.peak_mb, b.peak_mb) < TARGET_PEAK_MB),
    ]
    print("targets (EVR's): " + "; ".join(f"{what}: {'PASS' if ok else 'FAIL'}" for what, ok in checks))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
