"""The ``evr`` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Sequence, TypeVar

from . import __version__, logs
from .config import DEFAULT_DATA_DIR, Settings
from .roles import API_KEY_ROLES, ROLES


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help=f"data directory (default {DEFAULT_DATA_DIR}, or EVR_DATA_DIR)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="TOML config file (default DIR/evr.toml when present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evr", description="EVR video response service")
    parser.add_argument("--version", action="version", version=f"evr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    _common(serve)
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="media worker processes (default: the workers setting, else one per core; "
                            "0: the media runs in the serving process)")
    serve.set_defaults(func=cmd_serve)

    user = commands.add_parser("user", help="manage staff users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="create a staff user (password from stdin when piped)")
    _common(add)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="call_handler enters incidents; integration is a force's system (better: an API key)")
    add.set_defaults(func=cmd_user_add)
    listing = user_commands.add_parser("list", help="the staff users: name, role, disabled, created, last login")
    _common(listing)
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=cmd_user_list)
    disable = user_commands.add_parser("disable", help="disable a user and end all their sessions at once")
    _common(disable)
    disable.add_argument("name")
    disable.set_defaults(func=cmd_user_disable)
    passwd = user_commands.add_parser("passwd", help="set a user's password (from stdin when piped) "
                                                     "and end all their sessions")
    _common(passwd)
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_user_passwd)

    apikey = commands.add_parser("apikey", help="API keys for a force's systems (Authorization: Bearer)")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True)
    key_add = apikey_commands.add_parser("add", help="make a key; it is printed once, alone on the last line")
    _common(key_add)
    key_add.add_argument("name")
    key_add.add_argument("--role", required=True, choices=API_KEY_ROLES)
    key_add.set_defaults(func=cmd_apikey_add)
    key_revoke = apikey_commands.add_parser("revoke", help="revoke a key (its requests get 401 at once)")
    _common(key_revoke)
    key_revoke.add_argument("name")
    key_revoke.set_defaults(func=cmd_apikey_revoke)
    key_list = apikey_commands.add_parser("list", help="the keys: name, role, created, revoked; never the key")
    _common(key_list)
    key_list.set_defaults(func=cmd_apikey_list)

    from .recording.cli import register as recording_commands

    recording_commands(commands, _common)

    from .retention.cli import register as retention_commands

    retention_commands(commands, _common)

    from .statements.cli import register as statement_commands

    statement_commands(commands, _common)

    from .evaluation.cli import register as evaluation_commands

    evaluation_commands(commands, _common)

    from .transcripts import register as chat_commands

    chat_commands(commands, _common)

    from .disclosure import register as disclosure_commands

    disclosure_commands(commands, _common)
    return parser


class ConfigError(Exception):
    pass


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    try:
        return Settings.load(data_dir=args.data, config_file=args.config, **overrides)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"bad configuration: {exc}") from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app
    from .media.pool import default_workers

    settings = load_settings(args, host=args.host, port=args.port)
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers takes 0 or more")
    workers = args.workers if args.workers is not None else settings.workers or default_workers()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        pass
    app = create_app(settings, workers=workers)
    app.on_startup.append(_freeze_startup)  # after the services (cleanup_ctx, registered first)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    print(f"EVR {__version__} serving on {url} (data in {settings.data_dir.resolve()})", flush=True)
    print(f"Officer console: {url.rstrip('/')}/console", flush=True)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log_format=ACCESS_LOG)
    return 0


async def _freeze_startup(_app: object) -> None:
    """What start-up made (modules, services, caches) lives as long as the process:
    take it out of the garbage collector's full passes, which would otherwise walk it
    all and stall every request for up to ~100 ms (the queue benchmark's p99 of
    ``take`` fell from ~120 ms to ~35 ms with this). Only ``evr serve``: a test process
    starting many applications would keep each one's garbage."""
    gc.freeze()


#: Access log format; evr.logs.RedactLinks takes the token out of victim link paths.
ACCESS_LOG = '%a "%r" %s %b %Tfs'


