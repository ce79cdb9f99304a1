"""The channel between the serving process and one media worker process.

``evr serve --workers N`` keeps HTTP, signalling and everything else in the serving
process and runs the calls' media in N worker processes (:mod:`evr.media.pool`,
:mod:`evr.media.worker`). They talk over a socket pair: length-prefixed JSON frames,
each a request (``{"id", "op", ...}``, answered once by ``{"id", "ok"}`` or
``{"id", "error": {"code", "message"}}``) or an event (``{"event", ...}``, never
answered). Signalling is small and rare next to media, so JSON costs nothing that
matters, and a frame is read whole or not at all.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import struct
from typing import Any, Awaitable, Callable, Optional

from ..tasks import TaskSet

log = logging.getLogger(__name__)

#: The largest frame either side accepts (SDP of a six-person call is ~30 KB).
MAX_FRAME = 4 * 1024 * 1024
_LENGTH = struct.Struct("!I")


class ChannelClosed(ConnectionError):
    """The other process is gone (or went while a request was waiting)."""


class RemoteError(Exception):
    """The other side answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: Answers a request: its fields -> a JSON value, or raises (RemoteError: its code).
RequestHandler = Callable[[dict[str, Any]], Awaitable[Any]]
#: Takes an event; runs on the reading task, so it must not wait for long.
EventHandler = Callable[[dict[str, Any]], None]


class Channel:
    """One end of the socket pair; :meth:`run` reads until the other end is gone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_request: Optional[RequestHandler] = None, on_event: Optional[EventHandler] = None,
                 errors: tuple[type[BaseException], ...] = ()) -> None:
        self._reader = reader
        self._writer = writer
        self._on_request = on_request
        self._on_event = on_event
        #: Exceptions a request handler raises on purpose, with a ``code``: sent as such.
        self._errors: tuple[type[BaseException], ...] = (RemoteError, *errors)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks = TaskSet("media channel")
        self.closed = False

    def _send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ChannelClosed("the media worker channel is closed")
        data = json.dumps(message, separators=(",", ":")).encode()
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def request(self, op: str, **fields: Any) -> Any:
        """Ask the other side to do ``op``; its answer, or :class:`RemoteError`."""
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            self._send({"id": number, "op": op, **fields})
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                raise ChannelClosed("the media worker went away") from exc
            return await future
        finally:
            self._waiting.pop(number, None)

    def notify(self, event: str, **fields: Any) -> None:
        """Tell the other side something; nothing comes back. Lost if it is gone."""
        try:
            self._send({"event": event, **fields})
        except ChannelClosed:
            pass

    async def run(self) -> None:
        """Read frames until the other end closes; then fail every waiting request."""
        try:
            while True:
                header = await self._reader.readexactly(_LENGTH.size)
                (size,) = _LENGTH.unpack(header)
                if size > MAX_FRAME:
                    log.error("media channel: a %d-byte frame; closing the channel", size)
                    break
                message = json.loads(await self._reader.readexactly(size))
                if not isinstance(message, dict):
                    raise ValueError("a frame is a JSON object")
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ValueError:  # includes JSON errors: the other end is not speaking this protocol
            log.error("media channel: a malformed frame; closing the channel")
        finally:
            self.closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ChannelClosed("the media worker went away"))
            self._writer.close()
            await self._tasks.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "event" in message:
            if self._on_event is not None:
                try:
                    self._on_event(message)
                except Exception:  # noqa: BLE001 - one bad event must not end the channel
                    log.exception("media channel: event %r failed", str(message.get("event"))[:40])
        elif "op" in message:
            self._tasks.spawn(self._answer(message), f"media request {str(message['op'])[:40]}")
        else:
            future = self._waiting.get(message.get("id", -1))
            if future is not None and not future.done():
                error = message.get("error")
                if error is not None:
                    future.set_exception(RemoteError(str(error.get("code")), str(error.get("message"))))
                else:
                    future.set_result(message.get("ok"))

    async def _answer(self, message: dict[str, Any]) -> None:
        number = message.get("id")
        try:
            if self._on_request is None:
                raise RemoteError("unknown_op", "This end takes no requests.")
            result = await self._on_request(message)
            reply: dict[str, Any] = {"id": number, "ok": result}
        except self._errors as exc:
            reply = {"id": number, "error": {"code": getattr(exc, "code", "error"), "message": str(exc)}}
        except Exception:
            log.exception("media channel: request %r failed", str(message.get("op"))[:40])
            reply = {"id": number, "error": {"code": "internal_error", "message": "The media worker failed."}}
        try:
            self._send(reply)
        except ChannelClosed:
            pass

    def close(self) -> None:
        self.closed = True
        self._writer.close()
