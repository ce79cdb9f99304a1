"""The MG11 layout: pagination (shared by the PDF and the victim's screen) and the PDF.

:func:`paginate` lays a statement out into pages of rows with the real font metrics
(DejaVu Sans, shipped with EVR so the layout is the same on every machine). The
victim's page shows exactly those pages and rows; :func:`render` draws the same rows
into the PDF. Signing only fills the reserved places (the signature on every page and
after the last line, the typed name, the date): nothing moves, so the page count in
the s.9 declaration the witness read is the one sealed.

A disclosure copy (:class:`Disclosure`) is the same statement pages drawn the same
way, without the rear page (the witness's contact details and needs are never
disclosed to the defence), each page marked as a copy and naming the sealed original's
SHA-256 in the margins the statement leaves empty, so nothing on the page moves.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import zip_longest
from typing import Any, Optional, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fpdf import FPDF
from fpdf.enums import MethodReturnValue

from .content import BOLD, REGULAR

PAGE_W, PAGE_H = 210.0, 297.0
LEFT, TOP = 20.0, 12.0
WIDTH = PAGE_W - 2 * LEFT
FOOTER_TOP = 262.0
FONT = "DejaVu"
RESTRICTED = "RESTRICTED (when complete)"
LEGAL = ("Criminal Procedure Rules, r. 16.2; Criminal Justice Act 1967, s. 9; "
         "Magistrates' Courts Act 1980, s. 5B")

#: kind -> (bold, size in points, row height in mm)
STYLES: dict[str, tuple[bool, float, float]] = {
    "banner": (True, 8, 4.5),
    "title": (True, 14, 8.0),
    "legal": (False, 7.5, 4.0),
    "ref": (False, 8.5, 4.4),
    "field": (False, 11, 6.0),
    "label": (True, 11, 6.0),
    "declaration": (False, 9.5, 4.6),
    "heading": (True, 11, 7.0),
    "body": (False, 11, 5.8),
    "small": (False, 9, 4.6),
    "sign": (False, 10, 16.0),
    "fill": (False, 10, 7.0),
    "gap": (False, 10, 3.0),
}
FRONT_LABEL = 62.0
REAR_LABEL = 80.0
SIGN_LABEL = 45.0


def declaration(pages: int) -> str:
    """The Criminal Justice Act 1967 s.9 declaration, in the MG11's words."""
    count = f"{pages} page{'s' if pages != 1 else ''}"
    return (f"This statement (consisting of {count} each signed by me) is true to the best of my knowledge and "
            "belief and I make it knowing that, if it is tendered in evidence, I shall be liable to prosecution "
            "if I have wilfully stated in it anything which I know to be false, or do not believe to be true.")


def reader_declaration(reader: dict[str, Any], witness: str, pages: int) -> str:
    if reader.get("declaration"):
        return reader["declaration"]
    count = f"{pages} page{'s' if pages != 1 else ''}"
    return (f"I, {reader['name']}, declare that I read this statement, consisting of {count}, aloud in full to "
            f"{witness or 'the witness'} before they signed it, and that they appeared to understand it and "
            "agreed that it was true.")


@dataclass(frozen=True)
class Document:
    """What a statement's pages are made of."""

    statement_id: str
    version: int
    cad_ref: str
    force_name: str
    #: The officer the statement is taken by ("signature witnessed by").
    officer: str
    content: dict[str, Any]


@dataclass
class Row:
    kind: str
    text: str = ""
    label: str = ""
    #: What signing fills in: ``signature`` (with ``date``), ``typed_name``.
    fill: str = ""

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("text", self.text), ("label", self.label),
                                  ("fill", self.fill)) if v or k == "kind"}


@dataclass
class Page:
    #: ``statement`` (counted in the declaration) or ``rear`` (witness details).
    kind: str
    number: int
    rows: list[Row] = field(default_factory=list)
    footer: str = ""


@dataclass
class Layout:
    pages: list[Page]
    #: Statement pages (the N of the declaration; the rear page is not one of them).
    statement_pages: int
    declaration: str

    def json(self) -> list[dict[str, Any]]:
        return [{"kind": p.kind, "number": p.number, "footer": p.footer, "rows": [r.json() for r in p.rows]}
                for p in self.pages]


