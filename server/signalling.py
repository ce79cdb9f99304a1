"""WebSocket signalling and the hub that keeps every live consultation's room.

One JSON object per text frame. Client → server: ``offer``, ``answer`` (to the
server's offer), ``candidate``, ``pause``, ``resume``, ``chat``, ``location`` (the
victim's). Server → client: ``config`` (first, the ICE servers the page may use: none
unless the force configured some), ``answer``, ``offer`` (someone joined or left: see
:mod:`evr.media.bridge`), ``state`` (made for each client: the mids that carry each
participant in its connection, and the victim's location for staff only), ``chat``,
``closed``, ``error``.

Whatever a client sends gets an ``error`` reply or its answer, never a dead socket:
every frame is parsed by :func:`evr.text.parse_json` (depth, lone surrogates, huge
numbers). A staff socket lives only as long as the session it was opened with:
logging out ends it at once (:meth:`Hub.end_sessions`), and a task the hub owns
checks every :data:`SESSION_CHECK_SECONDS` that each staff socket's session still
exists and its user is not disabled (``evr user disable`` runs in another process).

A room lives in this process, or in a media worker process (``evr serve
--workers``: a :class:`~evr.media.pool.RemoteRoom` stands in for it), and, with
several nodes, on the node that holds it in the cluster's registry: :meth:`Hub.join`
carries a socket that lands elsewhere to that node, and what is asked of a room held
elsewhere (close, remove, broadcast, end sessions) goes to it over the cluster's bus
(:mod:`evr.cluster`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Optional, Sequence

from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import RTCIceServer
from sqlalchemy import not_, select

from .audit import Actor
from .chat import ChatError, Sender
from .config import Settings
from .consultations import Consultations, Presence, Status
from .db import Consultation, StaffSession, User
from .location import LocationError
from .media.bridge import OfferError, Participant, Room, SinkFactory

if TYPE_CHECKING:
    from .chat import Chat
    from .cluster import Cluster
    from .location import Locations
    from .media.pool import MediaPool, RemoteRoom

    #: A room in this process, or one in a media worker (``evr serve --workers``).
    LiveRoom = Room | RemoteRoom
from .tasks import TaskSet
from .text import JsonError, clean_header, parse_json
from .timeutil import Clock

log = logging.getLogger(__name__)

CLOSE_CONSULTATION_CLOSED = 4000
CLOSE_REPLACED = 4001
#: The staff member's session ended (logout, expiry, account disabled).
CLOSE_SESSION_ENDED = 4003
#: What a staff socket is told when its session ends (unless the ending says more).
SESSION_ENDED = "Your session has ended. Sign in again to rejoin."
#: How often the hub checks that every staff socket's session is still valid.
SESSION_CHECK_SECONDS = 2.0
#: Frames up to this size are read and answered with an error when over the
#: contract's 64 KiB; anything larger is abuse and closes the socket (1008).
HARD_FRAME_LIMIT = 1024 * 1024


class SignallingSocket(web.WebSocketResponse):
    """aiohttp closes an over-limit frame with 1009; the contract says abuse is 1008."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code = WSCloseCode.POLICY_VIOLATION
        return await super().close(code=code, message=message, drain=drain)


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class Client:
    ws: web.WebSocketResponse
    participant: Participant
    #: Who the participant is to the audit log.
    who: Actor
    #: The staff session the socket was opened with (None for the victim).
    session_id: Optional[str] = None

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_json(message)
            except (ConnectionError, RuntimeError):
                pass


