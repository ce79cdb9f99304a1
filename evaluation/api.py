"""Performance indicators over HTTP: ``GET /api/kpis`` (JSON) and ``GET /api/kpis.csv``
(the series), for sergeants and admin staff. Figures only, never an incident or a
person: nothing here is a read of personal data."""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web

from evr.errors import ApiError
from evr.http import CLOCK, DB, SETTINGS, current_staff
from evr.roles import KPI_ROLES
from evr.timeutil import rfc3339

from . import dashboard
from .kpis import Indicators, Period, parse_period

#: The series' columns in the CSV, in order.
CSV_COLUMNS = ("start", "incidents", "to_evr", "rejected", "response_p50_minutes", "satisfied_pct")


def setup(app: web.Application) -> None:
    app.add_routes([
        web.get("/api/kpis", kpis),
        web.get("/api/kpis.csv", kpis_csv),
        web.get("/api/kpis/response_times", response_times),
    ])
    dashboard.setup(app)


def _period(request: web.Request) -> Period:
    """The period (and filters) asked for, by a sergeant or admin."""
    current_staff(request).require(*KPI_ROLES)
    return parse_period(request.query, request.app[CLOCK](), request.app[SETTINGS].timezone)


def _indicators(request: web.Request) -> Indicators:
    return Indicators(request.app[SETTINGS].grade_targets_hours)


async def _figures(request: web.Request) -> dict[str, Any]:
    period = _period(request)
    async with request.app[DB]() as db:
        return await _indicators(request).compute(db, period)


async def response_times(request: web.Request) -> web.Response:
    """How long the period's attended incidents waited, in bins, against their target."""
    period = _period(request)
    async with request.app[DB]() as db:
        bins = await _indicators(request).response_bins(db, period)
    return web.json_response({"from": rfc3339(period.since), "to": rfc3339(period.until), "bins": bins,
                              "grade_targets_hours": request.app[SETTINGS].grade_targets_hours})


async def kpis(request: web.Request) -> web.Response:
    """The figures; with ``by_arm=1``, each arm's of a trial with 95 % intervals and the
    difference between them (:mod:`.trial`)."""
    by_arm = request.query.get("by_arm", "0")
    if by_arm not in ("0", "1"):
        raise ApiError(400, "invalid_parameter", "by_arm must be 0 or 1.")
    if by_arm == "0":
        return web.json_response(await _figures(request))
    period = _period(request)
    async with request.app[DB]() as db:
        return web.json_response(await _indicators(request).by_arm(db, period))


async def kpis_csv(request: web.Request) -> web.Response:
    """The series as CSV: a row per day or week."""
    figures = await _figures(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in figures["series"]:
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    first, last = figures["series"][0]["start"], figures["series"][-1]["start"]
    return web.Response(text=buffer.getvalue(), content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="evr-kpis-{first}-to-{last}.csv"'})
