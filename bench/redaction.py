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
   otherwise idle CPU), and the child's peak resident memory (``wait4``'s
   ``ru_maxrss``; its resident memory is also read a tenth of the way through, to show
   it does not grow).

Targets (from the issue): (a) >= 2x real time, (b) >= 1x real time, on one core; peak
memory < 300 MB whatever the length. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import av
import numpy as np
import psutil

from evr.recording.operations import Box, Operations, Span
from evr.recording.recorder import Packet, SegmentClosed, SegmentWriter

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
    wall_s: float
    cpu_s: float
    peak_mb: float
    early_mb: float
    media_s: float
    returncode: int
    done: Optional[dict[str, Any]]

    @property
    def factor(self) -> float:
        return self.media_s / self.wall_s


def operations(media_s: float, faces: bool) -> Operations:
    """Two boxes over most of the recording and a mute range of a tenth of it."""
    return Operations(
        mute=(Span(media_s * 0.1, media_s * 0.2),),
        boxes=(Box(Span(2.0, media_s - 2.0), 0.05, 0.05, 0.3, 0.25),
               Box(Span(media_s * 0.05, media_s * 0.95), 0.55, 0.55, 0.35, 0.4)),
        blur_faces=faces,
    )


def run(name: str, closed: list[SegmentClosed], ops: Operations, out: Path, cpu: int,
        memory_mb: Optional[int]) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    job = {"inputs": [{"path": str(c.path), "output": str(out / c.path.name), "start_ms": round(c.start_s * 1000),
                       "end_ms": round(c.end_s * 1000)} for c in closed],
           "operations": ops.json(), "memory_mb": memory_mb}
    (out / "job.json").write_text(json.dumps(job))
    media_s = (closed[-1].end_s - closed[0].start_s)
    with open(out / "job.json", "rb") as stdin:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "evr.recording.redact"], stdin=stdin, stdout=subprocess.PIPE,
                                 cwd=ROOT, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert child.stdout is not None
    process = psutil.Process(child.pid)
    early = 0.0
    done = None
    for line in child.stdout:
        message = json.loads(line)
        if not early and message.get("progress", 0) >= 0.1:
            early = process.memory_info().rss / MB
        if "done" in message:
            done = message["done"]
        if "error" in message:
            print(f"{name}: the child said: {message['error']}", file=sys.stderr)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    for path in out.iterdir():
        path.unlink()
    return Run(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, early, media_s,
               child.returncode, done)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the recording (default 10)")
    parser.add_argument("--memory-mb", type=int, default=None,
                        help="the child's address-space limit, as the server would pass it (default: none)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    cpu = max(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        closed = write_recording(work / "source", args.minutes)
        size = sum(c.size for c in closed)
        print(f"recording: {args.minutes:g} min of 640x480 VP8 ~{FPS} fps + Opus, {len(closed)} segments, "
              f"{size / MB:.0f} MB (written in {time.perf_counter() - started:.0f} s, not timed)")
        media_s = closed[-1].end_s - closed[0].start_s
        runs = [run("(a) 2 blur boxes + mute", closed, operations(media_s, False), work / "a", cpu, args.memory_mb),
                run("(b) (a) + blur_faces", closed, operations(media_s, True), work / "b", cpu, args.memory_mb)]
    print(f"python -m evr.recording.redact pinned to CPU {cpu}; media {media_s:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on that CPU lengthens the wall time)")
    print(f"{'run':<26} {'wall s':>7} {'x real time':>11} {'cpu s':>7} {'x per cpu s':>11} {'peak MB':>8} "
          f"{'MB at 10%':>9}  done")
    for r in runs:
        frames = sum(s["video_frames"] for s in r.done["segments"]) if r.done else 0
        faces = sum(s["frames_with_faces"] for s in r.done["segments"]) if r.done else 0
        print(f"{r.name:<26} {r.wall_s:>7.1f} {r.factor:>11.2f} {r.cpu_s:>7.1f} {r.media_s / r.cpu_s:>11.2f} "
              f"{r.peak_mb:>8.0f} {r.early_mb:>9.0f}  "
              f"{'yes' if r.returncode == 0 and r.done else 'NO (exit %d)' % r.returncode}"
              f" ({frames} frames, {faces} with faces)")
    a, b = runs
    checks = [
        (f"(a) >= {TARGET_BOXES_X:g}x real time", a.returncode == 0 and a.factor >= TARGET_BOXES_X),
        (f"(b) >= {TARGET_FACES_X:g}x real time", b.returncode == 0 and b.factor >= TARGET_FACES_X),
        (f"peak memory < {TARGET_PEAK_MB} MB", max(a.peak_mb, b.peak_mb) < TARGET_PEAK_MB),
    ]
    print("targets: " + "; ".join(f"{what}: {'PASS' if ok else 'FAIL'}" for what, ok in checks))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
