"""A media worker process: the rooms of the consultations pinned to it.

``evr serve --workers N`` starts N of these (:mod:`evr.media.pool`): each runs
:class:`~evr.media.bridge.Room` objects, their peer connections and their
recordings, on its own event loop and so on its own core, and answers the serving
process over a :class:`~evr.media.channel.Channel`. The serving process keeps the
sockets, the consultations' status, chat and everything else; what a worker tells it
is each room's mirror (:func:`mirror`) and the messages the room sends a client (its
offers). A worker records into its own spool, so when one dies the serving process
recovers its recordings alone while the other workers' calls go on.

Run as ``python -m evr.media.worker --index I --fd FD``: the first frame on the
socket is the settings, then requests.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Optional

from ..config import Settings
from ..timeutil import utcnow
from .bridge import OfferError, Participant, Room
from .channel import _LENGTH, MAX_FRAME, Channel, RemoteError

log = logging.getLogger(__name__)

#: How often each room's counters are sent (the consultation's ``media`` figures).
COUNTERS_SECONDS = 1.0


def settings_frame(settings: Settings) -> bytes:
    """The first frame the serving process sends: its settings, as loaded."""
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}
    data = json.dumps(values).encode()
    return _LENGTH.pack(len(data)) + data


def mirror(room: Room) -> dict[str, Any]:
    """What the serving process keeps of a room: everyone in it and each one's view."""
    return {
        "participants": [
            {"key": p.key, "role": p.role, "user_id": p.user_id, "name": p.name, "joined_seq": p.joined_seq,
             "connected": p.connected, "removed": p.removed, "screen": p.sharing}
            for p in room.participants.values()
        ],
        "views": {p.key: room.view(p) for p in room.participants.values()},
        "snapshot": room.snapshot(),
        "capturing": room.capturing,
        "closed": room.closed,
    }


class MediaWorker:
    """The rooms of one worker, driven by the serving process's requests."""

    def __init__(self, settings: Settings, channel_factory: Any, sinks: tuple[Any, ...]) -> None:
        from ..signalling import ice_servers

        self.settings = settings
        self.ice_servers = ice_servers(settings)
        self.sinks = sinks
        self.rooms: dict[str, Room] = {}
        self.channel: Channel = channel_factory(self.handle)

    def _room(self, request: dict[str, Any]) -> Room:
        cid = str(request.get("room"))
        room = self.rooms.get(cid)
        if room is None:
            if request.get("op") not in ("connect",):
                raise RemoteError("no_room", "There is no such room in this worker.")
            room = self.rooms[cid] = Room(cid, self.ice_servers, self._changed, self.sinks, self._signal)
            room.paused = bool(request.get("paused"))
        return room

    def _participant(self, room: Room, request: dict[str, Any]) -> Participant:
        key = str(request.get("key"))
        p = room.participants.get(key)
        if p is None:
            p = room.participant(key, str(request.get("role")), request.get("user_id"), request.get("name"))
        elif request.get("name") is not None:
            p.name = request["name"]
        return p

    async def _changed(self, room: Room) -> None:
        self.channel.notify("changed", room=room.id, state=mirror(room))

    async def _signal(self, participant: Participant, message: dict[str, Any]) -> None:
        for room in self.rooms.values():
            if room.participants.get(participant.key) is participant:
                self.channel.notify("signal", room=room.id, key=participant.key, message=message)
                return

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "pause":
            room = self._room(request)
            room.set_paused(bool(request.get("paused")))
            return mirror(room)
        if op == "snapshot":
            known = self.rooms.get(str(request.get("room")))
            return known.snapshot() if known is not None else None
        if op == "close":
            closing = self.rooms.pop(str(request.get("room")), None)
            if closing is not None:
                await closing.close(str(request.get("reason") or "closed"))
            return None
        room = self._room(request)
        if op == "renegotiate":
            await room.renegotiate()
            return {"result": None, "state": mirror(room)}
        p = self._participant(room, request)
        result: Any = None
        if op == "connect":
            p.user_agent = request.get("user_agent")
            result = await room.connect(p, str(request.get("sdp") or ""))
        elif op == "answer":
            await room.answer(p, str(request.get("sdp") or ""))
        elif op == "candidate":
            await room.add_candidate(p, request.get("candidate"))
        elif op == "disconnect":
            p.removed = bool(request.get("removed")) or p.removed
            await room.disconnect(p)
        else:
            raise RemoteError("unknown_op", f"Unknown request {str(op)[:40]!r}.")
        return {"result": result, "state": mirror(room)}

    async def counters(self) -> None:
        """Every second, each room with someone connected sends its figures."""
        while True:
            await asyncio.sleep(COUNTERS_SECONDS)
            for room in list(self.rooms.values()):
                if room.count():
                    self.channel.notify("counters", room=room.id, snapshot=room.snapshot())

    async def shutdown(self) -> None:
        rooms, self.rooms = list(self.rooms.values()), {}
        await asyncio.gather(*(room.close("server_shutdown") for room in rooms), return_exceptions=True)


async def _read_settings(reader: asyncio.StreamReader) -> Settings:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if size > MAX_FRAME:
        raise ValueError("settings frame too large")
    values = json.loads(await reader.readexactly(size))
    data_dir = values.pop("data_dir")
    return Settings.load(data_dir=data_dir, environ={}, **{k: v for k, v in values.items() if v is not None})


async def serve(index: int, fd: int) -> None:
    from ..recording.service import Recordings, worker_spool
    from ..retention.cli import ensure_schema
    from ..services import core
    from .passthrough import check_compatible

    check_compatible()
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    settings = await _read_settings(reader)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with core(settings, utcnow, schema=ensure_schema) as opened:
        recordings = Recordings(settings, utcnow, opened.db, opened.store, opened.signing_key, opened.audit,
                                spool=worker_spool(settings, index))
        sinks = (recordings.sink,) if settings.recording else ()
        worker = MediaWorker(settings, lambda handle: Channel(reader, writer, handle, errors=(OfferError,)), sinks)
        reading = asyncio.ensure_future(worker.channel.run())
        ticking = asyncio.ensure_future(worker.counters())
        worker.channel.notify("ready", pid=os.getpid())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            # The serving process is gone without asking us to stop: it was killed.
            # End with it, as one process would have: the next start recovers this
            # spool (terminated, server_restart) rather than calling the calls complete.
            log.error("media worker %d: the serving process is gone; stopping at once", index)
            os._exit(70)
        ticking.cancel()
        stopping.cancel()
        await worker.shutdown()
        await recordings.shutdown()
        worker.channel.close()
        if not reading.done():
            reading.cancel()
    log.info("media worker %d stopped", index)


def main(argv: Optional[list[str]] = None) -> int:
    from ..logs import configure

    parser = argparse.ArgumentParser(prog="python -m evr.media.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    configure()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        pass
    asyncio.run(serve(args.index, args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
