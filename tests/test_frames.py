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


def packetized(loops: int = 1, first_seq: int = 65500,
               first_ts: int = TS_MOD - 6000) -> list[list[tuple[int, int, bool, bytes]]]:
    """The clip (``loops`` times) as aiortc's VP8 packetizer sends it: per frame, its
    packets as (sequence number, timestamp, marker, payload); numbers wrap on purpose."""
    encoder = Vp8Encoder()
    frames, seq = [], first_seq
    for index, (data, key) in enumerate(CLIP.frames * loops):
        payloads, _ = encoder.pack(EncodedFrame(data, 0, Fraction(1, 90000), key, 0.0))  # type: ignore[arg-type]
        ts = (first_ts + 3000 * index) % TS_MOD
        packets = []
        for i, payload in enumerate(payloads):
            packets.append((seq % SEQ_MOD, ts, i == len(payloads) - 1, payload))
            seq += 1
        frames.append(packets)
    return frames


def sent(loops: int = 1) -> list[bytes]:
    return [d for d, _ in CLIP.frames * loops]


def feed(assembler: Vp8Frames, packets: list[tuple[int, int, bool, bytes]]) -> list[bytes]:
    return [f.data for p in packets for f in assembler.add(*p)]


def test_frames_in_order_are_the_sender_s_frames_byte_for_byte():
    assembler = Vp8Frames()
    out = [f for packets in packetized() for p in packets for f in assembler.add(*p)]
    assert [f.data for f in out] == sent()
    assert [f.keyframe for f in out] == [k for _, k in CLIP.frames]
    assert [f.timestamp for f in out] == [(TS_MOD - 6000 + 3000 * i) % TS_MOD for i in range(len(out))]


def test_a_frame_comes_out_whole_whatever_order_and_repeats_its_packets_came_in():
    rng = random.Random(3)
    assembler = Vp8Frames()
    out = []
    for packets in packetized():
        shuffled = packets + rng.sample(packets, k=min(2, len(packets)))  # retransmissions too
        rng.shuffle(shuffled)
        out += feed(assembler, shuffled)
    assert out == sent()


def test_a_repair_that_comes_late_releases_the_frames_it_held_back_in_order():
    frames = packetized()
    hole = 5
    late = frames[hole][-1]  # the frame's last packet (its only one, for a small frame)
    assembler = Vp8Frames()
    before = feed(assembler, [p for packets in frames[:hole + 4] for p in packets if p is not late])
    assert before == sent()[:hole]  # the frame with a hole holds the next three back
    after = feed(assembler, [late])  # the retransmission comes
    assert after == sent()[hole:hole + 4] and assembler.dropped == 0


def test_a_frame_never_repaired_is_given_up_and_the_stream_goes_on():
    frames = packetized(loops=2)
    for lost in (frames[0][1], frames[5][-1]):  # part of a keyframe; a whole small frame
        assembler = Vp8Frames()
        out = feed(assembler, [p for packets in frames for p in packets if p is not lost])
        hole = next(i for i, packets in enumerate(frames) if lost in packets)
        assert assembler.dropped == 1
        # Every other frame, in order, but for the last few still held back when the packets end.
        assert out == [d for i, d in enumerate(sent(loops=2)) if i != hole][:len(out)]
        assert len(out) >= len(frames) - 1 - MAX_PENDING_FRAMES


def test_a_packet_of_a_frame_already_given_out_is_ignored():
    frames = packetized()
    assembler = Vp8Frames()
    assert feed(assembler, frames[0] + frames[1]) == sent()[:2]
    assert feed(assembler, frames[0][:1]) == []  # a late duplicate of frame 0


@given(st.lists(st.tuples(st.integers(0, SEQ_MOD - 1), st.integers(0, TS_MOD - 1), st.booleans(),
                          st.binary(max_size=24)), max_size=300))
@hypothesis_settings(max_examples=200, deadline=None)
def test_any_packets_never_raise_and_keep_little(packets):
    assembler = Vp8Frames()
    for packet in packets:
        for frame in assembler.add(*packet):
            assert frame.data
        assert len(assembler._pending) <= MAX_PENDING_FRAMES


def test_every_opus_packet_is_a_frame():
    assembler = OpusFrames()
    [frame] = assembler.add(1, 960, False, b"\xfc\x01\x02")
    assert (frame.timestamp, frame.data, frame.keyframe) == (960, b"\xfc\x01\x02", True)
    assert assembler.add(2, 1920, False, b"") == []
