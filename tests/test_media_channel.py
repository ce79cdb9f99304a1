"""The channel between the serving process and a media worker: requests answered
by id, events, errors carried with their code, and an end that goes away or speaks
nonsense failing what waits on it rather than hanging it."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from evr.media.bridge import OfferError
from evr.media.channel import MAX_FRAME, Channel, ChannelClosed, RemoteError


async def pair(on_request: Any = None, on_event: Any = None) -> tuple[Channel, Channel, list[asyncio.Task[None]]]:
    left, right = socket.socketpair()
    a = Channel(*await asyncio.open_unix_connection(sock=left))
    b = Channel(*await asyncio.open_unix_connection(sock=right), on_request=on_request, on_event=on_event,
                errors=(OfferError,))
    return a, b, [asyncio.ensure_future(a.run()), asyncio.ensure_future(b.run())]


async def test_requests_are_answered_by_id_and_errors_keep_their_code():
    seen: list[dict[str, Any]] = []

    async def handle(request: dict[str, Any]) -> Any:
        if request["op"] == "slow":
            await asyncio.sleep(0.05)
            return "slow"
        if request["op"] == "refuse":
            raise OfferError("bad_sdp", "The offer could not be used.")
        if request["op"] == "bug":
            raise KeyError("oops")
        return {"echo": request["value"]}

    a, b, tasks = await pair(handle, seen.append)
    try:
        slow, fast = await asyncio.gather(a.request("slow"), a.request("echo", value=[1, "two"]))
        assert (slow, fast) == ("slow", {"echo": [1, "two"]})  # each answer reaches its own request
        with pytest.raises(RemoteError) as refused:
            await a.request("refuse")
        assert refused.value.code == "bad_sdp" and "could not be used" in str(refused.value)
        with pytest.raises(RemoteError) as failed:
            await a.request("bug")
        assert failed.value.code == "internal_error" and "oops" not in str(failed.value)
        a.notify("changed", room="c1")
        await asyncio.sleep(0.05)
        assert seen == [{"event": "changed", "room": "c1"}]
    finally:
        a.close()
        await asyncio.gather(*tasks)


async def test_a_peer_that_goes_away_fails_what_waits_and_what_comes_after():
    async def never(request: dict[str, Any]) -> Any:
        await asyncio.sleep(3600)

    a, b, tasks = await pair(never)
    waiting = asyncio.ensure_future(a.request("anything"))
    await asyncio.sleep(0.05)
    b.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(ChannelClosed):
        await a.request("again")
    a.notify("lost")  # dropped quietly
    await asyncio.gather(*tasks)


@pytest.mark.parametrize("frame", [
    struct.pack("!I", MAX_FRAME + 1),
    struct.pack("!I", 5) + b"{nope",
    struct.pack("!I", 2) + b"[]",
    struct.pack("!I", 4) + b"null",
], ids=["oversized", "not-json", "not-an-object", "null"])
async def test_a_malformed_frame_closes_the_channel_and_fails_the_waiting(frame):
    left, right = socket.socketpair()
    right.setblocking(False)
    a = Channel(*await asyncio.open_unix_connection(sock=left))
    reading = asyncio.ensure_future(a.run())
    waiting = asyncio.ensure_future(a.request("anything"))
    await asyncio.sleep(0.01)
    await asyncio.get_running_loop().sock_sendall(right, frame)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(waiting, 5)
    await asyncio.wait_for(reading, 5)
    assert a.closed
    right.close()
