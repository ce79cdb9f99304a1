"""Retention classes and the rule that turns one into a due date.

Defaults follow the College of Policing's Management of Police Information (MoPI)
and body-worn video practice; a force overrides or adds classes in the ``[retention]``
table of its config file::

    [retention]
    default_class = "group3"     # a consultation no officer has classified yet; "" = none
    sweep_minutes = 60           # how often `evr serve` runs the automatic disposal

    [retention.classes.group3]
    period_years = 7             # a force keeping group 3 for 7 years

    [retention.classes.local_traffic]
    label = "Traffic matters"
    period_years = 3
    action = "dispose"

A class is due ``period`` after its start (the consultation's creation, or a
non-evidential recording's end), for ``action`` (``review`` or ``dispose``). A review
that retains sets the next due date (default: ``review`` after the review); one that
disposes makes the item due for disposal at once. ``until_age`` (group 1) makes the
item due for disposal when the subject is deemed that old, when a date of birth is
known; without one the class falls back to its reviews.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Mapping, Optional

#: The rule of recordings not marked evidential (whatever their consultation's class).
NON_EVIDENTIAL = "non_evidential"
#: The rule of items whose consultation has no class (no default configured).
UNCLASSIFIED = "unclassified"
ACTIONS = ("review", "dispose")
DECISIONS = ("retain", "dispose")

DEFAULT_CLASSES: dict[str, dict[str, Any]] = {
    NON_EVIDENTIAL: {"label": "Non-evidential recording (not marked evidential)", "period_days": 31,
                     "action": "dispose"},
    "group1": {"label": "MoPI group 1: certain public protection matters (serious violent or sexual "
                        "offences, potentially dangerous people)",
               "period_years": 10, "review_years": 10, "until_age": 100, "action": "review"},
    "group2": {"label": "MoPI group 2: other sexual, violent or serious offences",
               "period_years": 10, "review_years": 10, "action": "review"},
    "group3": {"label": "MoPI group 3: all other offences", "period_years": 6, "review_years": 6,
               "action": "dispose"},
}

#: The National Retention Assessment Criteria (MoPI APP): asked at every review.
ASSESSMENT_CRITERIA: dict[str, str] = {
    "serious_harm": "Is there evidence of a capacity to inflict serious harm?",
    "children_vulnerable": "Are there any concerns in relation to children or vulnerable adults?",
    "breach_of_trust": "Did the behaviour involve a breach of trust?",
    "links_associations": "Is there evidence of established links or associations which might "
                          "increase the risk of harm?",
    "substance_misuse": "Are there concerns in relation to substance misuse?",
    "mental_state": "Are there concerns that an individual's mental state might exacerbate risk?",
}

_CLASS_KEYS = {"label", "period_years", "period_days", "review_years", "review_days", "until_age", "action"}
_TOP_KEYS = {"default_class", "sweep_minutes", "classes"}


def add_years(value: datetime, years: int) -> datetime:
    """The same day and time ``years`` later (29 February becomes 28 February)."""
    try:
        return value.replace(year=value.year + years)
    except ValueError:
        return value.replace(year=value.year + years, day=28)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


@dataclass(frozen=True)
class Period:
    years: int = 0
    days: int = 0

    def after(self, start: datetime) -> datetime:
        return add_years(start, self.years) + timedelta(days=self.days)

    def __str__(self) -> str:
        if self.years:
            return f"{self.years} year{'s' * (self.years != 1)}"
        return f"{self.days} day{'s' * (self.days != 1)}"


@dataclass(frozen=True)
class RetentionClass:
    name: str
    label: str
    period: Period
    review: Period
    action: str
    until_age: Optional[int] = None

    def describe(self) -> str:
        text = f"{self.action} {self.period} after the start"
        if self.until_age:
            text += f", or dispose when the subject is {self.until_age} (date of birth needed)"
        return text


@dataclass(frozen=True)
class ReviewState:
    """The newest review of an item."""

    decision: str
    at: datetime
    next_review_at: Optional[datetime]


@dataclass(frozen=True)
class Due:
    due_at: Optional[datetime]
    action: str


class Policy:
    """A force's retention classes, validated."""

    def __init__(self, classes: dict[str, RetentionClass], default_class: Optional[str], sweep_minutes: float):
        self.classes = classes
        self.default_class = default_class
        self.sweep_minutes = sweep_minutes
        body = {"classes": {k: asdict(v) for k, v in sorted(classes.items())}, "default": default_class}
        #: Changes when anything that moves a due date changes (then the schedule is recomputed).
        self.fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    @classmethod
    def from_config(cls, config: Optional[Mapping[str, Any]]) -> "Policy":
        """Build from the ``[retention]`` table; ``ValueError`` naming what is wrong."""
        config = {} if config is None else config
        if not isinstance(config, Mapping):
            raise ValueError("retention must be a table ([retention] in the config file)")
        unknown = sorted(set(config) - _TOP_KEYS)
        if unknown:
            raise ValueError(f"unknown retention setting(s): {', '.join(unknown)}")
        given = config.get("classes", {})
        if not isinstance(given, Mapping):
            raise ValueError("retention.classes must be a table of classes")
        merged = {name: dict(body) for name, body in DEFAULT_CLASSES.items()}
        for name, body in given.items():
            if not isinstance(body, Mapping):
                raise ValueError(f"retention.classes.{name} must be a table")
            base = merged.setdefault(name, {})
            if {"period_years", "period_days"} & set(body):
                base.pop("period_years", None), base.pop("period_days", None)
            if {"review_years", "review_days"} & set(body):
                base.pop("review_years", None), base.pop("review_days", None)
            base.update(body)
        classes = {name: _parse_class(name, body) for name, body in merged.items()}
        default = config.get("default_class", "group3")
        if not isinstance(default, str) or (default and (default not in classes or default == NON_EVIDENTIAL)):
            choices = ", ".join(n for n in classes if n != NON_EVIDENTIAL)
            raise ValueError(f"retention.default_class must be one of {choices} or \"\" (none), not {default!r}")
        sweep = config.get("sweep_minutes", 60)
        if isinstance(sweep, bool) or not isinstance(sweep, (int, float)) or not 0 < sweep <= 7 * 24 * 60:
            raise ValueError("retention.sweep_minutes must be a number of minutes above 0 (at most a week)")
        return cls(classes, default or None, float(sweep))

    def case_classes(self) -> list[RetentionClass]:
        """The classes an officer may give a consultation."""
        return [c for n, c in self.classes.items() if n != NON_EVIDENTIAL]

    def due(self, rule: str, start: datetime, dob: Optional[date], review: Optional[ReviewState]) -> Due:
        """When an item under ``rule`` is next due, and for what."""
        if review is not None and review.decision == "dispose":
            return Due(review.at, "dispose")
        cls = self.classes.get(rule)
        if cls is None:  # unclassified: nothing is due until an officer classifies it
            return Due(None, "review")
        if review is not None and review.next_review_at is not None:
            due_at, action = review.next_review_at, cls.action
        else:
            due_at, action = cls.period.after(start), cls.action
        if cls.until_age and dob is not None:
            aged = add_years(midnight(dob), cls.until_age)
            if aged <= due_at:
                return Due(aged, "dispose")
        return Due(due_at, action)

    def next_review(self, rule: str, now: datetime) -> datetime:
        """The default next review after a review that retains."""
        cls = self.classes.get(rule)
        return (cls.review if cls else Period(years=1)).after(now)


