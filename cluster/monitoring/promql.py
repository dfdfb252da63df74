"""The metric names a PromQL expression reads, and those a Prometheus text exposition holds.

Enough of PromQL for checking our rules and dashboard against a live scrape: string literals, label
matchers ``{...}``, ranges ``[...]``, offsets, grouping label lists (``by``, ``without``, ``on``, ``ignoring``,
``group_left``, ``group_right``) and numbers are removed; a remaining name not followed by ``(`` and not
a keyword is a metric. Grafana's ``$variables`` only appear inside matchers and ranges here.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])[0-9]+(\.[0-9]*)?(e[+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", re.MULTILINE)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (functions, aggregations, labels and keywords left out)."""
    text = _STRING.sub(" ", expr)
    while _MATCHERS.search(text):
        text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", _OFFSET.sub(" ", _RANGE.sub(" ", text)))
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end():].lstrip()
        if not rest.startswith("(") and match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exposed_names(exposition: str) -> set[str]:
    """The sample names of a Prometheus text exposition (``name_bucket``, ``name_sum``, ... for histograms)."""
    return set(_SAMPLE.findall(exposition))
