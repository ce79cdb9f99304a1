"""The aiortc hooks (private API of the pinned aiortc) and the packet relay built on them."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aiortc
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from conftest import eventually

from evr.media import passthrough
from evr.media.passthrough import EncodedFrame, InboundStream, OutboundStream, send_pli
from evr.media.rtp import vp8_is_keyframe
from evr.media.sources import EncodedSourceTrack, vp8_clip

TB = Fraction(1, 90000)


def frame(pts: int, key: bool = False, arrival: float = 0.0) -> EncodedFrame:
    return EncodedFrame(b"\x00" if key else b"\x01", pts, TB, key, arrival)


def test_pinned_versions_are_the_ones_the_hooks_were_written_for():
    assert aiortc.__version__ == "1.16.0"
    assert av.__version__ == "18.1.0"
    assert hasattr(aiortc.rtcrtpreceiver, "decoder_worker")
    receiver_attrs = aiortc.RTCRtpReceiver.__init__.__code__.co_names
    assert {"_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__jitter_buffer"} <= set(receiver_attrs)


def test_vp8_keyframe_bit():
    clip = vp8_clip(160, 120, seconds=1)
    assert vp8_is_keyframe(clip.frames[0][0])
    assert [vp8_is_keyframe(d) for d, _ in clip.frames] == [k for _, k in clip.frames]
    assert not vp8_is_keyframe(b"")


async def test_an_outbound_stream_never_yields_a_frame_and_ends_when_stopped():
    """It is the sender's track only so that the sender's own loop waits: nothing
    is encoded or packed by aiortc."""
    track = OutboundStream("audio", lambda: None, lambda p: None)
    waiter = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    track.stop()
    with pytest.raises(aiortc.mediastreams.MediaStreamError):
        await waiter


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def test_packets_are_relayed_rewritten_repaired_and_bandwidth_goes_upstream():
    """A relay made of the hooks alone, between two aiortc peers over loopback:
    client A sends VP8 to the relay's first connection, whose packets go at once to an
    outbound stream on its second connection, to client B.

    - B gets every frame A sent, byte for byte, on the relay's SSRC;
    - a packet lost between the relay and B is repaired from the relay's send
      history (B's NACK answered by RTX), not from A;
    - a source change (a rejoin) continues B's stream after a keyframe from A;
    - B's bandwidth estimate (REMB) reaches A's sender, never above what B said.
    """
    import struct

    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

    clip = vp8_clip(320, 240, seconds=2)
    a, relay_in, relay_out, b = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(4))
    source = EncodedSourceTrack(clip)
    a_sender = a.addTransceiver(source, direction="sendonly").sender
    a_remb: list[int] = []
    stock_rtcp = a_sender._handle_rtcp_packet

    async def a_rtcp(packet):
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            a_remb.append(unpack_remb_fci(packet.fci)[0])
        elif getattr(packet, "fmt", None) == 1:  # a PLI: A's source makes a keyframe
            source.request_keyframe()
        await stock_rtcp(packet)

    a_sender._handle_rtcp_packet = a_rtcp

    keyframes_asked: list[int] = []
    inbound: list[InboundStream] = []
    via = ["first connection"]
    out = OutboundStream("video", lambda: keyframes_asked.append(1) or send_pli(inbound[0].receiver),
                         lambda p: None, lambda: inbound[0].set_limit(out.bitrate))
    out_transceiver = relay_out.addTransceiver("video", direction="sendonly")
    out.attach(out_transceiver.sender)

    relayed: list[EncodedFrame] = []

    @relay_in.on("track")
    def on_relay_track(track):
        receiver = relay_in.getTransceivers()[0].receiver
        passthrough.attach_sink(receiver, "video", relayed.append)
        inbound.append(InboundStream(receiver, "video", lambda p, t: out.forward(p, via[0], t)))

    got: list[EncodedFrame] = []

    @b.on("track")
    def on_b_track(track):
        passthrough.attach_sink(b.getTransceivers()[0].receiver, "video", got.append)

    # The wire between the relay and B loses one packet once; every payload type sent is noted.
    sent_types: list[int] = []
    lost: list[int] = []

    class LossyWire:
        """The relay's socket towards B (its packets are SRTP: the header is in clear)."""

        def __init__(self, transport):
            self.transport = transport

        def sendto(self, data: bytes, addr) -> None:
            if 0x80 <= data[0] <= 0xBF and not 192 <= data[1] <= 223:  # RTP, not RTCP
                sent_types.append(data[1] & 0x7F)
                seq = struct.unpack("!H", data[2:4])[0]
                if len(sent_types) == 40 and not lost:
                    lost.append(seq)
                    return
            self.transport.sendto(data, addr)

        def __getattr__(self, name):
            return getattr(self.transport, name)

    await negotiate(a, relay_in)
    await negotiate(relay_out, b)
    # The relay's packets come straight from its socket (as the bridge's do): aiortc's
    # receive path sees only the first packets of each SSRC, before the router knows it.
    relay_receiver = inbound[0].receiver
    passthrough.receive_directly(relay_receiver.transport, {relay_receiver: inbound[0]})
    slow: list[int] = []
    hooked_handle = relay_receiver._handle_rtp_packet

    async def counted_handle(packet, arrival_time_ms):
        slow.append(packet.sequence_number)
        await hooked_handle(packet, arrival_time_ms)

    relay_receiver._handle_rtp_packet = counted_handle
    await eventually(lambda: relay_out.connectionState, lambda s: s == "connected", timeout=10.0,
                     what="the relay's connection to B")
    connection = out_transceiver.sender.transport.transport._connection
    for protocol in connection._protocols:
        protocol.transport = LossyWire(protocol.transport)
    try:
        await eventually(lambda: len(got), lambda n: n >= 30, timeout=10.0, what="thirty frames at B")
        assert not inbound[0].framing and not relayed  # no sink wants frames: none assembled
        assert lost and len(set(sent_types)) == 2  # VP8, and RTX for the lost packet
        assert len(slow) < len(sent_types) / 10, (len(slow), len(sent_types))
        sent = [d for d, _ in clip.frames]
        index = sent.index(got[0].data)
        assert [f.data for f in got[:30]] == [sent[(index + i) % len(sent)] for i in range(30)]
        assert got[0].is_keyframe
        b_receiver = b.getTransceivers()[0].receiver
        media = {s.source for s in b_receiver.getSynchronizationSources()} - set(
            b_receiver._RTCRtpReceiver__rtx_ssrc)
        assert media == {out_transceiver.sender._ssrc}

        # Forged packets on the relay's socket (RTP-shaped, the stream's own SSRC, no
        # valid SRTP tag; truncated; RTCP-shaped) are dropped, and the stream goes on.
        import os
        import random

        a_pair = a.getTransceivers()[0].sender.transport.transport._connection._nominated[1]
        a_ssrc = a.getTransceivers()[0].sender._ssrc
        rng = random.Random(7)
        for _ in range(300):
            head = bytes([0x80 | rng.randrange(0x40), rng.randrange(256)]) + os.urandom(6)
            forged = head + a_ssrc.to_bytes(4, "big") + os.urandom(rng.randrange(0, 1200))
            a_pair.protocol.transport.sendto(forged[:rng.randrange(1, len(forged) + 1)], a_pair.remote_addr)
        count = len(got)
        await eventually(lambda: len(got), lambda n: n >= count + 10, timeout=10.0, what="frames after forgeries")

        # A rejoin: the same outgoing stream goes on from the new source's keyframe.
        asked = len(keyframes_asked)
        via[0] = "second connection"
        count = len(got)
        await eventually(lambda: len(got), lambda n: n >= count + 15, timeout=10.0, what="frames after a switch")
        assert len(keyframes_asked) > asked and out.rewriter.switches == 2
        assert {s.source for s in b_receiver.getSynchronizationSources()} - set(
            b_receiver._RTCRtpReceiver__rtx_ssrc) == media
        steps = [y.pts - x.pts for x, y in zip(got[count - 1:], got[count:])]
        # B's timestamps run on: one step spans the wait for the keyframe (wall clock), the rest are even.
        assert all(step > 0 for step in steps) and steps.count(3000) >= len(steps) - 1

        # B can take 150 kbit/s: A is told so (or less, if A's own uplink is lower).
        remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=b_receiver._RTCRtpReceiver__rtcp_ssrc, media_ssrc=0,
                              fci=pack_remb_fci(150_000, [out_transceiver.sender._ssrc]))
        await b_receiver._send_rtcp(remb)
        await eventually(lambda: list(a_remb), lambda r: any(v <= 150_000 for v in r), timeout=5.0,
                         what="B's estimate at A")
    finally:
        for pc in (a, relay_in, relay_out, b):
            await pc.close()


