"""The retention service: classes, reviews, legal holds and disposal, as one object.

Its concerns live apart, each a part of :class:`Retention`:

- :mod:`.schedule`: a row per evidence item, kept in step with its sources
  (:meth:`Retention.refresh`), and what a row is as shown;
- :mod:`.queries`: the due list, an item, holds and certificates;
- :mod:`.commands`: classes, reviews and holds set, content read with a reason;
- :mod:`.disposal`: content removed from every store, with signed certificates.

Every name other modules import from here still is.
"""

from __future__ import annotations

from evr.audit import Actor

from .commands import MAX_REASON, Commands
from .disposal import DISPOSE_BATCH, PARALLEL, RETRY_AFTER, STALE_DISPOSING, Disposal, DisposalReport
from .queries import certificate_json, hold_json, review_json, verify_certificate
from .schedule import BATCH, CSV_COLUMNS, Computed, RetentionError, ScheduleRow

__all__ = [
    "BATCH", "CSV_COLUMNS", "DISPOSE_BATCH", "MAX_REASON", "PARALLEL", "RETRY_AFTER", "STALE_DISPOSING", "Computed",
    "DisposalReport", "Retention", "RetentionError", "ScheduleRow", "certificate_json", "hold_json", "review_json",
    "verify_certificate",
]


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

