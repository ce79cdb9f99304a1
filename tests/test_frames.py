"""Frames for the recording, assembled from forwarded packets (evr.media.frames)."""

from __future__ import annotations

import random
from fractions import Fraction

from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from evr.media.frames import MAX_PENDING_FRAMES, OpusFrames, Vp8Frames
from evr.media.passthrough import EncodedFrame
from evr.media.rtp import SEQ_MOD, TS_MOD
from evr.media.sources import vp8_clip

CLIP = vp8_clip(640, 480, seconds=1)


def packetized(first_seq: int = 65500, first_ts: int = TS_MOD - 6000) -> list[list[tuple[int, int, bool, bytes]]]:
    """The clip as aiortc's VP8 packetizer sends it: per frame, its packets as
    (sequence number, timestamp, marker, payload); numbers wrap around on purpose."""
    encoder = Vp8Encoder()
    frames, seq = [], first_seq
    for index, (data, key) in enumerate(CLIP.frames):
        payloads, _ = encoder.pack(EncodedFrame(data, 0, Fraction(1, 90000), key, 0.0))  # type: ignore[arg-type]
        ts = (first_ts + 3000 * index) % TS_MOD
        packets = []
        for i, payload in enumerate(payloads):
            packets.append((seq % SEQ_MOD, ts, i == len(payloads) - 1, payload))
            seq += 1
        frames.append(packets)
    return frames


def test_frames_in_order_are_the_sender_s_frames_byte_for_byte():
    assembler = Vp8Frames()
    out = [f for packets in packetized() for p in packets if (f := assembler.add(*p)) is not None]
    assert [f.data for f in out] == [d for d, _ in CLIP.frames]
    assert [f.keyframe for f in out] == [k for _, k in CLIP.frames]
    assert [f.timestamp for f in out] == [(TS_MOD - 6000 + 3000 * i) % TS_MOD for i in range(len(out))]


def test_a_frame_comes_out_whole_whatever_order_and_repeats_its_packets_came_in():
    rng = random.Random(3)
    assembler = Vp8Frames()
    out = []
    for packets in packetized():
        shuffled = packets + rng.sample(packets, k=min(2, len(packets)))  # retransmissions too
        rng.shuffle(shuffled)
        out += [f for p in shuffled if (f := assembler.add(*p)) is not None]
    assert [f.data for f in out] == [d for d, _ in CLIP.frames]


def test_a_frame_missing_a_packet_is_left_out_and_the_next_ones_go_on():
    frames = packetized()
    hole = max(range(1, len(frames)), key=lambda i: len(frames[i]))  # a frame of several packets
    assert len(frames[hole]) > 1
    lossy = [p for i, packets in enumerate(frames) for p in packets if not (i == hole and p is packets[-2])]
    assembler = Vp8Frames()
    out = [f.data for p in lossy if (f := assembler.add(*p)) is not None]
    assert out == [d for i, (d, _) in enumerate(CLIP.frames) if i != hole]


def test_a_late_frame_is_not_given_out_after_a_newer_one():
    frames = packetized()
    assert len(frames[0]) > 1  # a keyframe: several packets
    assembler = Vp8Frames()
    head = frames[0][:-1]  # frame 0 waits for its last packet...
    out = [f.timestamp for p in head + frames[1] if (f := assembler.add(*p)) is not None]
    assert out == [frames[1][0][1]]  # ...frame 1 is whole first
    assert assembler.add(*frames[0][-1]) is None  # frame 0 is then too late
    assert assembler.dropped == 1


@given(st.lists(st.tuples(st.integers(0, SEQ_MOD - 1), st.integers(0, TS_MOD - 1), st.booleans(),
                          st.binary(max_size=24)), max_size=300))
@hypothesis_settings(max_examples=200, deadline=None)
def test_any_packets_never_raise_and_keep_little(packets):
    assembler = Vp8Frames()
    for packet in packets:
        frame = assembler.add(*packet)
        assert frame is None or frame.data
        assert len(assembler._pending) <= MAX_PENDING_FRAMES


def test_every_opus_packet_is_a_frame():
    assembler = OpusFrames()
    frame = assembler.add(1, 960, False, b"\xfc\x01\x02")
    assert frame is not None and (frame.timestamp, frame.data, frame.keyframe) == (960, b"\xfc\x01\x02", True)
    assert assembler.add(2, 1920, False, b"") is None
