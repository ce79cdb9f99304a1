"""``conftest.eventually``, the one way the tests wait for something: it returns as soon
as the condition holds, and a timeout fails with what was seen last."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
from conftest import eventually


async def test_returns_the_value_once_the_condition_holds() -> None:
    seen = []

    def probe() -> int:
        seen.append(len(seen))
        return seen[-1]

    assert await eventually(probe, lambda n: n >= 3, interval=0) == 3
    assert seen == [0, 1, 2, 3]


async def test_awaits_a_coroutine_probe_and_defaults_to_truth() -> None:
    box: list[str] = []

    async def probe() -> list[str]:
        await asyncio.sleep(0)
        return list(box)

    asyncio.get_running_loop().call_later(0.05, box.append, "arrived")
    assert await eventually(probe, interval=0.01) == ["arrived"]


async def test_a_timeout_fails_with_what_was_waited_for_and_the_last_value() -> None:
    count = iter(range(1000))
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"the counter reached 1000 did not hold within 0.2 s; last seen: \d+"):
        await eventually(lambda: next(count), lambda n: n >= 1000, timeout=0.2, what="the counter reached 1000")
    assert 0.2 <= time.monotonic() - started < 1.0


async def test_nothing_a_probe_found_is_kept_alive_between_probes() -> None:
    class Thing:
        pass

    things = [Thing()]
    ref = weakref.ref(things[0])
    asyncio.get_running_loop().call_later(0.05, things.clear)

    def alive() -> list[Thing]:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, Thing)]

    assert await eventually(alive, lambda found: found == [], interval=0.01, timeout=2) == []
    assert ref() is None


async def test_a_probe_slower_than_the_timeout_still_sees_what_happened_meanwhile() -> None:
    """On a busy machine one probe may take longer than the whole timeout (a gc over a
    big heap): what was due meanwhile gets its turn before the last look."""
    box: list[str] = []
    asyncio.get_running_loop().call_later(0.05, box.append, "arrived")

    def slow() -> list[str]:
        time.sleep(0.3)  # blocks the loop past the deadline and past the timer
        return list(box)

    assert await eventually(slow, timeout=0.1, interval=0) == ["arrived"]
