"""The dashboard (/dashboard) and its charts (evr.evaluation.charts, GET
/api/kpis/charts/{name}.svg): the charts drawn on the server have a bar or point per
value, escape every text, say so in words when there is nothing to draw and parse as
XML; the route keeps to sergeants and admin staff; and in a real Chromium the page
shows the figures of incidents seeded in the database (the small set of
tests/test_kpis.py, worked out by hand): the number of bars and points in each chart,
the tables, a grade filter, the downloads, axe-clean, no console error, an officer
refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from browser_fixtures import SQLITE_ONLY
from test_kpis import incidents  # noqa: F401 - the fixture: the incidents seeded in the database
from test_queue_browser import sign_in

from evr.evaluation import charts

SVG = "{http://www.w3.org/2000/svg}"


def parsed(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and desc is not None and title.text and desc.text
    assert root.get("aria-labelledby") == title.get("id") and root.get("aria-describedby") == desc.get("id")
    assert root.find(".//*[@style]") is None  # the CSP forbids inline styles
    return root


def bars(svg: str) -> list[ET.Element]:
    return [e for e in parsed(svg).iter(f"{SVG}rect") if "bar" in (e.get("class") or "").split()]


def points(svg: str) -> list[ET.Element]:
    return [e for e in parsed(svg).iter(f"{SVG}circle") if e.get("class") == "point"]


def texts(svg: str) -> str:
    root = parsed(svg)
    return " ".join("".join(e.itertext()) for e in root if e.tag in (f"{SVG}title", f"{SVG}desc", f"{SVG}text"))


def _bins(**counts: tuple[int, int, int]) -> list[dict[str, Any]]:
    """The bins of evr.evaluation.kpis.RESPONSE_BINS, with (within, past, no target) by index."""
    from evr.evaluation.kpis import RESPONSE_BINS

    found = []
    for i, (lower, upper) in enumerate(RESPONSE_BINS):
        within, past, none = counts.get(f"b{i}", (0, 0, 0))
        found.append({"from_minutes": lower, "to_minutes": upper, "incidents": within + past + none,
                      "within_target": within, "past_target": past, "no_target": none})
    return found


def _series(*rows: tuple[str, int, int, int, Any]) -> list[dict[str, Any]]:
    return [{"start": start, "incidents": n, "to_evr": to_evr, "rejected": rejected, "response_p50_minutes": p50,
             "satisfied_pct": None} for start, n, to_evr, rejected, p50 in rows]


FIGURES: dict[str, Any] = {
    "group_by": "day", "grade": None, "category": None,
    "incidents": {"created": 7, "to_evr": 5, "rejected": 1},
    "reviews": {"n": 3, "within_24h_pct": 66.7},
    "crime_outcomes": {"n": 3, "positive_pct": 33.3, "outcome_14_pct": None, "outcome_16_pct": 0.0},
    "satisfaction": {"responses": 0, "satisfied_pct": None, "would_use_again_pct": None},
    "series": _series(("2026-10-24", 1, 1, 0, 30.0), ("2026-10-25", 2, 2, 0, None), ("2026-10-26", 4, 2, 1, 60.0)),
}


# -- the charts, drawn ---------------------------------------------------------------


def test_response_times_a_bar_per_part_of_each_bin():
    svg = charts.response_times(_bins(b0=(1, 0, 0), b3=(1, 1, 0), b8=(0, 0, 2)))
    found = bars(svg)
    assert [e.get("class") for e in found] == ["bar within", "bar within", "bar past", "bar none"]
    assert "5 attended incidents" in texts(svg) and "2 within" in texts(svg) and "1 past it" in texts(svg)
    # Colour is not the only signal: the past target is hatched, and the legend says it in words.
    assert found[2].get("fill") == "url(#chart-response_times-hatch)"
    assert "Within target" in texts(svg) and "Past target" in texts(svg) and "2 d+" in texts(svg)


def test_volumes_median_and_rates_count_their_values():
    assert len(bars(charts.volumes(FIGURES["series"]))) == 4  # 1, 2, 2 to EVR; 1 rejected; no bar for 0
    median = charts.median_response(FIGURES["series"])
    assert len(points(median)) == 2 and "from 30 to 60 minutes" in texts(median)
    rates = charts.rates(FIGURES)
    assert len(bars(rates)) == 3  # outcome 14 has no share: no bar, "No data" in words; 0 % is a bar
    assert "No data" in texts(rates) and "Reviews within 24 h: 66.7 % (of 3 reviews)" in texts(rates)
    weeks = charts.volumes(_series(("2026-10-19", 3, 3, 0, None)), "week")
    assert "w/c 19 Oct" in texts(weeks) and "per week" in texts(weeks)


def test_every_chart_by_name_parses_and_unknown_names_are_refused():
    for name in charts.NAMES:
        parsed(charts.chart(name, FIGURES, _bins(b1=(1, 0, 0))))
    with pytest.raises(KeyError):
        charts.chart("pie", FIGURES)


def test_text_is_escaped():
    hostile = {**FIGURES, "category": "<script>alert(1)</script> & co"}
    scope = charts.scope_of(hostile, "2026-10-24", "2026-10-26")
    for name in charts.NAMES:
        svg = charts.chart(name, hostile, _bins(b1=(1, 0, 0)), scope)
        assert "<script>" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in svg
        assert "category <script>alert(1)</script> & co" in texts(svg)  # read back as the text it was


def test_nothing_to_draw_is_said_in_words():
    empty = {**FIGURES, "incidents": {"created": 0, "to_evr": 0, "rejected": 0},
             "series": _series(("2026-10-24", 0, 0, 0, None))}
    for name, message in (("volumes", "No incidents in this period"), ("rates", "No incidents in this period"),
                          ("response_times", "No response times in this period"),
                          ("median_response", "No response times in this period"),
                          ("satisfaction", "No survey answers yet")):
        svg = charts.chart(name, empty, _bins())
        assert not bars(svg) and not points(svg)
        assert message in texts(svg), name
    # No survey answers yet even when there are incidents.
    assert "No survey answers yet" in texts(charts.chart("satisfaction", FIGURES))
    # Answers, but too few on any day for a share: said so, not "no answers".
    few = charts.satisfaction(FIGURES["series"], {"responses": 3, "satisfied_pct": None})
    assert not points(few) and "Too few survey answers in any one day" in texts(few)


def test_satisfaction_a_point_per_share():
    series = [{**row, "satisfied_pct": pct} for row, pct in zip(FIGURES["series"], (60.0, None, 80.0), strict=True)]
    svg = charts.satisfaction(series, {"responses": 12, "satisfied_pct": 70.0})
    assert len(points(svg)) == 2 and "from 12 survey answers, on 2 days: from 60 % to 80 %" in texts(svg)


# -- the route -------------------------------------------------------------------------


async def test_chart_route_draws_the_periods_figures(incidents, staff):  # noqa: F811 - the fixture
    sergeant = await staff("sue", "sergeant")
    response = await sergeant.get("/api/kpis/charts/volumes.svg?from=2026-10-24&to=2026-10-26")
    assert response.status == 200 and response.content_type == "image/svg+xml"
    assert response.headers["Cache-Control"] == "no-store"
    svg = await response.text()
    assert len(bars(svg)) == 4 and "Incidents reported 24 Oct 2026 to 26 Oct 2026." in texts(svg)
    times = await (await sergeant.get("/api/kpis/charts/response_times.svg?from=2026-10-24&to=2026-10-26")).text()
    assert len(bars(times)) == 4  # 10 min; 30 min; 60 min within and 90 min past (grade 2, 1 h)
    graded = await (await sergeant.get("/api/kpis/charts/volumes.svg?from=2026-10-24&to=2026-10-26&grade=2")).text()
    assert len(bars(graded)) == 1 and "grade 2" in texts(graded)
    unknown = await sergeant.get("/api/kpis/charts/pie.svg")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_found"
    assert (await sergeant.get("/api/kpis/charts/volumes.svg?grade=9")).status == 400


@pytest.mark.parametrize("role", ["officer", "records", "call_handler"])
async def test_only_sergeants_and_admin_see_the_charts(staff, role):
    who = await staff("someone", role)
    assert (await who.get("/api/kpis/charts/volumes.svg")).status == 403
    assert (await who.get("/api/kpis/charts/pie.svg")).status == 403


# -- the page, in Chromium ----------------------------------------------------------------

QUERY = "from=2026-10-24&to=2026-10-26"


async def loaded(page: Any) -> None:
    await page.wait_for_function("() => document.body.dataset.loaded")


async def count(page: Any, chart: str, selector: str) -> int:
    return await page.locator(f"#fig-{chart} svg {selector}").count()


async def cells(page: Any, chart: str) -> list[list[str]]:
    return await page.locator(f"#table-{chart} tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")


@SQLITE_ONLY
async def test_dashboard_in_chromium(ui, users, incidents):  # noqa: F811 - the fixture
    await users("sue", "sergeant")
    page = await ui.page(phone=False)
    await page.goto(f"/dashboard?{QUERY}")
    assert await page.title() == "EVR dashboard"
    await sign_in(page, "sue")
    await loaded(page)
    assert await page.locator("#f-from").input_value() == "2026-10-24"
    assert await page.locator("#trial").is_hidden()  # no trial: no comparison of arms

    # The headline in words.
    headline = await page.locator("#headline").text_content()
    assert "Incidents reported: 7 (5 to EVR, 1 rejected)" in headline
    assert "Median response 30 min; 75 % within target" in headline
    assert "Reviews within 24 h: 66.7 % (of 3)" in headline and "No survey answers yet" in headline

    # A bar or point per value, in the page's own DOM.
    assert await count(page, "response_times", "rect.bar") == 4
    assert await count(page, "volumes", "rect.bar") == 4
    assert await count(page, "median_response", "circle.point") == 3
    assert await count(page, "rates", "rect.bar") == 4
    assert await count(page, "satisfaction", "circle.point") == 0
    assert "No survey answers yet" in await page.locator("#fig-satisfaction svg").text_content()
    # Each chart is an image named by its title, its text alternative beside it too.
    volumes = page.get_by_role("img", name="Incidents per day: to EVR and rejected")
    assert await volumes.count() == 1
    assert "7 incidents reported over 3 days: 5 went to EVR, 1 rejected, 1 waiting for triage." in \
        await page.locator("#fig-volumes figcaption").text_content()
    await ui.screen(page, "dashboard-1-charts")

    # The tables: the same numbers.
    await page.locator("#fig-volumes").get_by_role("button", name="Show as table").click()
    assert await cells(page, "volumes") == [["24 Oct 2026", "1", "1", "0"], ["25 Oct 2026", "2", "2", "0"],
                                            ["26 Oct 2026", "4", "2", "1"]]
    await page.locator("#fig-response_times").get_by_role("button", name="Show as table").click()
    assert (await cells(page, "response_times"))[3] == ["1–2 h", "1", "1", "0", "2"]
    await page.locator("#fig-rates").get_by_role("button", name="Show as table").click()
    assert (await cells(page, "rates"))[0] == ["Reviews within 24 h", "66.7", "3 reviews"]
    assert await page.locator("#fig-volumes").get_by_role("button", name="Hide the table").count() == 1
    await ui.screen(page, "dashboard-2-tables")

    # The downloads: the series as CSV from the API, the chart as SVG; a table's CSV made here.
    csv_link = page.locator("#fig-volumes a", has_text="Download as CSV")
    assert await csv_link.get_attribute("href") == f"/api/kpis.csv?{QUERY}&group_by=day"
    svg_link = page.locator("#fig-volumes a", has_text="Download as SVG")
    assert await svg_link.get_attribute("href") == f"/api/kpis/charts/volumes.svg?{QUERY}&group_by=day"
    assert await svg_link.get_attribute("download") == "evr-volumes-2026-10-24-to-2026-10-26.svg"
    table_csv = page.locator("#fig-rates a", has_text="Download as CSV")
    assert (await table_csv.get_attribute("href")).startswith("blob:")
    async with page.expect_download() as download:
        await table_csv.click()
    saved = await (await download.value).path()
    assert open(saved, encoding="utf-8", newline="").read().startswith(
        "Measure,Share (%),Of\r\nReviews within 24 h,66.7,3 reviews\r\n")
    async with page.expect_download() as download:
        await svg_link.click()
    assert (await download.value).suggested_filename == "evr-volumes-2026-10-24-to-2026-10-26.svg"

    # A filter by grade: only B (grade 2, 90 minutes, past its 1 h target).
    await page.get_by_label("Grade", exact=True).select_option("2")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_function("() => document.body.dataset.loaded.includes('grade=2')")
    assert "grade=2" in page.url
    assert await count(page, "response_times", "rect.bar") == 1
    assert await count(page, "response_times", "rect.bar.past") == 1
    assert await count(page, "volumes", "rect.bar") == 1
    assert await count(page, "median_response", "circle.point") == 1
    assert "Incidents reported: 1 (1 to EVR, 0 rejected)" in await page.locator("#headline").text_content()
    await ui.screen(page, "dashboard-3-grade")

    # A period with nothing: said in words.
    await page.get_by_label("From", exact=True).fill("2026-01-01")
    await page.get_by_label("To (included)").fill("2026-01-02")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_function("() => document.body.dataset.loaded.includes('2026-01-01')")
    assert "No incidents in this period" in await page.locator("#fig-volumes svg").text_content()
    assert await page.locator("#charts rect.bar, #charts circle.point").count() == 0
    await ui.screen(page, "dashboard-4-empty")


@SQLITE_ONLY
async def test_dashboard_refuses_an_officer(ui, users):
    await users("olly", "officer")
    page = await ui.page(phone=False)
    await page.goto("/dashboard")
    await sign_in(page, "olly")
    await page.get_by_text("The dashboard is for sergeants and admin staff").wait_for()
    assert await page.locator("#v-home").is_hidden()
    await ui.screen(page, "dashboard-refused")


@SQLITE_ONLY
async def test_the_trials_arms_side_by_side(ui, users, server):
    """With incidents of a trial's two arms, the dashboard compares them in words and
    numbers, each with its interval (the hand-worked arms of tests/test_trial.py)."""
    from test_trial import insert_arms

    await insert_arms(server)
    await users("sue", "sergeant")
    page = await ui.page(phone=False)
    await page.goto("/dashboard?from=2026-10-24&to=2026-10-24")
    await sign_in(page, "sue")
    await loaded(page)
    trial = page.locator("#trial")
    assert await trial.is_visible()
    rows = await trial.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.children].map(c => c.textContent))")
    assert rows[0] == ["Incidents", "6", "6", "–"]
    assert rows[1] == ["Median wait for the officer", "30 min (10 min to 60 min)", "3.0 h (60 min to 6.0 h)",
                       "-2.5 h (-5.8 h to 0 min)"]
    assert rows[2][1:] == ["100 % (61 to 100 %)", "100 % (61 to 100 %)", "0 points (-39 points to +39 points)"]
    await ui.screen(page, "dashboard-5-trial")
