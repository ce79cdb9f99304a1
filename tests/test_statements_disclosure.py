"""MG11 disclosure copies (issue 16, item 4): the sealed statement's pages without the
rear page, which holds the witness's contact details and needs and is never disclosed
to the defence. Each copy is drawn from what was sealed, marked as a disclosure copy
naming the original's SHA-256, signed by the service so ``evr statement verify`` checks
it, and made without touching the original.

The PDFs' text is read with pyHanko's parser and each font's ToUnicode map (no text
extraction library is installed), so what is checked is what a reader would copy out."""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from typing import Any

from sqlalchemy import select
from test_statements import DRAFT, actions, drafted, evr, sent, sign

from evr.db import AuditEntry, Consultation, EvidenceItem, Statement, StatementSignature
from evr.evidence import ItemMissing
from evr.http import DB, STATEMENTS, STORE
from evr.statements import signing

#: Rear-page details, each distinctive enough that finding it anywhere means it leaked.
REAR = {"contact": "07700 900555, 12 Acacia Avenue, Poole BH1 1AA", "preferred_contact": "email after 6pm",
        "dates_to_avoid": "24-28 December", "consent_medical_access": True, "consent_medical_disclosure": False,
        "vps_offered": True, "special_measures": "Screens in court; step-free access", "court_willing": True,
        "taken_by": "PC 1234 Alice", "taken_where": "Kitchen table, home address", "taken_when": "21/11/2026 13:00"}
LEAKS = ["07700 900555", "Acacia Avenue", "Poole BH1", "email after 6pm", "24-28 December", "Screens in court",
         "step-free access", "PC 1234 Alice", "Kitchen table", "21/11/2026 13:00", "WITNESS DETAILS",
         "Not for disclosure", "Witness details"]
LONG_TEXT = "\n\n".join(["I was walking home when a man took my bag and ran off towards the station. " * 5] * 22)


# -- reading a PDF's text -------------------------------------------------------------


def _literal(data: bytes, i: int) -> tuple[bytes, int]:
    """A PDF literal string starting after its ``(``: its bytes and the index after ``)``."""
    out, depth = bytearray(), 1
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}
    while True:
        c = data[i]
        if c == ord("\\"):
            n = data[i + 1]
            if n in escapes:
                out += escapes[n]
                i += 2
            elif ord("0") <= n <= ord("7"):
                digits = re.match(rb"[0-7]{1,3}", data[i + 1:i + 4])
                assert digits is not None
                out.append(int(digits.group(), 8) & 0xFF)
                i += 1 + len(digits.group())
            elif n in (ord("\r"), ord("\n")):
                i += 2
            else:
                out.append(n)
                i += 2
            continue
        if c == ord("("):
            depth += 1
        elif c == ord(")"):
            depth -= 1
            if depth == 0:
                return bytes(out), i + 1
        out.append(c)
        i += 1


def _tokens(data: bytes) -> list[Any]:
    """A content stream's operands (bytes for strings, lists for arrays) and operators (str)."""
    stack: list[list[Any]] = [[]]
    i = 0
    while i < len(data):
        c = data[i:i + 1]
        if c.isspace():
            i += 1
        elif c == b"(":
            text, i = _literal(data, i + 1)
            stack[-1].append(text)
        elif data[i:i + 2] in (b"<<", b">>"):
            i += 2
        elif c == b"<":
            end = data.index(b">", i)
            stack[-1].append(bytes.fromhex(data[i + 1:end].decode()))
            i = end + 1
        elif c == b"[":
            stack.append([])
            i += 1
        elif c == b"]":
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        else:
            word = re.match(rb"[^\s()<>\[\]/]+|/[^\s()<>\[\]/]*", data[i:])
            assert word is not None
            token = word.group().decode("latin-1")
            stack[-1].append(token if token.startswith("/") or not re.match(r"[A-Za-z'\"*]", token) else ("op", token))
            i += len(word.group())
    return stack[0]