async def test_a_sink_receiver_gets_encoded_frames_and_starts_no_decoder_thread():
    """Two aiortc peers over loopback: the receiving side gets the sender's exact bytes."""
    import threading

    sender_pc, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    clip = vp8_clip(160, 120, seconds=1)
    source = EncodedSourceTrack(clip)
    sender_pc.addTransceiver(source, direction="sendonly")
    got: list[EncodedFrame] = []

    @receiver_pc.on("track")
    def on_track(track):
        receiver = receiver_pc.getTransceivers()[0].receiver
        passthrough.attach_sink(receiver, "video", got.append)

    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)
    try:
        await eventually(lambda: len(got), lambda n: n >= 10, timeout=5.0, what="ten frames at the sink")
        assert not [t for t in threading.enumerate() if t.name == "video-decoder"]
        sent = {d for d, _ in clip.frames}
        assert all(f.data in sent for f in got)
        assert got[0].is_keyframe
        steps = {b.pts - a.pts for a, b in zip(got, got[1:])}
        assert steps == {3000}
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_keyframe_requests_name_the_media_stream_not_its_retransmissions():
    """Chrome ignores a PLI for its RTX SSRC; the receiver hears both, RTX last."""
    import datetime

    from aiortc import RTCPeerConnection

    from evr.media.passthrough import media_ssrc

    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        assert hasattr(receiver, "_RTCRtpReceiver__rtx_ssrc")  # the private map this relies on
        assert media_ssrc(receiver) is None
        now = datetime.datetime.now(datetime.timezone.utc)
        receiver._RTCRtpReceiver__rtx_ssrc = {2222: 1111}
        receiver._RTCRtpReceiver__active_ssrc = {1111: now, 2222: now + datetime.timedelta(seconds=1)}
        assert media_ssrc(receiver) == 1111
    finally:
        await pc.close()


