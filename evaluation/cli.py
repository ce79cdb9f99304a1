"""``evr demo``: made-up data to see the indicators and the dashboard with
(:mod:`.demo`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
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


def cmd_demo(args: argparse.Namespace) -> int:
    from evr.cli import ConfigError, load_settings
    from evr.retention.cli import cli_actor
    from evr.services import core
    from evr.timeutil import utcnow

    from .demo import DemoRefused, make_month

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
                                    days=args.days, per_day=args.per_day, seed=args.seed, force=args.force)
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