def _cmap(stream: Any) -> dict[int, str]:
    """A font's ToUnicode map (bfchar and bfrange entries)."""
    text = stream.data.decode("latin-1")
    found: dict[int, str] = {}

    def unicode(hex_: str) -> str:
        return bytes.fromhex(hex_).decode("utf-16-be")

    for block in re.findall(r"beginbfchar(.*?)endbfchar", text, re.S):
        for code, value in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            found[int(code, 16)] = unicode(value)
    for block in re.findall(r"beginbfrange(.*?)endbfrange", text, re.S):
        for low, high, value in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            first = ord(unicode(value))
            for n, code in enumerate(range(int(low, 16), int(high, 16) + 1)):
                found[code] = chr(first + n)
    return found


def pdf_pages(pdf: bytes) -> list[Any]:
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(pdf), strict=False)
    kids = reader.root["/Pages"]["/Kids"]
    return [kids[i] for i in range(len(kids))]


def page_text(page: Any) -> str:
    """A page's text, a line per text-showing operator."""
    fonts = page["/Resources"]["/Font"]
    maps = {name: _cmap(fonts[name]["/ToUnicode"]) for name in fonts}
    contents = page["/Contents"]
    parts = [contents[i] for i in range(len(contents))] if isinstance(contents, list) else [contents]
    lines: list[str] = []
    font: dict[int, str] = {}
    operands: list[Any] = []
    for token in _tokens(b"\n".join(p.data for p in parts)):
        if not (isinstance(token, tuple) and token[0] == "op"):
            operands.append(token)
            continue
        op = token[1]
        if op == "Tf":
            font = maps[operands[-2]]
        elif op in ("Tj", "TJ"):
            strings = operands[-1] if op == "TJ" else [operands[-1]]
            raw = b"".join(s for s in strings if isinstance(s, bytes))
            lines.append("".join(font.get(int.from_bytes(raw[k:k + 2], "big"), "?")
                                 for k in range(0, len(raw) - 1, 2)))
        operands = []
    return "\n".join(lines)


def images(page: Any) -> int:
    xobjects = page["/Resources"].get("/XObject") or {}
    return sum(1 for name in xobjects if xobjects[name]["/Subtype"] == "/Image")


# -- helpers ----------------------------------------------------------------------------


async def sealed(link: Any, **changes: Any) -> tuple[Any, str, bytes]:
    """A statement signed by the witness: (link, its id, the sealed PDF)."""
    c, sid = await sent(link, **{"rear": REAR, **changes})
    signed = await sign(c, sid)
    assert signed.status == 200, await signed.text()
    response = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/pdf")
    assert response.status == 200
    return c, sid, await response.read()


async def kept(server: Any, c: Any, sid: str) -> dict[str, Any]:
    """The original as the service keeps it: its stored files, hashes and records."""
    store = server.app[STORE]
    base = f"statements/{c.id}/{sid}/"
    async with server.app[DB]() as db:
        row = await db.get(Statement, sid)
        signature = await db.get(StatementSignature, sid)
        item = await db.get(EvidenceItem, sid)
        return {
            "files": {k: hashlib.sha256(await store.read_bytes(k)).hexdigest() for k in sorted(await store.keys(base))},
            "statement": (row.status, row.sha256, row.signed_at, row.version),
            "signature": (signature.document_sha256, signature.pages, signature.record),
            "item": (item.sha256, item.size),
        }


def url(c: Any, sid: str) -> str:
    return f"/api/consultations/{c.id}/statements/{sid}/disclosure.pdf"


async def error(response: Any) -> tuple[int, str]:
    return response.status, (await response.json())["error"]["code"]


# -- tests -----------------------------------------------------------------------------


