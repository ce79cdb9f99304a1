"""The ``evr`` command line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__, logs
from .config import DEFAULT_DATA_DIR, Settings


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
    serve.set_defaults(func=cmd_serve)

    user = commands.add_parser("user", help="manage staff users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="create a staff user (password from stdin when piped)")
    _common(add)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("officer", "sergeant", "records", "admin"))
    add.set_defaults(func=cmd_user_add)

    from .recording.cli import register as recording_commands

    recording_commands(commands, _common)

    from .retention.cli import register as retention_commands

    retention_commands(commands, _common)

    from .statements.cli import register as statement_commands

    statement_commands(commands, _common)
    return parser


class ConfigError(Exception):
    pass


def load_settings(args: argparse.Namespace, **overrides: object) -> Settings:
    try:
        return Settings.load(data_dir=args.data, config_file=args.config, **overrides)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"bad configuration: {exc}") from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    settings = load_settings(args, host=args.host, port=args.port)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        pass
    app = create_app(settings)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    print(f"EVR {__version__} serving on {url} (data in {settings.data_dir.resolve()})", flush=True)
    print(f"Officer console: {url.rstrip('/')}/console", flush=True)
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log_format=ACCESS_LOG)
    return 0


#: Access log format; evr.logs.RedactLinks takes the token out of victim link paths.
ACCESS_LOG = '%a "%r" %s %b %Tfs'


def cmd_user_add(args: argparse.Namespace) -> int:
    from .auth import add_user
    from .db import make_engine, migrate, sessionmaker
    from .timeutil import utcnow

    settings = load_settings(args)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("evr: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")

    async def run() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        try:
            await migrate(engine)
            async with sessionmaker(engine)() as db:
                await add_user(db, args.name, args.role, password, utcnow)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except ValueError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.name} added with role {args.role}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logs.configure()  # every record, the access log's too, without link tokens
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"evr: {exc}", file=sys.stderr)
        return 2


#: The redaction now lives in evr.logs, on every root handler; kept under its old name.
_RedactLinks = logs.RedactLinks
