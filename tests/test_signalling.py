"""Bad input on the signalling socket: an error message and the socket still works."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from evr.client import CallClient


async def victim_socket(link):
    opened = await link()
    client = CallClient(opened.phone.session, opened.ws_url)
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "state")
    return opened.officer, opened.created, client


async def expect_error(client, code):
    message = await client.wait_for(lambda m: m["type"] == "error" and m["code"] == code, timeout=5)
    client.messages.remove(message)
    return message


async def test_malformed_unknown_and_bad_sdp_get_errors_and_the_socket_survives(link):
    _officer, _created, client = await victim_socket(link)
    try:
        await client.ws.send_str("{this is not json")
        await expect_error(client, "malformed")
        await client.ws.send_str(json.dumps([1, 2, 3]))
        await expect_error(client, "malformed")
        await client.send({"type": "teleport"})
        assert "teleport" in (await expect_error(client, "unknown_type"))["message"]
        await client.send({"type": "offer", "sdp": "v=0\r\nthis is no sdp\r\n"})
        await expect_error(client, "bad_sdp")
        await client.send({"type": "offer"})
        await expect_error(client, "bad_sdp")
        await client.send({"type": "candidate", "candidate": {"candidate": "candidate:garbage"}})
        await expect_error(client, "no_offer")
        await client.ws.send_bytes(b"\x00\x01")
        await expect_error(client, "binary_not_supported")
        await client.ws.send_str(json.dumps({"type": "offer", "sdp": "x" * (70 * 1024)}))
        assert "65536" in (await expect_error(client, "too_large"))["message"]
        # After all that the same socket still carries a real call setup.
        await client.join()
        assert client.pc.remoteDescription is not None
        assert not client.ws.closed
    finally:
        await client.leave()


def only_audio(pc):
    pc.addTransceiver("audio")


def h264_only(pc):
    from aiortc import RTCRtpSender

    pc.addTransceiver("audio")
    video = pc.addTransceiver("video")
    video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                               if c.mimeType.lower() == "video/h264"])


def receive_only(pc):
    # Nothing to relay or record: the bridge's receivers get no track (was a 500-like
    # internal_error, found by the property test in test_signalling_hardening.py).
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")


@pytest.mark.parametrize("shape", [only_audio, h264_only, receive_only])
async def test_an_offer_the_bridge_cannot_relay_is_refused(link, shape):
    from aiortc import RTCPeerConnection

    _officer, _created, client = await victim_socket(link)
    pc = RTCPeerConnection()
    try:
        shape(pc)
        await pc.setLocalDescription(await pc.createOffer())
        await client.send({"type": "offer", "sdp": pc.localDescription.sdp})
        await expect_error(client, "bad_sdp")
        assert not client.ws.closed
    finally:
        await pc.close()
        await client.leave()


async def test_bad_candidates_after_an_offer_get_errors(link):
    _officer, _created, client = await victim_socket(link)
    try:
        await client.join()
        await client.send({"type": "candidate", "candidate": 5})
        await expect_error(client, "bad_candidate")
        await client.send({"type": "candidate", "candidate": {"candidate": 5}})
        await expect_error(client, "bad_candidate")
        await client.send({"type": "candidate", "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}})
        await expect_error(client, "bad_candidate")
        port_not_a_number = "candidate:1 1 udp 2130706431 192.0.2.1 port typ host"
        await client.send({"type": "candidate", "candidate": {"candidate": port_not_a_number, "sdpMid": "0"}})
        await expect_error(client, "bad_candidate")
        valid = "candidate:1 1 udp 2130706431 192.0.2.1 9 typ host"
        await client.send({"type": "candidate", "candidate": {"candidate": valid, "sdpMid": "nope"}})
        await client.send({"type": "candidate", "candidate": {"candidate": valid, "sdpMid": "0"}})
        await client.send({"type": "candidate", "candidate": None})  # end of candidates: fine
        await client.send({"type": "pause"})
        state = await client.wait_for(lambda m: m["type"] == "state" and m["status"] == "paused")
        assert state and not [m for m in client.messages if m["type"] == "error"]
    finally:
        await client.leave()


async def test_a_huge_frame_closes_the_socket_with_1008(link):
    _officer, _created, client = await victim_socket(link)
    await client.ws.send_str("x" * (2 * 1024 * 1024))
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008


async def test_a_flood_closes_the_socket_with_1008(link):
    _officer, _created, client = await victim_socket(link)
    for _ in range(200):
        if client.ws.closed:
            break
        try:
            await client.ws.send_str('{"type": "resume"}')
        except (ConnectionError, aiohttp.ClientError):
            break
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008


async def test_a_new_socket_replaces_the_old_one(link):
    officer, created, first = await victim_socket(link)
    second = CallClient(first.http, first.ws_url)
    await second.connect()
    await asyncio.wait_for(first.closed.wait(), 5)
    assert first.close_code == 4001
    assert any(m.get("code") == "replaced" for m in first.messages)
    await second.join()
    assert not second.ws.closed
    await second.leave()


async def test_staff_socket_needs_a_session(new_client, staff):
    officer = await staff()
    created = await officer.create()
    stranger = await new_client()
    response = await stranger.get(f"/api/consultations/{created['id']}/ws")
    assert response.status == 401


async def test_cross_origin_socket_is_refused(staff):
    officer = await staff()
    created = await officer.create()
    response = await officer.client.get(
        f"/api/consultations/{created['id']}/ws", headers={"Origin": "https://evil.example"}
    )
    assert response.status == 403