@dataclass(frozen=True)
class Signed:
    """What the witness adds when signing."""

    png: bytes
    width: int
    height: int
    typed_name: str
    signed_at: datetime


@dataclass(frozen=True)
class Disclosure:
    """What makes a rendering a disclosure copy: the sealed original it is a copy of."""

    original_sha256: str

    @property
    def keyword(self) -> str:
        """Named in the PDF's keywords (covered by its signature), for ``evr statement verify``."""
        return f"evr-disclosure-of:{self.original_sha256}"


DISCLOSURE_TITLE = "DISCLOSURE COPY"
DISCLOSURE_WITHHELD = "the witness's personal details (the MG 11 rear page) are withheld"


def _pdf() -> FPDF:
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.add_font(FONT, "", str(REGULAR))
    pdf.add_font(FONT, "B", str(BOLD))
    pdf.set_auto_page_break(False)
    pdf.set_margins(LEFT, TOP, LEFT)
    pdf.c_margin = 0
    return pdf


class _Wrapper:
    def __init__(self, pdf: FPDF) -> None:
        self.pdf = pdf
        self.cache: dict[tuple[str, str, float], list[str]] = {}

    def lines(self, text: str, kind: str, width: float = WIDTH) -> list[str]:
        key = (text, kind, width)
        if key not in self.cache:
            self.cache[key] = self._lines(text, kind, width)
        return self.cache[key]

    def _lines(self, text: str, kind: str, width: float) -> list[str]:
        bold, size, _ = STYLES[kind]
        self.pdf.set_font(FONT, "B" if bold else "", size)
        out: list[str] = []
        for paragraph in text.split("\n"):
            if not paragraph.strip():
                out.append("")
                continue
            # output=LINES gives the lines alone; fpdf types the union of every output's value.
            wrapped = cast(list[str], self.pdf.multi_cell(width, 5, paragraph, dry_run=True,
                                                          output=MethodReturnValue.LINES))
            out.extend(line.rstrip() for line in wrapped)
        return out

    def rows(self, text: str, kind: str, width: float = WIDTH) -> list[Row]:
        return [Row(kind, line) for line in self.lines(text, kind, width)]

    def field(self, label: str, value: str, label_width: float) -> list[Row]:
        """A label and its value side by side, each wrapped in its own column."""
        labels = self.lines(label, "label", label_width - 2)
        values = self.lines(value, "field", WIDTH - label_width) or [""]
        return [Row("field", text, name) for name, text in zip_longest(labels, values, fillvalue="")]


def _yes_no(value: Optional[bool]) -> str:
    return {True: "Yes", False: "No"}.get(value, "Not recorded")  # type: ignore[arg-type]


def _height(rows: list[Row]) -> float:
    return sum(STYLES[r.kind][2] for r in rows)


def _pack(kind: str, header: Any, blocks: list[list[Row]], first_number: int = 1) -> list[Page]:
    """Fill pages with blocks (each kept on one page), ``header(i)`` atop page i."""
    pages: list[Page] = []
    page: Optional[Page] = None
    room = 0.0
    for block in blocks:
        need = _height(block)
        if page is None or (need > room and page.rows):
            page = Page(kind, first_number + len(pages), list(header(len(pages))))
            pages.append(page)
            room = FOOTER_TOP - TOP - _height(page.rows)
        page.rows.extend(block)
        room -= need
    return pages


def paginate(doc: Document) -> Layout:
    """Lay the statement out. The s.9 declaration names the page count, and its wording
    can change the count, so lay out until the count is stable."""
    pdf = _pdf()
    pdf.add_page()  # fpdf2 measures on a page
    wrap = _Wrapper(pdf)
    pages = 1
    for _ in range(4):
        layout = _layout(doc, wrap, pages)
        if layout.statement_pages == pages:
            return layout
        pages = layout.statement_pages
    return layout


def _header(doc: Document, wrap: _Wrapper, title: str) -> list[Row]:
    ref = f"Ref. {doc.cad_ref} · Statement {doc.statement_id}, version {doc.version}"
    if doc.force_name:
        ref = f"{doc.force_name} · {ref}"
    return [Row("banner", RESTRICTED), Row("title", title, "MG 11"), *wrap.rows(LEGAL, "legal"),
            *wrap.rows(ref, "ref"), Row("gap")]


