"""The perception page's fields and headline (``benchmarks/perception.py``'s result)."""

from __future__ import annotations

from typing import Any

from benchmarks.docs_text import num, pct, table, verdict

Json = dict[str, Any]


FALLBACK_BY = {"zero": "the zero action",
               "plan": "the agent's previous plan until it has acted on all of it, else the zero action"}
"""What a served run's late answers acted on (its ``fallback_action_by``; runs that did not record it: zero)."""


def _served_rows(served: Json) -> list[list[Any]]:
    rows = []
    for label, row in [("target row", served["target_row"])] + [("ladder", s) for s in served["ladder"]]:
        lat = row["latency_ms"]
        rows.append([label, row["agents"], num(row["rate_per_agent_hz"], 2), num(lat["p50"]), num(lat["p99"]),
                     row["errors"], num(row["requests"], 0), num(row["fallbacks_by_reason"].get("deadline", 0), 0),
                     pct(row.get("success_rate")), row.get("violations", "-")])
    return rows


def _variants_table(variants: Json) -> str:
    rows = []
    for name, v in variants.items():
        loop, read = v["closed_loop"], v.get("readout")  # runs before the keypoint readout have none
        cells = [None] * 4 if read is None else [num(read["position"]["rmse"], 2), num(read["position"]["r2"], 3),
                                                 num(read["velocity"]["rmse"], 2), num(read["velocity"]["r2"], 2)]
        heads = (read or {}).get("heads")  # None in results without the heads' scores
        cells += ["-", "-"] if heads is None else [num(heads["reward_rmse"], 2), num(heads["breach_auc"], 3)]
        rows.append([name, v["latent_config"] or "(defaults)", num(v["train"]["minutes"]), pct(loop["success_rate"]),
                     loop["zone_steps"], *cells])
    return table(["model", "`--latent-config`", "train minutes", "success", "steps in zones",
                  "position readout RMSE", "R^2", "velocity readout RMSE", "R^2", "reward head RMSE",
                  "breach head AUROC"], rows)


def _search_table(r: Json) -> str:
    """The default model under each planning setting of the run's search (``benchmarks.perception.SEARCH``)."""
    search, default = r.get("search"), r["closed_loop"]["settings"]
    if not search:
        return "not run"
    rows = [[row["horizon"], row["samples"], "default" if (row["horizon"], row["samples"]) == (
        default["horizon"], default["samples"]) else "", row["episodes"], pct(row["success_rate"]), row["zone_steps"],
             row["violation_episodes"], num(row["mean_steps"]), num(row["ms_per_step"], 0)] for row in search]
    return table(["horizon", "samples", "", "episodes", "success", "steps in zones", "episodes with one", "mean steps",
                  "ms per step (all agents)"], rows)


def _search_note(r: Json) -> str:
    """Which planning setting of the search did best, as a sentence."""
    search = r.get("search")
    if not search:
        return ""
    best = max(search, key=lambda row: row["success_rate"])
    return (f"Best success of these: horizon {best['horizon']} with {best['samples']} samples "
            f"({pct(best['success_rate'])}).")


