"""Performance indicators (``GET /api/kpis``): the College of Policing's core figures
for the EVR queue, computed in the database.

Why in the database: a year is 100,000 incidents; the figures are counts, shares and
percentiles, which the database computes over an index without sending the rows to
Python. The one thing the database cannot do alike on SQLite and PostgreSQL is the
force's calendar (SQLite knows no time zones), so the days and weeks are made here:
:class:`Period` turns the force's local days (``timezone``, Europe/London by default,
with its clock changes) into UTC instants, and the queries group the incidents into
those ranges (a small table of bucket rows joined by ``reported_at``).

What each figure counts. Every figure is about the incidents *reported* in the period
(``from`` inclusive, ``to`` exclusive), so the figures of one period always describe
the same incidents:

- ``incidents``: ``created`` (all of them), ``to_evr`` (triaged into the queue or
  allocated: every state but ``triage``, ``rejected`` and a trial's ``control``),
  ``rejected``. A trial's control arm is left out of the figures but with ``by_arm=1``.
- ``officers_active``: the officers they were dispatched to.
- ``response_minutes``: ``reported_at`` to ``arrived_at`` (the officer joined the call),
  of those attended; ``within_target_pct`` of those whose grade has a target
  (``grade_targets_hours``).
- ``to_investigation_end_minutes``: ``reported_at`` to ``submitted_at`` (the
  investigation record, the end of EVR's initial investigation).
- ``reviews``: those reviewed, and the share reviewed within 24 h of the call closing.
- ``crime_outcomes``: those with a Home Office outcome; positive (1-8), 14 and 16
  (victim withdrawal) as shares of them.
- ``satisfaction``: from victim surveys; a share is shown only from
  :data:`MIN_RESPONSES` answers (null before), so no answer can be traced to a victim.

Percentiles are nearest-rank (the value at rank ⌈p·n⌉ of the sorted values: always a
value that occurred), computed with window functions on both databases; ``p50`` of
1, 2, 3, 4 is 2. Shares are percentages rounded to one decimal; a share of nothing is
null, not 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import Date, Float

from evr.db import Incident, SurveyAnswer, UTCDateTime
from evr.errors import ApiError
from evr.evaluation.trial import ARMS, median_ranks, newcombe, wilson
from evr.text import plain_text
from evr.timeutil import rfc3339

#: A share of survey answers is shown only from this many answers.
MIN_RESPONSES = 5
#: Outcomes of victim withdrawal (Home Office): 14 (victim declines or is unable to
#: support action to identify the offender) and 16 (victim declines or withdraws
#: support, suspect identified).
WITHDRAWAL_OUTCOMES = (14, 16)
#: At most this many days or weeks in one answer.
MOST_BUCKETS = 800
#: Without ``from``: the last this many days, today included.
DEFAULT_DAYS = 30
#: The years a period may name.
FIRST_YEAR, LAST_YEAR = 2000, 2100

#: The response time distribution's bins, in minutes (the last has no upper end).
RESPONSE_BINS: list[tuple[int, Optional[int]]] = [
    (0, 15), (15, 30), (30, 60), (60, 120), (120, 240), (240, 480), (480, 1440), (1440, 2880), (2880, None)]


# -- the force's calendar -----------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One day or week of the series: its first local day and its UTC instants."""

    start: date
    since: datetime
    until: datetime