def _layout(doc: Document, wrap: _Wrapper, pages: int) -> Layout:
    content = doc.content
    witness = content["witness"]
    name = witness["name"]
    age = "over 18" if witness["over_18"] is not False else str(witness["age"] or "")
    decl = declaration(pages)
    first = [
        *wrap.field("Statement of:", name, FRONT_LABEL),
        *wrap.field("Age if under 18:", age, FRONT_LABEL),
        *wrap.field("Occupation:", witness["occupation"], FRONT_LABEL),
        Row("gap"),
        *wrap.rows(decl, "declaration"),
        Row("sign", label="Signature:", fill="signature"),
        Row("gap"),
    ]
    head = _header(doc, wrap, "WITNESS STATEMENT")

    def header(i: int) -> list[Row]:
        if i == 0:
            return head + first
        return head + wrap.field("Continuation of statement of:", name, FRONT_LABEL) + [Row("gap")]

    body = wrap.rows(content["text"], "body") or [Row("body", "")]
    blocks: list[list[Row]] = [[row] for row in body[:-1]]
    exhibits: list[list[Row]] = []
    for exhibit in content["exhibits"]:
        text = exhibit["ref"] + (f" — {exhibit['description']}" if exhibit["description"] else "")
        if exhibit.get("filename"):
            text += f" (file {exhibit['filename']}, SHA-256 {exhibit['sha256']})"
        exhibits.append(wrap.rows(text, "small"))
    if exhibits:
        exhibits[0][:0] = [Row("gap"), Row("heading", "Exhibits referred to")]
    end = [Row("gap"), Row("sign", label="Signature:", fill="signature"),
           Row("fill", label="Full name:", fill="typed_name"),
           *wrap.rows("Signed electronically by the witness on their own device, during a recorded video call "
                      f"with {doc.officer}.", "small")]
    # The signature follows the last line: keep the last line, the exhibits (when
    # they fit on a page with it) and the signature together.
    tail = [body[-1:], *exhibits]
    together = [row for block in tail for row in block] + end
    if _height(together) <= (FOOTER_TOP - TOP) / 2:
        blocks.append(together)
    else:
        blocks.extend(tail[:-1])
        blocks.append(tail[-1] + end)
    reader = content.get("read_to_witness")
    if reader:
        blocks.append([Row("gap"), Row("heading", "Declaration of the person who read this statement to the witness"),
                       *wrap.rows(reader_declaration(reader, name, pages), "declaration"),
                       *wrap.rows(f"Reader: {reader['name']}. Declaration recorded by {doc.officer}.", "small")])
    statement = _pack("statement", header, blocks)
    for page in statement:
        page.footer = f"Page {page.number} of {len(statement)}"

    rear = content["rear"]
    fields = [
        ("Witness:", name),
        ("Contact details:", rear["contact"]),
        ("Preferred means of contact:", rear["preferred_contact"]),
        ("Dates to avoid:", rear["dates_to_avoid"]),
        ("Consent to police access to medical records:", _yes_no(rear["consent_medical_access"])),
        ("Consent to disclosure of medical records:", _yes_no(rear["consent_medical_disclosure"])),
        ("Victim personal statement offered:", _yes_no(rear["vps_offered"])),
        ("Special measures and needs:", rear["special_measures"]),
        ("Willing to attend court:", _yes_no(rear["court_willing"])),
        ("Statement taken by:", rear["taken_by"] or doc.officer),
        ("Where:", rear["taken_where"]),
        ("When:", rear["taken_when"]),
    ]
    rear_blocks = [wrap.field(label, value, REAR_LABEL) for label, value in fields]
    rear_blocks.append([Row("gap"), Row("sign", label="Witness's signature:", fill="signature")])
    rear_head = _header(doc, wrap, "WITNESS DETAILS") + wrap.rows(
        "The rear page of the MG 11: the witness's contact details and needs. Not for disclosure.", "small") + [
        Row("gap")]
    rear_pages = _pack("rear", lambda i: rear_head, rear_blocks, len(statement) + 1)
    for i, page in enumerate(rear_pages, 1):
        page.footer = f"Witness details, page {i} of {len(rear_pages)}"
    return Layout(statement + rear_pages, len(statement), decl)


