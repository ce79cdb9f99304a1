"""The victim's location, shared from their page (with consent) for staff to see.

The page asks, says why, and may be declined; what it sends over the socket is
checked here and kept as the consultation's last location
(``Consultation.location``: ``{"lat", "lon", "accuracy_m", "at"}``), with a
``location.share`` audit entry in the same transaction. The entry holds the accuracy
only, never the coordinates: the audit log is never erased, and a victim's
whereabouts must go when the consultation's items are disposed of
(:mod:`evr.retention.disposal` clears the location with the last of them).
Coordinates are never logged either.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .audit import Actor, AuditLog
from .db import Consultation
from .timeutil import Clock, rfc3339

log = logging.getLogger(__name__)

#: field -> (lowest, highest) accepted.
BOUNDS = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "accuracy_m": (0.0, 100_000.0)}


class LocationError(ValueError):
    """A location refused: ``code`` is the socket error's code (``bad_location``,
    ``closed``, ``not_found``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(message: Any) -> dict[str, float]:
    """``lat``, ``lon`` and ``accuracy_m`` from a socket message: finite numbers (not
    booleans) within :data:`BOUNDS`; :class:`LocationError` ``bad_location`` otherwise."""
    if not isinstance(message, dict):
        raise LocationError("bad_location", "A location is an object with lat, lon and accuracy_m.")
    values = {}
    for name, (low, high) in BOUNDS.items():
        value = message.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise LocationError("bad_location", f"{name} must be a number from {low:g} to {high:g}.")
        values[name] = float(value)
    return values


class Locations:
    """Locations shared in calls: checked, kept on the consultation, audit-logged."""

    def __init__(self, clock: Clock, audit: AuditLog) -> None:
        self.clock = clock
        self.audit = audit

    async def share(self, consultation_id: str, who: Actor, message: Any) -> dict[str, Any]:
        """Keep a shared location as the consultation's last, with its audit entry in
        one transaction; the location as kept (what staff are sent)."""
        location: dict[str, Any] = {**parse(message), "at": rfc3339(self.clock())}
        async with self.audit.transaction() as tx:
            consultation = await tx.db.get(Consultation, consultation_id)
            if consultation is None:
                raise LocationError("not_found", "No such consultation.")
            if consultation.status == "closed":
                raise LocationError("closed", "The consultation is closed.")
            consultation.location = location
            tx.add(who, "location.share", f"consultation:{consultation_id}", consultation_id=consultation_id,
                   details={"accuracy_m": location["accuracy_m"]})
        log.info("location shared (consultation=%s)", consultation_id)
        return location
