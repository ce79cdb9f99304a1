"""More people in a call, end to end with aiortc clients over real sockets: every
participant receives every other's audio and video (counted at each client, by the
mids its ``state`` names), guests come and go and staff end a guest's link without
ending the call, a screen share is relayed and recorded as its own recording, chat
reaches everyone and the transcript, and the victim's location reaches staff only.

A participant joining or leaving must not interrupt the others: each client keeps
the longest silence seen on every mid, and those already in the call stay under
500 ms while someone joins, leaves and rejoins.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from conftest import claim, eventually, in_process_room, link_path

from evr.cli import main as evr_main
from evr.client import CallClient, mark_slides
from evr.http import HUB
from evr.media.sources import opus_clip, vp8_clip

#: The longest silence allowed on a flowing track while someone joins or leaves.
MAX_GAP_S = 0.5


async def invite(officer: Any, cid: str, role: str = "interpreter", name: str = "Ana") -> dict[str, Any]:
    response = await officer.post(f"/api/consultations/{cid}/guests", {"role": role, "name": name,
                                                                       "language": "Portuguese"})
    assert response.status == 201, await response.text()
    return await response.json()


def light() -> dict[str, Any]:
    """Client media light enough that four aiortc clients and the server share this
    test's one event loop without it stalling: 160x120 at 15 fps, and Opus. (The
    server runs in the test's process: a stalled loop would be the test's own gap.)"""
    return {"clips": {"audio": opus_clip(), "video": vp8_clip(160, 120, fps=15, bitrate=100_000)}}


async def guest_client(call: Any, new_client: Any, join_url: str, **options: Any) -> tuple[Any, CallClient]:
    """A guest's browser: opens its link, claims it, joins the call."""
    browser = await new_client()
    path = link_path(join_url)
    assert (await browser.get(path)).status == 200
    assert (await claim(browser, path)).status == 200
    client = call.client(browser.session, str(browser.make_url(path + "/ws")), **options)
    await client.join()
    return browser, client


def ids(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in state.get("participants", [])}