# -- the PDF -------------------------------------------------------------------------


def _zone(name: str) -> Any:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def render(doc: Document, layout: Layout, created: datetime, signed: Optional[Signed] = None,
           tz: str = "Europe/London", disclosure: Optional[Disclosure] = None) -> bytes:
    """The PDF of ``layout``; unsigned (empty signature places) for a preview. With
    ``disclosure``, its statement pages alone, each marked as a disclosure copy of the
    sealed original (the rear page is left out, not blanked: nothing of it is in the file)."""
    pdf = _pdf()
    keywords = f"evr-statement:{doc.statement_id} evr-version:{doc.version}"
    if disclosure is None:
        pdf.set_title("MG11 witness statement")
        pdf.set_subject(f"EVR statement {doc.statement_id} version {doc.version}")
    else:
        pdf.set_title("MG11 witness statement: disclosure copy (rear page withheld)")
        pdf.set_subject(f"EVR statement {doc.statement_id} version {doc.version}, disclosure copy of the sealed "
                        f"original with SHA-256 {disclosure.original_sha256}")
        keywords += " " + disclosure.keyword
    pdf.set_keywords(keywords)
    pdf.set_author(doc.force_name or "EVR")
    pdf.set_creator("EVR")
    pdf.set_producer("EVR")
    pdf.set_creation_date(created)
    date = signed.signed_at.astimezone(_zone(tz)).strftime("%d/%m/%Y %H:%M %Z") if signed else ""
    pages = layout.pages if disclosure is None else [p for p in layout.pages if p.kind == "statement"]
    for page in pages:
        pdf.add_page()
        y = TOP
        for row in page.rows:
            _draw(pdf, row, y, signed, date, REAR_LABEL if page.kind == "rear" else FRONT_LABEL)
            y += STYLES[row.kind][2]
        _footer(pdf, page, doc, signed)
        if disclosure is not None:
            _mark(pdf, page, layout.statement_pages, disclosure)
    return bytes(pdf.output())


def _fitted(pdf: FPDF, text: str, bold: bool, size: float, width: float = WIDTH) -> None:
    """Set the font at ``size`` points, smaller when ``text`` would not fit ``width``."""
    pdf.set_font(FONT, "B" if bold else "", size)
    while pdf.get_string_width(text) > width and size > 5:
        size -= 0.25
        pdf.set_font(FONT, "B" if bold else "", size)


def _mark(pdf: FPDF, page: Page, pages: int, disclosure: Disclosure) -> None:
    """A disclosure copy's marks, above the banner and below the footer (space every
    page leaves empty): what it is, what is withheld, the original's hash, and that its
    page numbers are the original's statement pages, all of them."""
    title = f"{DISCLOSURE_TITLE}: {DISCLOSURE_WITHHELD}"
    _fitted(pdf, title, True, 9)
    pdf.set_xy(LEFT, 4)
    pdf.cell(WIDTH, 4, title, align="C")
    original = f"Original (sealed) SHA-256: {disclosure.original_sha256}"
    _fitted(pdf, original, False, 7.5)
    pdf.set_xy(LEFT, 8)
    pdf.cell(WIDTH, 3.5, original, align="C")
    count = f"{pages} page{'s' if pages != 1 else ''}"
    note = (f"Disclosure copy: page {page.number} of the statement's {count}, all included; "
            "the rear page (witness details) is withheld.")
    _fitted(pdf, note, False, 7.5)
    pdf.set_xy(LEFT, 289)
    pdf.cell(WIDTH, 3.5, note, align="C")


def _font(pdf: FPDF, kind: str, bold: Optional[bool] = None) -> None:
    b, size, _ = STYLES[kind]
    pdf.set_font(FONT, "B" if (b if bold is None else bold) else "", size)


