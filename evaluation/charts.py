"""The performance indicators' charts as SVG, drawn on the server in plain Python.

Why on the server: the dashboard (``/dashboard``) and the monthly report (``evr
report``) show the same charts, so they are drawn once, here, from the figures
:class:`~evr.evaluation.kpis.Indicators` computes; the page needs no charting library
and no build step, and a chart downloaded is the chart shown.

Each chart is accessible on its own: ``<svg role="img">`` named by its ``<title>`` and
described by its ``<desc>`` (the text alternative: a sentence of what it shows and its
key numbers); bars are ``<rect class="bar">`` and points ``<circle class="point">``
(each with its own ``<title>``), the values are written beside them where they fit,
and colour is never the only signal (a legend in words, hatching for "past target"
and "rejected"). Presentation attributes only, no ``style`` (the pages' CSP forbids
inline styles). Every text is escaped; a chart of nothing says so in words.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any, Callable, Optional, Sequence
from xml.sax.saxutils import escape, quoteattr

#: The charts by name (``GET /api/kpis/charts/{name}.svg``), in the dashboard's order.
NAMES = ("response_times", "volumes", "median_response", "rates", "satisfaction")

EMPTY = "No incidents in this period"
NO_RESPONSES = "No response times in this period"
NO_SURVEYS = "No survey answers yet"

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 20, 76  # the plot's margins
INK, AXIS, GRID = "#1a1a1a", "#595959", "#d9d9d9"
#: Fills: dark enough against white (3:1 at least) and told apart by more than hue.
BLUE, ORANGE, GREY = "#1d4f91", "#a84300", "#6b6b6b"


def _a(value: Any) -> str:
    return quoteattr(str(value))


def _t(value: Any) -> str:
    return escape(str(value))


def _n(value: float) -> str:
    """A number as written in the text: 42, 66.7."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _many(n: int, word: str) -> str:
    """"1 day", "3 days"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _svg(name: str, title: str, desc: str, body: Sequence[str], height: int = HEIGHT) -> str:
    ids = f"chart-{name}"
    return "".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" data-chart={_a(name)} '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'aria-labelledby="{ids}-title" aria-describedby="{ids}-desc" font-family="sans-serif" font-size="12">',
        f'<title id="{ids}-title">{_t(title)}</title>',
        f'<desc id="{ids}-desc">{_t(desc)}</desc>',
        f'<defs><pattern id="{ids}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{ORANGE}"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2"/></pattern></defs>',
        f'<rect class="background" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        *body,
        "</svg>\n",
    ])


def _message(name: str, title: str, text: str, scope: str) -> str:
    return _svg(name, title, _sentence(f"{title}: {text.lower()}.", scope), [
        f'<text class="message" x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" font-size="16" '
        f'fill="{INK}">{_t(text)}</text>'])


def _sentence(text: str, scope: str) -> str:
    return f"{text} {scope}".strip()


def _nice_max(value: float) -> tuple[float, float]:
    """An axis' top and step: the smallest 1, 2 or 5 times a power of ten (five steps or
    fewer) at or above ``value``; whole steps for counts."""
    if value <= 0:
        return 1.0, 1.0
    raw = value / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1.0) if value >= 1 else step
    return step * math.ceil(value / step), step


def _y_axis(top_value: float, step: float, unit: str = "") -> tuple[list[str], Callable[[float], float]]:
    """Grid lines and labels of a vertical axis from 0 to ``top_value``, and the map
    from a value to its y."""
    bottom, height = HEIGHT - BOTTOM, HEIGHT - BOTTOM - TOP

    def y(value: float) -> float:
        return round(bottom - height * value / top_value, 1)

    parts = []
    ticks = int(round(top_value / step))
    for i in range(ticks + 1):
        value = step * i
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value)}" y2="{y(value)}" '
                     f'stroke="{GRID}" stroke-width="1"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4}" text-anchor="end" fill="{INK}">'
                     f'{_t(_n(value))}{_t(unit)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}" '
                 f'stroke="{AXIS}" stroke-width="1"/>')
    return parts, y


def _axis_title(text: str) -> str:
    return (f'<text class="axis-title" x="{LEFT}" y="{TOP - 6}" text-anchor="start" fill="{INK}">'
            f'{_t(text)}</text>')


def _x_labels(labels: Sequence[str], centre: Callable[[int], float]) -> list[str]:
    """Labels under the slots, thinned to about ten so they never overlap."""
    every = max(1, math.ceil(len(labels) / 10))
    return [f'<text class="label" x="{centre(i)}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
            f'fill="{INK}">{_t(label)}</text>' for i, label in enumerate(labels) if i % every == 0]


def _legend(items: Sequence[tuple[str, str]]) -> list[str]:
    """A swatch and its words per item, under the plot."""
    parts, x, y = [], LEFT, HEIGHT - 22
    for text, fill in items:
        parts.append(f'<rect class="swatch" x="{x}" y="{y - 10}" width="12" height="12" fill={_a(fill)} '
                     f'stroke="{INK}" stroke-width="0.5"/>')
        parts.append(f'<text class="legend" x="{x + 18}" y="{y}" fill="{INK}">{_t(text)}</text>')
        x += 30 + 7 * len(text)
    return parts


def _bar(name: str, x: float, y: float, width: float, height: float, fill: str, kind: str, tip: str) -> str:
    return (f'<rect class="bar {kind}" x="{round(x, 1)}" y="{round(y, 1)}" width="{round(width, 1)}" '
            f'height="{round(height, 1)}" fill={_a(fill)} stroke="#ffffff" stroke-width="0.5">'
            f'<title>{_t(tip)}</title></rect>')


def _slots(count: int) -> tuple[float, Callable[[int], float]]:
    """The width of each of ``count`` slots across the plot, and the x of a slot's centre."""
    width = (WIDTH - LEFT - RIGHT) / max(count, 1)
    return width, lambda i: round(LEFT + width * (i + 0.5), 1)