# -- the start-up check of every hook --------------------------------------------

from aioice.ice import Connection, StunProtocol  # noqa: E402
from aiortc import RTCRtpReceiver, RTCRtpSender, rtcrtpreceiver  # noqa: E402
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter  # noqa: E402
from aiortc.rtcrtpreceiver import RemoteStreamTrack  # noqa: E402

from evr.media.passthrough import HOOKS, IncompatibleAiortc, check_compatible, media_ssrc  # noqa: E402


async def _receive_without_decoder_thread(self, parameters):  # aiortc renamed what it starts
    pass


def _handle_rtp_elsewhere(self, packet, arrival_time_ms):  # frames no longer go to __decoder_queue
    return None


# Receiver __init__s of an aiortc that renamed one of the three private attributes.
def _init_without_decoder_queue(self, kind, transport):
    self._RTCRtpReceiver__jitter_buffer = None
    self._RTCRtpReceiver__rtx_ssrc = {}


def _init_without_jitter_buffer(self, kind, transport):
    self._RTCRtpReceiver__decoder_queue = None
    self._RTCRtpReceiver__rtx_ssrc = {}


def _init_without_rtx_map(self, kind, transport):
    self._RTCRtpReceiver__decoder_queue = None
    self._RTCRtpReceiver__jitter_buffer = None


class _NarrowJitterBuffer:
    def __init__(self, capacity):
        self.capacity = capacity


def _pli_sync(self, media_ssrc):
    pass


def _rtcp_without_keyframe(self, packet):
    pass


async def _next_frame_always_encoding(self, codec):
    data = await self.track.recv()
    return self.encoder.encode(data)


async def _handle_rtp_data_elsewhere(self, data, *args):
    pass


async def _handle_rtp_without_arrival(self, packet):
    pass


async def _retransmit_elsewhere(self, sequence_number):
    pass


async def _rtcp_loop_elsewhere(self):
    pass


async def _send_with_other_parameters(self, parameters, extra):
    pass


def _datagram_to_queue(self, data, addr):  # aioice no longer calls the connection's data_received
    self.receiver._queue.put_nowait((data, 1))


async def _recv_next_elsewhere(self):  # the DTLS transport keeps its counters another way
    pass


async def _send_rtp_elsewhere(self, data):  # the DTLS transport protects another way
    await self.transport._send(data)


async def _sendto_elsewhere(self, data, component):  # aioice sends another way
    pass


def _router_without_ssrc_table(self):
    self.receivers = set()


def _data_received_elsewhere(self, data, component):  # aioice hands datagrams on another way
    self.handler(data)


