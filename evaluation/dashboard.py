"""The dashboard (``/dashboard``, sergeants and admin staff): the performance
indicators as charts a person reads at a glance, and the charts themselves as SVG
(``GET /api/kpis/charts/{name}.svg``, the same period and filters as ``/api/kpis``).

Why a module of its own: the charts are drawn on the server (:mod:`.charts`, which the
monthly report reuses), so the page only places them; the figures come from the same
:class:`~.kpis.Indicators` as ``/api/kpis``, so a chart never disagrees with the
numbers. Figures only, never an incident or a person."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from evr import pages
from evr.errors import ApiError
from evr.http import DB

from . import api, charts  # api imports this module in its setup(): used at call time only


def setup(app: web.Application) -> None:
    app.add_routes([
        web.get("/dashboard", dashboard_page),
        web.get("/api/kpis/charts/{name}.svg", chart_svg),
    ])


async def dashboard_page(_request: web.Request) -> web.Response:
    """The dashboard: headline figures, the charts, their tables and downloads."""
    return pages.staff_page("dashboard.html")


async def chart_svg(request: web.Request) -> web.Response:
    """One chart of the period's figures, as SVG with its text alternative."""
    name = request.match_info["name"]
    period = api._period(request)  # the role first: an unknown chart is no secret, the figures are
    if name not in charts.NAMES:
        raise ApiError(404, "not_found", f"No chart {name!r}; the charts are {', '.join(charts.NAMES)}.")
    indicators = api._indicators(request)
    async with request.app[DB]() as db:
        figures = await indicators.compute(db, period)
        bins = await indicators.response_bins(db, period) if name == "response_times" else []
    first = period.since.astimezone(period.zone).date()
    last = (period.until - timedelta(microseconds=1)).astimezone(period.zone).date()
    svg = charts.chart(name, figures, bins, charts.scope_of(figures, first.isoformat(), last.isoformat()))
    return web.Response(text=svg, content_type="image/svg+xml", charset="utf-8", headers={
        "Content-Disposition": f'inline; filename="evr-{name}-{first}-to-{last}.svg"'})