def day_label(start: str, group_by: str = "day") -> str:
    """A series' bucket as read on an axis: "24 Oct", "w/c 19 Oct"."""
    day = date.fromisoformat(start)
    text = f"{day.day} {day:%b}"
    return f"w/c {text}" if group_by == "week" else text


def bin_label(lower: int, upper: Optional[int]) -> str:
    """A response time bin in words: "0–15 min", "1–2 h", "2 d or more"."""

    def unit(minutes: int) -> tuple[float, str]:
        if minutes < 60:
            return minutes, "min"
        if minutes < 1440:
            return minutes / 60, "h"
        return minutes / 1440, "d"

    low, low_unit = unit(lower)
    if upper is None:
        return f"{_n(low)} {low_unit} or more"
    high, high_unit = unit(upper)
    if lower and low_unit != high_unit:
        return f"{_n(low)} {low_unit}–{_n(high)} {high_unit}"
    return f"{_n(low)}–{_n(high)} {high_unit}"


# -- the charts -------------------------------------------------------------------------------


def response_times(bins: Sequence[dict[str, Any]], scope: str = "") -> str:
    """Response time distribution: a stacked bar per bin (within, past and with no
    target), from :meth:`Indicators.response_bins`."""
    name, title = "response_times", "Response time distribution against the grade target"
    total = sum(b["incidents"] for b in bins)
    if not total:
        return _message(name, title, NO_RESPONSES, scope)
    within = sum(b["within_target"] for b in bins)
    past = sum(b["past_target"] for b in bins)
    none = sum(b["no_target"] for b in bins)
    busiest = max(bins, key=lambda b: b["incidents"])
    desc = (f"Response times of {_many(total, 'attended incident')} in {len(bins)} bins: {within} within their grade's "
            f"target, {past} past it, {none} of a grade with no target. The most, {busiest['incidents']}, "
            f"waited {bin_label(busiest['from_minutes'], busiest['to_minutes'])}.")
    top, step = _nice_max(max(b["incidents"] for b in bins))
    body, y = _y_axis(top, step)
    body.append(_axis_title("Incidents"))
    width, centre = _slots(len(bins))
    labels = [bin_label(b["from_minutes"], b["to_minutes"]) for b in bins]
    kinds = (("within_target", "within", BLUE, "within target"),
             ("past_target", "past", f"url(#chart-{name}-hatch)", "past target"),
             ("no_target", "none", GREY, "no target"))
    for i, b in enumerate(bins):
        base = 0
        for key, kind, fill, words in kinds:
            if b[key]:
                body.append(_bar(name, centre(i) - width * 0.35, y(base + b[key]), width * 0.7,
                                 y(base) - y(base + b[key]), fill, kind, f"{labels[i]}, {words}: {b[key]}"))
                base += b[key]
        if b["incidents"]:
            body.append(f'<text class="value" x="{centre(i)}" y="{y(b["incidents"]) - 4}" text-anchor="middle" '
                        f'fill="{INK}">{b["incidents"]}</text>')
    body += _x_labels([label.replace(" or more", "+") for label in labels], centre)
    body += _legend([("Within target", BLUE), ("Past target", f"url(#chart-{name}-hatch)"), ("No target", GREY)])
    return _svg(name, title, _sentence(desc, scope), body)