# -- evr user: staff accounts ------------------------------------------------------------
#
# Changes are audit-logged as the operating-system user who ran the command (role
# ``cli``, as the retention commands), in one transaction with the change. Exit 0
# done, 1 refused (no such user), 2 bad usage (a bad name or password).


T = TypeVar("T")


class UserCommandError(Exception):
    """Exit with ``code`` and this message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _new_password(use: Callable[[str], T]) -> T:
    """Read a new password (asked twice on a terminal, else the first line of stdin)
    and return what ``use`` makes of it (checked and hashed before any transaction);
    :class:`UserCommandError` (exit 2) when they differ or ``use`` refuses it."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UserCommandError(2, "the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        return use(password)
    except ValueError as exc:
        raise UserCommandError(2, str(exc)) from None


def _user_command(args: argparse.Namespace, work: Callable[[Any, Any], Awaitable[None]], audited: bool = True) -> int:
    """Open the database (and, for changes, the audit log with the service's key and
    store, signing a checkpoint at the end), run ``work(sessionmaker, audit)``."""
    settings = load_settings(args)

    async def run() -> None:
        if audited:
            from .services import core

            async with core(settings) as opened:
                await work(opened.db, opened.audit)
            return
        from .db import make_engine, migrate, sessionmaker

        settings.prepare_data_dir()
        engine = make_engine(settings.db_url)  # a reading command: no keys, no store
        try:
            await migrate(engine)
            await work(sessionmaker(engine), None)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except UserCommandError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # a bad name, role or password
        print(f"evr: {exc}", file=sys.stderr)
        return 2
    return 0


async def _find_user(db: Any, name: str) -> Any:
    from sqlalchemy import select

    from .db import User

    user = await db.scalar(select(User).where(User.username == name))
    if user is None:
        raise UserCommandError(1, f"no user {name!r}")
    return user


def cmd_user_add(args: argparse.Namespace) -> int:
    from .auth import insert_user, new_user
    from .retention.cli import cli_actor
    from .timeutil import utcnow

    try:
        user = _new_password(lambda password: new_user(args.name, args.role, password, utcnow))
    except UserCommandError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return exc.code

    async def work(db: Any, audit: Any) -> None:
        async with audit.transaction() as tx:
            await insert_user(tx.db, user, commit=False)
            tx.add(cli_actor(), "user.add", f"user:{user.username}", details={"role": user.role})

    code = _user_command(args, work)
    if code == 0:
        print(f"user {args.name} added with role {args.role}")
    return code


