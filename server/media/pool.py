"""The media workers of ``evr serve --workers N``, as the serving process sees them.

One event loop can use one core, and media is what costs: so the serving process
keeps HTTP, the signalling sockets, the consultations' status, chat and the rest,
and each call's media runs in one of N worker processes (:mod:`evr.media.worker`),
the consultation pinned to the worker with the fewest rooms when its room opens.
The hub holds a :class:`RemoteRoom` in place of a :class:`~evr.media.bridge.Room`:
the same calls (connect, answer, candidates, pause, disconnect, close), sent over
the worker's :class:`~evr.media.channel.Channel`, and a mirror of what the room
last reported (who is in it, each one's view, whether it records, the media
figures), so that reading it never waits for another process.

A worker that dies takes only its own calls: their rooms are reported lost (the hub
closes their sockets with 1012, and the pages rejoin, landing on a live worker),
its recordings are recovered from its spool (each ends ``server_restart``; the
call's recording goes on as a new one from the rejoin), and it is started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Optional, cast

from ..config import Settings
from ..tasks import TaskSet
from .bridge import OfferError, Participant, Roster
from .channel import Channel, ChannelClosed, RemoteError
from .worker import settings_frame

log = logging.getLogger(__name__)

#: How long a starting worker may take to say it is ready.
READY_TIMEOUT = 60.0
#: Pause before starting a worker again after it died (a crash loop stays slow).
RESTART_DELAY = 1.0


@dataclass(eq=False)
class Member(Participant):
    """A participant as the serving process knows it: its identity, and whether it
    is connected and sharing a screen as the worker last said."""

    remote_connected: bool = False
    remote_sharing: bool = False

    @property
    def connected(self) -> bool:
        return self.remote_connected

    @property
    def sharing(self) -> bool:
        return self.remote_sharing


Changed = Callable[["RemoteRoom"], Coroutine[Any, Any, None]]
Signal = Callable[[Participant, dict[str, Any]], Coroutine[Any, Any, None]]
Lost = Callable[["RemoteRoom"], Coroutine[Any, Any, None]]


class RemoteRoom(Roster):
    """A consultation's room that lives in a media worker (see the module docstring)."""

    member_type = Member

    def __init__(self, consultation_id: str, worker: "WorkerProcess", on_change: Changed, signal: Signal,
                 on_lost: Lost) -> None:
        super().__init__()
        self.id = consultation_id
        self.worker = worker
        self.paused = False
        self.closed = False
        self._on_change = on_change
        self._signal = signal
        self._on_lost = on_lost
        self._views: dict[str, list[dict[str, Any]]] = {}
        self._snapshot: list[dict[str, Any]] = []
        self._capturing = False
        self.tasks = TaskSet(f"room {consultation_id}")

    # -- what the hub reads -----------------------------------------------------

    @property
    def capturing(self) -> bool:
        return self._capturing and not self.paused and not self.closed

    def view(self, watcher: Optional[Participant] = None) -> list[dict[str, Any]]:
        if watcher is not None and watcher.key in self._views:
            return self._views[watcher.key]
        return self.entries(watcher, {})

    def snapshot(self) -> list[dict[str, Any]]:
        """As the worker last reported it (its figures at most a second old)."""
        return self._snapshot

    async def figures(self) -> list[dict[str, Any]]:
        """Everyone in the room with their media figures as they are now, asked of
        the worker (what it last reported if it cannot answer)."""
        if not self.closed:
            try:
                fresh = await asyncio.wait_for(self.worker.channel.request("snapshot", room=self.id), 2.0)
            except (RemoteError, ChannelClosed, asyncio.TimeoutError):
                fresh = None
            if isinstance(fresh, list):
                self._snapshot = fresh
        return self._snapshot

    # -- what the worker says ---------------------------------------------------

    def apply(self, state: Optional[dict[str, Any]]) -> None:
        """Take the worker's latest mirror of this room."""
        if not isinstance(state, dict):
            return
        for entry in state.get("participants", ()):
            p = cast(Member, self.participant(entry["key"], entry["role"], entry.get("user_id"), entry.get("name")))
            p.remote_connected = bool(entry.get("connected"))
            p.remote_sharing = bool(entry.get("screen"))
            p.removed = p.removed or bool(entry.get("removed"))
        self._views = state.get("views") or {}
        self._snapshot = state.get("snapshot") or []
        self._capturing = bool(state.get("capturing"))

    def event(self, message: dict[str, Any]) -> None:
        kind = message.get("event")
        if kind == "changed":
            self.apply(message.get("state"))
            if not self.closed:
                self.tasks.spawn(self._on_change(self), "state change in the media worker")
        elif kind == "signal":
            p = self.participants.get(str(message.get("key")))
            if p is not None and isinstance(message.get("message"), dict):
                self.tasks.spawn(self._signal(p, message["message"]), "server offer")
        elif kind == "counters":
            self._snapshot = message.get("snapshot") or self._snapshot

    async def lost(self) -> None:
        """The worker died: this room is gone (the hub makes its clients rejoin)."""
        if not self.closed:
            self.closed = True
            await self._on_lost(self)

    # -- what the hub asks ------------------------------------------------------

    async def _request(self, op: str, p: Optional[Participant] = None, **fields: Any) -> Any:
        if self.closed:
            raise OfferError("closed", "This consultation is closed.")
        identity = {} if p is None else {"key": p.key, "role": p.role, "user_id": p.user_id, "name": p.name}
        try:
            reply = await self.worker.channel.request(op, room=self.id, paused=self.paused, **identity, **fields)
        except RemoteError as exc:
            raise OfferError(exc.code, str(exc)) from exc
        except ChannelClosed as exc:
            raise OfferError("media_unavailable", "The call's media restarted: join again.") from exc
        if isinstance(reply, dict):
            self.apply(reply.get("state"))
            return reply.get("result")
        return None

    async def connect(self, p: Participant, offer_sdp: str) -> str:
        answer = await self._request("connect", p, sdp=offer_sdp, user_agent=p.user_agent)
        return str(answer)

    async def renegotiate(self) -> None:
        if self.participants:
            await self._request("renegotiate")

    async def answer(self, p: Participant, sdp: str) -> None:
        await self._request("answer", p, sdp=sdp)

    async def add_candidate(self, p: Participant, candidate: Optional[dict[str, Any]]) -> None:
        await self._request("candidate", p, candidate=candidate)

    async def disconnect(self, p: Participant) -> None:
        if isinstance(p, Member):
            p.remote_connected = False
        try:  # the worker's room reports the change (the hub's presence) as it would here
            await self._request("disconnect", p, removed=p.removed)
        except OfferError:
            pass  # never connected there, or the worker is gone: nothing to drop

    def set_paused(self, paused: bool) -> None:
        if self.paused == paused:
            return
        self.paused = paused
        self.tasks.spawn(self._pause(paused), "pause in the media worker")

    async def _pause(self, paused: bool) -> None:
        try:
            state = await self.worker.channel.request("pause", room=self.id, paused=paused)
            self.apply(state)
        except (RemoteError, ChannelClosed):
            pass  # no room there yet (nobody connected): it opens with the room's pause

    async def close(self, reason: str = "closed") -> None:
        self.closed = True
        self.worker.rooms.pop(self.id, None)
        try:
            await self.worker.channel.request("close", room=self.id, reason=reason)
        except (RemoteError, ChannelClosed):
            pass
        await self.tasks.close()


