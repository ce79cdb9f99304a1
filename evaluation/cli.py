"""``evr demo``: made-up data to see the indicators and the dashboard with
(:mod:`.demo`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

Common = Callable[[argparse.ArgumentParser], None]


def register(commands: Any, common: Common) -> None:
    demo = commands.add_parser(
        "demo", help="add made-up incidents and survey answers (never to a database with real ones)",
        description="Adds a month (--month) or --days of made-up incidents (CAD references DEMO-...), with "
                    "their timelines, outcomes and victims' survey answers, so the dashboard shows what a "
                    "month of use looks like. Refuses a database that holds incidents already.")
    common(demo)
    length = demo.add_mutually_exclusive_group(required=True)
    length.add_argument("--month", action="store_const", const=30, dest="days", help="30 days ending now")
    length.add_argument("--days", type=int, dest="days", metavar="N", help="N days ending now (1 to 366)")
    demo.add_argument("--per-day", type=int, default=20, metavar="N", help="incidents a day, about (default 20)")
    demo.add_argument("--seed", type=int, default=2026, help="the random seed (the same seed, the same data)")
    demo.add_argument("--force", action="store_true", help="add them even to a database with incidents")
    demo.set_defaults(func=cmd_demo)

    report = commands.add_parser(
        "report", help="the period's figures and charts as one HTML or PDF document",
        description="Writes the performance figures and charts of a period (by default last calendar month) "
                    "for the force's governance meeting. Dates are the force's (timezone); --to includes its day.")
    common(report)
    report.add_argument("--from", dest="since", default=None, metavar="DATE", help="first day (YYYY-MM-DD)")
    report.add_argument("--to", dest="until", default=None, metavar="DATE", help="last day (YYYY-MM-DD)")
    report.add_argument("--group-by", choices=("day", "week"), default="day")
    report.add_argument("--format", choices=("html", "pdf"), default="pdf")
    report.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="where to write it (default evr-report-FROM-to-TO.FORMAT here)")
    report.set_defaults(func=cmd_report)


def cmd_demo(args: argparse.Namespace) -> int:
    from evr.cli import ConfigError, load_settings
    from evr.retention.cli import cli_actor
    from evr.services import core
    from evr.timeutil import utcnow

    from .demo import DemoRefused, make_month
    from .trial import TrialDesign

    if not 1 <= args.days <= 366 or not 1 <= args.per_day <= 1000:
        print("evr: --days must be 1 to 366 and --per-day 1 to 1000", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2

    async def run() -> Any:
        async with core(settings) as opened, opened.audit.transaction() as tx:
            made = await make_month(tx.db, utcnow(), settings.timezone, settings.grade_targets_hours,
                                    days=args.days, per_day=args.per_day, seed=args.seed, force=args.force,
                                    trial=TrialDesign.from_config(settings.trial))
            tx.add(cli_actor(), "demo.seed", "incidents", details={
                "days": args.days, "incidents": made.incidents, "survey_answers": made.answers, "seed": args.seed})
            return made

    try:
        made = asyncio.run(run())
    except DemoRefused as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2
    print(f"added {made.incidents} made-up incidents over {args.days} days and {made.answers} survey answers; "
          "sign in as a sergeant and open /dashboard")
    return 0


def _bar(done: float, what: str) -> None:
    """A progress bar on standard error (a terminal's line redrawn; else one line a step)."""
    width = 30
    filled = round(width * min(max(done, 0.0), 1.0))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {round(done * 100):3d} % {what}"
    if sys.stderr.isatty():
        print(f"\r{line:<80}", end="" if done < 1 else "\n", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _last_month(today: date) -> tuple[str, str]:
    first_this = today.replace(day=1)
    last = first_this - timedelta(days=1)
    return last.replace(day=1).isoformat(), last.isoformat()


def cmd_report(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from evr.cli import ConfigError, load_settings
    from evr.errors import ApiError
    from evr.retention.cli import cli_actor
    from evr.services import core
    from evr.timeutil import utcnow

    from .kpis import Indicators, parse_period
    from .report import as_html, as_pdf, gather

    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2
    now = utcnow()
    since, until = args.since, args.until
    if since is None and until is None:
        since, until = _last_month(now.astimezone(ZoneInfo(settings.timezone)).date())
    try:
        period = parse_period({"from": since, "to": until, "group_by": args.group_by}, now, settings.timezone)
    except ApiError as exc:
        print(f"evr: {exc.message}", file=sys.stderr)
        return 2

    async def run() -> Any:
        async with core(settings) as opened:
            async with opened.db() as db:
                made = await gather(db, Indicators(settings.grade_targets_hours), period, _bar)
            await opened.audit.record(cli_actor(), "report.make", "indicators", details={
                "from": made.first.isoformat(), "to": made.last.isoformat(), "format": args.format})
            return made

    made = asyncio.run(run())
    body = as_html(made).encode("utf-8") if args.format == "html" else as_pdf(made, _bar)
    out = args.out or Path(f"evr-report-{made.first}-to-{made.last}.{args.format}")
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the service's alone
    with os.fdopen(descriptor, "wb") as f:
        f.write(body)
    _bar(1.0, f"written to {out}")
    return 0