def cmd_user_list(args: argparse.Namespace) -> int:
    """Every user, without secrets; the last login is the newest ``auth.login`` entry
    of the audit log (``-`` when there is none)."""
    import json

    from sqlalchemy import func, select

    from .db import AuditEntry, User
    from .timeutil import rfc3339

    async def work(db: Any, _audit: Any) -> None:
        async with db() as session:
            users = list(await session.scalars(select(User).order_by(User.username)))
            last = dict((await session.execute(
                select(AuditEntry.object, func.max(AuditEntry.at))
                .where(AuditEntry.action == "auth.login").group_by(AuditEntry.object))).all())
        rows = [{"name": u.username, "role": u.role, "disabled": bool(u.disabled), "created": rfc3339(u.created_at),
                 "last_login": rfc3339(last.get(f"user:{u.username}"))} for u in users]
        if args.format == "json":
            print(json.dumps({"users": rows}, indent=2, ensure_ascii=False))
            return
        table = [("NAME", "ROLE", "DISABLED", "CREATED", "LAST LOGIN")] + [
            (r["name"], r["role"], "yes" if r["disabled"] else "no", _minute(r["created"]), _minute(r["last_login"]))
            for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    return _user_command(args, work, audited=False)


def _minute(stamp: Optional[str]) -> str:
    """``2026-11-21 10:00Z`` from an RFC 3339 time, ``-`` for none."""
    return f"{stamp[:10]} {stamp[11:16]}Z" if stamp else "-"


def cmd_user_disable(args: argparse.Namespace) -> int:
    """Disable the user and delete every session of theirs in the same transaction
    (the running server refuses a deleted session at once and closes its sockets)."""
    from .auth import end_sessions
    from .retention.cli import cli_actor

    ended = 0

    async def work(db: Any, audit: Any) -> None:
        nonlocal ended
        async with audit.transaction() as tx:
            user = await _find_user(tx.db, args.name)
            already = bool(user.disabled)
            user.disabled = True
            ended = await end_sessions(tx.db, user.id)
            tx.add(cli_actor(), "user.disable", f"user:{user.username}",
                   details={"sessions_ended": ended, "already_disabled": already})

    code = _user_command(args, work)
    if code == 0:
        print(f"user {args.name} disabled; {ended} session(s) ended")
    return code


def cmd_user_passwd(args: argparse.Namespace) -> int:
    """A new password (checked and hashed first), and every session of the user ended
    in the same transaction."""
    from .auth import check_password, end_sessions, hash_password
    from .retention.cli import cli_actor

    def checked_hash(password: str) -> str:
        check_password(password)
        return hash_password(password)

    try:
        hashed = _new_password(checked_hash)
    except UserCommandError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return exc.code
    ended = 0

    async def work(db: Any, audit: Any) -> None:
        nonlocal ended
        async with audit.transaction() as tx:
            user = await _find_user(tx.db, args.name)
            user.password_hash = hashed
            ended = await end_sessions(tx.db, user.id)
            tx.add(cli_actor(), "user.passwd", f"user:{user.username}", details={"sessions_ended": ended})

    code = _user_command(args, work)
    if code == 0:
        print(f"password of {args.name} changed; {ended} session(s) ended")
    return code


# -- evr apikey: keys for a force's systems -------------------------------------------------


def cmd_apikey_add(args: argparse.Namespace) -> int:
    """A new key, stored as its SHA-256; the key is printed once, alone on the last line."""
    from sqlalchemy import select

    from .auth import new_api_key
    from .db import ApiKey
    from .retention.cli import cli_actor
    from .timeutil import utcnow

    try:
        row, key = new_api_key(args.name, args.role, utcnow)
    except ValueError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2

    async def work(db: Any, audit: Any) -> None:
        async with audit.transaction() as tx:
            if await tx.db.scalar(select(ApiKey.id).where(ApiKey.name == row.name)) is not None:
                raise UserCommandError(2, f"an API key named {row.name!r} exists already")
            tx.db.add(row)
            await tx.db.flush()
            tx.add(cli_actor(), "apikey.add", f"apikey:{row.name}", details={"role": row.role})

    code = _user_command(args, work)
    if code == 0:
        print(f"API key {args.name} added with role {args.role}; it is shown this once:")
        print(key)
    return code


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from .db import ApiKey
    from .retention.cli import cli_actor
    from .timeutil import utcnow

    async def work(db: Any, audit: Any) -> None:
        async with audit.transaction() as tx:
            row = await tx.db.scalar(select(ApiKey).where(ApiKey.name == args.name))
            if row is None:
                raise UserCommandError(1, f"no API key {args.name!r}")
            already = row.revoked_at is not None
            if not already:
                row.revoked_at = utcnow()
            tx.add(cli_actor(), "apikey.revoke", f"apikey:{row.name}", details={"already_revoked": already})

    code = _user_command(args, work)
    if code == 0:
        print(f"API key {args.name} revoked")
    return code


def cmd_apikey_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from .db import ApiKey
    from .timeutil import rfc3339

    async def work(db: Any, _audit: Any) -> None:
        async with db() as session:
            rows = list(await session.scalars(select(ApiKey).order_by(ApiKey.name)))
        table = [("NAME", "ROLE", "CREATED", "REVOKED")] + [
            (k.name, k.role, _minute(rfc3339(k.created_at)), _minute(rfc3339(k.revoked_at))) for k in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    return _user_command(args, work, audited=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logs.configure()  # every record, the access log's too, without link tokens
    os.umask(0o077)  # nothing any command writes (keys, exports, the database) is for other users
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2

