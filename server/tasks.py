"""Background tasks with an owner: kept, supervised, and stopped with their object.

``asyncio.ensure_future(coro)`` on its own is fire-and-forget: the loop keeps only a
weak reference (the task can vanish mid-way), nobody awaits it, and when it fails the
exception surfaces, if at all, as "Task exception was never retrieved" long after
whatever it was doing was lost (a participant's recording that never got its
database row, for one). As in aiortc, where every object owns the tasks it starts,
EVR's objects (the hub, each room, the recordings service) hold a :class:`TaskSet`:
it keeps every task until it ends, logs a failure with what the task was for, and
cancels and awaits what is left when its owner stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, Optional

log = logging.getLogger(__name__)


class TaskSet:
    """The tasks one object started; ``owner`` names it in log records."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in a task this set keeps until it ends; a failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so never "never retrieved"
        if exc is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: Optional[float] = None) -> None:
        """Wait for the tasks running now (and any they start) to end."""
        while self._tasks:
            done, _ = await asyncio.wait(set(self._tasks), timeout=timeout)
            if not done:
                return

    async def close(self) -> None:
        """Cancel every task still running and wait until each has ended."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