def _signature(pdf: FPDF, x: float, y: float, w: float, h: float, signed: Optional[Signed]) -> None:
    if signed is None:
        pdf.set_draw_color(150)
        pdf.set_dash_pattern(dash=0.8, gap=0.8)
        pdf.line(x, y + h, x + w, y + h)
        pdf.set_dash_pattern()
        pdf.set_draw_color(0)
        return
    scale = min(w / signed.width, h / signed.height)
    iw, ih = signed.width * scale, signed.height * scale
    pdf.image(io.BytesIO(signed.png), x=x, y=y + (h - ih), w=iw, h=ih)


def _draw(pdf: FPDF, row: Row, y: float, signed: Optional[Signed], date: str, label_w: float) -> None:
    _, _, h = STYLES[row.kind]
    if row.kind == "gap":
        return
    if row.kind == "title":
        _font(pdf, "title")
        pdf.set_xy(LEFT, y)
        pdf.cell(WIDTH, h, row.text)
        pdf.set_xy(LEFT, y)
        pdf.cell(WIDTH, h, row.label, align="R")
        return
    if row.kind == "banner":
        _font(pdf, "banner")
        pdf.set_xy(LEFT, y)
        pdf.cell(WIDTH, h, row.text, align="C")
        return
    if row.kind == "sign":
        _font(pdf, "sign", bold=True)
        pdf.set_xy(LEFT, y + h - 6)
        pdf.cell(SIGN_LABEL, 6, row.label)
        _signature(pdf, LEFT + SIGN_LABEL, y + 1, 60, h - 2, signed)
        date_x = LEFT + SIGN_LABEL + 64
        pdf.set_xy(date_x, y + h - 6)
        pdf.cell(12, 6, "Date:")
        pdf.set_font(FONT, "", 10)
        pdf.cell(LEFT + WIDTH - date_x - 12, 6, date)
        if not signed:
            _signature(pdf, date_x + 12, y + h - 7, LEFT + WIDTH - date_x - 12, 0, None)
        return
    if row.kind == "fill":
        _font(pdf, "fill", bold=True)
        pdf.set_xy(LEFT, y)
        pdf.cell(SIGN_LABEL, h, row.label)
        value = signed.typed_name if signed else ""
        size = STYLES["fill"][1]
        pdf.set_font(FONT, "", size)
        while value and pdf.get_string_width(value) > WIDTH - SIGN_LABEL and size > 5:
            size -= 0.5
            pdf.set_font(FONT, "", size)
        pdf.cell(WIDTH - SIGN_LABEL, h, value)
        if not signed:
            _signature(pdf, LEFT + SIGN_LABEL, y + h - 1.5, WIDTH - SIGN_LABEL, 0, None)
        return
    if row.kind == "field":
        if row.label:
            _font(pdf, "field", bold=True)
            pdf.set_xy(LEFT, y)
            pdf.cell(label_w, h, row.label)
        _font(pdf, "field")
        pdf.set_xy(LEFT + label_w, y)
        pdf.cell(WIDTH - label_w, h, row.text)
        return
    _font(pdf, row.kind)
    pdf.set_xy(LEFT, y)
    pdf.cell(WIDTH, h, row.text)


def _footer(pdf: FPDF, page: Page, doc: Document, signed: Optional[Signed]) -> None:
    y = FOOTER_TOP + 2
    pdf.set_draw_color(0)
    pdf.set_line_width(0.2)
    pdf.line(LEFT, y, LEFT + WIDTH, y)
    pdf.set_font(FONT, "B", 9)
    pdf.set_xy(LEFT, y + 9)
    pdf.cell(20, 5, "Signature:")
    _signature(pdf, LEFT + 20, y + 2, 42, 12, signed)
    pdf.set_xy(LEFT + 70, y + 9)
    if page.kind == "statement":
        pdf.cell(44, 5, "Signature witnessed by:")
        pdf.set_font(FONT, "", 9)
        pdf.cell(56, 5, doc.officer)
    pdf.set_font(FONT, "", 9)
    pdf.set_xy(LEFT, y + 15)
    pdf.cell(WIDTH, 5, page.footer, align="R")
    pdf.set_font(FONT, "B", 8)
    pdf.set_xy(LEFT, y + 20)
    pdf.cell(WIDTH, 4.5, RESTRICTED, align="C")