#: How aiortc could break each hook: (hook, what changed, how to make that change).
BREAKAGES = [
    ("decoder worker", "decoder_worker renamed",
     lambda mp: mp.delattr(rtcrtpreceiver, "decoder_worker")),
    ("decoder worker", "decoder_worker takes other parameters",
     lambda mp: mp.setattr(rtcrtpreceiver, "decoder_worker", lambda loop, input_q, output_q: None)),
    ("decoder worker", "receive() no longer starts decoder_worker",
     lambda mp: mp.setattr(RTCRtpReceiver, "receive", _receive_without_decoder_thread)),
    ("decoder queue", "frames no longer put into __decoder_queue",
     lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handle_rtp_elsewhere)),
    ("decoder queue", "the receiver no longer sets __decoder_queue",
     lambda mp: mp.setattr(RTCRtpReceiver, "__init__", _init_without_decoder_queue)),
    ("decoder queue", "the remote track has no _queue",
     lambda mp: mp.setattr(RemoteStreamTrack, "__init__", lambda self, kind, id=None: None)),
    ("decoder queue", "the decoder is stopped another way",
     lambda mp: mp.delattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder")),
    ("jitter buffer", "JitterBuffer has no prefetch",
     lambda mp: mp.setattr(passthrough, "JitterBuffer", _NarrowJitterBuffer)),
    ("jitter buffer", "the receiver no longer sets __jitter_buffer",
     lambda mp: mp.setattr(RTCRtpReceiver, "__init__", _init_without_jitter_buffer)),
    ("jitter buffer", "the receiver reassembles frames elsewhere",
     lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handle_rtp_elsewhere)),
    ("keyframe request upstream", "_send_rtcp_pli renamed",
     lambda mp: mp.delattr(RTCRtpReceiver, "_send_rtcp_pli")),
    ("keyframe request upstream", "_send_rtcp_pli no longer a coroutine",
     lambda mp: mp.setattr(RTCRtpReceiver, "_send_rtcp_pli", _pli_sync)),
    ("keyframe request upstream", "the RTX map is no longer __rtx_ssrc",
     lambda mp: mp.setattr(RTCRtpReceiver, "__init__", _init_without_rtx_map)),
    ("keyframe request upstream", "the synchronization sources are gone",
     lambda mp: mp.delattr(RTCRtpReceiver, "getSynchronizationSources")),
    ("keyframe request from a watcher", "_send_keyframe renamed",
     lambda mp: mp.delattr(RTCRtpSender, "_send_keyframe")),
    ("keyframe request from a watcher", "a PLI no longer calls _send_keyframe",
     lambda mp: mp.setattr(RTCRtpSender, "_handle_rtcp_packet", _rtcp_without_keyframe)),
    ("packets in", "the transport hands packets to the receiver another way",
     lambda mp: mp.setattr(RTCDtlsTransport, "_handle_rtp_data", _handle_rtp_data_elsewhere)),
    ("packets in", "_handle_rtp_packet takes other parameters",
     lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handle_rtp_without_arrival)),
    ("packets in", "the receiver no longer keeps its codecs in __codecs",
     lambda mp: mp.setattr(RTCRtpReceiver, "receive", _receive_without_decoder_thread)),
    ("packets out", "the sender keeps no send history",
     lambda mp: mp.setattr(RTCRtpSender, "_retransmit", _retransmit_elsewhere)),
    ("packets out", "the sender's reports read other counters",
     lambda mp: mp.setattr(RTCRtpSender, "_run_rtcp", _rtcp_loop_elsewhere)),
    ("packets out", "send() takes other parameters",
     lambda mp: mp.setattr(RTCRtpSender, "send", _send_with_other_parameters)),
    ("packets out", "the transport's _send_rtp is gone",
     lambda mp: mp.delattr(RTCDtlsTransport, "_send_rtp")),
    ("bandwidth", "the receiver estimates bandwidth elsewhere",
     lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handle_rtp_elsewhere)),
    ("bandwidth", "_send_rtcp is no longer a coroutine",
     lambda mp: mp.setattr(RTCRtpReceiver, "_send_rtcp", _pli_sync)),
    ("bandwidth", "RTCP reaches the sender another way",
     lambda mp: mp.setattr(RTCDtlsTransport, "_handle_rtcp_data", _handle_rtp_data_elsewhere)),
    ("packets straight from the socket", "the connection's data_received is gone",
     lambda mp: mp.delattr(Connection, "data_received")),
    ("packets straight from the socket", "datagrams reach the connection another way",
     lambda mp: mp.setattr(StunProtocol, "datagram_received", _datagram_to_queue)),
    ("packets straight from the socket", "the transport counts received packets elsewhere",
     lambda mp: mp.setattr(RTCDtlsTransport, "_recv_next", _recv_next_elsewhere)),
    ("packets straight from the socket", "the transport protects packets another way",
     lambda mp: mp.setattr(RTCDtlsTransport, "_send_rtp", _send_rtp_elsewhere)),
    ("packets straight from the socket", "aioice sends on another object than the nominated pair",
     lambda mp: mp.setattr(Connection, "sendto", _sendto_elsewhere)),
    ("packets straight from the socket", "the router keeps no SSRC table",
     lambda mp: mp.setattr(RtpRouter, "__init__", _router_without_ssrc_table)),
    ("packets straight from the socket", "the connection queues datagrams elsewhere",
     lambda mp: mp.setattr(Connection, "data_received", _data_received_elsewhere)),
]


