"""Several EVR nodes behind one load balancer, sharing PostgreSQL, Redis and S3.

A load balancer sends any request to any node. Everything kept in the database
works from any node as it is; what lives in one process has a home here:

- **Rooms.** A consultation's room (its sockets, its media, its status as the call
  sees it) lives on one node: the first to take it in the room registry
  (``<name>:room:<id>``, held while the node lives). A signalling socket that lands
  on another node is carried to the owner (:meth:`Cluster.proxy`), with who it is
  (already authenticated and audit-logged where it landed) signed with
  ``cluster_secret``; the owner's internal route checks the signature and serves it
  as its own. A node that stops answering loses its registrations after
  :data:`NODE_TTL` seconds, and the pages' rejoin lands the room on a live node.
- **What other nodes ask of a room** (close it, take a guest out, tell everyone a
  statement was signed, end a signed-out session's sockets) and **what every node
  must hear** (the queue changed) go over Redis pub/sub (:meth:`Cluster.publish`):
  each node acts on what it holds.
- **Who is in a call**, for consultations listed by another node, is the owner's
  last report in the registry (:meth:`Cluster.participants`).
- **Jobs one node runs at a time** (the retention sweep, survey reminders) hold a
  lease (:meth:`Cluster.singleton`).

Without ``redis_url`` there is no cluster: one node, and none of this runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Optional

import aiohttp
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from .config import Settings
from .errors import ApiError
from .tasks import TaskSet

log = logging.getLogger(__name__)

#: A node's registration lives this long without a heartbeat (seconds).
NODE_TTL = 15
#: A room's registration lives this long unless its owner renews it.
ROOM_TTL = 30
#: How often a node renews what it holds.
HEARTBEAT = 3.0
#: A singleton job's lease, and how often its holder renews it.
LEASE_TTL = 30
#: How long a signed socket hand-over is good for.
HANDOVER_SECONDS = 30
#: The header that carries it.
HANDOVER_HEADER = "X-EVR-Handover"

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

# Takes a room for this node if nobody holds it, or if its holder's node is gone.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if (not owner) or owner == ARGV[1] or redis.call('EXISTS', KEYS[2] .. owner) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ''
end
return owner
"""
# Drops a key only while it still names this node.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Renews a key only while it still names this node.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class ClusterError(RuntimeError):
    """The cluster cannot be joined as configured."""