@dataclass(frozen=True)
class Period:
    since: datetime  # UTC, inclusive
    until: datetime  # UTC, exclusive
    zone: ZoneInfo
    group_by: str  # "day" or "week"
    #: Only incidents of this grade, of this category (None: all).
    grade: Optional[int] = None
    category: Optional[str] = None
    #: In a trial, the figures of one arm; None: EVR's (every incident but the control arm's).
    arm: Optional[str] = None

    def incidents(self) -> ColumnElement[bool]:
        """The incidents the figures are about: reported in the period, of the filters."""
        where = [Incident.reported_at >= self.since, Incident.reported_at < self.until,
                 Incident.arm == self.arm if self.arm else or_(Incident.arm.is_(None), Incident.arm != "control")]
        if self.grade is not None:
            where.append(Incident.grade == self.grade)
        if self.category is not None:
            where.append(Incident.category == self.category)
        return and_(*where)

    def buckets(self) -> list[Bucket]:
        """The period's local days (or weeks from Monday), each as a UTC range; the
        first and last clipped to the period."""
        local = self.since.astimezone(self.zone).date()
        if self.group_by == "week":
            local -= timedelta(days=local.weekday())
        step = timedelta(days=7 if self.group_by == "week" else 1)
        found: list[Bucket] = []
        while True:
            start = _local_midnight(local, self.zone)
            end = _local_midnight(local + step, self.zone)
            if start >= self.until:
                return found
            found.append(Bucket(local, max(start, self.since), min(end, self.until)))
            if len(found) > MOST_BUCKETS:
                raise ApiError(400, "period_too_long", f"At most {MOST_BUCKETS} {self.group_by}s in one answer; "
                                                       "group by week or ask for a shorter period.")
            local += step


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant a local day starts (a day that starts in a clock change starts
    at its first local time that exists)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


