"""Hostile text on the signalling socket (issue 11, finding 11): an ``error`` reply,
never a dead socket, never an ``internal_error``; and a property test over any text
frame (random JSON, random strings, SDP-ish offers and candidates)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from conftest import eventually
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from evr.client import CallClient


@pytest.fixture
def settings(settings):
    settings.ws_max_rate = 10_000  # the property test sends hundreds of frames
    settings.ws_burst = 10_000
    return settings


async def victim_socket(link):
    opened = await link()
    client = CallClient(opened.phone.session, opened.ws_url)
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "state")
    return client


async def next_error(client, start: int) -> dict:
    """The first error the server sent after message number ``start``."""
    errors = await eventually(lambda: [m for m in client.messages[start:] if m["type"] == "error"], timeout=5,
                              interval=0.025, what=f"an error reply after message {start}")
    return errors[0]


async def test_deep_unencodable_odd_and_huge_json_gets_errors_and_the_socket_survives(link):
    client = await victim_socket(link)
    deep = "[" * 30_000 + "]" * 30_000
    candidate = "candidate:1 1 udp 2130706431 192.0.2.1 9 typ host"
    hostile = {
        deep: "malformed",
        '{"type": "offer", "sdp": ' + "[" * 20_000 + "]" * 20_000 + "}": "malformed",
        '{"type": "\\ud800"}': "unencodable_text",
        '{"type": "offer", "sdp": "v=0\\r\\ns=\\udfff"}': "unencodable_text",
        '{"\\udc80": 1, "type": "pause"}': "unencodable_text",
        "null": "malformed",
        "5": "malformed",
        '"offer"': "malformed",
        "[]": "malformed",
        '{"type": 5}': "malformed",
        '{"type": ' + "9" * 5000 + "}": "malformed",  # past Python's int digit limit
        '{"type": "candidate", "candidate": {"candidate": "' + candidate + '", "sdpMLineIndex": 1e400}}': "no_offer",
    }
    try:
        for frame, code in hostile.items():
            start = len(client.messages)
            await client.ws.send_str(frame)
            reply = await next_error(client, start)
            assert reply["code"] == code, (frame[:60], reply)
            assert not client.ws.closed
        await client.join()  # the same socket still sets up a call...
        for index in (1e400, 10**400, -1, True, "0"):  # ...and a huge index is refused, not used
            start = len(client.messages)
            await client.send({"type": "candidate", "candidate": {"candidate": candidate, "sdpMLineIndex": index}})
            assert (await next_error(client, start))["code"] == "bad_candidate", index
        assert client.pc.remoteDescription is not None and not client.ws.closed
    finally:
        await client.leave()


SDP_LINES = [
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 0.0.0.0",
    "a=mid:0", "a=mid:1", "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "a=ssrc:1 cname:x",
    "a=candidate:1 1 udp 2130706431 192.0.2.1 9 typ host", "a=extmap:1 urn:x", "a=rtcp-fb:96 nack pli",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=sctp-port:5000", "a=msid:- x",
]
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | surrogates
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
sdp = st.lists(st.sampled_from(SDP_LINES) | st.text(max_size=30), max_size=24).map("\r\n".join)
candidate_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda *parts: "candidate:" + " ".join(map(str, parts)), st.integers(), st.integers(0, 3),
              st.sampled_from(["udp", "tcp", "x"]), st.integers(), st.sampled_from(["192.0.2.1", "::1", "host", ""]),
              st.integers(-1, 70000), st.sampled_from(["typ host", "typ srflx", "typ", "typ relay raddr 1 rport 2"])),
)


def mutated(lines: list[str]) -> st.SearchStrategy[str]:
    """A real offer with lines dropped, repeated, cut short or replaced by noise."""
    def apply(edits: list[tuple[int, str, str]]) -> str:
        out = list(lines)
        for where, how, noise in edits:
            i = where % len(out)
            if how == "drop" and len(out) > 1:
                del out[i]
            elif how == "repeat":
                out.insert(i, out[i])
            elif how == "cut":
                out[i] = out[i][: len(noise)]
            else:
                out[i] = noise
        return json.dumps({"type": "offer", "sdp": "\r\n".join(out) + "\r\n"})

    edit = st.tuples(st.integers(0, 10_000), st.sampled_from(["drop", "repeat", "cut", "replace"]), st.text(max_size=30))
    return st.lists(edit, max_size=3).map(apply)


def frames(offer_lines: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        values.map(json.dumps),
        mutated(offer_lines),
        st.text(max_size=200),
        sdp.map(lambda s: json.dumps({"type": "offer", "sdp": s})),
        st.builds(lambda c, mid, index: json.dumps({"type": "candidate",
                                                    "candidate": {"candidate": c, "sdpMid": mid, "sdpMLineIndex": index}}),
                  candidate_text, st.none() | st.sampled_from(["0", "1"]) | st.text(max_size=4) | st.integers(),
                  st.none() | st.integers() | st.floats() | st.text(max_size=3)),
        st.builds(lambda kind, extra: json.dumps({**extra, "type": kind}),
                  st.sampled_from(["offer", "candidate", "pause", "resume", "answer", "state", "chat", "location", ""]),
                  st.dictionaries(st.sampled_from(["sdp", "candidate", "text", "lat", "lon", "accuracy_m", "x"]),
                                  values, max_size=3)),
        # Chat and location with values of every kind (a chat message is kept: short ones).
        st.builds(lambda text: json.dumps({"type": "chat", "text": text}), values | st.text(max_size=40)),
        st.builds(lambda lat, lon, acc: json.dumps({"type": "location", "lat": lat, "lon": lon, "accuracy_m": acc}),
                  values | st.floats(-200, 200), values | st.floats(-400, 400), values | st.floats(-1, 2e5)),
        sdp.map(lambda s: json.dumps({"type": "answer", "sdp": s})),
    )


async def test_any_text_frame_gets_a_reply_or_nothing_and_never_kills_the_socket(link):
    client = await victim_socket(link)
    loop = asyncio.get_running_loop()
    probes = itertools.count()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # a real offer, to mutate
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    offer_lines = pc.localDescription.sdp.strip().split("\r\n")
    await pc.close()

    async def exchange(frame: str) -> list[dict]:
        """Send the frame, then a probe; what came back before the probe's reply is
        the frame's reply (frames are handled in order)."""
        n = next(probes)
        start = len(client.messages)
        await client.ws.send_str(frame)
        await client.send({"type": f"probe-{n}"})
        await client.wait_for(lambda m: m.get("code") == "unknown_type" and f"'probe-{n}'" in m["message"])
        return client.messages[start:]

    @hypothesis_settings(max_examples=int(os.environ.get("EVR_FUZZ_EXAMPLES", "100")), deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frames(offer_lines))
    def property_(frame: str) -> None:
        replies = asyncio.run_coroutine_threadsafe(exchange(frame), loop).result(30)
        assert not client.ws.closed, frame
        assert not [m for m in replies if m.get("code") == "internal_error"], frame

    try:
        await asyncio.to_thread(property_)
    finally:
        await client.leave()
