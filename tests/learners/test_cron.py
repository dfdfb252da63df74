"""The cron parser against hand-worked fire times (no Ray)."""

from __future__ import annotations

import datetime

import pytest

from learners.cron import CronError, next_fire, parse

UTC = datetime.timezone.utc


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


@pytest.mark.parametrize("expr, after, expected", [
    ("* * * * *", "2024-03-10 12:34:56", "2024-03-10 12:35:00"),
    ("* * * * *", "2024-03-10 12:34:00", "2024-03-10 12:35:00"),  # strictly after
    ("*/15 * * * *", "2024-03-10 12:34:00", "2024-03-10 12:45:00"),
    ("*/15 * * * *", "2024-03-10 12:50:00", "2024-03-10 13:00:00"),
    ("0 * * * *", "2024-12-31 23:30:00", "2025-01-01 00:00:00"),
    ("30 2 * * *", "2024-03-10 02:30:00", "2024-03-11 02:30:00"),
    ("0 9 * * 1-5", "2024-03-08 10:00:00", "2024-03-11 09:00:00"),  # Friday after nine -> Monday
    ("0 0 * * 0", "2024-03-10 00:00:00", "2024-03-17 00:00:00"),  # Sunday -> next Sunday
    ("0 0 * * 7", "2024-03-11 00:00:00", "2024-03-17 00:00:00"),  # 7 is Sunday too
    ("0 0 29 2 *", "2023-03-01 00:00:00", "2024-02-29 00:00:00"),  # leap day
    ("0 0 31 * *", "2024-04-01 00:00:00", "2024-05-31 00:00:00"),  # April has no 31st
    ("5,10-12/2 3 * * *", "2024-03-10 03:12:00", "2024-03-11 03:05:00"),
    ("10-12/2 3 * * *", "2024-03-10 03:10:00", "2024-03-10 03:12:00"),
    ("50/5 * * * *", "2024-03-10 03:51:00", "2024-03-10 03:55:00"),
    ("0 0 1 */3 *", "2024-02-15 00:00:00", "2024-04-01 00:00:00"),  # months 1, 4, 7, 10
    ("@hourly", "2024-03-10 12:34:00", "2024-03-10 13:00:00"),
    ("@weekly", "2024-03-10 12:34:00", "2024-03-17 00:00:00"),
])
def test_next_fire_known_answers(expr: str, after: str, expected: str) -> None:
    assert next_fire(expr, at(after)) == at(expected)


def test_both_day_fields_restricted_means_either() -> None:
    # The 13th, or any Friday: Friday 2024-03-15 comes before the 13th of April.
    assert next_fire("0 0 13 * 5", at("2024-03-13 12:00:00")) == at("2024-03-15 00:00:00")
    assert next_fire("0 0 13 * 5", at("2024-03-10 00:00:00")) == at("2024-03-13 00:00:00")
    # A '*'-led day-of-week (even a step) is unrestricted: both must hold, so only the 13th.
    assert next_fire("0 0 13 * */1", at("2024-03-13 12:00:00")) == at("2024-04-13 00:00:00")


def test_timezone_is_kept() -> None:
    fire = next_fire("0 12 * * *", datetime.datetime(2024, 3, 10, 13, 0, tzinfo=UTC))
    assert fire == datetime.datetime(2024, 3, 11, 12, 0, tzinfo=UTC) and fire.tzinfo is UTC


def test_parse_values() -> None:
    cron = parse("0-5/2 */8 1,15 * 5-7")
    assert cron.minutes == {0, 2, 4} and cron.hours == {0, 8, 16} and cron.days == {1, 15}
    assert cron.weekdays == {5, 6, 0} and cron.months == set(range(1, 13))


@pytest.mark.parametrize("expr, message", [
    ("* * * *", "has 4 fields, expected 5"),
    ("60 * * * *", "minute '60'.*outside 0-59"),
    ("* 24 * * *", "hour '24'.*outside 0-23"),
    ("* * 0 * *", "day-of-month '0'.*outside 1-31"),
    ("* * * 13 *", "month '13'.*outside 1-12"),
    ("* * * * 8", "day-of-week '8'.*outside 0-7"),
    ("*/0 * * * *", "minute.*step '0' must be a positive integer"),
    ("5-1 * * * *", "minute.*runs backwards"),
    ("a * * * *", "minute.*'a' is not a number"),
    ("1, * * * *", "minute.*'' is not a number"),
    ("0 0 30 2 *", "never fires"),
])
def test_errors_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        next_fire(expr, at("2024-01-01 00:00:00"))