def test_the_pinned_aiortc_passes_the_start_up_check_before_and_after_install():
    assert all(check() == [] for check in HOOKS.values())
    check_compatible()
    passthrough.install()
    check_compatible()  # checks aiortc's own decoder worker, not the one installed


def test_every_hook_has_its_breakages_tested():
    assert {hook for hook, _, _ in BREAKAGES} == set(HOOKS)


@pytest.mark.parametrize("hook,change,breaker", BREAKAGES, ids=[f"{h}: {c}" for h, c, _ in BREAKAGES])
def test_check_compatible_refuses_an_aiortc_that_breaks_a_hook(monkeypatch, hook, change, breaker):
    breaker(monkeypatch)
    assert HOOKS[hook](), f"the {hook} check missed: {change}"
    with pytest.raises(IncompatibleAiortc) as refused:
        check_compatible()
    assert f"{hook}: " in str(refused.value)
    assert aiortc.__version__ in str(refused.value)


async def test_the_rtx_lookup_does_not_fall_back_silently():
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        del receiver._RTCRtpReceiver__rtx_ssrc
        with pytest.raises(AttributeError):
            media_ssrc(receiver)
    finally:
        await pc.close()


async def test_the_app_refuses_to_start_with_an_incompatible_aiortc(monkeypatch, settings, clock):
    from aiohttp.test_utils import TestServer

    from evr.app import create_app

    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    server = TestServer(create_app(settings, clock=clock))
    try:
        with pytest.raises(IncompatibleAiortc, match="_send_keyframe"):
            await server.start_server()
    finally:
        await server.close()


async def test_a_packet_never_overtakes_one_queued_for_aiortc():
    """The first packets of a stream go aiortc's way (the router learns their SSRC
    there); a later packet must not be forwarded before them, or a watcher's stream
    would start reordered and a keyframe's first packet could be lost to it. So while
    aiortc's queue holds a datagram, the next ones queue behind it."""
    from types import SimpleNamespace

    from aiortc.rtcdtlstransport import State
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    class Srtp:
        def unprotect(self, data):
            return data

    accepted, stock = [], []
    receiver = object()
    inbound = SimpleNamespace(accept=lambda packet: accepted.append(packet.sequence_number))
    queue: asyncio.Queue = asyncio.Queue()
    connection = SimpleNamespace(_queue=queue, data_received=lambda data, component: (
        stock.append(data), queue.put_nowait(data)))
    dtls = SimpleNamespace(_rtp_router=SimpleNamespace(ssrc_table={7: receiver}),
                           _rtp_header_extensions_map=HeaderExtensionsMap(),
                           transport=SimpleNamespace(_connection=connection), _rx_srtp=Srtp(),
                           _state=State.CONNECTED, _RTCDtlsTransport__rx_bytes=0, _RTCDtlsTransport__rx_packets=0)
    passthrough.DirectReceive(dtls, {receiver: inbound})

    def packet(seq, ssrc=7):
        return RtpPacket(payload_type=96, sequence_number=seq, ssrc=ssrc, payload=b"\x10\x00").serialize()

    connection.data_received(packet(1, ssrc=8), 1)  # an SSRC not known yet: aiortc's way
    connection.data_received(packet(2), 1)  # known, but must not overtake packet 1
    assert accepted == [] and len(stock) == 2
    while not queue.empty():
        queue.get_nowait()  # the DTLS transport's task took them
    connection.data_received(packet(3), 1)
    connection.data_received(b"\x16\xfe\xfd" + bytes(20), 1)  # DTLS: always aiortc's
    assert accepted == [3] and len(stock) == 3
