"""End to end: aiortc clients as victim and officer talk through the server over loopback."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

from aiortc import RTCPeerConnection

from conftest import link_path
from evr.app import HUB
from evr.client import CallClient


async def open_call(staff, new_client, decode=False):
    """An officer and a victim in one consultation, both joined, media flowing."""
    officer = await staff()
    created = await officer.create()
    phone = await new_client()
    path = link_path(created["join_url"])
    assert (await phone.get(path)).status == 200
    victim = CallClient(phone.session, str(phone.make_url(path + "/ws")), decode=decode)
    console = CallClient(officer.client.session, officer.ws_url(created["id"]), decode=decode)
    await victim.join()
    await console.join()
    return officer, created, phone, victim, console


def participant(detail, role):
    return next(p for p in detail["participants"] if p["role"] == role)


async def test_media_flows_both_ways_and_is_counted(staff, new_client):
    officer, created, _phone, victim, console = await open_call(staff, new_client)
    try:
        await victim.wait_media(audio=50, video=30)
        await console.wait_media(audio=50, video=30)
        assert victim.video_keyframes >= 1 and console.video_keyframes >= 1
        detail = await officer.consultation(created["id"])
        assert detail["status"] == "live"
        assert detail["arrived_at"] is not None
        for role in ("victim", "officer"):
            p = participant(detail, role)
            assert p["connected"] is True
            media = p["media"]
            assert media["audio_in_packets"] > 0 and media["video_in_frames"] > 0
            assert media["audio_out_packets"] > 0 and media["video_out_frames"] > 0
        # What the server sent the victim is what the victim received (give or take in-flight).
        v = participant(detail, "victim")["media"]
        assert v["video_out_frames"] >= victim.video_frames - 5
        state = await victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
        assert state["recording"] is False
        assert {p["role"] for p in state["participants"]} == {"victim", "officer"}
    finally:
        await victim.leave()
        await console.leave()


async def test_relayed_video_decodes_at_the_far_end(staff, new_client):
    """Passthrough keeps the VP8 stream valid: the officer's client decodes it."""
    _officer, _created, _phone, victim, console = await open_call(staff, new_client, decode=True)
    try:
        await console.wait_media(audio=10, video=20)
        assert set(console.decoded_sizes) == {(320, 240)}
    finally:
        await victim.leave()
        await console.leave()


async def test_victim_rejoins_after_the_connection_drops(staff, new_client):
    officer, created, phone, victim, console = await open_call(staff, new_client)
    try:
        await console.wait_media(audio=20, video=15)
        await victim.drop()
        await console.wait_for(
            lambda m: m["type"] == "state"
            and any(p["role"] == "victim" and not p["connected"] for p in m["participants"])
        )
        detail = await officer.consultation(created["id"])
        assert participant(detail, "victim")["connected"] is False
        before = console.video_frames
        again = CallClient(phone.session, victim.ws_url)
        await again.join()
        await console.wait_media(audio=20, video=15)
        await again.wait_media(audio=20, video=15)
        assert console.video_frames > before
        detail = await officer.consultation(created["id"])
        p = participant(detail, "victim")
        assert p["connected"] is True and p["media"]["video_in_frames"] > 0
        assert len([p for p in detail["participants"] if p["role"] == "victim"]) == 1
        await again.leave()
    finally:
        await victim.leave()
        await console.leave()


async def test_new_offer_on_the_same_socket_replaces_the_connection(staff, new_client, server):
    _officer, created, _phone, victim, console = await open_call(staff, new_client)
    try:
        await console.wait_media(audio=10, video=10)
        room = server.app[HUB].rooms[created["id"]]
        old_pc = room.participants["victim"].leg.pc
        await victim.join()  # rejoin: a fresh peer connection, same socket
        await console.wait_media(audio=20, video=15)
        assert room.participants["victim"].leg.pc is not old_pc
        assert old_pc.connectionState == "closed"
        # Each side feeds exactly one live outgoing track per kind: the old leg's are gone.
        for p in room.participants.values():
            for kind in ("audio", "video"):
                assert len(p.watchers[kind]) == 1
                assert all(t.readyState == "live" for t in p.watchers[kind])
    finally:
        await victim.leave()
        await console.leave()


async def test_pause_stops_media_and_resume_restarts_it(staff, new_client):
    officer, created, _phone, victim, console = await open_call(staff, new_client)
    try:
        await console.wait_media(audio=20, video=15)
        await victim.send({"type": "pause"})
        await console.wait_for(lambda m: m["type"] == "state" and m["status"] == "paused")
        assert (await officer.consultation(created["id"]))["status"] == "paused"
        await asyncio.sleep(0.3)  # what was in flight
        frozen = (console.video_frames, console.audio_packets, victim.video_frames)
        await asyncio.sleep(1.0)
        assert (console.video_frames, console.audio_packets, victim.video_frames) == frozen
        await console.send({"type": "resume"})  # the other side may resume
        await victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
        await console.wait_media(audio=20, video=15)
        await victim.wait_media(audio=20, video=15)
        assert (await officer.consultation(created["id"]))["status"] == "live"
    finally:
        await victim.leave()
        await console.leave()