def _int(name: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"retention.classes.{name}.{key} must be a whole number from {low} to {high}")
    return value


def _period(name: str, body: Mapping[str, Any], kind: str, fallback: Optional[Period]) -> Period:
    years, days = body.get(f"{kind}_years"), body.get(f"{kind}_days")
    if years is not None and days is not None:
        raise ValueError(f"retention.classes.{name}: give {kind}_years or {kind}_days, not both")
    if years is not None:
        return Period(years=_int(name, f"{kind}_years", years, 1, 200))
    if days is not None:
        return Period(days=_int(name, f"{kind}_days", days, 1, 200 * 366))
    if fallback is None:
        raise ValueError(f"retention.classes.{name} needs period_years or period_days")
    return fallback


def _parse_class(name: str, body: Mapping[str, Any]) -> RetentionClass:
    if not name or len(name) > 32 or not name.replace("_", "").isalnum() or name == UNCLASSIFIED:
        raise ValueError(f"retention class name {name!r} must be 1-32 letters, digits or _")
    unknown = sorted(set(body) - _CLASS_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) in retention.classes.{name}: {', '.join(unknown)}")
    label = body.get("label", name)
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"retention.classes.{name}.label must be text")
    action = body.get("action", "review")
    if action not in ACTIONS:
        raise ValueError(f"retention.classes.{name}.action must be review or dispose")
    period = _period(name, body, "period", None)
    until_age = body.get("until_age")
    if until_age is not None:
        until_age = _int(name, "until_age", until_age, 1, 150)
    return RetentionClass(name, label.strip(), period, _period(name, body, "review", period), action, until_age)


def parse_time(value: str, name: str = "time") -> datetime:
    """A date (``2032-01-31``, midnight UTC) or an RFC 3339 time; ``ValueError`` naming ``name``."""
    text = (value or "").strip()
    try:
        if len(text) == 10:
            return midnight(date.fromisoformat(text))
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be a date (2032-01-31) or an RFC 3339 time, not {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (e.g. 2032-01-31T09:00:00Z)")
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before the first day there is
        raise ValueError(f"{name} is out of range: {value!r}") from None


def parse_date(value: str, name: str = "date") -> date:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError:
        raise ValueError(f"{name} must be a date like 1980-05-31, not {value!r}") from None