class Cluster:
    """This node among the others (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        import redis.asyncio  # the settings were checked when loaded (Settings.__post_init__)

        self.settings = settings
        self.node = uuid.uuid4().hex
        self.url = settings.node_url.rstrip("/")
        self.prefix = settings.cluster_name
        self.redis = redis.asyncio.from_url(settings.redis_url, decode_responses=True)
        self._secret = settings.cluster_secret.encode()
        self._handlers: dict[str, list[Handler]] = {}
        #: The rooms this node holds, and what it last said of who is in them.
        self.owned: dict[str, Optional[list[dict[str, Any]]]] = {}
        self.tasks = TaskSet("cluster")
        self._http: Optional[aiohttp.ClientSession] = None
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- life --------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.redis.set(self._key("node", self.node), self.url, ex=NODE_TTL)
        except Exception as exc:
            raise ClusterError(f"Redis at redis_url could not be reached: {exc}") from exc
        self._http = aiohttp.ClientSession()
        self.tasks.spawn(self._listen(), "cluster bus")
        self.tasks.spawn(self._heartbeat(), "cluster heartbeat")
        log.info("node %s joined cluster %r as %s", self.node[:8], self.prefix, self.url)

    async def close(self) -> None:
        await self.tasks.close()
        for cid in list(self.owned):
            await self.release(cid)
        try:
            await self.redis.delete(self._key("node", self.node))
        except Exception:  # noqa: BLE001 - it expires on its own
            pass
        if self._http is not None:
            await self._http.close()
        await self.redis.aclose()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.redis.set(self._key("node", self.node), self.url, ex=NODE_TTL)
                for cid, participants in list(self.owned.items()):
                    if not await self._renew(keys=[self._key("room", cid)], args=[self.node, ROOM_TTL]):
                        log.warning("consultation %s: the registry no longer names this node", cid)
                    if participants is not None:
                        await self.redis.set(self._key("room", cid, "participants"), json.dumps(participants),
                                             ex=ROOM_TTL)
            except Exception:  # noqa: BLE001 - Redis hiccup: the next beat tries again
                log.exception("cluster heartbeat failed")
            await asyncio.sleep(HEARTBEAT)

    # -- the room registry -------------------------------------------------------

    async def claim(self, consultation_id: str) -> Optional[str]:
        """Take the room for this node unless a live node holds it: None when this
        node holds it (now or already), else the holder's URL."""
        try:
            while True:
                owner = await self._claim(keys=[self._key("room", consultation_id), self._key("node", "")],
                                          args=[self.node, ROOM_TTL])
                if not owner:
                    self.owned.setdefault(consultation_id, None)
                    return None
                url = await self.redis.get(self._key("node", owner))
                if url:
                    return str(url)
                # The holder's node expired between the two reads: claim again.
        except RedisError as exc:
            log.error("the room registry could not be reached: %s", type(exc).__name__)
            raise ApiError(503, "cluster_unavailable",
                           "The service cannot find where this call is held just now: try again shortly.") from None

    async def release(self, consultation_id: str) -> None:
        self.owned.pop(consultation_id, None)
        try:
            await self._release(keys=[self._key("room", consultation_id)], args=[self.node])
            await self.redis.delete(self._key("room", consultation_id, "participants"))
        except Exception:  # noqa: BLE001 - it expires on its own
            log.exception("consultation %s: releasing the room failed", consultation_id)

    def report(self, consultation_id: str, participants: list[dict[str, Any]]) -> None:
        """Who is in a room this node holds: written now (and at each heartbeat)."""
        if consultation_id in self.owned:
            self.owned[consultation_id] = participants
            self.tasks.spawn(self.redis.set(self._key("room", consultation_id, "participants"),
                                            json.dumps(participants), ex=ROOM_TTL), "room report")

    async def participants(self, consultation_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """What the holders last reported of these rooms (none for a room nobody holds)."""
        ids = list(consultation_ids)
        if not ids:
            return {}
        try:
            values = await self.redis.mget([self._key("room", cid, "participants") for cid in ids])
        except RedisError as exc:  # the list goes out without them rather than not at all
            log.error("the room registry could not be read: %s", type(exc).__name__)
            return {}
        return {cid: json.loads(v) for cid, v in zip(ids, values, strict=True) if v}

    # -- the bus -----------------------------------------------------------------

    def on(self, kind: str, handler: Handler) -> None:
        """Run ``handler`` for every message of ``kind`` another node publishes."""
        self._handlers.setdefault(kind, []).append(handler)

    async def publish(self, kind: str, **fields: Any) -> None:
        """Tell the other nodes. What asked for it has happened (written, committed)
        whether or not Redis answers: a failure is logged, never the caller's error."""
        try:
            await self.redis.publish(self._key("bus"), json.dumps({"kind": kind, "from": self.node, **fields}))
        except RedisError as exc:
            log.error("cluster message %r not sent: %s", kind, type(exc).__name__)

    def publish_soon(self, kind: str, **fields: Any) -> None:
        """:meth:`publish` from code that cannot wait (a listener)."""
        self.tasks.spawn(self.publish(kind, **fields), f"publish {kind}")

    async def _listen(self) -> None:
        """Hear the bus for as long as the node runs, subscribing again after Redis
        drops the connection (what was published meanwhile is lost, and said so)."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self._key("bus"))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._deliver(message["data"])
            except RedisError as exc:
                log.error("the cluster bus was lost (%s); listening again", type(exc).__name__)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(HEARTBEAT)

    async def _deliver(self, raw: Any) -> None:
        try:
            data = json.loads(raw)
        except (TypeError, ValueError):
            return
        if not isinstance(data, dict) or data.get("from") == self.node:
            return  # this node acted on its own message when it sent it
        for handler in self._handlers.get(str(data.get("kind")), ()):
            try:
                await handler(data)
            except Exception:  # noqa: BLE001 - one handler's failure is not the bus's
                log.exception("cluster message %r failed", str(data.get("kind"))[:40])

    # -- one node at a time ------------------------------------------------------------

    async def singleton(self, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``job`` on one node of the cluster at a time: whichever holds its lease."""
        key = self._key("lease", name)
        while True:
            try:
                held = await self.redis.set(key, self.node, nx=True, ex=LEASE_TTL)
            except Exception:  # noqa: BLE001 - Redis hiccup
                held = False
            if not held:
                await asyncio.sleep(LEASE_TTL / 3)
                continue
            task = asyncio.ensure_future(job())
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=LEASE_TTL / 3)
                    if not await self._renew(keys=[key], args=[self.node, LEASE_TTL]):
                        log.warning("lost the lease of %s; another node runs it", name)
                        break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                try:
                    await self._release(keys=[key], args=[self.node])
                except Exception:  # noqa: BLE001 - it expires
                    pass

    # -- carrying a socket to its room's node --------------------------------------------

    def handover(self, identity: dict[str, Any]) -> str:
        """``identity`` signed for the owner's internal socket route."""
        body = json.dumps({**identity, "at": time.time()}, separators=(",", ":")).encode()
        mac = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        return base64.urlsafe_b64encode(body).decode() + "." + mac

    def check_handover(self, value: Optional[str]) -> Optional[dict[str, Any]]:
        """The identity in a hand-over this cluster signed lately, or None."""
        if not value or "." not in value or len(value) > 8192:
            return None
        encoded, mac = value.rsplit(".", 1)
        try:
            body = base64.b64decode(encoded.encode("ascii"), altchars=b"-_", validate=True)  # strict: one spelling
            given = mac.encode("ascii")
        except ValueError:  # not base64, or a MAC that is not ASCII
            return None
        if not hmac.compare_digest(hmac.new(self._secret, body, hashlib.sha256).hexdigest().encode(), given):
            return None
        identity = json.loads(body)  # this cluster signed it: its own JSON
        at = identity.get("at")
        if not isinstance(at, (int, float)) or abs(time.time() - at) > HANDOVER_SECONDS:
            return None
        return identity

    async def proxy(self, request: web.Request, owner_url: str, consultation_id: str,
                    identity: dict[str, Any]) -> web.WebSocketResponse:
        """Carry this signalling socket to the node that holds its room, frame by
        frame both ways; when either side closes, so does the other (with its code)."""
        assert self._http is not None
        target = f"{owner_url}/internal/rooms/{consultation_id}/ws"
        headers = {HANDOVER_HEADER: self.handover(identity)}
        ws = web.WebSocketResponse(max_msg_size=1024 * 1024, heartbeat=25.0)
        try:
            upstream = await self._http.ws_connect(target, headers=headers, max_msg_size=0, heartbeat=25.0)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("consultation %s: the node holding its room did not answer (%s)", consultation_id,
                        type(exc).__name__)
            await ws.prepare(request)
            await ws.close(code=1013, message=b"try again")  # try again later: the page retries
            return ws
        try:
            await ws.prepare(request)
        except BaseException:
            await upstream.close()
            raise

        async def down() -> None:
            async for msg in upstream:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            await ws.close(code=upstream.close_code or 1012, message=b"")

        carrying = asyncio.ensure_future(down())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
        finally:
            await upstream.close()
            await asyncio.gather(carrying, return_exceptions=True)
        return ws
