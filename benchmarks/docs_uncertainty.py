"""The uncertainty page's fields and headline (``benchmarks/uncertainty.py``'s result)."""

from __future__ import annotations

from typing import Any

from benchmarks.docs_text import num, pct, table

Json = dict[str, Any]
_NAMES = {"ensemble": "ensemble (E nets)", "mc_dropout": "MC dropout (E masks)",
          "mc_dropout_0.05": "MC dropout, rate 0.05"}


def _name(row: Json) -> str:
    return _NAMES.get(row["model"], row["model"])


def _fit_table(summary: list[Json]) -> str:
    headers = ["env", "model", "train CPU s", "R^2 min", "R^2 of the change, min", "NLL", "1-sigma coverage",
               "2-sigma coverage (seeds' range)", "rank corr. std / error", "rank corr. disagreement / error"]
    return table(headers, [[r["env"], _name(r), num(r["train_cpu_seconds"]), num(r["r2_min"], 4),
                            num(r["r2_delta_min"], 3), num(r["nll"], 2), pct(r["coverage_1sigma"]),
                            f"{pct(r['coverage_2sigma'])} ({pct(r['coverage_2sigma_range'][0])} to "
                            f"{pct(r['coverage_2sigma_range'][1])})",
                            num(r["std_error_corr"], 2), num(r["disagreement_error_corr"], 2)] for r in summary])


def _off_table(summary: list[Json], shifts: list[float]) -> str:
    headers = ["env", "model", "disagreement on test states (median)",
               *(f"+{s:g} range: outside / x median / flagged" for s in shifts)]
    rows = []
    for r in summary:
        off = r["off_data"]
        rows.append([r["env"], _name(r), num(off["median_in"], 4),
                     *(f"{pct(off['outside'][str(s)], 0)} / x{num(off['ratio'][str(s)], 1)} / "
                       f"{pct(off['flagged'][str(s)], 0) or '-'}" for s in shifts)])
    return table(headers, rows)


def _speed_table(summary: list[Json], call_rows: list[int]) -> str:
    headers = ["env", "model", *(f"CPU us per call, {n:,} rows" for n in call_rows)]
    return table(headers, [[r["env"], _name(r), *(num(r["inference_us"][str(n)], 0) for n in call_rows)]
                           for r in summary])


def _pair(summary: list[Json], env: str) -> tuple[Json, Json]:
    rows = {r["model"]: r for r in summary if r["env"] == env}
    return rows["ensemble"], rows["mc_dropout"]


def uncertainty_fields(r: Json) -> dict[str, str]:
    summary, shifts = r["summary"], r["shifts"]
    ens, mc = r["models"]["ensemble"], r["models"]["mc_dropout"]
    return {
        "episodes": str(r["episodes"]), "seeds": ", ".join(str(s) for s in r["seeds"]),
        "size": f"{ens['ensemble_size']} x {ens['hidden']}x{ens['layers']} ({ens['activation']})",
        "dropout": f"{mc['dropout']:g}", "members": str(mc["ensemble_size"]),
        "fit_table": _fit_table(summary), "off_table": _off_table(summary, shifts),
        "speed_table": _speed_table(summary, r["call_rows"]),
    }


def uncertainty_headline(r: Json) -> str:
    parts = []
    for env in dict.fromkeys(row["env"] for row in r["summary"]):
        ens, mc = _pair(r["summary"], env)
        big = str(r["shifts"][-1])
        parts.append(f"{env}: 2-sigma coverage {pct(ens['coverage_2sigma'])} (ensemble) vs "
                     f"{pct(mc['coverage_2sigma'])} (MC dropout), R^2 of the change {num(ens['r2_delta_min'], 3)} vs "
                     f"{num(mc['r2_delta_min'], 3)}, off-data disagreement x{num(ens['off_data']['ratio'][big], 0)} vs "
                     f"x{num(mc['off_data']['ratio'][big], 0)}")
    return "; ".join(parts)
