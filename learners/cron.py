"""Five-field cron expressions and their next fire time (pure Python, no Ray).

Fields: ``minute hour day-of-month month day-of-week``, each ``*``, a number, a range
``a-b``, a step ``*/n`` or ``a-b/n`` or ``a/n`` (from a to the field's end), or a comma
list of these. Day-of-week runs 0-6 from Sunday, and 7 is Sunday too. As in Vixie cron,
when both day fields are restricted (neither starts with ``*``) a day matches if
*either* matches; otherwise both must. ``@hourly``, ``@daily``, ``@weekly``,
``@monthly`` and ``@yearly`` are accepted as shorthands.

Times keep the ``tzinfo`` of the datetime given (the scheduler passes UTC).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
"""Name, lowest and highest value of each field, in order."""

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}

_SEARCH_YEARS = 8
"""Any satisfiable expression fires within this many years (Feb 29 on a given weekday takes up to 28)."""


class CronError(ValueError):
    """A cron expression that cannot be parsed, or that never fires; the message names the field."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    minutes: frozenset[int]
    """Minutes 0-59."""
    hours: frozenset[int]
    """Hours 0-23."""
    days: frozenset[int]
    """Days of the month 1-31."""
    months: frozenset[int]
    """Months 1-12."""
    weekdays: frozenset[int]
    """Days of the week 0-6, Sunday = 0."""
    days_restricted: bool
    """The day-of-month field does not start with ``*``."""
    weekdays_restricted: bool
    """The day-of-week field does not start with ``*``."""

    def matches_day(self, day: datetime.date) -> bool:
        """Whether ``day`` is a fire day, with cron's OR rule when both day fields are restricted."""
        in_days = day.day in self.days
        in_weekdays = day.isoweekday() % 7 in self.weekdays  # isoweekday: Monday 1 .. Sunday 7
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays


def parse(expr: str) -> Cron:
    """Parse a five-field expression (or a shorthand like ``@daily``).

    Raises:
        CronError: the wrong number of fields, or a field with a bad or out-of-range value.
    """
    if not isinstance(expr, str):
        raise CronError(f"cron expression must be a string, got {expr!r}")
    text = MACROS.get(expr.strip().lower(), expr)
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise CronError(f"cron expression {expr!r} has {len(parts)} fields, expected 5 "
                        "(minute hour day-of-month month day-of-week)")
    values = [_field(part, name, low, high, expr) for part, (name, low, high) in zip(parts, FIELDS)]
    weekdays = frozenset(d % 7 for d in values[4])
    return Cron(values[0], values[1], values[2], values[3], weekdays,
                days_restricted=not parts[2].startswith("*"), weekdays_restricted=not parts[4].startswith("*"))


def _field(text: str, name: str, low: int, high: int, expr: str) -> frozenset[int]:
    def bad(why: str) -> CronError:
        return CronError(f"cron field {name} {text!r} in {expr!r}: {why}")

    def number(s: str) -> int:
        if not s.isdigit():
            raise bad(f"{s!r} is not a number")
        value = int(s)
        if not low <= value <= high:
            raise bad(f"{value} is outside {low}-{high}")
        return value

    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        if "/" in item and not step_text:
            raise bad(f"step missing after '/' in {item!r}")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise bad(f"step {step_text!r} must be a positive integer")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first, last = number(first_text), number(last_text)
            if first > last:
                raise bad(f"range {base!r} runs backwards")
        else:
            first = number(base)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def next_fire(expr: str | Cron, after: datetime.datetime) -> datetime.datetime:
    """The first minute strictly after ``after`` that ``expr`` fires at.

    Args:
        expr: a cron expression, or one already parsed.
        after: the time to search from (naive or aware; the result has the same tzinfo).

    Returns:
        A datetime with zero seconds and microseconds, later than ``after``.

    Raises:
        CronError: a bad expression, or one that never fires (e.g. ``0 0 30 2 *``).
    """
    cron = expr if isinstance(expr, Cron) else parse(expr)
    t = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    limit = after + datetime.timedelta(days=366 * _SEARCH_YEARS)
    # Jump field by field, coarsest first: at most a few thousand steps for any expression.
    while t <= limit:
        if t.month not in cron.months:
            t = _first_of_next_month(t)
        elif not cron.matches_day(t.date()):
            t = t.replace(hour=0, minute=0) + datetime.timedelta(days=1)
        elif t.hour not in cron.hours:
            t = t.replace(minute=0) + datetime.timedelta(hours=1)
        elif t.minute not in cron.minutes:
            t += datetime.timedelta(minutes=1)
        else:
            return t
    raise CronError(f"cron expression {expr!r} never fires (searched {_SEARCH_YEARS} years after {after})")


def _first_of_next_month(t: datetime.datetime) -> datetime.datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0)
