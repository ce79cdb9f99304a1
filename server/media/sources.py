"""Pre-encoded media for clients that must not spend CPU encoding (tests, benchmarks).

:func:`vp8_clip` encodes a short moving test pattern once with libvpx; :func:`opus_clip`
encodes a tone with libopus. :class:`EncodedSourceTrack` loops a clip in real time as
:class:`~evr.media.passthrough.EncodedFrame` objects, which aiortc's sender packetizes
without running an encoder, and jumps to a keyframe when the far end asks for one.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Optional

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .passthrough import TIME_BASE, EncodedFrame


@dataclass(frozen=True)
class Clip:
    kind: str
    frames: tuple[tuple[bytes, bool], ...]  # (data, is_keyframe)
    step: int  # pts increment per frame, in the kind's RTP clock
    interval: float  # seconds per frame

    @property
    def bitrate(self) -> float:
        return sum(len(d) for d, _ in self.frames) * 8 / (len(self.frames) * self.interval)


@lru_cache(maxsize=4)
def vp8_clip(width: int = 640, height: int = 480, fps: int = 30, seconds: float = 2.0,
             bitrate: int = 1_000_000, gop: Optional[int] = None) -> Clip:
    """A looping VP8 clip: a noisy texture scrolling sideways, a keyframe every ``gop`` frames."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = Fraction(fps, 1)
    codec.time_base = Fraction(1, fps)
    codec.gop_size = gop or fps
    codec.options = {"deadline": "good", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"}
    rng = random.Random(7)
    texture = bytes(rng.randrange(40, 216) for _ in range(width * 2)) * (height // 2 + 1)
    chroma = bytes([128]) * ((width // 2) * (height // 2))
    frames: list[tuple[bytes, bool]] = []
    count = int(fps * seconds)
    for i in range(count + 8):
        frame = av.VideoFrame(width, height, "yuv420p")
        shift = (i * 4) % width
        frame.planes[0].update(texture[shift:shift + width * height])
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts = i
        if i % codec.gop_size == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(frame if i < count else None):
            frames.append((bytes(packet), bool(packet.is_keyframe)))
        if i >= count:
            break
    return Clip("video", tuple(frames[:count]), 90000 // fps, 1 / fps)


@lru_cache(maxsize=2)
def opus_clip(seconds: float = 1.0, frequency: float = 440.0) -> Clip:
    """A looping Opus clip of 20 ms packets: a quiet tone."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32000
    packets: list[tuple[bytes, bool]] = []
    samples = 960
    for i in range(int(seconds * 50)):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        pcm = b"".join(
            struct.pack("<hh", v, v)
            for v in (int(3000 * math.sin(2 * math.pi * frequency * (i * samples + n) / 48000)) for n in range(samples))
        )
        frame.planes[0].update(pcm)
        frame.sample_rate = 48000
        frame.pts = i * samples
        frame.time_base = Fraction(1, 48000)
        for packet in codec.encode(frame):
            packets.append((bytes(packet), True))
    return Clip("audio", tuple(packets), 960, 0.02)


class EncodedSourceTrack(MediaStreamTrack):
    """Plays a :class:`Clip` in a loop, paced by the wall clock."""

    def __init__(self, clip: Clip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self._index = 0
        self._count = 0
        self._start: Optional[float] = None
        self._keyframe_wanted = False
        self.sent = 0
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._keyframe_wanted = True

    async def recv(self) -> EncodedFrame:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._count * self.clip.interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frames = self.clip.frames
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            if not frames[self._index][1]:
                self._index = next(
                    (j for j in range(self._index, len(frames)) if frames[j][1]), 0
                )
        data, keyframe = frames[self._index]
        frame = EncodedFrame(data, self._count * self.clip.step, TIME_BASE[self.kind], keyframe, 0.0)
        self._index = (self._index + 1) % len(frames)
        self._count += 1
        self.sent += 1
        return frame
