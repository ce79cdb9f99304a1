"""``evr recording verify FILE_OR_DIR``: exit 0 when intact, 1 naming the first failure.

Every ``evr … verify`` command is built and run the same way, so the plumbing is
here, once, and the other commands call it (``evr chat verify``,
:mod:`evr.transcripts`; ``evr statement verify``, :mod:`evr.statements.cli`):
:func:`verify_parser` (the command and its subcommand), :func:`outcome` (the
``OK``/``FAILED`` lines and the exit status) and, for the signed documents of
:mod:`evr.recording.manifest`'s layout, :func:`add_target` and :func:`check_target`
(the key trusted, and a file, a folder, a folder in the evidence store or an id in
this service's store read as a package).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Optional, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from evr.keys import load_public_pem

from .manifest import Problem
from .verify import DirPackage, Package, Report, StoredPackage, ZipPackage, verify

T = TypeVar("T")


def verify_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None], name: str, help: str,
                  summary: str, description: str) -> argparse.ArgumentParser:
    """``evr NAME verify``: the parser of its arguments, with the common ones."""
    group = commands.add_parser(name, help=help)
    sub = group.add_subparsers(dest=f"{name}_command", required=True)
    check = sub.add_parser("verify", help=summary, description=description)
    common(check)
    return check


def add_target(check: argparse.ArgumentParser, metavar: str, help: str, key_help: str) -> None:
    """What a signed document's check is given: the target and the key trusted."""
    check.add_argument("target", metavar=metavar, help=help)
    check.add_argument("--key", type=Path, default=None, metavar="PEM", help=key_help)


def outcome(check: Coroutine[Any, Any, Iterable[str]], failure: type[Exception] = Problem) -> int:
    """Run a check: its lines and 0, or ``FAILED:`` and what failed and 1."""
    try:
        lines = asyncio.run(check)
    except failure as exc:
        print(f"FAILED: {exc}")
        return 1
    for line in lines:
        print(line)
    return 0


def trusted_key(path: Optional[Path]) -> Optional[Ed25519PublicKey]:
    """The public key given with ``--key``, if any."""
    if path is None:
        return None
    try:
        return load_public_pem(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise Problem(f"--key {path}: {exc}") from None


async def check_target(args: argparse.Namespace,
                       check: Callable[[Package, Optional[Ed25519PublicKey]], Awaitable[T]],
                       locate: Callable[[Any, Any, str], Awaitable[str]],
                       open_file: Callable[[Path], Package] = ZipPackage) -> T:
    """``check`` the package ``args.target`` names: a file (``open_file``), a folder,
    one in the evidence store (read through the store) or, given ``locate`` (settings,
    the store, the target: its prefix in the store, or :class:`Problem`), an id. A
    stored package is checked with this service's key unless ``--key`` gives one."""
    from evr.cli import load_settings

    trusted = trusted_key(args.key)
    target = Path(args.target)
    if target.is_file():
        return await check(open_file(target), trusted)
    settings = load_settings(args)
    relative = _inside(target, settings.data_dir / "evidence") if target.is_dir() else None
    if target.is_dir() and relative is None:
        return await check(DirPackage(target), trusted)
    from evr.evidence import make_store

    store = make_store(settings)
    try:
        base = relative.rstrip("/") + "/" if relative is not None else await locate(settings, store, args.target)
        if trusted is None:
            from evr.keys import load_signing_key

            trusted = load_signing_key(settings, create=False).public_key()
        return await check(StoredPackage(store, base), trusted)
    finally:
        await store.close()


def _inside(path: Path, root: Path) -> Optional[str]:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return None


def register(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    check = verify_parser(
        commands, common, "recording", "recordings", "check a recording's signature, hash chain and segments",
        "Check an export archive (.zip), an unpacked export or a stored recording's folder, "
        "or a recording id in this service's evidence store. Exit 0 when intact, "
        "1 naming the first failure.")
    add_target(check, "FILE_OR_DIR", "export .zip, folder, or recording id",
               "the public key you trust (default: the one shipped in an export, "
               "or this service's key for a stored recording)")
    check.set_defaults(func=cmd_verify)

    worker = commands.add_parser(
        "worker", help="run redaction jobs (as evr serve does, one at a time, unless redaction_workers = 0)",
        description="Take queued redaction jobs from the database and make their redacted copies, until "
                    "stopped (SIGINT or SIGTERM put a running job back in the queue). Run as many as the "
                    "machine allows, on any host sharing the database and the evidence store.")
    common(worker)
    worker.add_argument("--jobs", type=int, default=1, metavar="N", help="jobs at once (default 1)")
    worker.add_argument("--once", action="store_true", help="stop when the queue is empty")
    worker.set_defaults(func=cmd_worker)


def cmd_verify(args: argparse.Namespace) -> int:
    return outcome(_verify(args))


async def _verify(args: argparse.Namespace) -> list[str]:
    report: Report = await check_target(args, verify, _recording_prefix)
    lines = [f"OK: recording {report.recording_id} is intact: {report.segments} segment(s), {report.gaps} gap(s), "
             f"ended ({report.end_reason}); signed by Ed25519 key {report.key_sha256}"]
    if report.source is not None:
        ops = report.source.operations
        lines.append(f"OK: a redacted copy of recording {report.source.recording_id} (its signed manifest, SHA-256 "
                     f"{report.source.manifest_sha256}, checked): {len(ops.get('mute') or [])} range(s) muted, "
                     f"{len(ops.get('blur') or [])} box(es) blurred, faces "
                     f"{'blurred' if ops.get('blur_faces') else 'not blurred'}")
    return lines


async def _recording_prefix(settings: Any, store: Any, recording_id: str) -> str:
    from sqlalchemy import select

    from evr.db import Recording, make_engine, sessionmaker

    from .service import prefix

    engine = make_engine(settings.db_url)
    try:
        async with sessionmaker(engine)() as db:
            recording = await db.scalar(select(Recording).where(Recording.id == recording_id))
    except Exception as exc:  # noqa: BLE001 - no database there, or not ours
        raise Problem(f"{recording_id}: no such file, folder or recording ({type(exc).__name__})") from None
    finally:
        await engine.dispose()
    if recording is None:
        raise Problem(f"{recording_id}: no such file, folder or recording")
    return prefix(recording.consultation_id, recording.id)


def cmd_worker(args: argparse.Namespace) -> int:
    """``evr worker``: a :class:`~evr.recording.redactions.Redactor` on the core of
    the service (the database, the evidence store, the key, the audit log)."""
    import signal

    from evr.cli import load_settings
    from evr.services import core
    from evr.timeutil import utcnow

    from .redactions import Jobs, Redactor

    if args.jobs < 1 or args.jobs > 64:
        print("evr worker: --jobs must be between 1 and 64")
        return 2
    settings = load_settings(args)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with core(settings) as opened:
            jobs = Jobs(settings, utcnow, opened.db, opened.audit)
            redactor = Redactor(settings, utcnow, opened.db, opened.store, opened.signing_key, opened.audit, jobs,
                                args.jobs)
            print(f"evr worker {redactor.name}: taking redaction jobs", flush=True)
            ran = await redactor.run(stop, once=args.once)
            print(f"evr worker: {ran} job(s) run", flush=True)
        return 0

    return asyncio.run(run())