def volumes(series: Sequence[dict[str, Any]], group_by: str = "day", scope: str = "") -> str:
    """Incidents per day or week: a bar for those that went to EVR and one for those
    rejected."""
    name, title = "volumes", f"Incidents per {group_by}: to EVR and rejected"
    to_evr = sum(s.get("to_evr", 0) for s in series)
    rejected = sum(s.get("rejected", 0) for s in series)
    created = sum(s["incidents"] for s in series)
    if not created:
        return _message(name, title, EMPTY, scope)
    desc = (f"{_many(created, 'incident')} reported over {_many(len(series), group_by)}: {to_evr} went to EVR, "
            f"{rejected} rejected, {created - to_evr - rejected} waiting for triage.")
    top, step = _nice_max(max(max(s.get("to_evr", 0), s.get("rejected", 0)) for s in series))
    body, y = _y_axis(top, step)
    body.append(_axis_title("Incidents"))
    width, centre = _slots(len(series))
    labels = [day_label(s["start"], group_by) for s in series]
    for i, s in enumerate(series):
        for offset, key, kind, fill, words in ((-0.4, "to_evr", "to-evr", BLUE, "to EVR"),
                                               (0.0, "rejected", "rejected", f"url(#chart-{name}-hatch)",
                                                "rejected")):
            value = s.get(key, 0)
            if value:
                body.append(_bar(name, centre(i) + width * offset, y(value), width * 0.4, y(0) - y(value), fill,
                                 kind, f"{labels[i]}, {words}: {value}"))
    body += _x_labels(labels, centre)
    body += _legend([("To EVR", BLUE), ("Rejected", f"url(#chart-{name}-hatch)")])
    return _svg(name, title, _sentence(desc, scope), body)


def _points(name: str, series: Sequence[dict[str, Any]], key: str, group_by: str, unit: str,
            top: float, step: float, words: str) -> list[str]:
    """A line through the values present (broken where one is missing), a point each."""
    body, y = _y_axis(top, step, unit)
    _, centre = _slots(len(series))
    labels = [day_label(s["start"], group_by) for s in series]
    runs: list[list[str]] = [[]]
    points = []
    for i, s in enumerate(series):
        value = s.get(key)
        if value is None:
            runs.append([])
            continue
        runs[-1].append(f"{centre(i)},{y(value)}")
        points.append(f'<circle class="point" cx="{centre(i)}" cy="{y(value)}" r="4" fill="{BLUE}" '
                      f'stroke="#ffffff" stroke-width="1"><title>{_t(labels[i])}, {_t(words)}: '
                      f'{_t(_n(value))}{_t(unit)}</title></circle>')
    body += [f'<polyline class="line" points="{" ".join(run)}" fill="none" stroke="{BLUE}" stroke-width="2"/>'
             for run in runs if len(run) > 1]
    body += points
    body += _x_labels(labels, centre)
    return body


def median_response(series: Sequence[dict[str, Any]], group_by: str = "day", scope: str = "") -> str:
    """The median response time per day or week: a line with a point per value."""
    name, title = "median_response", f"Median response time per {group_by}"
    values = [s["response_p50_minutes"] for s in series if s.get("response_p50_minutes") is not None]
    if not values:
        return _message(name, title, NO_RESPONSES, scope)
    desc = (f"The median minutes from report to the officer joining the call, on {len(values)} of "
            f"{_many(len(series), group_by)}: from {_n(min(values))} to {_n(max(values))} minutes.")
    top, step = _nice_max(max(values))
    body = _points(name, series, "response_p50_minutes", group_by, "", top, step, "median response minutes")
    body.append(_axis_title("Minutes"))
    return _svg(name, title, _sentence(desc, scope), body)


#: The rates chart's rows: its words, the figure and its share, the figure's count.
RATES = (("Reviews within 24 h", "reviews", "within_24h_pct", "reviews"),
         ("Positive outcomes (1-8)", "crime_outcomes", "positive_pct", "outcomes"),
         ("Outcome 14 (victim declines)", "crime_outcomes", "outcome_14_pct", "outcomes"),
         ("Outcome 16 (victim withdraws)", "crime_outcomes", "outcome_16_pct", "outcomes"))


def rate_rows(figures: dict[str, Any]) -> list[tuple[str, Optional[float], int, str]]:
    """(words, share or None, of how many, what) for each row of the rates chart."""
    return [(words, figures[group][key], int(figures[group]["n"]), what) for words, group, key, what in RATES]


