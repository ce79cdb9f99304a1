"""``evr statement verify FILE.pdf``: exit 0 when the PAdES signature validates against
the service's trust root and the file is the one its signing record names; 1 otherwise.

A disclosure copy (the statement pages without the rear page, signed by the service)
is not the sealed file and so has no signing record of its own: it names its original
in its keywords, which its signature covers, and passes when its signature holds and
that original is the one the statement's signing record names, with as many pages.

Built and run as every ``evr … verify`` command is (:mod:`evr.recording.cli`)."""

from __future__ import annotations

import argparse
import hashlib
import io
import re
from pathlib import Path
from typing import Any, Callable, Optional

from evr.recording.cli import outcome, verify_parser

STATEMENT_ID = re.compile(r"evr-statement:([0-9a-f-]{36})")
#: What a disclosure copy's keywords name: its original's SHA-256 (layout.Disclosure.keyword).
DISCLOSURE_OF = re.compile(r"evr-disclosure-of:([0-9a-f]{64})")


def register(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    check = verify_parser(
        commands, common, "statement", "witness statements (MG11)",
        "check a sealed statement's (or its disclosure copy's) signature and its signing record",
        "Validate the PDF's PAdES signature against the service's trust root (statement_trust_roots, "
        "by default DATA/keys/statement-ca.pem) and, when this service's database holds the "
        "statement's signing record, check that the file is the one it records (for a disclosure "
        "copy: that the original it names is). Exit 0 when both hold, 1 otherwise.")
    check.add_argument("pdf", metavar="FILE.pdf", type=Path)
    check.add_argument("--ca", type=Path, action="append", default=None, metavar="PEM",
                       help="trust this root certificate instead (repeatable)")
    check.set_defaults(func=cmd_verify)


class Failed(Exception):
    pass


def cmd_verify(args: argparse.Namespace) -> int:
    return outcome(_verify(args), Failed)


def _described(pdf: bytes) -> tuple[Optional[str], Optional[str], int]:
    """What the file says of itself (its signature, checked first, covers it): the
    statement's id, the original's SHA-256 when it is a disclosure copy, its page count."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        info = reader.trailer_view["/Info"].get_object()
        keywords = str(info.get("/Keywords", ""))
        pages = int(reader.root["/Pages"]["/Count"])
    except Exception:  # noqa: BLE001 - a damaged file has no id to offer
        return None, None, 0
    found, original = STATEMENT_ID.search(keywords), DISCLOSURE_OF.search(keywords)
    return found.group(1) if found else None, original.group(1) if original else None, pages


async def _record(settings: Any, digest: str, statement_id: Optional[str]) -> tuple[Optional[Any], str]:
    """The signing record for this file's hash (or for its statement), and a note."""
    from sqlalchemy import or_, select

    from evr.db import StatementSignature, make_engine, sessionmaker

    if settings.db_url.startswith("sqlite") and not (settings.data_dir / "evr.sqlite3").exists() \
            and not settings.database_url:
        return None, f"no database under {settings.data_dir}: signing record not checked"
    engine = make_engine(settings.db_url)
    try:
        async with sessionmaker(engine)() as db:
            clauses = [StatementSignature.document_sha256 == digest]
            if statement_id:
                clauses.append(StatementSignature.statement_id == statement_id)
            rows = list(await db.scalars(select(StatementSignature).where(or_(*clauses))))
    except Exception as exc:  # noqa: BLE001 - no database there, or not ours
        return None, f"database not readable ({type(exc).__name__}): signing record not checked"
    finally:
        await engine.dispose()
    for row in rows:
        if row.document_sha256 == digest:
            return row, ""
    if rows:
        raise Failed(f"the file's SHA-256 {digest} differs from the one the signing record of statement "
                     f"{rows[0].statement_id} names ({rows[0].document_sha256}): not the sealed document")
    return None, "no signing record for this document in this service's database"


async def _verify(args: argparse.Namespace) -> list[str]:
    # Imported here: pyHanko takes a third of a second to load, and every `evr`
    # command builds this parser.
    from evr.cli import load_settings

    from .signing import SigningSetupError, load_certs, trust_roots, validate

    try:
        pdf = args.pdf.read_bytes()
    except OSError as exc:
        raise Failed(f"{args.pdf}: {exc.strerror or exc}") from None
    settings = load_settings(args)
    try:
        roots = load_certs(args.ca) if args.ca else trust_roots(settings)
    except SigningSetupError as exc:
        raise Failed(f"no trust root: {exc}") from None
    result = await validate(pdf, roots)
    if not result.ok:
        raise Failed(f"{args.pdf}: {result.message}")
    digest = hashlib.sha256(pdf).hexdigest()
    statement_id, original, pages = _described(pdf)
    lines = [f"OK: {args.pdf}: {result.message}; signed by {result.signer}"
             + (f" at {result.signed_at.isoformat()}" if result.signed_at else "")]
    if original is not None:
        return lines + await _disclosure(settings, digest, statement_id, original, pages)
    record, note = await _record(settings, digest, statement_id)
    if record is not None:
        lines.append(f"OK: SHA-256 {digest} matches the signing record of statement {record.statement_id} "
                     f"(version {record.version}, {record.pages} page(s), signed by the witness at "
                     f"{record.signed_at.isoformat()})")
    else:
        lines.append(f"note: {note}; SHA-256 {digest}")
    return lines


async def _disclosure(settings: Any, digest: str, statement_id: Optional[str], original: str, pages: int
                      ) -> list[str]:
    """A disclosure copy: the original it names must be the sealed one, and the copy
    must hold every one of its statement pages (and nothing more: not the rear page)."""
    lines = [f"OK: a DISCLOSURE COPY (the rear page, the witness's personal details, withheld) of the sealed "
             f"original with SHA-256 {original}; this copy's SHA-256 is {digest}"]
    try:
        record, note = await _record(settings, original, statement_id)
    except Failed:
        raise Failed(f"the disclosure copy names an original (SHA-256 {original}) that is not the sealed document "
                     f"of statement {statement_id}") from None
    if record is None:
        return lines + [f"note: {note}; the original's SHA-256 {original} not checked"]
    if statement_id and record.statement_id != statement_id:
        raise Failed(f"the disclosure copy says it is of statement {statement_id}, its original is of statement "
                     f"{record.statement_id}")
    if pages != record.pages:
        raise Failed(f"the disclosure copy has {pages} page(s), the original's statement {record.pages}")
    return lines + [f"OK: its original, SHA-256 {original}, matches the signing record of statement "
                    f"{record.statement_id} (version {record.version}, {record.pages} page(s), signed by the "
                    f"witness at {record.signed_at.isoformat()}); the copy has those {pages} page(s)"]