def perception_fields(r: Json) -> dict[str, str]:
    s, collect, train, loop, served = r["settings"], r["collect"], r["train"], r["closed_loop"], r.get("served")
    target = r["target"]
    held = train["metrics"].get("held_out") or {}
    loop_row = [loop["episodes"], loop["agents"], pct(loop["success_rate"]), loop["zone_steps"],
                loop["violation_episodes"], num(loop["mean_steps"]), num(loop["ms_per_step"], 0),
                num(loop["breach_weight"], 0)]
    loop_table = table(["episodes", "agents at once", "success", "steps in zones", "episodes with one", "mean steps",
                        "ms per step (all agents)", "breach weight"], [loop_row])
    met_served = None if served is None else bool(served["target_met"])
    share = "-"
    if served is not None:  # answers: the timed requests, and at most an episode's 200 steps per agent after them
        row = served["target_row"]
        fallbacks, most = row["fallbacks_by_reason"].get("deadline", 0), row["requests"] + 200 * row["agents"]
        share = (f"{'most' if 2 * fallbacks > most else 'some'} answers are ({num(fallbacks, 0)} of at most "
                 f"{num(most, 0)})")
    largest = None if served is None else served.get("largest_fleet")
    return {
        "collect_episodes": str(collect["episodes"]), "transitions": num(collect["transitions"], 0),
        "policy": collect["policy"], "collect_seconds": num(collect["seconds"]),
        "cpu_seconds": f"{s['cpu_seconds']:g}", "train_minutes": num(train["minutes"]),
        "train_steps": num(train["metrics"]["steps"], 0),
        "train_stop": ("the step limit, before the CPU budget" if train["metrics"]["cpu_seconds"] < s["cpu_seconds"]
                       else "the CPU budget"),
        "held_out": ", ".join(f"{k} {v:.4f}" for k, v in held.items()) or "none",
        "loop_table": loop_table, "planner": _planner(loop["settings"]),
        "search_episodes": str(s.get("search_episodes", 0)), "search_table": _search_table(r),
        "search_note": _search_note(r), "horizon": str(loop["settings"]["horizon"]),
        "samples": str(loop["settings"]["samples"]),
        "variants_table": _variants_table(r["variants"]), "probe_episodes": str(s["probe_episodes"]),
        "readout_note": _readout_note(r["variants"]["frame stack"].get("readout")),
        "heads_note": _heads_note(r["variants"]["frame stack"].get("readout")),
        "recurrent_note": _recurrent_note(r["variants"]),
        "loop_verdict": verdict(loop["target_met"]),
        "served_table": "not run" if served is None else table(
            ["fleet", "agents", "Hz per agent", "p50 ms", "p99 ms", "errors", "requests", "deadline fallbacks",
             "success", "steps in zones"],
            _served_rows(served)),
        "served_verdict": verdict(met_served), "fallback_share": share,
        "fallback_by": FALLBACK_BY[(served or {}).get("fallback_action_by", "zero")],
        "largest": "not run" if served is None else
        (f"**{largest}** agents" if largest else "**none** of the sizes tried"),
        "target": (f"{pct(target['success_rate'], 0)} success, {target['zone_steps']} zone steps: "
                   f"{verdict(loop['target_met'])}; {target['served_agents']} served agents p99 <= "
                   f"{num(target['served_p99_ms'], 0)} ms: {verdict(met_served)}"),
    }


def _heads_note(read: Json | None) -> str:
    """What the default model's heads read (``benchmarks.perception.readout``'s ``heads``), as a sentence's end."""
    heads = (read or {}).get("heads")
    if heads is None:
        return "this run did not score the heads"
    text = (f"on the latents planning starts from, the reward head is off by {num(heads['reward_rmse'], 2)} arena "
            f"units (RMSE) and the breach head ranks a breaching step above a clear one with AUROC "
            f"{num(heads['breach_auc'], 3)}")
    ahead = heads.get("breach_auc_ahead")
    if not ahead:
        return text + "; this run did not score it on the latents the dynamics predicts ahead"
    return text + "; on latents the dynamics predicts " + ", ".join(
        f"{k} step{'s' if int(k) > 1 else ''} ahead: {num(v, 3)}" for k, v in ahead.items())


def _recurrent_note(variants: Json) -> str:
    """How the recurrent model's closed loop compares with the default's, as a clause."""
    default, recurrent = variants["frame stack"]["closed_loop"], variants["recurrent"]["closed_loop"]
    ours, theirs = recurrent["success_rate"], default["success_rate"]
    word = "better" if ours > theirs else "worse" if ours < theirs else "as well"
    return f"it plans {word} ({pct(ours)} success against {pct(theirs)})"


def _readout_note(read: Json | None) -> str:
    if read is None:
        return "this run's readouts are not shown (they fitted the whole latent, zone map included)"
    return (f"the true values' spread: position {num(read['position']['std'], 2)}, velocity "
            f"{num(read['velocity']['std'], 2)}, arena units; an R^2 below 0 reads worse than a constant would")


def _planner(p: Json) -> str:
    return f"CEM, horizon {p['horizon']}, {p['samples']} samples, {p['iterations']} round, {p['propagation']}"


def perception_headline(r: Json) -> str:
    loop, served = r["closed_loop"], r.get("served")
    text = (f"from pixels: {pct(loop['success_rate'])} success, {loop['zone_steps']} zone steps over "
            f"{loop['episodes']} episodes (model trained in {num(r['train']['minutes'])} min on CPU)")
    if served is not None:
        row = served["target_row"]
        text += (f"; {row['agents']} camera agents through the bus: p99 {num(row['latency_ms']['p99'], 0)} ms at "
                 f"{num(row['rate_per_agent_hz'], 1)} Hz each, largest fleet holding 100 ms: "
                 f"{served.get('largest_fleet') or 'none'}")
    return text
