"""``evr audit verify`` and ``evr retention classes|due|review|hold|release|dispose``.

Commands act as the operating-system user who runs them (role ``cli`` in the audit
log, with the host name as the client), so give shell access to records managers and
operators only. Exit codes: 0 done, 1 refused or failed (the message says why), 2 bad
usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from .policy import ASSESSMENT_CRITERIA, parse_time

if TYPE_CHECKING:  # the database layer is imported by the commands that use it: `evr --help` stays fast
    from evr.audit import Actor

Common = Callable[[argparse.ArgumentParser], None]


def register(commands: Any, common: Common) -> None:
    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="check the audit log's hash chain and signed checkpoints",
        description="Exit 0 when the audit log's hash chain is unbroken and every signed checkpoint "
                    "(in the database and kept in the evidence store) matches; 1 naming the first bad entry.")
    common(verify)
    verify.add_argument("--public-key", type=Path, default=None, metavar="PEM",
                        help="the service's public key you trust (default: from the service's signing key)")
    verify.set_defaults(func=cmd_audit_verify)

    retention = commands.add_parser("retention", help="the retention schedule: review, hold, dispose")
    sub = retention.add_subparsers(dest="retention_command", required=True)

    classes = sub.add_parser("classes", help="list the configured retention classes")
    common(classes)
    classes.set_defaults(func=cmd_classes)

    due = sub.add_parser("due", help="list what is due for review or disposal")
    common(due)
    due.add_argument("--before", default=None, metavar="DATE", help="due by this date or time (default now)")
    due.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items")
    due.add_argument("--format", choices=("table", "csv", "json"), default="table")
    due.set_defaults(func=cmd_due)

    review = sub.add_parser("review", help="record a review (National Retention Assessment Criteria)",
                            epilog="criteria: " + "; ".join(f"{k}: {v}" for k, v in ASSESSMENT_CRITERIA.items()))
    common(review)
    review.add_argument("id", metavar="ID", help="an evidence item id, or a consultation id (all its items)")
    review.add_argument("--decision", required=True, choices=("retain", "dispose"))
    review.add_argument("--reason", required=True, help="the reason, against the assessment criteria")
    review.add_argument("--next-review", default=None, metavar="DATE",
                        help="when to review again (retain; default: the class's review period)")
    review.add_argument("--criterion", action="append", default=[], choices=sorted(ASSESSMENT_CRITERIA),
                        help="an assessment criterion that applies (repeatable)")
    review.set_defaults(func=cmd_review)

    for name, text in (("hold", "place a legal hold (blocks disposal)"), ("release", "release a legal hold")):
        command = sub.add_parser(name, help=text)
        common(command)
        command.add_argument("id", metavar="ID", help="an evidence item id, or a consultation id (all its items)")
        command.add_argument("--reason", required=True)
        command.set_defaults(func=cmd_hold if name == "hold" else cmd_release)

    dispose = sub.add_parser("dispose", help="dispose of what is due (a dry run unless --execute)",
                             description="Remove the content of every item due for disposal and not held "
                                         "from every store, keeping a signed disposal certificate each.")
    common(dispose)
    which = dispose.add_mutually_exclusive_group(required=True)
    which.add_argument("--due", action="store_true", help="everything due for disposal")
    which.add_argument("--item", action="append", default=None, metavar="ID", help="a named item (repeatable)")
    dispose.add_argument("--execute", action="store_true", help="really dispose (without it: list only)")
    dispose.add_argument("--limit", type=int, default=None, metavar="N", help="at most N items this run")
    dispose.set_defaults(func=cmd_dispose)


# -- running a command against the service's data -----------------------------


def code_heads() -> Optional[set[str]]:
    """The head revisions of the migrations shipped (None if a file is not plain)."""
    import ast
    import re

    from evr.db import MIGRATIONS_DIR

    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        text = path.read_text(encoding="utf-8")
        revision = re.search(r"^revision\s*=\s*(.+)$", text, re.M)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
        if revision is None or down is None:
            return None
        try:
            rev, parent = ast.literal_eval(revision.group(1)), ast.literal_eval(down.group(1))
        except (ValueError, SyntaxError):
            return None
        if not isinstance(rev, str):
            return None
        revisions.add(rev)
        parents.update([parent] if isinstance(parent, str) else list(parent or ()))
    return revisions - parents


async def ensure_schema(engine: Any) -> None:
    """Migrate unless the database is already at the shipped heads: a read-only command
    then needs no Alembic at all (faster start)."""
    from sqlalchemy import text

    from evr.db import migrate

    heads = code_heads()
    try:
        async with engine.connect() as conn:
            current = set((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
    except Exception:  # no database or no version table yet
        current = None
    if heads is None or current != heads:
        await migrate(engine)


def cli_actor() -> "Actor":
    from evr.audit import Actor

    return Actor(getpass.getuser(), "cli", socket.gethostname())


class Failed(Exception):
    """Exit 1 with this message."""


def _run(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    """Open the database, store and service, run ``work(service)``, sign a checkpoint."""
    from evr.cli import load_settings

    settings = load_settings(args)

    async def main() -> int:
        from evr.services import core
        from evr.timeutil import utcnow

        from .policy import Policy
        from .service import Retention

        async with core(settings, utcnow, schema=ensure_schema) as opened:
            policy = Policy.from_config(settings.retention)
            return await work(Retention(opened.db, opened.audit, opened.store, policy, utcnow, opened.signing_key))

    from evr.errors import ApiError

    try:
        return asyncio.run(main())
    except (ApiError, Failed) as exc:  # a refusal (RetentionError is one), or a failure
        print(f"evr: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1


def _when(value: Optional[str], name: str) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value, name)
    except ValueError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _day(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


# -- the commands --------------------------------------------------------------


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from evr.cli import load_settings

    settings = load_settings(args)

    async def main() -> int:
        from evr.audit import verify_log
        from evr.db import make_engine, sessionmaker
        from evr.evidence import make_store
        from evr.keys import load_public_pem, load_signing_key

        if args.public_key is not None:
            try:
                public = load_public_pem(args.public_key.read_bytes())
            except (OSError, ValueError) as exc:
                raise Failed(f"--public-key {args.public_key}: {exc}") from None
        else:
            try:
                public = load_signing_key(settings, create=False).public_key()
            except (OSError, ValueError):
                public = None
        if settings.db_url.startswith("sqlite") and not (settings.data_dir / "evr.sqlite3").exists():
            raise Failed(f"no database in {settings.data_dir} (nothing to verify)")
        engine = make_engine(settings.db_url)
        store = make_store(settings)
        try:
            await ensure_schema(engine)
            async with sessionmaker(engine)() as db:
                result = await verify_log(db, public, store)
        finally:
            await store.close()
            await engine.dispose()
        if result.problem:
            print(f"FAILED: {result.problem}")
            return 1
        if public is None and result.checkpoints:
            print(f"FAILED: {result.checkpoints} signed checkpoint(s) cannot be checked without the service's "
                  f"public key (give --public-key)")
            return 1
        print(f"OK: audit log intact: {result.entries} entries, {result.checkpoints} signed checkpoint(s) "
              f"({result.kept} kept in the evidence store), signed through entry {result.signed_through}")
        for note in result.notes:
            print(f"note: {note}")
        return 0

    try:
        return asyncio.run(main())
    except Failed as exc:
        print(f"FAILED: {exc}")
        return 1


def cmd_classes(args: argparse.Namespace) -> int:
    async def work(service: Any) -> int:
        policy = service.policy
        for c in policy.classes.values():
            print(f"{c.name:<16} {c.describe():<70} {c.label}")
        print(f"default class of a consultation no officer has classified: {policy.default_class or '(none)'}")
        print(f"scheduled disposal runs every {policy.sweep_minutes:g} minutes inside `evr serve`")
        return 0

    return _run(args, work)


def cmd_due(args: argparse.Namespace) -> int:
    before = _when(args.before, "--before")

    async def work(service: Any) -> int:
        from .service import CSV_COLUMNS

        await service.refresh()
        count = 0
        out = sys.stdout
        writer = csv.writer(out) if args.format == "csv" else None
        if writer:
            writer.writerow(CSV_COLUMNS)
        elif args.format == "table":
            out.write(f"{'DUE (UTC)':<16}  {'ACTION':<7}  {'RULE':<14}  {'STATE':<9}  {'HELD':<4}  {'KIND':<9}  "
                      f"{'ITEM':<36}  CAD\n")
        async for row in service.stream_due(before):
            if args.limit is not None and count >= args.limit:
                break
            count += 1
            if writer:
                writer.writerow(row.csv())
            elif args.format == "json":
                out.write(json.dumps(row.json()) + "\n")
            else:
                out.write(f"{_day(row.due_at):<16}  {row.action:<7}  {row.rule:<14}  {row.state:<9}  "
                          f"{'held' if row.held else '':<4}  {row.kind:<9}  {row.item_id:<36}  {row.cad_ref}\n")
        if args.format == "table":
            out.write(f"{count} item(s) due{' by ' + _day(before) if before else ''}\n")
        return 0

    return _run(args, work)


def cmd_review(args: argparse.Namespace) -> int:
    next_review = _when(args.next_review, "--next-review")

    async def work(service: Any) -> int:
        reviews = await service.review(cli_actor(), args.id, args.decision, args.reason, next_review, args.criterion)
        for r in reviews:
            after = f", next review {r['next_review_at']}" if r["next_review_at"] else ", now due for disposal"
            print(f"review {r['id']}: {r['decision']} item {r['item_id']} ({r['rule']}){after}")
        return 0

    return _run(args, work)


def cmd_hold(args: argparse.Namespace) -> int:
    async def work(service: Any) -> int:
        hold = await service.hold(cli_actor(), args.id, args.reason)
        print(f"hold {hold['id']} placed on {hold['scope']} {hold['target']}: no disposal until released")
        return 0

    return _run(args, work)


def cmd_release(args: argparse.Namespace) -> int:
    async def work(service: Any) -> int:
        for hold in await service.release(cli_actor(), args.id, args.reason):
            print(f"hold {hold['id']} on {hold['scope']} {hold['target']} released")
        return 0

    return _run(args, work)


def cmd_dispose(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        print("evr: --limit must be at least 1", file=sys.stderr)
        return 2

    async def work(service: Any) -> int:
        report = await service.dispose(cli_actor(), args.item, execute=args.execute, limit=args.limit)
        if not args.execute:
            for row in report.candidates:
                print(f"would dispose {row.kind} {row.item_id} ({row.rule}, due {_day(row.due_at)}, "
                      f"sha256 {row.sha256 or '-'})")
            print(f"dry run: {len(report.candidates)} item(s) would be disposed, {report.held} due but held; "
                  f"run again with --execute to dispose")
            return 0
        for item_id, cert in zip(report.disposed, report.certificates, strict=True):
            print(f"disposed {item_id}: certificate {cert}")
        for item_id, until in report.waiting.items():
            print(f"waiting {item_id}: a store lock keeps it until {_day(until)} (finished then, automatically)")
        for item_id, error in report.failed.items():
            print(f"failed {item_id}: {error} (retried automatically)")
        print(f"{len(report.disposed)} disposed, {len(report.waiting)} waiting, {len(report.failed)} failed, "
              f"{report.held} due but held, {report.skipped} changed since listed")
        return 1 if report.failed else 0

    return _run(args, work)
