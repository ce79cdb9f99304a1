"""``evr report``: the period's figures and charts as one HTML file (nothing to fetch)
or a PDF, from the same figures and charts as the dashboard, with a progress bar; on
the fixed incidents of tests/test_kpis.py and on a made-up month through the command."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from pyhanko.pdf_utils.reader import PdfFileReader
from test_kpis import incidents  # noqa: F401  (the fixture: the hand-worked incidents)

from evr.evaluation.kpis import Indicators, parse_period
from evr.evaluation.report import as_html, as_pdf, gather, headlines
from evr.http import DB, SETTINGS

NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


async def _report(server):
    settings = server.app[SETTINGS]
    period = parse_period({"from": "2026-10-24", "to": "2026-10-26"}, NOW, settings.timezone)
    steps = []
    async with server.app[DB]() as db:
        made = await gather(db, Indicators(settings.grade_targets_hours), period,
                            lambda done, what: steps.append((done, what)))
    return made, steps


async def test_html_and_pdf_of_the_hand_worked_period(incidents, server):  # noqa: F811
    made, steps = await _report(server)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps) and steps[-1][0] < 1  # it moves on
    assert made.title == "EVR performance report, 24 October 2026 to 26 October 2026"
    words = dict(headlines(made.figures))
    assert words["Incidents"] == "7 entered, 5 to EVR, 1 rejected"
    assert words["Wait for the officer"].startswith("median 30 min, 90 % within 90 min; 75 % within")
    assert words["Victims satisfied"].startswith("not enough data")
    page = as_html(made)
    assert page.count("<svg") == 5 and page.count("<table>") == 6 and "<script" not in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    ET.fromstring(page.split("<figure>", 1)[1].split("<table>", 1)[0].split("\n", 2)[2].rsplit("</svg>", 1)[0]
                  + "</svg>")  # a chart is well-formed SVG
    pdf = as_pdf(made)
    reader = PdfFileReader(io.BytesIO(pdf))
    assert len(reader.root["/Pages"]["/Kids"]) == 6  # the figures, then a page a chart


def test_the_command_writes_a_file_only_the_service_reads(tmp_path):
    data = str(tmp_path / "data")
    made = subprocess.run([sys.executable, "-m", "evr", "demo", "--days", "10", "--per-day", "6", "--data", data],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    today = datetime.now(timezone.utc).date().isoformat()
    out = tmp_path / "month.html"
    done = subprocess.run([sys.executable, "-m", "evr", "report", "--data", data, "--from", "2026-01-01", "--to",
                           today, "--group-by", "week", "--format", "html", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "100 % written to" in done.stderr and "[" in done.stderr  # the progress bar
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert "EVR performance report, 1 January 2026 to" in out.read_text()
    pdf = subprocess.run([sys.executable, "-m", "evr", "report", "--data", data, "--out", str(tmp_path / "m.pdf")],
                         capture_output=True, text=True, timeout=120)
    assert pdf.returncode == 0, pdf.stderr
    assert (tmp_path / "m.pdf").read_bytes().startswith(b"%PDF")
    bad = subprocess.run([sys.executable, "-m", "evr", "report", "--data", data, "--from", "2026-02-30"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "from must be a date" in bad.stderr
