"""``evr recording verify FILE_OR_DIR``: exit 0 when intact, 1 naming the first failure."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any, Callable, Optional

from evr.keys import load_public_pem

from .manifest import Problem
from .verify import DirPackage, Package, Report, StoredPackage, ZipPackage, verify


def register(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    recording = commands.add_parser("recording", help="recordings")
    sub = recording.add_subparsers(dest="recording_command", required=True)
    check = sub.add_parser(
        "verify", help="check a recording's signature, hash chain and segments",
        description="Check an export archive (.zip), an unpacked export or a stored recording's folder, "
                    "or a recording id in this service's evidence store. Exit 0 when intact, "
                    "1 naming the first failure.")
    common(check)
    check.add_argument("target", metavar="FILE_OR_DIR", help="export .zip, folder, or recording id")
    check.add_argument("--key", type=Path, default=None, metavar="PEM",
                       help="the public key you trust (default: the one shipped in an export, "
                            "or this service's key for a stored recording)")
    check.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_verify(args))
    except Problem as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"OK: recording {report.recording_id} is intact: {report.segments} segment(s), {report.gaps} gap(s), "
          f"ended ({report.end_reason}); signed by Ed25519 key {report.key_sha256}")
    return 0


async def _verify(args: argparse.Namespace) -> Report:
    from evr.cli import load_settings

    trusted = None
    if args.key is not None:
        try:
            trusted = load_public_pem(args.key.read_bytes())
        except (OSError, ValueError) as exc:
            raise Problem(f"--key {args.key}: {exc}") from None
    target = Path(args.target)
    settings = None
    store = None
    package: Optional[Package] = None
    try:
        if target.is_file():
            package = ZipPackage(target)
        elif target.is_dir():
            settings = load_settings(args)
            relative = _inside(target, settings.data_dir / "evidence")
            if relative is not None:  # a stored recording: read it through the store
                from evr.evidence import make_store

                store = make_store(settings)
                package = StoredPackage(store, relative.rstrip("/") + "/")
            else:
                package = DirPackage(target)
        else:
            settings = load_settings(args)
            package, store = await _stored_by_id(settings, args.target)
        if trusted is None and isinstance(package, StoredPackage):
            from evr.keys import load_signing_key

            if settings is None:  # a stored package is only ever found through the settings
                raise RuntimeError("a stored recording without settings")
            trusted = load_signing_key(settings, create=False).public_key()
        return await verify(package, trusted)
    finally:
        if store is not None:
            await store.close()


def _inside(path: Path, root: Path) -> Optional[str]:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return None


async def _stored_by_id(settings: Any, recording_id: str) -> tuple[Package, Any]:
    from sqlalchemy import select

    from evr.db import Recording, make_engine, sessionmaker
    from evr.evidence import make_store

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
    store = make_store(settings)
    return StoredPackage(store, prefix(recording.consultation_id, recording.id)), store
