"""Markdown pieces the docs pages share: tables, numbers, verdicts and the machine a result ran on."""

from __future__ import annotations

from typing import Any, Sequence

NOT_RECORDED = "not recorded"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; None cells print as '-'."""
    cell = lambda v: "-" if v is None else str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: float | None, digits: int = 1) -> str | None:
    """``value`` with ``digits`` decimals and thousands separators, None stays None."""
    return None if value is None else f"{value:,.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str | None:
    """A fraction as a percentage: 0.9975 -> '99.8%'."""
    return None if value is None else f"{100 * value:.{digits}f}%"


def verdict(met: bool | None) -> str:
    return "not recorded" if met is None else ("**met**" if met else "**not met**")


def span(values: Sequence[float], digits: int = 1) -> str:
    """'a' or 'a to b' over the values (their min and max)."""
    lo, hi = num(min(values), digits), num(max(values), digits)
    return str(lo) if lo == hi else f"{lo} to {hi}"


def machine_facts(result: dict[str, Any]) -> str:
    """Where and on what code ``result`` was measured, as a bullet list ('not recorded' for what it lacks)."""
    m = result.get("machine") or {}
    cpu = m.get("cpu_model") or f"{m.get('processor', 'CPU')} (model {NOT_RECORDED})"
    cores = m.get("cores")
    threads = f"; torch's default threads: {m['cpus']}" if "cpus" in m else ""
    commit = m.get("git_commit")
    dirty = " with local changes" if m.get("git_dirty") else ""
    code = NOT_RECORDED if commit is None else f"`{commit[:12]}`{dirty}"
    return "\n".join([
        f"- CPU: {cpu}, " + (f"{cores} cores" if cores is not None else f"cores {NOT_RECORDED}") + threads,
        f"- GPU: {m.get('cuda') or 'none'}",
        f"- torch {m.get('torch', NOT_RECORDED)}, Ray {m.get('ray') or NOT_RECORDED}, "
        f"Python {m.get('python', NOT_RECORDED)}",
        f"- run on {result.get('date', NOT_RECORDED)}, code at commit {code}",
    ])