def rates(figures: dict[str, Any], scope: str = "") -> str:
    """Reviews within 24 h and crime outcome rates: a horizontal bar per share."""
    name, title = "rates", "Reviews within 24 hours and crime outcomes"
    rows = rate_rows(figures)
    if not figures["incidents"]["created"]:
        return _message(name, title, EMPTY, scope)
    said = [f"{words}: {'no data' if pct is None else _n(pct) + ' %'} (of {n} {what})" for words, pct, n, what in rows]
    desc = "Shares, in percent. " + "; ".join(said) + "."
    left, right, row_height = 210, WIDTH - 70, 44
    height = TOP + 24 + row_height * len(rows) + 24

    def x(pct: float) -> float:
        return round(left + (right - left) * pct / 100, 1)

    body = [_axis_title("Percent")]
    for tick in range(0, 101, 25):
        body.append(f'<line class="grid" x1="{x(tick)}" x2="{x(tick)}" y1="{TOP + 16}" '
                    f'y2="{height - 24}" stroke="{GRID}" stroke-width="1"/>')
        body.append(f'<text class="tick" x="{x(tick)}" y="{height - 8}" text-anchor="middle" fill="{INK}">'
                    f'{tick} %</text>')
    for i, (words, pct, n, what) in enumerate(rows):
        top = TOP + 24 + row_height * i
        body.append(f'<text class="label" x="{left - 8}" y="{top + 18}" text-anchor="end" fill="{INK}">'
                    f'{_t(words)}</text>')
        if pct is None:
            body.append(f'<text class="value" x="{left + 4}" y="{top + 18}" fill="{INK}">No data</text>')
            continue
        body.append(_bar(name, left, top + 4, x(pct) - left, 22, BLUE, "share", f"{words}: {_n(pct)} % of {n} {what}"))
        body.append(f'<text class="value" x="{x(pct) + 6}" y="{top + 19}" fill="{INK}">{_t(_n(pct))} %</text>')
    body.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{TOP + 16}" y2="{height - 24}" '
                f'stroke="{AXIS}" stroke-width="1"/>')
    return _svg(name, title, _sentence(desc, scope), body, height)


def satisfaction(series: Sequence[dict[str, Any]], answers: dict[str, Any], group_by: str = "day",
                 scope: str = "") -> str:
    """Victims satisfied over time: a point per day or week with a share."""
    name, title = "satisfaction", f"Victims satisfied per {group_by}"
    values = [s["satisfied_pct"] for s in series if s.get("satisfied_pct") is not None]
    if not answers.get("responses"):
        return _message(name, title, NO_SURVEYS, scope)
    if not values:  # a share is shown only from a few answers, so none can be traced to a victim
        return _message(name, title, f"Too few survey answers in any one {group_by} to show a share", scope)
    desc = (f"The share of victims satisfied, from {answers['responses']} survey answers, on "
            f"{_many(len(values), group_by)}: from {_n(min(values))} % to {_n(max(values))} %.")
    body = _points(name, series, "satisfied_pct", group_by, " %", 100.0, 25.0, "satisfied")
    body.append(_axis_title("Percent satisfied"))
    return _svg(name, title, _sentence(desc, scope), body)


def chart(name: str, figures: dict[str, Any], bins: Sequence[dict[str, Any]] = (), scope: str = "") -> str:
    """The chart ``name`` (one of :data:`NAMES`) of the figures ``GET /api/kpis``
    answers (and, for the distribution, the bins of ``GET /api/kpis/response_times``)."""
    group_by = figures.get("group_by") or "day"
    if name == "response_times":
        return response_times(bins, scope)
    if name == "volumes":
        return volumes(figures["series"], group_by, scope)
    if name == "median_response":
        return median_response(figures["series"], group_by, scope)
    if name == "rates":
        return rates(figures, scope)
    if name == "satisfaction":
        return satisfaction(figures["series"], figures["satisfaction"], group_by, scope)
    raise KeyError(name)


def scope_of(figures: dict[str, Any], first: str, last: str) -> str:
    """The incidents a chart is about, in words: "Incidents reported 24 Oct 2026 to
    26 Oct 2026, grade 3, category theft."."""
    def day(text: str) -> str:
        d = date.fromisoformat(text)
        return f"{d.day} {d:%b %Y}"

    said = f"Incidents reported {day(first)} to {day(last)}"
    if figures.get("grade") is not None:
        said += f", grade {figures['grade']}"
    if figures.get("category"):
        said += f", category {figures['category']}"
    return said + "."
