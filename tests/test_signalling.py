"""Bad input on the signalling socket: an error message and the socket still works."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from conftest import link_path
from evr.client import CallClient


async def victim_socket(staff, new_client):
    officer = await staff()
    created = await officer.create()
    phone = await new_client()
    path = link_path(created["join_url"])
    await phone.get(path)
    client = CallClient(phone.session, str(phone.make_url(path + "/ws")))
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "state")
    return officer, created, client


async def expect_error(client, code):
    message = await client.wait_for(lambda m: m["type"] == "error" and m["code"] == code, timeout=5)
    client.messages.remove(message)
    return message


async def test_malformed_unknown_and_bad_sdp_get_errors_and_the_socket_survives(staff, new_client):
    _officer, _created, client = await victim_socket(staff, new_client)
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


async def test_an_offer_with_only_audio_is_refused(staff, new_client):
    from aiortc import RTCPeerConnection

    _officer, _created, client = await victim_socket(staff, new_client)
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        await client.send({"type": "offer", "sdp": pc.localDescription.sdp})
        await expect_error(client, "bad_sdp")
    finally:
        await pc.close()
        await client.leave()


async def test_an_offer_without_vp8_is_refused(staff, new_client):
    from aiortc import RTCPeerConnection, RTCRtpSender

    _officer, _created, client = await victim_socket(staff, new_client)
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        video = pc.addTransceiver("video")
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType.lower() == "video/h264"])
        await pc.setLocalDescription(await pc.createOffer())
        await client.send({"type": "offer", "sdp": pc.localDescription.sdp})
        await expect_error(client, "bad_sdp")
        assert not client.ws.closed
    finally:
        await pc.close()
        await client.leave()


async def test_a_huge_frame_closes_the_socket_with_1008(staff, new_client):
    _officer, _created, client = await victim_socket(staff, new_client)
    await client.ws.send_str("x" * (2 * 1024 * 1024))
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008


async def test_a_flood_closes_the_socket_with_1008(staff, new_client):
    _officer, _created, client = await victim_socket(staff, new_client)
    for _ in range(200):
        if client.ws.closed:
            break
        try:
            await client.ws.send_str('{"type": "resume"}')
        except (ConnectionError, aiohttp.ClientError):
            break
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008


async def test_a_new_socket_replaces_the_old_one(staff, new_client):
    officer, created, first = await victim_socket(staff, new_client)
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
