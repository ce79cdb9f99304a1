"""``evr report``: the month's figures and charts as one document for the force's
governance meeting, HTML or PDF, so nobody rebuilds them in a spreadsheet.

It is the dashboard on paper: the same figures (:class:`.kpis.Indicators`), the same
charts (:mod:`.charts`, SVG drawn on the server for exactly this reuse), each with its
text alternative and a table of what it shows. The HTML is one file with nothing to
fetch (the charts inline); the PDF embeds the same SVG (fpdf2 draws it; its hatching
is not drawn, so every chart's table is printed under it). Figures only: no incident,
no person.
"""

from __future__ import annotations

import html
import io
import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable, Optional

from sqlalchemy.ext.asyncio import AsyncSession

from . import charts
from .kpis import Indicators, Period

#: Told how far the report has got: ``progress(done 0..1, what)``.
Progress = Callable[[float, str], None]

TITLES = {
    "response_times": "How long victims waited for the officer",
    "volumes": "Incidents to EVR and rejected",
    "median_response": "Median wait for the officer",
    "rates": "Reviews and outcomes",
    "satisfaction": "Victims satisfied",
}


@dataclass(frozen=True)
class Report:
    first: date
    last: date
    figures: dict[str, Any]
    bins: list[dict[str, Any]]
    charts: dict[str, str]  # name -> SVG

    @property
    def title(self) -> str:
        return f"EVR performance report, {_day(self.first)} to {_day(self.last)}"


def _day(d: date) -> str:
    return f"{d.day} {d:%B %Y}"


def _pct(value: Optional[float]) -> str:
    return "not enough data" if value is None else f"{value:g} %"


def _minutes(value: Optional[float]) -> str:
    if value is None:
        return "none attended"
    if value < 120:
        return f"{value:g} min"
    return f"{value / 60:.1f} h"