async def test_close_tells_everyone_tears_down_within_2s_and_leaves_nothing(staff, new_client, server):
    officer, created, phone, victim, console = await open_call(staff, new_client)
    room = server.app[HUB].rooms[created["id"]]
    await victim.wait_media(audio=10, video=10)
    await console.wait_media(audio=10, video=10)
    pcs = [weakref.ref(p.leg.pc) for p in room.participants.values()]
    server_pcs = [p.leg.pc for p in room.participants.values()]
    started = time.monotonic()
    response = await officer.post(f"/api/consultations/{created['id']}/close")
    assert response.status == 200
    await asyncio.wait_for(asyncio.gather(victim.closed.wait(), console.closed.wait()), 2.0)
    assert all(pc.connectionState == "closed" for pc in server_pcs)
    assert time.monotonic() - started < 2.0
    assert victim.close_code == console.close_code == 4000
    assert any(m["type"] == "closed" for m in victim.messages)
    assert any(m["type"] == "closed" for m in console.messages)
    await victim.leave()
    await console.leave()
    del server_pcs, room
    assert created["id"] not in server.app[HUB].rooms
    # Nothing of the consultation is left: no peer connection, no task, no thread.
    await asyncio.sleep(0.5)
    gc.collect()
    assert [ref for ref in pcs if ref() is not None] == []
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and _is_media_task(t)]
    assert leftover == [], leftover
    assert [t.name for t in threading.enumerate() if "decoder" in t.name] == []
    assert [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)] == []
    # ...and the link is dead.
    assert (await phone.get(link_path(created["join_url"]))).status == 410


def _is_media_task(task: asyncio.Task) -> bool:
    text = repr(task.get_coro())
    return any(word in text for word in ("aiortc", "aioice", "RTC", "Relay", "Leg", "Room"))


async def test_closed_link_socket_is_refused_with_410(staff, new_client):
    officer = await staff()
    created = await officer.create()
    phone = await new_client()
    path = link_path(created["join_url"])
    await phone.get(path)
    await officer.post(f"/api/consultations/{created['id']}/close")
    response = await phone.get(path + "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                      "Sec-WebSocket-Version": "13",
                                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert response.status == 410


async def test_second_browser_cannot_open_the_socket(staff, new_client):
    officer = await staff()
    created = await officer.create()
    path = link_path(created["join_url"])
    phone, other = await new_client(), await new_client()
    await phone.get(path)
    response = await other.get(path + "/ws")
    assert response.status == 403


async def test_another_officer_cannot_join_and_records_role_is_refused(staff, new_client):
    officer = await staff()
    created = await officer.create()
    bob = await staff("bob", "officer")
    rita = await staff("rita", "records")
    assert (await bob.get(f"/api/consultations/{created['id']}/ws")).status == 404
    assert (await rita.get(f"/api/consultations/{created['id']}/ws")).status == 403


async def test_sergeant_joining_sees_the_victim(staff, new_client):
    officer, created, _phone, victim, console = await open_call(staff, new_client)
    sarge = await staff("sarge", "sergeant")
    third = CallClient(sarge.client.session, sarge.ws_url(created["id"]))
    try:
        await third.join()
        await third.wait_media(audio=20, video=15)
        await victim.wait_media(audio=20, video=15)  # still the officer's picture
        detail = await officer.consultation(created["id"])
        assert sorted(p["role"] for p in detail["participants"]) == ["officer", "sergeant", "victim"]
    finally:
        await third.leave()
        await victim.leave()
        await console.leave()


async def test_keyframe_requests_travel_upstream_rate_limited(staff, new_client):
    from evr.media.passthrough import send_pli

    _officer, _created, _phone, victim, console = await open_call(staff, new_client)
    try:
        await console.wait_media(audio=10, video=20)
        source = victim.sources["video"]
        # A new consumer (the officer) started: the victim was asked for a keyframe.
        assert source.keyframe_requests >= 1
        before, keyframes = source.keyframe_requests, console.video_keyframes
        receiver = next(t.receiver for t in console.pc.getTransceivers() if t.kind == "video")
        for _ in range(5):  # a burst of PLIs from the officer's side...
            assert send_pli(receiver)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        # ...reaches the victim's encoder, at most once per 300 ms...
        assert 1 <= source.keyframe_requests - before <= 2
        # ...and a keyframe comes back to the officer.
        await console.wait_media(audio=5, video=5)
        assert console.video_keyframes > keyframes
    finally:
        await victim.leave()
        await console.leave()