def _bound(value: Optional[str], name: str, zone: ZoneInfo, *, end: bool) -> Optional[datetime]:
    """``from``/``to``: a local date (``to`` includes its whole day) or an RFC 3339 time."""
    if not value:
        return None
    if len(value) == 10 and value.isascii():
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ApiError(400, "invalid_parameter", f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 time.") \
                from None
        _in_range(day.year, name)
        return _local_midnight(day + timedelta(days=1) if end else day, zone)
    from evr.incidents.service import parse_time

    try:
        found = parse_time(value, name)
    except ApiError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 time.") \
            from None
    _in_range(found.year, name)
    return found


def _in_range(year: int, name: str) -> None:
    """Incidents are of this century: a date far out (year 1, 9999) is refused, not
    carried into calendar arithmetic that would overflow."""
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ApiError(400, "invalid_parameter", f"{name} must be a date from {FIRST_YEAR} to {LAST_YEAR}.")


def parse_period(query: Any, now: datetime, zone_name: str) -> Period:
    """The period a request asks for: ``from``, ``to`` (see :func:`_bound`) and
    ``group_by``; by default the last :data:`DEFAULT_DAYS` local days, today included."""
    zone = ZoneInfo(zone_name)
    group_by = query.get("group_by") or "day"
    if group_by not in ("day", "week"):
        raise ApiError(400, "invalid_parameter", "group_by must be day or week.")
    until = _bound(query.get("to"), "to", zone, end=True)
    since = _bound(query.get("from"), "from", zone, end=False)
    if until is None:
        until = _local_midnight(now.astimezone(zone).date() + timedelta(days=1), zone)
    if since is None:
        since = _local_midnight(until.astimezone(zone).date() - timedelta(days=DEFAULT_DAYS), zone)
    if since >= until:
        raise ApiError(400, "invalid_parameter", "from must come before to.")
    grade = query.get("grade") or None
    if grade is not None:
        if not (grade.isascii() and grade.isdigit() and 1 <= int(grade) <= 5):
            raise ApiError(400, "invalid_parameter", "grade must be a whole number from 1 to 5.")
        grade = int(grade)
    category = query.get("category") or None
    if category is not None and (len(category) > 64 or not plain_text(category, multiline=False)):
        raise ApiError(400, "invalid_parameter", "category must be text of at most 64 characters.")
    return Period(since, until, zone, group_by, grade, category)


# -- SQL that differs between the databases -------------------------------------------------


class minutes_between(FunctionElement[float]):  # noqa: N801 - a SQL function's name
    """Minutes from the first time to the second, as a float."""

    type = Float()
    inherit_cache = True


@compiles(minutes_between)
def _minutes_generic(element: minutes_between, compiler: Any, **kw: Any) -> str:
    first, second = list(element.clauses)
    return f"(EXTRACT(EPOCH FROM ({compiler.process(second, **kw)} - {compiler.process(first, **kw)})) / 60.0)"


@compiles(minutes_between, "sqlite")
def _minutes_sqlite(element: minutes_between, compiler: Any, **kw: Any) -> str:
    # Whole seconds, so whole minutes come out exact (julianday's float days would make
    # 30 minutes 29.99999..., on the wrong side of a bin's edge or a target).
    first, second = list(element.clauses)
    return (f"(round((julianday({compiler.process(second, **kw)}) - julianday({compiler.process(first, **kw)}))"
            " * 86400.0) / 60.0)")


def _pct(part: Any, whole: Any) -> Optional[float]:
    return None if not whole else round(100.0 * float(part or 0) / float(whole), 1)


def _num(value: Any) -> Optional[float]:
    return None if value is None else round(float(value), 1)


# -- the figures -----------------------------------------------------------------------------


class Indicators:
    """The figures of a period, from the database: the period's incidents, grouped by
    day or week, give the series and every figure's parts (sums and counts in one
    query; in another, the value at each percentile's rank, which lies in one group);
    here they are only added up. Officers are counted on their own (distinct across
    days), and survey answers from their own table."""

    def __init__(self, grade_targets_hours: dict[str, float]) -> None:
        self.targets = grade_targets_hours

    def _target_minutes(self) -> ColumnElement[Any]:
        """The incident's grade target in minutes (NULL for a grade without one)."""
        targets = [(int(g), h) for g, h in self.targets.items() if g.isdigit()]
        if not targets:
            return literal(None, Float())
        return case(*((Incident.grade == g, literal(h * 60.0, Float())) for g, h in targets),
                    else_=literal(None, Float()))

    async def compute(self, db: AsyncSession, period: Period) -> dict[str, Any]:
        """The figures of ``period`` (``GET /api/kpis``)."""
        return (await self.measure(db, period))[0]

    async def measure(self, db: AsyncSession, period: Period) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
        """The figures, and each share's (successes, n) by its path ("reviews.within_24h_pct")."""
        buckets = period.buckets()
        in_period = period.incidents()
        sums, percentiles = self._grouped(buckets, in_period)
        ranks = {r["b"]: r for r in (await db.execute(percentiles)).mappings().all()}
        rows = [{**r, **ranks.get(r["b"], {})} for r in (await db.execute(sums)).mappings().all()]
        officers = await db.scalar(select(func.count(func.distinct(Incident.dispatched_to))).where(in_period))
        parts = {r["b"]: r for r in rows}
        satisfaction, satisfied_by_bucket, answered = await self._satisfaction(db, period, buckets)

        def total(key: str) -> int:
            return int(sum(r[key] or 0 for r in rows))

        def at_rank(key: str) -> Optional[float]:  # the one group holding the rank's row has it
            found = [r[key] for r in rows if r[key] is not None]
            return _num(min(found)) if found else None

        response_n, investigated, reviewed, outcomes = (total("resp_n"), total("inv_n"), total("reviewed"),
                                                        total("outcomes"))
        counts = {"response_minutes.within_target_pct": (total("within"), total("targeted")),
                  "reviews.within_24h_pct": (total("reviewed_in_time"), reviewed),
                  "crime_outcomes.positive_pct": (total("positive"), outcomes),
                  "crime_outcomes.outcome_14_pct": (total("o14"), outcomes),
                  "crime_outcomes.outcome_16_pct": (total("o16"), outcomes), **answered}
        return {
            "from": rfc3339(period.since), "to": rfc3339(period.until), "timezone": period.zone.key,
            "group_by": period.group_by, "grade": period.grade, "category": period.category,
            "incidents": {"created": total("created"), "to_evr": total("to_evr"), "rejected": total("rejected")},
            "officers_active": officers or 0,
            "response_minutes": {
                "n": response_n, "p50": at_rank("resp_p50"), "p90": at_rank("resp_p90"),
                "mean": _num(total_float(rows, "resp_sum") / response_n) if response_n else None,
                "within_target_pct": _pct(total("within"), total("targeted"))},
            "to_investigation_end_minutes": {"n": investigated, "p50": at_rank("inv_p50"),
                                             "p90": at_rank("inv_p90")},
            "reviews": {"n": reviewed, "within_24h_pct": _pct(total("reviewed_in_time"), reviewed)},
            "crime_outcomes": {"n": outcomes, "positive_pct": _pct(total("positive"), outcomes),
                               "outcome_14_pct": _pct(total("o14"), outcomes),
                               "outcome_16_pct": _pct(total("o16"), outcomes)},
            "satisfaction": satisfaction,
            "series": [{"start": bucket.start.isoformat(),
                        "incidents": int(parts[i]["created"]) if i in parts else 0,
                        "to_evr": int(parts[i]["to_evr"] or 0) if i in parts else 0,
                        "rejected": int(parts[i]["rejected"] or 0) if i in parts else 0,
                        "response_p50_minutes": _num(parts[i]["bucket_p50"]) if i in parts else None,
                        "satisfied_pct": satisfied_by_bucket.get(i)}
                       for i, bucket in enumerate(buckets)],
        }, counts

    def _grouped(self, buckets: list[Bucket], in_period: Any) -> tuple[Any, Any]:
        """Two queries, each giving a row per bucket: the counts and sums of every
        figure (no sorting), and each percentile's value where its row falls in the
        bucket (ranks over the whole period, and within the bucket), sorting only the
        minutes (a sort of narrow rows is what makes a year fast on SQLite)."""
        bucket = _bucket_of(Incident.reported_at, [b.since for b in buckets], UTCDateTime()).label("b")
        resp = minutes_between(Incident.reported_at, Incident.arrived_at)
        inv = minutes_between(Incident.reported_at, Incident.submitted_at)

        def flag(condition: Any) -> Any:
            return case((condition, 1), else_=0)

        placed = select(
            bucket, resp.label("resp"), inv.label("inv"),
            flag(Incident.state.not_in(("triage", "rejected", "control"))).label("to_evr"),
            flag(Incident.state == "rejected").label("rejected"),
            flag(and_(Incident.arrived_at.is_not(None), self._target_minutes().is_not(None))).label("targeted"),
            flag(resp <= self._target_minutes()).label("within"),
            flag(Incident.reviewed_at.is_not(None)).label("reviewed"),
            flag(and_(Incident.reviewed_at.is_not(None), Incident.review_overdue.is_not(True))).label("in_time"),
            Incident.crime_outcome.label("outcome"),
        ).where(in_period).subquery()
        c = placed.c
        sums = select(
            c.b, func.count().label("created"), func.sum(c.to_evr).label("to_evr"),
            func.sum(c.rejected).label("rejected"), func.count(c.resp).label("resp_n"),
            func.sum(c.resp).label("resp_sum"), func.sum(c.targeted).label("targeted"),
            func.sum(c.within).label("within"), func.count(c.inv).label("inv_n"),
            func.sum(c.reviewed).label("reviewed"), func.sum(c.in_time).label("reviewed_in_time"),
            func.count(c.outcome).label("outcomes"), func.sum(flag(c.outcome.between(1, 8))).label("positive"),
            func.sum(flag(c.outcome == WITHDRAWAL_OUTCOMES[0])).label("o14"),
            func.sum(flag(c.outcome == WITHDRAWAL_OUTCOMES[1])).label("o16"),
        ).group_by(c.b)

        minutes = select(bucket, resp.label("resp"), inv.label("inv")).where(in_period).subquery()
        m = minutes.c
        ranked = select(
            m.b, m.resp, m.inv,
            func.row_number().over(partition_by=m.resp.is_(None), order_by=m.resp).label("resp_rn"),
            func.count(m.resp).over().label("resp_all"),
            func.row_number().over(partition_by=(m.b, m.resp.is_(None)), order_by=m.resp).label("bucket_rn"),
            func.count(m.resp).over(partition_by=m.b).label("bucket_all"),
            func.row_number().over(partition_by=m.inv.is_(None), order_by=m.inv).label("inv_rn"),
            func.count(m.inv).over().label("inv_all"),
        ).subquery()
        r = ranked.c

        def at(rank: Any, value: Any, percent: int, of: Any) -> Any:
            return func.min(case((rank == _rank(of, percent), value)))

        percentiles = select(
            r.b,
            at(r.resp_rn, r.resp, 50, r.resp_all).label("resp_p50"),
            at(r.resp_rn, r.resp, 90, r.resp_all).label("resp_p90"),
            at(r.bucket_rn, r.resp, 50, r.bucket_all).label("bucket_p50"),
            at(r.inv_rn, r.inv, 50, r.inv_all).label("inv_p50"),
            at(r.inv_rn, r.inv, 90, r.inv_all).label("inv_p90"),
        ).group_by(r.b)
        return sums, percentiles


    async def response_bins(self, db: AsyncSession, period: Period) -> list[dict[str, Any]]:
        """How long the attended incidents waited, in :data:`RESPONSE_BINS`, each split
        into within and past their grade's target (for the distribution chart)."""
        minutes = minutes_between(Incident.reported_at, Incident.arrived_at)
        edges = [upper for _, upper in RESPONSE_BINS[:-1]]
        placed = select(
            case(*((minutes < edge, literal(i, Integer())) for i, edge in enumerate(edges)),
                 else_=literal(len(edges), Integer())).label("bin"),
            case((minutes <= self._target_minutes(), 1), else_=0).label("within"),
            case((self._target_minutes().is_(None), 1), else_=0).label("untargeted"),
        ).where(period.incidents(), Incident.arrived_at.is_not(None)).subquery()
        found = {row.bin: row for row in (await db.execute(
            select(placed.c.bin, func.count().label("n"), func.sum(placed.c.within).label("within"),
                   func.sum(placed.c.untargeted).label("untargeted")).group_by(placed.c.bin))).all()}
        bins = []
        for i, (lower, upper) in enumerate(RESPONSE_BINS):
            row = found.get(i)
            n, within, untargeted = (int(row.n), int(row.within or 0), int(row.untargeted or 0)) if row else (0, 0, 0)
            bins.append({"from_minutes": lower, "to_minutes": upper, "incidents": n, "within_target": within,
                         "past_target": n - within - untargeted, "no_target": untargeted})
        return bins


    async def _satisfaction(self, db: AsyncSession, period: Period, buckets: list[Bucket]
                            ) -> tuple[dict[str, Any], dict[int, Optional[float]], dict[str, tuple[int, int]]]:
        """Survey answers given on the period's local days (of the filters' grade and
        category): how many, the share satisfied or very satisfied (4 or 5 of 5) and the
        share who would use it again, each only from :data:`MIN_RESPONSES` answers to
        that question; and the share satisfied per day or week, likewise."""
        zone = period.zone
        first = period.since.astimezone(zone).date()
        last = (period.until - timedelta(microseconds=1)).astimezone(zone).date()
        where = [SurveyAnswer.answered_on >= first, SurveyAnswer.answered_on <= last]
        if period.grade is not None:
            where.append(SurveyAnswer.grade == period.grade)
        if period.category is not None:
            where.append(SurveyAnswer.category == period.category)
        where.append(SurveyAnswer.arm == period.arm if period.arm else
                     or_(SurveyAnswer.arm.is_(None), SurveyAnswer.arm != "control"))
        starts = [b.since.astimezone(zone).date() for b in buckets]
        placed = select(_bucket_of(SurveyAnswer.answered_on, starts, Date()).label("b"), SurveyAnswer.satisfied,
                        SurveyAnswer.would_use_again).where(*where).subquery()
        c = placed.c
        rows = (await db.execute(select(
            c.b, func.count().label("answers"), func.count(c.satisfied).label("rated"),
            func.sum(case((c.satisfied >= 4, 1), else_=0)).label("satisfied"),
            func.count(c.would_use_again).label("asked_again"),
            func.sum(case((c.would_use_again.is_(True), 1), else_=0)).label("again"),
        ).group_by(c.b))).mappings().all()

        def shown(part: Any, whole: int) -> Optional[float]:
            return _pct(part, whole) if whole >= MIN_RESPONSES else None

        rated, asked = sum(r["rated"] for r in rows), sum(r["asked_again"] for r in rows)
        satisfied, again = int(sum(r["satisfied"] or 0 for r in rows)), int(sum(r["again"] or 0 for r in rows))
        figures = {"responses": int(sum(r["answers"] for r in rows)), "satisfied_pct": shown(satisfied, rated),
                   "would_use_again_pct": shown(again, asked)}
        # Too few answers to show are too few for an interval too.
        counts = {"satisfaction.satisfied_pct": (satisfied, rated if rated >= MIN_RESPONSES else 0),
                  "satisfaction.would_use_again_pct": (again, asked if asked >= MIN_RESPONSES else 0)}
        return figures, {r["b"]: shown(r["satisfied"], r["rated"]) for r in rows}, counts

    async def by_arm(self, db: AsyncSession, period: Period) -> dict[str, Any]:
        """``by_arm=1``: the figures of each arm of a trial, each share and median with its
        95 % interval (``<figure>_ci``), and the difference of treatment and control."""
        arms: dict[str, dict[str, Any]] = {}
        counts: dict[str, dict[str, tuple[int, int]]] = {}
        for arm in ARMS:
            one = replace(period, arm=arm)
            figures, counts[arm] = await self.measure(db, one)
            for path, (k, n) in counts[arm].items():
                group, name = path.split(".")
                figures[group][f"{name}_ci"] = wilson(k, n)
            for group, minutes in (("response_minutes", (Incident.reported_at, Incident.arrived_at)),
                                   ("to_investigation_end_minutes", (Incident.reported_at, Incident.submitted_at))):
                figures[group]["p50_ci"] = await self._median_interval(db, one, *minutes, figures[group]["n"])
            arms[arm] = {k: v for k, v in figures.items() if k not in ("from", "to", "timezone", "group_by",
                                                                      "grade", "category")}
        difference: dict[str, Any] = {}
        for path in counts["treatment"]:
            group, name = path.split(".")
            found = newcombe(counts["treatment"][path], counts["control"][path])
            difference.setdefault(group, {})[name] = None if found is None else {
                "difference": found[0], "ci": [found[1], found[2]]}
        for group in ("response_minutes", "to_investigation_end_minutes"):
            t, c = arms["treatment"][group], arms["control"][group]
            found_ci = t["p50_ci"] and c["p50_ci"]
            difference.setdefault(group, {})["p50"] = None if t["p50"] is None or c["p50"] is None else {
                "difference": round(t["p50"] - c["p50"], 1),
                "ci": [round(t["p50_ci"][0] - c["p50_ci"][1], 1), round(t["p50_ci"][1] - c["p50_ci"][0], 1)]
                if found_ci else None}
        return {"from": rfc3339(period.since), "to": rfc3339(period.until), "timezone": period.zone.key,
                "group_by": period.group_by, "grade": period.grade, "category": period.category,
                "by_arm": arms, "difference": difference}

    async def _median_interval(self, db: AsyncSession, period: Period, start: Any, end: Any,
                               n: int) -> Optional[list[float]]:
        """The median's distribution-free 95 % interval: the values at the two ranks of
        :func:`.trial.median_ranks` among the period's minutes from ``start`` to ``end``."""
        ranks = median_ranks(n)
        if ranks is None:
            return None
        minutes = minutes_between(start, end)
        ranked = select(minutes.label("m"), func.row_number().over(order_by=minutes).label("rn")).where(
            period.incidents(), end.is_not(None)).subquery()
        low, high = (await db.execute(select(
            func.min(case((ranked.c.rn == ranks[0], ranked.c.m))),
            func.min(case((ranked.c.rn == ranks[1], ranked.c.m)))))).one()
        return None if low is None or high is None else [round(float(low), 1), round(float(high), 1)]


def total_float(rows: Any, key: str) -> float:
    return float(sum(r[key] or 0 for r in rows))


def _bucket_of(at: Any, starts: list[Any], kind: Any, first: int = 0) -> Any:
    """The index of the bucket holding ``at`` (known to be in the period), given each
    bucket's start (of SQL type ``kind``): a CASE that halves the buckets at each level,
    so a row is placed in about log2(n) comparisons and the expression stays shallow on
    either database."""
    if len(starts) == 1:
        return literal(first, Integer())
    half = len(starts) // 2
    return case((at < literal(starts[half], kind), _bucket_of(at, starts[:half], kind, first)),
                else_=_bucket_of(at, starts[half:], kind, first + half))


def _rank(n: Any, percent: int) -> Any:
    """⌈n·percent/100⌉ in integer arithmetic (alike on both databases)."""
    return (n * int(percent) + 99) // 100  # floor division of integers on both databases
