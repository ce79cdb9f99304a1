"""The retention service: classes, reviews, legal holds and disposal, as one object.

Its concerns live apart, each a part of :class:`Retention`:

- :mod:`.schedule`: a row per evidence item, kept in step with its sources
  (:meth:`Retention.refresh`), and what a row is as shown;
- :mod:`.queries`: the due list, an item, holds and certificates;
- :mod:`.commands`: classes, reviews and holds set, content read with a reason;
- :mod:`.disposal`: content removed from every store, with signed certificates.

The names the web API, the command line and the tests use come from here.
"""

from __future__ import annotations

import asyncio
import logging

from evr.audit import Actor

from .commands import Commands
from .disposal import Disposal, DisposalReport
from .queries import verify_certificate
from .schedule import CSV_COLUMNS, RetentionError, ScheduleRow

__all__ = ["CSV_COLUMNS", "DisposalReport", "Retention", "RetentionError", "ScheduleRow", "sweep_forever",
           "verify_certificate"]

log = logging.getLogger(__name__)

#: Seconds after start before the first scheduled sweep (at most).
FIRST_SWEEP_AFTER = 300


class Retention(Commands, Disposal):
    """The retention schedule and its tools (see the module's parts)."""

    # -- the scheduled run inside `evr serve` -------------------------------------

    async def sweep(self) -> DisposalReport:
        """Refresh, dispose of non-evidential recordings past their 31 days (and finish
        disposals already decided), and sign an audit checkpoint."""
        await self.refresh()
        report = await self.dispose(Actor.system(), execute=True, automatic=True)
        await self.audit.checkpoint()
        return report


async def sweep_forever(service: Retention, minutes: float) -> None:
    """The scheduled run inside ``evr serve``: non-evidential recordings past their 31
    days are disposed of (logged, with certificates), decided disposals finished, a
    checkpoint signed. The first run comes a little after start (at most five
    minutes), not during it."""
    delay = min(minutes * 60, FIRST_SWEEP_AFTER)
    while True:
        await asyncio.sleep(delay)
        delay = minutes * 60
        try:
            report = await service.sweep()
            if report.disposed or report.waiting or report.failed:
                log.info("retention sweep: %d disposed, %d waiting, %d failed",
                         len(report.disposed), len(report.waiting), len(report.failed))
        except Exception:
            log.exception("retention sweep failed (retried at the next one)")