def headlines(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures in words, as a reader wants them first."""
    incidents, response = figures["incidents"], figures["response_minutes"]
    reviews, outcomes, answers = figures["reviews"], figures["crime_outcomes"], figures["satisfaction"]
    return [
        ("Incidents", f"{incidents['created']} entered, {incidents['to_evr']} to EVR, {incidents['rejected']} "
                      "rejected"),
        ("Officers working in EVR", str(figures["officers_active"])),
        ("Wait for the officer", f"median {_minutes(response['p50'])}, 90 % within {_minutes(response['p90'])}; "
                                 f"{_pct(response['within_target_pct'])} within the grade's target "
                                 f"({response['n']} attended)"),
        ("Investigation record", f"median {_minutes(figures['to_investigation_end_minutes']['p50'])} from the "
                                 "report"),
        ("Reviews within 24 h", f"{_pct(reviews['within_24h_pct'])} of {reviews['n']}"),
        ("Crime outcomes", f"{_pct(outcomes['positive_pct'])} positive (1-8), {_pct(outcomes['outcome_14_pct'])} "
                           f"outcome 14, {_pct(outcomes['outcome_16_pct'])} outcome 16, of {outcomes['n']}"),
        ("Victims satisfied", f"{_pct(answers['satisfied_pct'])}; would use it again: "
                              f"{_pct(answers['would_use_again_pct'])} ({answers['responses']} survey answers)"),
    ]


async def gather(db: AsyncSession, indicators: Indicators, period: Period,
                 progress: Progress = lambda done, what: None) -> Report:
    """The report's figures and charts, telling ``progress`` as each is made."""
    progress(0.05, "figures")
    figures = await indicators.compute(db, period)
    progress(0.4, "response times")
    bins = await indicators.response_bins(db, period)
    first = period.since.astimezone(period.zone).date()
    last = (period.until - timedelta(microseconds=1)).astimezone(period.zone).date()
    scope = charts.scope_of(figures, first.isoformat(), last.isoformat())
    drawn = {}
    for i, name in enumerate(charts.NAMES):
        progress(0.5 + 0.4 * i / len(charts.NAMES), f"chart: {TITLES[name].lower()}")
        drawn[name] = charts.chart(name, figures, bins, scope)
    return Report(first, last, figures, bins, drawn)


def _table(name: str, report: Report) -> tuple[list[str], list[list[str]]]:
    """A chart's figures as a table: its heading row and rows."""
    figures, group = report.figures, report.figures.get("group_by") or "day"

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    if name == "response_times":
        return (["Waited", "Incidents", "Within target", "Past target", "No target"],
                [[charts.bin_label(b["from_minutes"], b["to_minutes"]), str(b["incidents"]), str(b["within_target"]),
                  str(b["past_target"]), str(b["no_target"])] for b in report.bins])
    if name == "rates":
        return (["Figure", "Percent", "Of"], [[words, cell(pct), str(n)] for words, pct, n, _ in
                                             charts.rate_rows(figures)])
    key = {"volumes": None, "median_response": "response_p50_minutes", "satisfaction": "satisfied_pct"}[name]
    if key is None:
        return (["Starting", "Incidents", "To EVR", "Rejected"],
                [[charts.day_label(s["start"], group), str(s["incidents"]), str(s["to_evr"]), str(s["rejected"])]
                 for s in figures["series"]])
    return (["Starting", "Minutes" if name == "median_response" else "Percent"],
            [[charts.day_label(s["start"], group), cell(s[key])] for s in figures["series"]])


def as_html(report: Report) -> str:
    """One HTML file, nothing to fetch: the headline figures, then each chart (inline
    SVG, named and described) with its table."""
    e = html.escape
    parts = [f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{e(report.title)}"
             "</title>\n<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
             "color:#0b0c0c}table{border-collapse:collapse;margin:.5rem 0 2rem}th,td{border:1px solid #b1b4b6;"
             "padding:.25rem .5rem;text-align:left}figure{margin:2rem 0}svg{max-width:100%;height:auto}"
             "</style>\n</head>\n<body>\n",
             f"<h1>{e(report.title)}</h1>\n<p>Every figure is about the incidents reported in the period, "
             f"in the force's time zone ({e(report.figures.get('timezone', ''))}).</p>\n",
             "<table><caption>The figures</caption><tbody>\n"]
    parts += [f"<tr><th scope=\"row\">{e(k)}</th><td>{e(v)}</td></tr>\n" for k, v in headlines(report.figures)]
    parts.append("</tbody></table>\n")
    for name in charts.NAMES:
        head, rows = _table(name, report)
        parts.append(f"<figure>\n<h2>{e(TITLES[name])}</h2>\n{report.charts[name]}\n")
        parts.append(f"<table><caption>{e(TITLES[name])}: the figures</caption><thead><tr>"
                     + "".join(f"<th scope=\"col\">{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                     + "</tbody></table>\n</figure>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def as_pdf(report: Report, progress: Progress = lambda done, what: None) -> bytes:
    """The same as a PDF: A4, the headline figures, each chart with its table."""
    from fpdf import FPDF

    from evr.statements.content import BOLD, REGULAR  # the fonts the statements ship with

    # fpdf2 names each SVG part it does not draw (title, desc, patterns): not news here.
    logging.getLogger("fpdf.svg").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    pdf = FPDF(format="A4")
    pdf.set_title(report.title)
    pdf.set_creator("EVR")
    pdf.add_font("DejaVu", "", str(REGULAR))
    pdf.add_font("DejaVu", "B", str(BOLD))
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.multi_cell(0, 8, report.title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)
    pdf.multi_cell(0, 5, "Every figure is about the incidents reported in the period, in the force's time zone "
                         f"({report.figures.get('timezone', '')}).", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("DejaVu", "", 10)
    with pdf.table(col_widths=(45, 135), text_align="LEFT") as table:
        for label, value in headlines(report.figures):
            table.row([label, value])
    for i, name in enumerate(charts.NAMES):
        progress(0.9 + 0.1 * i / len(charts.NAMES), f"page: {TITLES[name].lower()}")
        pdf.add_page()
        pdf.set_font("DejaVu", "B", 13)
        pdf.multi_cell(0, 7, TITLES[name], new_x="LMARGIN", new_y="NEXT")
        pdf.image(io.BytesIO(_latin1(report.charts[name]).encode("utf-8")), x=pdf.l_margin, w=180)
        pdf.set_x(pdf.l_margin)
        pdf.ln(2)
        head, rows = _table(name, report)
        pdf.set_font("DejaVu", "", 8)
        with pdf.table(text_align="LEFT") as table:
            table.row(head)
            for row in rows:
                table.row(row)
    return bytes(pdf.output())


#: fpdf2 writes an SVG's text in a core PDF font, which has only Latin-1: the few other
#: characters the charts use, in their nearest Latin-1 form.
_PLAIN = str.maketrans({"–": "-", "—": "-", "…": "...", "≥": ">=", "≤": "<=", "’": "'", "‘": "'", "“": '"',
                        "”": '"', "×": "x"})


def _latin1(svg: str) -> str:
    """The chart's SVG with its text in Latin-1 (anything else a question mark)."""
    return svg.translate(_PLAIN).encode("latin-1", errors="replace").decode("latin-1")