class WorkerProcess:
    """One media worker: its process, its channel, the rooms pinned to it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Optional[asyncio.subprocess.Process] = None
        self.channel: Channel = None  # type: ignore[assignment]  # set by start()
        self.rooms: dict[str, RemoteRoom] = {}
        self.ready = asyncio.Event()
        self.reading: Optional[asyncio.Task[None]] = None

    @property
    def alive(self) -> bool:
        return self.ready.is_set() and not self.channel.closed

    async def start(self, settings: Settings) -> None:
        parent, child = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "evr.media.worker", "--index", str(self.index), "--fd", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        writer.write(settings_frame(settings))
        self.ready.clear()
        self.channel = Channel(reader, writer, on_event=self._event)
        self.reading = asyncio.ensure_future(self.channel.run())
        waiting = asyncio.ensure_future(self.ready.wait())
        done, _ = await asyncio.wait({waiting, self.reading}, timeout=READY_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            await self.stop()
            raise RuntimeError(f"media worker {self.index} did not start")
        log.info("media worker %d started (pid %d)", self.index, self.process.pid)

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("event") == "ready":
            self.ready.set()
            return
        room = self.rooms.get(str(message.get("room")))
        if room is not None:
            room.event(message)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30.0)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reading is not None:
            await asyncio.gather(self.reading, return_exceptions=True)


class MediaPool:
    """N media workers; each consultation's room pinned to one (see the module docstring)."""

    def __init__(self, settings: Settings, count: int, recover: Callable[[Path], Awaitable[int]]) -> None:
        from ..recording.service import worker_spool

        self.settings = settings
        self.workers = [WorkerProcess(i) for i in range(count)]
        self._spool = lambda index: worker_spool(settings, index)
        self._recover = recover
        self._closing = False
        self._watching = TaskSet("media pool")

    async def start(self) -> None:
        await asyncio.gather(*(w.start(self.settings) for w in self.workers))
        for worker in self.workers:
            self._watching.spawn(self._watch(worker), f"media worker {worker.index}")

    def room(self, consultation_id: str, paused: bool, on_change: Changed, signal: Signal,
             on_lost: Lost) -> RemoteRoom:
        """A new room, on the live worker with the fewest rooms."""
        live = [w for w in self.workers if w.alive] or self.workers
        worker = min(live, key=lambda w: (len(w.rooms), w.index))
        room = worker.rooms[consultation_id] = RemoteRoom(consultation_id, worker, on_change, signal, on_lost)
        room.paused = paused
        return room

    async def _watch(self, worker: WorkerProcess) -> None:
        """Wait for the worker to end; unless the pool is closing, recover and restart it."""
        while True:
            assert worker.reading is not None
            await asyncio.gather(worker.reading, return_exceptions=True)
            if self._closing:
                return
            code = worker.process.returncode if worker.process else None
            log.error("media worker %d died (exit %s); its %d call(s) rejoin elsewhere",
                      worker.index, code, len(worker.rooms))
            rooms, worker.rooms = list(worker.rooms.values()), {}
            for room in rooms:
                await room.lost()
            await worker.stop()
            try:
                closed = await self._recover(self._spool(worker.index))
                if closed:
                    log.warning("closed %d recording(s) of media worker %d", closed, worker.index)
            except Exception:  # noqa: BLE001 - the spool stays for the next start
                log.exception("recovering media worker %d's recordings failed", worker.index)
            await asyncio.sleep(RESTART_DELAY)
            try:
                await worker.start(self.settings)
            except Exception:  # noqa: BLE001 - tried again after the next delay
                log.exception("media worker %d could not be started again", worker.index)
                await asyncio.sleep(RESTART_DELAY * 5)

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
        await self._watching.close()


def default_workers() -> int:
    """``evr serve``'s default: one media worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