class Hub:
    """Live rooms, their sockets, and the consultation status they drive."""

    def __init__(self, settings: Settings, clock: Clock, db_factory: Any, consultations: Consultations,
                 sinks: Sequence[SinkFactory] = (), chat: Optional["Chat"] = None,
                 locations: Optional["Locations"] = None, media: Optional["MediaPool"] = None,
                 cluster: Optional["Cluster"] = None) -> None:
        self.settings = settings
        self.clock = clock
        self.db_factory = db_factory
        #: The owner of every consultation's status: told what the rooms see, it tells
        #: the hub what to announce.
        self.consultations = consultations
        consultations.on_status(self._status_changed)
        #: What every room attaches to its participants' media: the recordings'
        #: sink (none when recording is switched off), so a room that is
        #: ``capturing`` is recording.
        self.sinks = tuple(sinks)
        #: The in-call chat and the victim's location (none in tests of the media alone).
        self.chat = chat
        self.locations = locations
        #: The media worker processes the rooms live in (None: rooms live here).
        self.media = media
        self.rooms: dict[str, LiveRoom] = {}
        self.clients: dict[str, set[Client]] = {}
        #: The victim's last shared location, per consultation with a room (staff see it).
        self.location: dict[str, Optional[dict[str, Any]]] = {}
        #: Configured STUN/TURN servers; an empty list (never None: aiortc would
        #: then use a public STUN server of a third party) when there are none.
        self.ice_servers = ice_servers(settings)
        self.tasks = TaskSet("hub")
        #: The other nodes (None: this is the only one): a room lives on one of them.
        self.cluster = cluster
        if cluster is not None:
            cluster.on("close", lambda m: self._here(m, self.close))
            cluster.on("remove", lambda m: self._here(m, lambda cid: self.remove(cid, str(m.get("key")))))
            cluster.on("broadcast", lambda m: self._here(m, lambda cid: self.broadcast(cid, m["message"])))
            cluster.on("end_sessions", lambda m: self._end_sessions_here(m["sessions"], m["message"]))
        self._session_watch: Optional[asyncio.Task[None]] = None

    def room(self, consultation: Consultation) -> LiveRoom:
        room = self.rooms.get(consultation.id)
        if room is None:
            paused = self.consultations.track(consultation) == "paused"
            if self.media is not None:
                room = self.media.room(consultation.id, paused, self._changed, self._signal, self._lost)
            else:
                room = Room(consultation.id, self.ice_servers, self._changed, self.sinks, self._signal)
                room.paused = paused
            self.rooms[consultation.id] = room
            self.clients[consultation.id] = set()
            self.location[consultation.id] = getattr(consultation, "location", None)
        return room

    async def participants(self, consultation_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Who is in each of these calls (with media figures): from the rooms here,
        and for rooms on other nodes, from what their node last reported."""
        ids = list(consultation_ids)
        here = {cid: self.rooms[cid] for cid in ids if cid in self.rooms}
        found = {cid: room.snapshot() for cid, room in here.items() if isinstance(room, Room)}
        remote = [(cid, room) for cid, room in here.items() if not isinstance(room, Room)]
        for (cid, _), figures in zip(remote, await asyncio.gather(*(r.figures() for _, r in remote)), strict=True):
            found[cid] = figures
        elsewhere = [cid for cid in ids if cid not in found]
        if self.cluster is not None and elsewhere:
            found.update(await self.cluster.participants(elsewhere))
        return {cid: found.get(cid, []) for cid in ids}

    async def _here(self, message: dict[str, Any], act: Callable[[str], Awaitable[None]]) -> None:
        """Do what another node asked of a room, if the room is here."""
        cid = message.get("room")
        if isinstance(cid, str) and cid in self.rooms:
            await act(cid)

    async def join(self, request: web.Request, consultation: Consultation, key: str, role: str,
                   user_id: Optional[int], name: Optional[str], who: Actor,
                   session_id: Optional[str] = None) -> web.WebSocketResponse:
        """A participant's signalling socket (authenticated and audit-logged by the
        caller): served here, or carried to the node whose room it is."""
        if self.cluster is not None and consultation.id not in self.rooms:
            owner = await self.cluster.claim(consultation.id)
            if owner is not None:
                identity = {"consultation": consultation.id, "key": key, "role": role, "user_id": user_id,
                            "name": name, "who": [who.name, who.role, who.client], "session_id": session_id,
                            "user_agent": clean_header(request.headers.get("User-Agent"))}
                return await self.cluster.proxy(request, owner, consultation.id, identity)
        participant = self.room(consultation).participant(key, role, user_id, name)
        return await self.serve(request, consultation, participant, who, session_id)

    async def _changed(self, room: LiveRoom, who: Optional[Actor] = None, pause: Optional[bool] = None) -> None:
        """Something in the room changed (a connection; a ``pause`` asked for): report
        the presence to the status's owner, which writes and announces a new status
        (:meth:`_status_changed`); otherwise tell every client who is here now. A
        pause whose status cannot be written is undone: media flows as the status says."""
        if room.closed:
            return
        was_paused = room.paused
        if pause is not None:
            room.set_paused(pause)  # before the announcement, whose "recording" it sets
        victim = room.participants.get("victim")
        presence = Presence(victim_on=victim is not None and victim.connected,
                            staff_on=any(p.is_staff and p.connected for p in room.participants.values()),
                            paused=room.paused)
        try:
            changed = await self.consultations.update(room.id, presence, who=who)
        except BaseException:
            room.set_paused(was_paused)
            raise
        # Closed meanwhile: its announcement (``closed``) is on its way, after the other
        # listeners of the change; a ``state`` saying closed would only come before it.
        if changed is None and self.consultations.current(room.id) != "closed":
            await self.broadcast_state(room.id)

    async def _lost(self, room: LiveRoom) -> None:
        """The media worker of ``room`` died: its clients' sockets close with 1012
        (service restart), so the pages rejoin at once and the room opens again on a
        live worker; meanwhile nobody is in the call."""
        if self.rooms.get(room.id) is not room:
            return
        del self.rooms[room.id]
        clients = self.clients.pop(room.id, set())
        await asyncio.gather(*(c.ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"media restarted")
                               for c in clients), return_exceptions=True)
        try:
            await self.consultations.update(room.id, Presence(victim_on=False, staff_on=False, paused=room.paused))
        except Exception:  # noqa: BLE001 - the rejoin writes the status again
            log.exception("consultation %s: status after a media worker died not written", room.id)

    async def _status_changed(self, consultation_id: str, status: Status) -> None:
        """The one announcement of a new status: ``state`` to every client, or, when
        closed, ``closed`` and the room torn down."""
        if status == "closed":
            if consultation_id not in self.rooms and self.cluster is not None:
                await self.cluster.publish("close", room=consultation_id)  # its node closes it
            await self.close(consultation_id)
        elif consultation_id in self.rooms:
            await self.broadcast_state(consultation_id)

    def state_message(self, consultation_id: str, client: Optional[Client] = None) -> dict[str, Any]:
        """The room's state as ``client`` is told it: who is here and on which of its
        mids; the victim's location for staff only (a guest never sees it)."""
        room = self.rooms.get(consultation_id)
        message: dict[str, Any] = {
            "type": "state",
            "status": self.consultations.current(consultation_id) if room else "waiting",
            "participants": room.view(client.participant if client else None) if room else [],
            "recording": room.capturing if room else False,
        }
        if client is not None and client.participant.is_staff:
            message["location"] = self.location.get(consultation_id)
        return message

    async def broadcast_state(self, consultation_id: str) -> None:
        room = self.rooms.get(consultation_id)
        if self.cluster is not None and room is not None:  # what other nodes list of it
            self.cluster.report(consultation_id, room.snapshot())
        clients = list(self.clients.get(consultation_id, ()))
        await asyncio.gather(*(client.send(self.state_message(consultation_id, client)) for client in clients))

    async def broadcast(self, consultation_id: str, message: dict[str, Any]) -> None:
        if consultation_id not in self.rooms and self.cluster is not None:
            await self.cluster.publish("broadcast", room=consultation_id, message=message)
            return
        clients = list(self.clients.get(consultation_id, ()))
        await asyncio.gather(*(client.send(message) for client in clients))

    async def _signal(self, participant: Participant, message: dict[str, Any]) -> None:
        """Send ``message`` to ``participant``'s socket (the room's server offers)."""
        for consultation_id, room in self.rooms.items():
            if room.participants.get(participant.key) is participant:
                clients = [c for c in self.clients.get(consultation_id, ()) if c.participant is participant]
                await asyncio.gather(*(c.send(message) for c in clients))
                return

    async def remove(self, consultation_id: str, key: str) -> None:
        """Take one participant out of the call (a guest whose link staff ended): its
        sockets get ``closed`` and close code 4000, its connection is dropped, and
        everyone else's call goes on. Its recording runs to the room's end."""
        room = self.rooms.get(consultation_id)
        if room is None and self.cluster is not None:
            await self.cluster.publish("remove", room=consultation_id, key=key)
            return
        participant = room.participants.get(key) if room else None
        if room is None or participant is None:
            return
        participant.removed = True
        clients = [c for c in self.clients.get(consultation_id, ()) if c.participant is participant]
        for client in clients:
            self.clients[consultation_id].discard(client)
            await client.send({"type": "closed"})
        await asyncio.gather(*(c.ws.close(code=CLOSE_CONSULTATION_CLOSED, message=b"link closed") for c in clients),
                             return_exceptions=True)
        await room.disconnect(participant)
        await self.broadcast_state(consultation_id)

    async def close(self, consultation_id: str) -> None:
        """Tell every client ``closed``, close their sockets (4000), tear the room down."""
        room = self.rooms.pop(consultation_id, None)
        clients = self.clients.pop(consultation_id, set())
        await asyncio.gather(*(c.send({"type": "closed"}) for c in clients))
        await asyncio.gather(
            *(c.ws.close(code=CLOSE_CONSULTATION_CLOSED, message=b"consultation closed") for c in clients),
            return_exceptions=True,
        )
        self.consultations.forget(consultation_id)
        self.location.pop(consultation_id, None)
        if room is not None:
            await room.close()
        if self.cluster is not None:
            await self.cluster.release(consultation_id)

    async def shutdown(self) -> None:
        if self._session_watch is not None:
            self._session_watch.cancel()  # the other tasks (leavings) run to their end below
        for consultation_id in list(self.rooms):
            room = self.rooms.pop(consultation_id)
            clients = self.clients.pop(consultation_id, set())
            await asyncio.gather(*(c.ws.close(code=WSCloseCode.GOING_AWAY) for c in clients), return_exceptions=True)
            self.consultations.forget(consultation_id)
            await room.close("server_shutdown")
        await self.tasks.wait(timeout=5.0)
        await self.tasks.close()

    async def serve(self, request: web.Request, consultation: Consultation, participant: Participant,
                    who: Actor, session_id: Optional[str] = None,
                    user_agent: Optional[str] = None) -> web.WebSocketResponse:
        """Run one signalling socket until it closes (a staff socket gives the
        ``session_id`` it was opened with: it ends with that session). ``who`` is the
        audit log's name for what the participant does (a pause). ``user_agent``: the
        browser's, when the socket was carried here from another node."""
        ws = SignallingSocket(max_msg_size=HARD_FRAME_LIMIT, heartbeat=25.0)
        await ws.prepare(request)
        room = self.room(consultation)
        # Kept in the recording's row and manifest: made safe here, where it comes in.
        participant.user_agent = clean_header(user_agent or request.headers.get("User-Agent"))
        client = Client(ws, participant, who, session_id)
        if session_id is not None:
            self._watch_sessions()
        for other in [c for c in self.clients[consultation.id] if c.participant is participant]:
            # One socket per participant: a new one replaces the old (rejoin).
            await other.send({"type": "error", "code": "replaced", "message": "Joined again from a new connection."})
            await other.ws.close(code=CLOSE_REPLACED, message=b"replaced")
            self.clients[consultation.id].discard(other)
        if participant.removed:  # staff ended this guest's link while its socket was opening
            await client.send({"type": "closed"})
            await ws.close(code=CLOSE_CONSULTATION_CLOSED, message=b"link closed")
            return ws
        self.clients[consultation.id].add(client)
        await client.send(self.config_message())
        await client.send(self.state_message(consultation.id, client))
        bucket = TokenBucket(self.settings.ws_max_rate, self.settings.ws_burst)
        try:
            async for msg in ws:
                if not bucket.take():
                    log.warning("consultation %s: %s socket flooded; closing", consultation.id, participant.role)
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many messages")
                    break
                if msg.type == WSMsgType.TEXT:
                    await self._handle(room, client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await client.send(_error("binary_not_supported", "Send JSON in text frames."))
        finally:
            if client in self.clients.get(consultation.id, ()):
                self.clients[consultation.id].discard(client)
                if not room.closed:
                    # Owned by the hub and shielded: aiohttp may cancel this handler when
                    # the peer vanishes, and the disconnect must still run to its end.
                    await asyncio.shield(self.tasks.spawn(room.disconnect(participant), f"{participant.role} left"))
        return ws

    async def _handle(self, room: LiveRoom, client: Client, data: str) -> None:
        if len(data.encode()) > self.settings.ws_max_message:
            await client.send(_error("too_large", f"Messages are limited to {self.settings.ws_max_message} bytes."))
            return
        try:
            message = parse_json(data)
        except JsonError as exc:
            await client.send(_error("malformed" if exc.code == "malformed_json" else exc.code, str(exc)))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await client.send(_error("malformed", "A message is a JSON object with a string 'type'."))
            return
        kind = message["type"]
        try:
            if kind == "offer":
                sdp = message.get("sdp")  # not a string: refused by the room as "no SDP"
                answer = await room.connect(client.participant, sdp if isinstance(sdp, str) else "")
                await client.send({"type": "answer", "sdp": answer})
                await room.renegotiate()  # after the answer: then this client's offer of the others
            elif kind == "answer":
                sdp = message.get("sdp")
                await room.answer(client.participant, sdp if isinstance(sdp, str) else "")
            elif kind == "chat":
                await self._chat(room, client, message.get("text"))
            elif kind == "location":
                await self._location(room, client, message)
            elif kind == "candidate":
                candidate = message.get("candidate")
                if candidate is not None and not isinstance(candidate, dict):
                    raise OfferError("bad_candidate", "candidate must be an object or null.")
                await room.add_candidate(client.participant, candidate)
            elif kind in ("pause", "resume"):
                if client.participant.is_guest:  # the victim's and the police's call to pause
                    raise OfferError("not_allowed", "Only the victim or the police pause the call.")
                log.info("consultation %s: %s by %s", room.id, kind, client.participant.role)
                await self._changed(room, client.who, pause=kind == "pause")
            else:
                await client.send(_error("unknown_type", f"Unknown message type {kind[:40]!r}."))
        except (OfferError, ChatError, LocationError) as exc:
            await client.send(_error(exc.code, str(exc)))
        except Exception:  # a bug must not cost the caller their socket
            log.exception("consultation %s: %s message failed", room.id, kind[:40])
            await client.send(_error("internal_error", "The server could not handle that message."))


    async def _chat(self, room: LiveRoom, client: Client, text: Any) -> None:
        """Keep a chat message (hash-chained, with the transcript) and send it to everyone."""
        if self.chat is None:
            raise ChatError("chat_unavailable", "Chat is not available here.")
        p = client.participant
        sender = Sender(p.role, p.name, client.who, user_id=p.user_id,
                        guest_id=p.key.removeprefix("guest:") if p.is_guest else None)
        await self.broadcast(room.id, await self.chat.post(room.id, sender, text))

    async def _location(self, room: LiveRoom, client: Client, message: dict[str, Any]) -> None:
        """The victim shares where they are (audit-logged); staff see it in ``state``."""
        if client.participant.role != "victim" or self.locations is None:
            raise LocationError("not_allowed", "Only the victim's page shares a location.")
        self.location[room.id] = await self.locations.share(room.id, client.who, message)
        await self.broadcast_state(room.id)

    def config_message(self) -> dict[str, Any]:
        """The ICE servers a page gives its RTCPeerConnection: exactly the configured
        ones (an empty list by default, so a browser contacts nobody else either)."""
        servers = []
        for server in self.ice_servers:
            entry: dict[str, Any] = {"urls": [server.urls]}  # ice_servers gives one URL each
            if server.username is not None:
                entry["username"] = server.username
            if server.credential is not None:
                entry["credential"] = server.credential
            servers.append(entry)
        return {"type": "config", "ice_servers": servers}

    # -- staff sessions --------------------------------------------------------

    def _watch_sessions(self) -> None:
        """Start the session check (once; it runs until the hub shuts down)."""
        if self._session_watch is None or self._session_watch.done():
            self._session_watch = self.tasks.spawn(self._session_loop(), "staff session check")

    async def _session_loop(self) -> None:
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            try:
                await self.check_sessions()
            except Exception:  # noqa: BLE001 - a database hiccup: check again next time
                log.exception("checking staff sessions failed")

    def _staff_clients(self) -> list[Client]:
        return [c for clients in self.clients.values() for c in clients if c.session_id is not None]

    async def check_sessions(self) -> int:
        """End every staff socket whose session is gone, expired or whose user is
        disabled; how many were ended."""
        wanted = {c.session_id for c in self._staff_clients() if c.session_id is not None}
        if not wanted:
            return 0
        async with self.db_factory() as db:
            live = set(await db.scalars(
                select(StaffSession.id).join(User, User.id == StaffSession.user_id).where(
                    StaffSession.id.in_(wanted), StaffSession.expires_at > self.clock(), not_(User.disabled))
            ))
        return await self._end_sessions_here(wanted - live, SESSION_ENDED)

    async def end_sessions(self, session_ids: Iterable[str], message: str = SESSION_ENDED) -> int:
        """Close every socket opened with one of these sessions (logout, disable):
        an ``error`` (``session_ended``) first, then close code 4003; on every node.
        How many were closed here."""
        ended = sorted(set(session_ids))
        if self.cluster is not None and ended:
            await self.cluster.publish("end_sessions", sessions=ended, message=message)
        return await self._end_sessions_here(ended, message)

    async def _end_sessions_here(self, session_ids: Iterable[str], message: str) -> int:
        ended = set(session_ids)
        targets = [c for c in self._staff_clients() if c.session_id in ended]
        for client in targets:
            await client.send(_error("session_ended", message))
        await asyncio.gather(*(c.ws.close(code=CLOSE_SESSION_ENDED, message=b"session ended") for c in targets),
                             return_exceptions=True)
        if targets:
            log.info("ended %d staff socket(s) whose session ended", len(targets))
        return len(targets)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def ice_servers(settings: Settings) -> list[RTCIceServer]:
    servers = []
    for url in filter(None, (u.strip() for u in settings.ice_servers.split(","))):
        if url.startswith(("turn:", "turns:")):
            servers.append(RTCIceServer(url, settings.turn_username or None, settings.turn_password or None))
        else:
            servers.append(RTCIceServer(url))
    return servers
