"""Time helpers: one clock for the whole service (tests replace it)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Optional

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(value: Optional[datetime]) -> Optional[str]:
    """Format an aware UTC time as RFC 3339 (``2026-11-21T10:00:00.123Z``)."""
    if value is None:
        return None
    value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
