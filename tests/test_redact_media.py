"""Redaction's media engine on real media: segments written as the recorder writes them
(:class:`evr.recording.recorder.SegmentWriter`), redacted, decoded and compared with
their sources. A few seconds of 320x240 each, so the whole file runs in seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import av
import cv2
import numpy as np
import pytest

from evr.recording.operations import Box, Operations, Span
from evr.recording.recorder import Packet, SegmentClosed, SegmentWriter
from evr.recording.redact import Cancelled, RedactionFailed, Segment, Silence, opus_samples, redact

ROOT = Path(__file__).resolve().parent.parent
FACE = Path(__file__).resolve().parent / "data" / "face.jpg"
W, H = 320, 240
FPS = 30
#: A picture: the frame number -> (Y, U, V) planes.
Draw = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def background(i: int, width: int = W, height: int = H) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth gradient drifting sideways (easy to encode well, so a copy compares
    closely with its source) with a 4-pixel checkerboard in the middle (a fine
    pattern that any real blur removes)."""
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    luma = (60 + 60 * np.sin((x + 2 * i) / 40) + 40 * np.cos(y / 30)).clip(16, 235).astype(np.uint8)
    checks = ((x // 4 + y // 4) % 2).astype(bool)
    board = np.where(checks, 200, 50).astype(np.uint8)
    top, left = height // 4, width // 4
    luma[top:top + height // 2, left:left + width // 2] = board[top:top + height // 2, left:left + width // 2]
    u = np.full((height // 2, width // 2), 110, np.uint8)
    v = np.full((height // 2, width // 2), 150, np.uint8)
    return luma, u, v


def with_face(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A face (tests/data/face.jpg) drifting slowly over a flat background."""
    face = cv2.cvtColor(cv2.imread(str(FACE)), cv2.COLOR_BGR2GRAY)
    luma = np.full((H, W), 90, np.uint8)
    left = 60 + i % 60
    luma[60:60 + face.shape[0], left:left + face.shape[1]] = face
    return luma, np.full((H // 2, W // 2), 128, np.uint8), np.full((H // 2, W // 2), 128, np.uint8)


def picture(planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> av.VideoFrame:
    y, u, v = planes
    return av.VideoFrame.from_ndarray(np.concatenate([y, u.reshape(-1, y.shape[1]), v.reshape(-1, y.shape[1])]),
                                      format="yuv420p")


def vp8_encoder(width: int, height: int) -> av.CodecContext:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = 1_500_000
    codec.time_base = Fraction(1, 1000)
    codec.framerate = Fraction(FPS)
    codec.gop_size = 10_000
    codec.options = {"deadline": "good", "cpu-used": "4", "lag-in-frames": "0", "auto-alt-ref": "0"}
    return codec


def tone(seconds: float, frequency: float = 440.0) -> list[tuple[int, bytes]]:
    """(pts ms, Opus packet) of 20 ms: a steady tone."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = 48000, "stereo", "s16", 64000
    packets = []
    for n in range(int(seconds * 50)):
        t = (np.arange(960) + n * 960) / 48000
        wave = (8000 * np.sin(2 * math.pi * frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(wave, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, n * 960
        packets.extend((n * 20, bytes(p)) for p in codec.encode(frame))
    return packets


@dataclass
class Source:
    segments: list[Segment]
    closed: list[SegmentClosed]


def record(directory: Path, seconds: float = 3.0, draw: Draw = background, audio: bool = True,
           segment_s: float = 0, keyframes_s: float = 1.0, sizes: Optional[Callable[[int], tuple[int, int]]] = None,
           skip_first: int = 0) -> Source:
    """A recording as the recorder writes it: video (and a tone) in segments of
    ``segment_s`` (0: one segment) cut at keyframes; a keyframe every ``keyframes_s``.
    ``skip_first`` leaves out the first frames (and sound) of the recording, so it
    starts mid-GOP, as a segment written after a crash can."""
    closed: list[SegmentClosed] = []
    kinds = ("video", "audio") if audio else ("video",)
    writer = SegmentWriter(directory / "source", lambda e: closed.append(e) if isinstance(e, SegmentClosed) else None,
                           kinds=kinds)
    video: list[Packet] = []
    size = (W, H)
    encoder = vp8_encoder(*size)
    frames = int(seconds * FPS)
    for i in range(frames):
        pts = round(i * 1000 / FPS)
        new_size = sizes(i) if sizes else (W, H)
        if new_size != size:
            video.extend(Packet("video", bytes(p), int(p.pts), p.is_keyframe) for p in encoder.encode(None))
            size, encoder = new_size, vp8_encoder(*new_size)
        planes = draw(i) if new_size == (W, H) else background(i, *new_size)
        frame = picture(planes)
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        if i % round(keyframes_s * FPS) == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for p in encoder.encode(frame):
            video.append(Packet("video", bytes(p), int(p.pts), p.is_keyframe, size if p.is_keyframe else None))
    video.extend(Packet("video", bytes(p), int(p.pts), p.is_keyframe) for p in encoder.encode(None))
    sound = [Packet("audio", data, pts, True) for pts, data in tone(seconds)] if audio else []
    start_ms = round(skip_first * 1000 / FPS)
    packets = sorted((p for p in video + sound if p.pts_ms >= start_ms), key=lambda p: (p.pts_ms, p.kind != "video"))
    cut_at = segment_s * 1000
    for p in packets:
        if segment_s and p.kind == "video" and p.keyframe and p.pts_ms >= cut_at:
            writer.close_segment()
            cut_at += segment_s * 1000
        writer.write(p)
    writer.close_segment()
    out = directory / "out"
    out.mkdir(exist_ok=True)
    segments = [Segment(c.path, out / c.path.name, round(c.start_s * 1000), round(c.end_s * 1000)) for c in closed]
    return Source(segments, closed)


def demux(path: Path) -> list[tuple[str, int, bytes, bool]]:
    """(kind, pts ms, bytes, keyframe) of every packet, in file order."""
    with av.open(str(path)) as container:
        kinds = {s.index: s.type for s in container.streams}
        return [(kinds[p.stream.index], int(p.pts * p.time_base * 1000), bytes(p), p.is_keyframe)
                for p in container.demux() if p.size]


def lumas(path: Path) -> dict[int, np.ndarray]:
    """Decoded pictures (yuv420p as PyAV lays it out) by pts in ms."""
    with av.open(str(path)) as container:
        return {int(f.pts * f.time_base * 1000): f.to_ndarray(format="yuv420p") for f in container.decode(video=0)}


def sound(path: Path) -> dict[int, np.ndarray]:
    """Decoded audio (float, channels x samples) by pts in ms."""
    with av.open(str(path)) as container:
        return {int(f.pts * f.time_base * 1000): f.to_ndarray() for f in container.decode(audio=0)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def vp8_keyframe(data: bytes) -> bool:
    return data[0] & 1 == 0


BOX = (0.25, 0.25, 0.5, 0.5)  # over the checkerboard: pixels 80..240 x 60..180 at 320x240
INSIDE = (slice(60, 180), slice(80, 240))


def box(start: float, end: float, style: str = "blur", where: tuple[float, ...] = BOX) -> Box:
    return Box(Span(start, end), *where, style=style)


def test_a_blurred_box_hides_what_it_covers_over_its_span_and_leaves_the_rest(tmp_path):
    src = record(tmp_path, seconds=3.0)
    [result] = redact(src.segments, Operations(boxes=(box(1.0, 2.0),)))
    before, after = lumas(src.segments[0].path), lumas(result.output)
    assert sorted(after) == sorted(before)
    inside = [t for t in after if 1000 <= t < 2000]
    outside = [t for t in after if t < 950 or t >= 2050]
    assert len(inside) >= 25 and len(outside) >= 50
    for t in inside:
        source, redacted = before[t][:H][INSIDE], after[t][:H][INSIDE]
        assert source.std() > 50  # the checkerboard...
        assert redacted.std() < 12, f"{t} ms: the pattern shows through the blur"  # ...is gone
        assert np.abs(redacted.astype(int) - source.astype(int)).mean() > 40
        around = before[t][:H].copy(), after[t][:H].copy()
        for picture_ in around:
            picture_[56:184, 76:244] = 0  # all but the box (and a codec block's edge around it)
        assert psnr(*around) > 32, f"{t} ms: the picture around the box changed"
    for t in outside:
        assert psnr(before[t], after[t]) > 30, f"{t} ms: a frame outside the box's span changed"
    assert result.video_frames == len(before) and result.frames_with_faces == 0


def test_a_mask_is_solid_black(tmp_path):
    src = record(tmp_path, seconds=1.0, audio=False)
    [result] = redact(src.segments, Operations(boxes=(box(0, 10, "mask"),)))
    for t, frame in lumas(result.output).items():
        y = frame[:H][INSIDE]
        u = frame[H:H + H // 4].reshape(H // 2, W // 2)[30:90, 40:120]
        v = frame[H + H // 4:].reshape(H // 2, W // 2)[30:90, 40:120]
        assert abs(float(y.mean()) - 16) < 3 and y.std() < 3, t
        assert abs(float(u.mean()) - 128) < 3 and abs(float(v.mean()) - 128) < 3, t


def test_muting_silences_its_range_and_copies_every_other_packet_bit_for_bit(tmp_path):
    src = record(tmp_path, seconds=3.0)
    [result] = redact(src.segments, Operations(mute=(Span(1.0, 2.0),)))
    before, after = demux(src.segments[0].path), demux(result.output)
    assert [(k, t) for k, t, _, _ in before] == [(k, t) for k, t, _, _ in after]  # timing stays
    audio_before = {t: data for k, t, data, _ in before if k == "audio"}
    audio_after = {t: data for k, t, data, _ in after if k == "audio"}
    muted = [t for t in audio_before if t + 20 > 1000 and t < 2000]
    assert result.muted_packets == len(muted) == 50
    for t, data in audio_after.items():
        if t in muted:
            assert data != audio_before[t] and opus_samples(data) == opus_samples(audio_before[t]) == 960
        else:
            assert data == audio_before[t], f"{t} ms: a packet outside the mute range was changed"
    decoded = sound(result.output)
    rms = {t: float(np.sqrt(np.mean(samples ** 2))) for t, samples in decoded.items()}
    assert all(rms[t] < 0.001 for t in rms if 1040 <= t < 1960), "the tone is heard in the mute range"
    assert all(rms[t] > 0.15 for t in rms if 20 <= t < 1000 or 2200 <= t < 2980), "the tone is lost outside it"
    # The packets after the range are the source's: the decoder, which has just decoded
    # silence, takes a few of them to come back to the tone's level (never louder).
    assert all(0.0 < rms[t] <= 0.18 for t in rms if 2000 <= t < 2200)


@pytest.mark.parametrize("samples", [120, 240, 360, 480, 960, 1920, 2880, 5760])
def test_silence_comes_in_every_length_an_opus_packet_can_have(samples):
    """2.5 ms to 120 ms: one packet, as long as the one it replaces, decoding to zeros."""
    data = Silence(2).packet(samples)
    assert opus_samples(data) == samples
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = 48000, "stereo"
    frames = decoder.decode(av.Packet(data))
    assert sum(f.samples for f in frames) == samples
    assert all(not f.to_ndarray().any() for f in frames)


def test_every_output_segment_keeps_the_timing_and_starts_with_a_keyframe(tmp_path):
    src = record(tmp_path, seconds=4.0, segment_s=1.0, keyframes_s=0.5)
    assert len(src.segments) == 4
    results = redact(src.segments, Operations(boxes=(box(0.5, 3.5),), mute=(Span(2.2, 2.5),)))
    for segment, closed, result in zip(src.segments, src.closed, results, strict=True):
        before, after = demux(segment.path), demux(result.output)
        assert [(k, t) for k, t, _, _ in before] == [(k, t) for k, t, _, _ in after]
        first_video = next(p for p in after if p[0] == "video")
        assert first_video[3] and vp8_keyframe(first_video[2]) and result.keyframe_start
        # A keyframe wherever the source had one.
        source_keys = {t for k, t, data, _ in before if k == "video" and vp8_keyframe(data)}
        assert source_keys <= {t for k, t, data, _ in after if k == "video" and vp8_keyframe(data)}
        assert result.packets == len(before)
        assert (result.first_ms, result.last_ms) == (round(closed.start_s * 1000), round(closed.end_s * 1000))
        with av.open(str(result.output)) as container:
            assert [s.time_base for s in container.streams] == [Fraction(1, 1000)] * 2
            assert [s.codec_context.name for s in container.streams] == ["vp8", "opus"]
            assert container.format.name.split(",")[0] in ("matroska", "webm")
    assert sum(r.muted_packets for r in results) == 15  # 2.20 s to 2.48 s


def test_a_screen_recording_has_no_sound_and_a_size_change_is_scaled(tmp_path):
    src = record(tmp_path, seconds=2.0, audio=False, sizes=lambda i: (W, H) if i < 30 else (240, 320))
    [result] = redact(src.segments, Operations(boxes=(box(0, 2),)))
    assert result.video_frames == 60
    with av.open(str(result.output)) as container:
        assert [s.type for s in container.streams] == ["video"]
        sizes = {(f.width, f.height) for f in container.decode(video=0)}
    assert sizes == {(W, H)}


def test_a_recording_that_starts_between_keyframes_starts_at_its_first_keyframe(tmp_path):
    src = record(tmp_path, seconds=3.0, skip_first=10, keyframes_s=1.0)
    [result] = redact(src.segments, Operations(mute=(Span(0, 0.1),)))
    assert result.dropped_frames == 20  # frames 10..29: nothing to decode them from
    assert result.video_frames == 60
    after = demux(result.output)
    first_video = next(p for p in after if p[0] == "video")
    assert first_video[1] == 1000 and vp8_keyframe(first_video[2]) and result.keyframe_start
    assert len([p for p in after if p[0] == "audio"]) == len([p for p in demux(src.segments[0].path)
                                                              if p[0] == "audio"])


def test_one_decoder_runs_across_segments_so_a_segment_cut_mid_gop_loses_nothing(tmp_path):
    src = record(tmp_path, seconds=3.0, keyframes_s=10.0)  # one keyframe, at the start
    # Cut the one segment into two at 1.5 s, the second starting on an inter frame.
    packets = demux(src.segments[0].path)
    segments, closed = [], []
    writer = SegmentWriter(tmp_path / "cut", lambda e: closed.append(e) if isinstance(e, SegmentClosed) else None)
    for n, (kind, t, data, key) in enumerate(packets):
        if t >= 1500 and packets[n - 1][1] < 1500:
            writer.close_segment()
        writer.write(Packet(kind, data, t, key and kind == "video", (W, H) if key and kind == "video" else None))
    writer.close_segment()
    segments = [Segment(c.path, tmp_path / "out" / c.path.name, 0, 0) for c in closed]
    assert not next(vp8_keyframe(d) for k, _, d, _ in demux(segments[1].path) if k == "video")
    results = redact(segments, Operations(boxes=(box(0, 3),)))
    assert [r.dropped_frames for r in results] == [0, 0]
    assert sum(r.video_frames for r in results) == 90
    assert all(r.keyframe_start for r in results)
    second = lumas(results[1].output)
    source = lumas(src.segments[0].path)
    assert len(second) == 45 and all(psnr(second[t][:60], source[t][:60]) > 30 for t in second)


def test_faces_are_found_and_blurred_past_recognition(tmp_path):
    src = record(tmp_path, seconds=2.0, draw=with_face, audio=False)
    [result] = redact(src.segments, Operations(blur_faces=True))
    assert result.frames_with_faces >= result.video_frames - 1
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    before, after = lumas(src.segments[0].path), lumas(result.output)
    seen_before = seen_after = 0
    for t in before:
        seen_before += len(cascade.detectMultiScale(before[t][:H], 1.1, 3)) > 0
        seen_after += len(cascade.detectMultiScale(after[t][:H], 1.1, 3)) > 0
    assert seen_before == len(before) and seen_after == 0


def test_faces_only_within_their_spans(tmp_path):
    src = record(tmp_path, seconds=2.0, draw=with_face, audio=False)
    [result] = redact(src.segments, Operations(blur_faces=True, faces=(Span(1.0, 2.0),)))
    assert 28 <= result.frames_with_faces <= 31
    before, after = lumas(src.segments[0].path), lumas(result.output)
    assert all(psnr(before[t], after[t]) > 30 for t in before if t < 1000)


def test_progress_rises_to_one_and_cancel_leaves_no_output(tmp_path):
    src = record(tmp_path, seconds=3.0, segment_s=1.0)
    seen: list[tuple[float, Optional[float]]] = []
    redact(src.segments, Operations(mute=(Span(0, 1),)), progress=lambda f, eta: seen.append((f, eta)))
    assert seen[-1] == (1.0, 0.0) and [f for f, _ in seen] == sorted(f for f, _ in seen)
    for s in src.segments:
        s.output.unlink()

    checks = 0

    def cancelled() -> bool:
        nonlocal checks
        checks += 1
        return checks > 100  # in the second segment: the first is written by then

    with pytest.raises(Cancelled):
        redact(src.segments, Operations(mute=(Span(0, 1),)), cancelled=cancelled)
    assert not list((tmp_path / "out").iterdir())


def test_a_file_that_is_not_a_recording_fails_in_a_sentence(tmp_path):
    src = record(tmp_path, seconds=1.0)
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(os.urandom(5000))
    segments = [src.segments[0], Segment(garbage, tmp_path / "out" / "2.webm", 1000, 2000)]
    with pytest.raises(RedactionFailed, match=r"^Segment 2 of the recording could not be read"):
        redact(segments, Operations(mute=(Span(0, 1),)))
    assert not list((tmp_path / "out").iterdir())


# -- the child process ----------------------------------------------------------------


def child(job: dict, directory: Path) -> subprocess.Popen:
    """``python -m evr.recording.redact`` reading ``job`` on its stdin."""
    (directory / "job.json").write_text(json.dumps(job))
    with open(directory / "job.json", "rb") as stdin:
        return subprocess.Popen([sys.executable, "-m", "evr.recording.redact"], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)


def job(segments: list[Segment], operations: Operations, memory_mb: Optional[int] = 1024) -> dict:
    return {"inputs": [{"path": str(s.path), "output": str(s.output), "start_ms": s.start_ms, "end_ms": s.end_ms}
                       for s in segments], "operations": operations.json(), "memory_mb": memory_mb}


def test_the_child_process_reports_progress_then_its_segments(tmp_path):
    src = record(tmp_path, seconds=2.0, segment_s=1.0)
    process = child(job(src.segments, Operations(boxes=(box(0, 1),), mute=(Span(0.5, 1.5),), blur_faces=True)),
                    tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert process.returncode == 0, stderr
    assert all("progress" in line for line in lines[:-1]) and lines[-2] == {"progress": 1.0, "eta_s": 0.0}
    done = lines[-1]["done"]["segments"]
    assert [d["output"] for d in done] == [str(s.output) for s in src.segments]
    assert all(Path(d["output"]).exists() and d["keyframe_start"] for d in done)
    assert sum(d["muted_packets"] for d in done) == 50 and sum(d["video_frames"] for d in done) == 60
    assert stderr == b""


def test_the_child_process_fails_in_one_line_on_a_file_that_is_not_a_recording(tmp_path):
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"not a recording at all " * 100)
    output = tmp_path / "out.webm"
    process = child(job([Segment(garbage, output, 0, 1000)], Operations(mute=(Span(0, 1),))), tmp_path)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert lines[-1] == {"error": "Segment 1 of the recording could not be read as a WebM file."}
    assert not output.exists()
    assert b"Traceback" not in stderr and str(tmp_path).encode() not in stderr


def test_the_child_process_refuses_a_job_it_cannot_read(tmp_path):
    process = child({"inputs": [], "operations": {"mute": [{"from": 2, "to": 1}]}}, tmp_path)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    [line] = [json.loads(line) for line in stdout.decode().splitlines()]
    assert "mute[0]" in line["error"]


def test_sigterm_cancels_the_child_and_leaves_no_output(tmp_path):
    src = record(tmp_path, seconds=2.0)
    # The same source many times over: long enough to be stopped half-way.
    segments = [Segment(src.segments[0].path, tmp_path / "out" / f"{n}.webm", n * 2000, (n + 1) * 2000)
                for n in range(40)]
    process = child(job(segments, Operations(boxes=(box(0, 80),))), tmp_path)
    assert process.stdout is not None
    assert "progress" in json.loads(process.stdout.readline())
    while not (tmp_path / "out" / "1.webm").exists():  # a segment is written by then
        assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 3
    assert json.loads(stdout.decode().splitlines()[-1])["cancelled"] is True
    assert not list((tmp_path / "out").iterdir())


def test_the_same_redaction_of_the_same_recording_gives_the_same_bytes(tmp_path):
    """A copy can be made again and compared: the encoder's speed is fixed (not chosen by
    timing frames against the clock), so how busy the machine was changes nothing."""
    src = record(tmp_path, seconds=2.0, draw=with_face)
    operations = Operations(mute=(Span(0.5, 1.0),), boxes=(box(0.0, 1.5),), blur_faces=True)
    [first] = redact(src.segments, operations)
    kept = first.output.read_bytes()
    first.output.unlink()
    [again] = redact(src.segments, operations)
    assert again.output.read_bytes() == kept