async def state_where(client: CallClient, holds: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The client's latest ``state`` once ``holds(state)`` is true of it."""
    return await eventually(client.state, holds, timeout=timeout, what="the state")


async def three_way(call: Any, new_client: Any, **options: Any) -> tuple[Any, CallClient, str]:
    c = await call(**options)
    guest = await invite(c.officer, c.id)
    _, interpreter = await guest_client(call, new_client, guest["join_url"], **options)
    return c, interpreter, f"guest:{guest['id']}"


def staff_id(c: Any) -> str:
    state = c.console.state()
    return next(p["id"] for p in state["participants"] if p.get("you"))


async def test_three_people_each_receive_both_others_audio_and_video(call, new_client):
    c, interpreter, guest = await three_way(call, new_client)
    officer = staff_id(c)
    for client, others in ((c.victim, (officer, guest)), (c.console, ("victim", guest)),
                           (interpreter, ("victim", officer))):
        for other in others:
            await client.wait_from(other, audio=25, video=15, timeout=15)
    # Each client was offered the third participant by the server (renegotiation) and
    # its state names every other participant's mids, all distinct.
    for client in (c.victim, c.console, interpreter):
        assert client.server_offers >= 1
        state = client.state()
        mids = [mid for p in state["participants"] if not p["you"] for mid in p["mids"].values()]
        assert len(mids) == 4 and len(set(mids)) == 4, state
    detail = await c.officer.consultation(c.id)
    by_id = {p["id"]: p for p in detail["participants"]}
    assert by_id[guest]["role"] == "interpreter" and by_id[guest]["name"] == "Ana"
    assert all(p["connected"] for p in by_id.values())
    # Staff see the guest; the guest's own state says who it is.
    me = next(p for p in interpreter.state()["participants"] if p["you"])
    assert me["id"] == guest and me["role"] == "interpreter"


@in_process_room
async def test_a_guest_leaving_and_rejoining_does_not_interrupt_the_others(call, new_client, server):
    c, interpreter, guest = await three_way(call, new_client, **light())
    officer = staff_id(c)
    await c.victim.wait_from(guest, audio=25, video=15, timeout=15)
    await c.console.wait_from("victim", audio=50, video=30)
    # From here on, the victim's and the officer's media must not stall.
    victim_mids = ids(c.victim.state())[officer]["mids"].values()
    console_mids = ids(c.console.state())["victim"]["mids"].values()
    for client in (c.victim, c.console):
        client.restart_gaps()
    await interpreter.drop()
    for client in (c.console, c.victim):
        await state_where(client, lambda s: guest in ids(s) and not ids(s)[guest]["connected"])
    # The guest's outputs went idle (offered again), nothing else changed.
    assert not ids(c.console.state())[guest]["mids"]
    await c.victim.wait_from(officer, audio=25, video=15)
    # The guest comes back on the same link (same browser), in a new connection.
    again = call.client(interpreter.http, interpreter.ws_url, **light())
    await again.join()
    await again.wait_from("victim", audio=25, video=15, timeout=15)
    await c.console.wait_from(guest, audio=25, video=15, timeout=15)
    await c.victim.wait_from(guest, audio=25, video=15, timeout=15)
    await c.victim.wait_from(officer, audio=25, video=15)
    for client, mids in ((c.victim, victim_mids), (c.console, console_mids)):
        gaps = {mid: client.longest_gap.get(mid, 0.0) for mid in mids}
        assert max(gaps.values()) < MAX_GAP_S, gaps
    # The idle outputs were reused, not added: the connection does not grow.
    room = server.app[HUB].rooms[c.id]
    outputs = room.participants["victim"].leg.outputs
    assert len(outputs) == 4, [(o.kind, o.mid, o.source and o.source.key) for o in outputs]


async def test_staff_end_a_guests_link_and_the_call_goes_on(call, new_client):
    c, interpreter, guest = await three_way(call, new_client)
    gid = guest.removeprefix("guest:")
    await c.victim.wait_from(guest, audio=10, video=5, timeout=15)
    response = await c.officer.post(f"/api/consultations/{c.id}/guests/{gid}/close")
    assert response.status == 200, await response.text()
    await asyncio.wait_for(interpreter.closed.wait(), 5)
    assert interpreter.close_code == 4000
    assert any(m["type"] == "closed" for m in interpreter.messages)
    # The link is finished: page and socket answer 410.
    page = await interpreter.http.get(interpreter.ws_url.removesuffix("/ws").replace("ws://", "http://"))
    assert page.status == 410
    # The victim and the officer still talk; the guest is no longer listed.
    await c.victim.wait_from(staff_id(c), audio=25, video=15)
    await c.console.wait_from("victim", audio=25, video=15)
    state = await state_where(c.console, lambda s: guest not in ids(s))
    assert state["status"] == "live"
    assert (await c.officer.consultation(c.id))["status"] == "live"


async def test_a_screen_share_is_relayed_and_recorded_as_its_own_recording(call, server):
    c = await call()
    officer = staff_id(c)
    await c.victim.wait_from(officer, audio=50, video=30)  # steady: a call's first second may stall
    screen = vp8_clip(480, 360, fps=10, bitrate=200_000)  # encoded before measuring: it blocks the loop
    c.victim.restart_gaps()
    await c.console.share_screen(screen)
    state = await state_where(c.victim, lambda s: "screen" in ids(s).get(officer, {}).get("mids", {}))
    assert ids(state)[officer]["screen"] is True
    await c.victim.wait_from(officer, audio=0, video=0, screen=20, timeout=15)
    await c.victim.wait_from(officer, audio=25, video=15)  # the camera goes on beside it
    camera_mids = ids(c.victim.state())[officer]["mids"]
    assert max(c.victim.longest_gap.get(camera_mids[f], 0.0) for f in ("audio", "video")) < MAX_GAP_S
    await c.console.stop_screen()
    await state_where(c.victim, lambda s: not ids(s)[officer]["screen"] and "screen" not in ids(s)[officer]["mids"])
    await c.officer.post(f"/api/consultations/{c.id}/close")
    recordings = await eventually(
        lambda: _recordings(c), lambda rs: len(rs) == 3 and all(r["status"] == "complete" for r in rs), timeout=20)
    screens = [r for r in recordings if r["track"] == "screen"]
    assert len(screens) == 1 and screens[0]["participant"] == "officer"
    assert screens[0]["segments"] >= 1 and screens[0]["duration_s"] > 0.5


async def _recordings(c: Any) -> list[dict[str, Any]]:
    response = await c.officer.get(f"/api/consultations/{c.id}/recordings")
    return (await response.json())["recordings"]


async def test_chat_reaches_everyone_and_the_transcript(call, new_client):
    c, interpreter, guest = await three_way(call, new_client)
    await c.victim.send({"type": "chat", "text": "My flat is 4B, Rosebery Court"})
    for client in (c.victim, c.console, interpreter):
        message = await client.wait_for(lambda m: m["type"] == "chat")
        assert message["text"] == "My flat is 4B, Rosebery Court"
        assert message["from"]["role"] == "victim" and message["id"] and message["at"]
    await interpreter.send({"type": "chat", "text": "Apartamento 4B"})
    await c.console.wait_for(lambda m: m["type"] == "chat" and m["from"]["role"] == "interpreter")
    transcript = await (await c.officer.get(f"/api/consultations/{c.id}/chat")).json()
    assert [m["text"] for m in transcript["messages"]] == ["My flat is 4B, Rosebery Court", "Apartamento 4B"]


async def test_bad_input_gets_a_clear_error_and_the_call_goes_on(call, new_client):
    c = await call(**light())
    officer = staff_id(c)
    await c.victim.send({"type": "chat", "text": "x" * 2001})
    error = await c.victim.wait_for(lambda m: m["type"] == "error")
    assert error["code"] == "chat_too_long"
    await c.victim.send({"type": "location", "lat": 200, "lon": 0, "accuracy_m": 10})
    error = await c.victim.wait_for(lambda m: m["type"] == "error" and m["code"] != "chat_too_long")
    assert error["code"] == "bad_location"
    await c.console.send({"type": "location", "lat": 51.5, "lon": -0.1, "accuracy_m": 10})
    error = await c.console.wait_for(lambda m: m["type"] == "error")
    assert error["code"] == "not_allowed"
    await c.console.send({"type": "answer", "sdp": "v=0"})  # no offer is out
    await c.console.wait_for(lambda m: m["type"] == "error" and m["code"] == "no_offer")
    guest = await invite(c.officer, c.id)
    _, interpreter = await guest_client(call, new_client, guest["join_url"], **light())
    await interpreter.send({"type": "pause"})  # a guest does not pause the call
    assert (await interpreter.wait_for(lambda m: m["type"] == "error"))["code"] == "not_allowed"
    assert c.console.state()["status"] == "live"
    response = await c.officer.post(f"/api/consultations/{c.id}/guests", {"role": "astrologer"})
    assert response.status == 422 and (await response.json())["error"]["code"] == "invalid_role"
    await c.victim.wait_from(officer, audio=25, video=15)
    await c.console.wait_from("victim", audio=25, video=15)


@in_process_room
async def test_a_seventh_participant_is_refused_and_the_six_go_on(call, new_client, staff, server):
    c = await call()
    guests = [await invite(c.officer, c.id, role, f"Guest {n}") for n, role in
              enumerate(("carer", "interpreter", "appropriate_adult", "support_worker"))]
    clients = [(await guest_client(call, new_client, g["join_url"]))[1] for g in guests]
    assert server.app[HUB].rooms[c.id].count() == 6
    sergeant = await staff("sam", "sergeant")
    seventh = call.client(sergeant.client.session, sergeant.ws_url(c.id))
    with pytest.raises(RuntimeError, match="room_full"):
        await seventh.join()
    await c.victim.wait_from(f"guest:{guests[3]['id']}", audio=10, video=5, timeout=20)
    await clients[3].wait_from("victim", audio=10, video=5, timeout=20)


async def test_the_victims_location_reaches_staff_only_and_is_audit_logged(call, new_client, server):
    c, interpreter, guest = await three_way(call, new_client)
    await c.victim.send({"type": "location", "lat": 51.5072, "lon": -0.1276, "accuracy_m": 12})
    state = await state_where(c.console, lambda s: s.get("location"))
    assert state["location"]["lat"] == 51.5072 and state["location"]["accuracy_m"] == 12
    assert state["location"]["at"]
    assert all("location" not in m for m in c.victim.messages + interpreter.messages if m["type"] == "state")
    detail = await c.officer.consultation(c.id)
    assert detail["location"]["lon"] == -0.1276


@in_process_room
async def test_an_answer_that_sends_where_the_server_only_sends_starts_no_decoder(call, new_client, server):
    """A hostile client answering ``sendrecv`` to the server's ``sendonly`` sections
    would make aiortc start a decoder thread per section on the server: every
    receiver gets a sink that drops what nobody asked for."""
    c = await call(**light())
    real_send = c.victim.send

    async def hostile(message: dict[str, Any]) -> None:
        if message["type"] == "answer":
            message = {**message, "sdp": message["sdp"].replace("a=recvonly", "a=sendrecv")}
        await real_send(message)

    c.victim.send = hostile  # type: ignore[method-assign]
    guest = await invite(c.officer, c.id)
    _, interpreter = await guest_client(call, new_client, guest["join_url"], **light())
    await interpreter.wait_from("victim", audio=10, video=5, timeout=15)
    await eventually(lambda: c.victim.server_offers, lambda n: n >= 1)
    leg = server.app[HUB].rooms[c.id].participants["victim"].leg
    await eventually(lambda: leg.pc.signalingState, lambda s: s == "stable")
    started = [t.receiver for t in leg.pc.getTransceivers() if t.receiver.track is not None]
    assert len(started) > 2  # the answer did make the server's sections receive...
    assert all(r in leg.guarded for r in started)  # ...into sinks, never a decoder
    assert not [t for t in threading.enumerate() if t.name.endswith("-decoder") and t.is_alive()]
    await c.console.wait_from("victim", audio=25, video=15)


async def test_bad_renegotiations_are_refused_and_the_call_goes_on(call):
    c = await call(**light())
    officer = staff_id(c)
    pc = c.victim.pc
    # An answer to no offer, and one whose sections do not match the offer.
    await c.victim.send({"type": "answer", "sdp": pc.localDescription.sdp.replace("a=sendrecv", "a=recvonly")})
    assert (await c.victim.wait_for(lambda m: m["type"] == "error"))["code"] == "no_offer"
    # A renegotiation that adds two sections, or a section that is not a screen.
    for kind in ("audio", "video"):
        pc.addTransceiver(kind, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    seen = len(c.victim.messages)
    await c.victim.send({"type": "offer", "sdp": pc.localDescription.sdp})
    error = await c.victim.wait_for(lambda m: m["type"] == "error" and c.victim.messages.index(m) >= seen)
    assert error["code"] == "bad_sdp"
    await c.console.wait_from("victim", audio=25, video=15)
    await c.victim.wait_from(officer, audio=25, video=15)


async def test_a_first_offer_with_the_screen_before_the_camera_is_refused(call, staff, new_client):
    c = await call(**light())
    sergeant = await staff("sam", "sergeant")
    client = call.client(sergeant.client.session, sergeant.ws_url(c.id), **light())
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "config")
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    for kind in ("audio", "video", "video"):
        pc.addTransceiver(kind, direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    video_mids = [t.mid for t in pc.getTransceivers() if t.kind == "video"]
    await client.send({"type": "offer", "sdp": mark_slides(pc.localDescription.sdp, video_mids[0])})
    error = await client.wait_for(lambda m: m["type"] == "error")
    assert error["code"] == "bad_sdp" and "screen" in error["message"]
    await pc.close()
    await c.console.wait_from("victim", audio=25, video=15)


async def test_done_means_three_see_each_other_share_chat_locate_end_a_guest_and_everything_verifies(
        call, new_client, server, settings):
    """The issue's whole story with aiortc clients: an officer invites an interpreter,
    all three see and hear each other, the officer shares a screen, the victim sends a
    chat message and a location, the officer ends the interpreter's link and the call
    goes on; at close every recording (the screen's too) and the chat transcript verify."""
    c, interpreter, guest = await three_way(call, new_client, **light())
    officer = staff_id(c)
    for client, others in ((c.victim, (officer, guest)), (c.console, ("victim", guest)),
                           (interpreter, ("victim", officer))):
        for other in others:
            await client.wait_from(other, audio=10, video=5, timeout=15)
    await c.console.share_screen(vp8_clip(160, 120, fps=10, bitrate=60_000))
    for client in (c.victim, interpreter):
        await client.wait_from(officer, audio=0, video=0, screen=10, timeout=15)
    await c.victim.send({"type": "chat", "text": "The flat is 4B"})
    await c.victim.send({"type": "location", "lat": 53.4808, "lon": -2.2426, "accuracy_m": 20})
    await state_where(c.console, lambda s: (s.get("location") or {}).get("lat") == 53.4808)
    await interpreter.wait_for(lambda m: m["type"] == "chat")
    response = await c.officer.post(f"/api/consultations/{c.id}/guests/{guest.removeprefix('guest:')}/close")
    assert response.status == 200
    await asyncio.wait_for(interpreter.closed.wait(), 5)
    await c.victim.wait_from(officer, audio=25, video=15)
    await c.console.wait_from("victim", audio=25, video=15)
    await c.officer.post(f"/api/consultations/{c.id}/close")
    recordings = await eventually(
        lambda: _recordings(c), lambda rs: len(rs) == 4 and all(r["status"] == "complete" for r in rs), timeout=20)
    assert sorted((r["participant"], r["track"]) for r in recordings) == [
        ("interpreter", "camera"), ("officer", "camera"), ("officer", "screen"), ("victim", "camera")]
    assert next(r for r in recordings if r["participant"] == "interpreter")["participant_name"] == "Ana"
    (settings.data_dir / "evr.toml").write_text(f'database_url = "{settings.db_url}"\n')  # for the commands
    data = str(settings.data_dir)
    for recording in recordings:
        assert await evr(["recording", "verify", "--data", data, recording["id"]]) == 0, recording
    await eventually(lambda: evr(["chat", "verify", "--data", data, c.id]), lambda code: code == 0, timeout=10)


async def evr(argv: list[str]) -> int:
    """The ``evr`` command, run as a user would (in its own thread, with its own loop)."""
    return await asyncio.to_thread(evr_main, argv)