async def test_the_disclosure_copy_withholds_the_rear_page_and_verifies(link, server, settings, monkeypatch,
                                                                        capsys):
    c, sid, original = await sealed(link)
    original_sha = hashlib.sha256(original).hexdigest()
    before = await kept(server, c, sid)

    response = await c.officer.get(url(c, sid) + "?reason=Disclosure+to+CPS+for+first+hearing")
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pdf"
    assert response.headers["Content-Disposition"] == f'attachment; filename="statement-{sid}-disclosure.pdf"'
    assert response.headers["Cache-Control"] == "no-store"
    copy = await response.read()

    # One page fewer: the rear page is not in the file at all.
    sheets, copy_sheets = pdf_pages(original), pdf_pages(copy)
    assert len(copy_sheets) == len(sheets) - 1 == 1
    whole = "\n".join(page_text(p) for p in sheets)
    text = "\n".join(page_text(p) for p in copy_sheets)
    for detail in LEAKS:
        assert detail in whole, detail  # the original holds it (so the check below means something)...
        assert detail not in text, detail  # ...the copy does not
    # The statement itself, as sealed: the witness, the text, the declaration, the signature.
    for line in ("WITNESS STATEMENT", "Jane Émilie Smith", "Nurse", "took my bag from my shoulder",
                 "(consisting of 1 page each signed by me)", "JS/1", "Page 1 of 1", "Signature witnessed by:"):
        assert line in text, line
    assert images(copy_sheets[0]) == images(sheets[0]) >= 1  # the witness's signature, as on the original
    # Marked as a copy, with the original's hash, on every page.
    assert "DISCLOSURE COPY" in text and "DISCLOSURE COPY" not in whole
    assert f"Original (sealed) SHA-256: {original_sha}" in text
    assert "the rear page (witness details) is withheld" in text

    # Signed by the service as the original is; evr statement verify says what it is.
    assert (await signing.validate(copy, signing.trust_roots(settings))).ok
    if settings.database_url:
        monkeypatch.setenv("EVR_DATABASE_URL", settings.database_url)
    data = str(settings.data_dir)
    path = settings.data_dir.parent / "disclosure.pdf"
    path.write_bytes(copy)
    capsys.readouterr()
    assert await evr(["statement", "verify", str(path), "--data", data]) == 0
    out = capsys.readouterr().out
    assert "DISCLOSURE COPY" in out and f"original with SHA-256 {original_sha}" in out
    assert f"matches the signing record of statement {sid}" in out
    for offset in (len(copy) // 2, 300, len(copy) - 10):
        bad = bytearray(copy)
        bad[offset] ^= 0x01
        changed = settings.data_dir.parent / f"disclosure-changed-{offset}.pdf"
        changed.write_bytes(bytes(bad))
        assert await evr(["statement", "verify", str(changed), "--data", data]) == 1
    good = settings.data_dir.parent / "original.pdf"
    good.write_bytes(original)
    capsys.readouterr()
    assert await evr(["statement", "verify", str(good), "--data", data]) == 0  # the original still passes
    assert "DISCLOSURE" not in capsys.readouterr().out

    # The original is untouched: same files (nothing added beside it), hashes and records.
    assert await kept(server, c, sid) == before
    assert (await (await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/pdf")).read()) == original

    assert ("statement.disclosure", "alice") in await actions(server, f"statement:{sid}")
    async with server.app[DB]() as db:
        entry = await db.scalar(select(AuditEntry).where(AuditEntry.object == f"statement:{sid}",
                                                         AuditEntry.action == "statement.disclosure"))
    assert entry.details["original_sha256"] == original_sha and entry.details["sha256"] == hashlib.sha256(
        copy).hexdigest()
    assert entry.reason == "Disclosure to CPS for first hearing" and entry.consultation_id == c.id


async def test_a_long_statement_keeps_its_page_numbers(link, server, settings):
    """Every statement page, numbered as sealed ("Page k of N"); only the rear page goes.
    The service method is what a disclosure bundle calls."""
    c, sid, original = await sealed(link, text=LONG_TEXT, read_to_witness={"name": "PC Brown"})
    async with server.app[DB]() as db:
        consultation = await db.get(Consultation, c.id)
        statement = await db.get(Statement, sid)
    copy = await server.app[STATEMENTS].disclosure_copy(consultation, statement)
    assert copy.original_sha256 == hashlib.sha256(original).hexdigest() == statement.sha256
    assert copy.sha256 == hashlib.sha256(copy.pdf).hexdigest() and copy.filename.endswith("-disclosure.pdf")
    pages = pdf_pages(copy.pdf)
    n = copy.pages
    assert n > 2 and len(pages) == n == len(pdf_pages(original)) - 1
    for k, page in enumerate(pages, 1):
        text = page_text(page)
        assert f"Page {k} of {n}" in text
        assert f"page {k} of the statement's {n} pages, all included" in text
        assert f"Original (sealed) SHA-256: {copy.original_sha256}" in text and images(page) >= 1
    last = page_text(pages[-1])
    assert "PC Brown" in last and "Full name:" in last and "Jane Émilie Smith" in last
    assert f"(consisting of {n} pages each signed by me)" in page_text(pages[0])
    assert await server.app[STATEMENTS].disclosure(consultation, statement)  # the plain bytes
    assert (await signing.validate(copy.pdf, signing.trust_roots(settings))).ok


async def test_only_a_sealed_statement_has_a_disclosure_copy(link, server, staff, new_client):
    c, sid, _ = await drafted(link, rear=REAR)
    assert await error(await c.officer.get(url(c, sid))) == (409, "not_signed")
    assert (await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")).status == 200
    assert await error(await c.officer.get(url(c, sid))) == (409, "not_signed")
    for unknown in (str(uuid.uuid4()), "nope", "%00"):
        assert await error(await c.officer.get(url(c, unknown))) == (404, "not_found"), unknown
    other = await c.officer.create()
    assert await error(await c.officer.get(f"/api/consultations/{other['id']}/statements/{sid}/disclosure.pdf")) \
        == (404, "not_found")
    assert (await sign(c, sid)).status == 200
    assert (await c.officer.get(url(c, sid))).status == 200
    assert await error(await c.officer.get(url(c, sid) + "?reason=" + "x" * 1001)) == (422, "reason_too_long")

    # Who downloads the sealed PDF, and only they: not the victim's link, not records staff.
    sergeant = await staff("sam", "sergeant")
    assert (await sergeant.get(url(c, sid))).status == 200
    assert (await c.phone.get(url(c, sid))).status in (401, 403)
    assert (await c.phone.get(f"{c.path}/statements/{sid}/disclosure.pdf")).status in (404, 405)
    records = await staff("rita", "records")
    assert (await records.get(url(c, sid))).status in (403, 404)
    anonymous = await new_client()
    assert (await anonymous.get(url(c, sid))).status == 401
    logged = await actions(server, f"statement:{sid}")
    assert ("statement.disclosure", "alice") in logged and ("statement.disclosure", "sam") in logged
    assert not [a for a in logged if a[0] == "statement.disclosure" and a[1] not in ("alice", "sam")]


async def test_no_copy_of_what_is_not_the_sealed_original(link, server, monkeypatch):
    """A stored original that is not the sealed one (its hash differs), or one disposed
    of, gives a clear refusal, never a copy nor a 500."""
    c, sid, original = await sealed(link)
    store = server.app[STORE]
    real = store.read_bytes

    async def altered(key: str) -> bytes:
        data = await real(key)
        return data + b"\n%" if key.endswith(".pdf") else data

    monkeypatch.setattr(store, "read_bytes", altered)
    assert await error(await c.officer.get(url(c, sid))) == (409, "original_mismatch")

    async def gone(key: str) -> bytes:
        raise ItemMissing(key)

    monkeypatch.setattr(store, "read_bytes", gone)
    assert await error(await c.officer.get(url(c, sid))) == (410, "disposed")
    monkeypatch.undo()
    assert (await c.officer.get(url(c, sid))).status == 200
    logged = [a for a in await actions(server, f"statement:{sid}") if a[0] == "statement.disclosure"]
    assert len(logged) == 1  # refusals give nothing out, so log no disclosure


def test_the_rear_page_details_are_not_in_the_draft_text():
    """The leak check looks for rear-page words that the statement pages never print."""
    statement_words = " ".join([DRAFT["text"], DRAFT["witness"]["name"], DRAFT["witness"]["occupation"]])
    assert not [leak for leak in LEAKS if leak in statement_words]
