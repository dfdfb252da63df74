"""The fields of each docs page's template, computed from its benchmark's JSON (see ``benchmarks.docs``).

Every function takes the result as ``benchmarks/results/*.json`` holds it and returns the template's
``$fields`` as markdown strings. Keys a result may lack (older runs) print as '-'.
"""

from __future__ import annotations

from typing import Any

from benchmarks.docs_text import num, pct, span, table, verdict

Json = dict[str, Any]
DEFAULTS_TARGET = {"success_rate": 0.995, "violations": 0, "episodes": 2000}
"""Issue 13's bar for the defaults: >= 99.5% success and 0 zone violations over >= 2,000 episodes."""


PLANNER_NAMES = {"cem": "CEM", "mppi": "MPPI", "gradient": "gradient MPC", "shooting": "random shooting"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _r2s(values: list[float | None]) -> str:
    return ", ".join("-" if v is None else (f"{v:.4f}" if v > 0.999 else f"{v:.3f}") for v in values)


def model_fit_fields(r: Json) -> dict[str, str]:
    rows, ensembles = [], []
    for row in r["rows"]:
        cov = row.get("coverage_2sigma")
        per_dim = row.get("coverage_2sigma_per_dim") or [cov]
        coverage = None if cov is None else (f"{row['coverage_1sigma']:.3f} / {cov:.3f} "
                                             f"({min(per_dim):.2f} to {max(per_dim):.2f})")
        rows.append([row["env"], row["model"], f"{row['r2_min']:.4f}", _r2s(row["r2_delta"]), coverage or "none",
                     num(row.get("train_seconds"))])
        if cov is not None:
            ensembles.append(row.get("targets_met", False))
    headers = ["env", "model", "R^2 min over state dims", "R^2 of the change, per dim",
               "1-sigma / 2-sigma coverage (2-sigma per dim)", "train s"]
    return {"table": table(headers, rows), "episodes": str(r.get("episodes", "-")), "seed": str(r.get("seed", "-")),
            "target": verdict(bool(ensembles) and all(ensembles))}


def _eval_row(row: Json) -> list[Any]:
    return [num(row["episodes"], 0), pct(row["success_rate"], 2), row["violations"],
            f"{num(row['plan_ms_mean'])} / {num(row['plan_ms_p99'])}", num(row["plans_per_s"], 0)]


def nav2d_fields(r: Json) -> dict[str, str]:
    rows = [[row["stack"], row["zones"] or "off", *_eval_row(row)] for row in r["rows"]]
    headers = ["stack", "no-fly zones", "episodes", "success", "steps in zones", "planning ms/step (mean / p99)",
               "plans/s"]
    met = r.get("settings_meeting_target") or []
    first = r["rows"][0]
    failed = round(first["episodes"] * (1 - first["success_rate"]))
    return {"table": table(headers, rows), "target": verdict(r.get("target_met")),
            "met_by": "; ".join(f"`{s}`" for s in met) or "no setting",
            "agents": str(first.get("agents", "-")), "first_stack": first["stack"],
            "first_episodes": f"{first['episodes']:,}", "first_success": str(pct(first["success_rate"], 2)),
            "first_failed": str(failed), "model_r2_min": str(num(r.get("model_r2_min"), 4)),
            "reward_r2": str(num(r.get("reward_r2"), 4))}


def defaults_fields(result: Json) -> dict[str, str]:
    r = result["eval"]  # `wm eval`'s answer (benchmarks/defaults_nav2d.py keeps collect's and train's beside it)
    s = r.get("settings") or {}
    ok = (r.get("success_rate", 0) >= DEFAULTS_TARGET["success_rate"] and r.get("violations") == 0
          and r.get("episodes", 0) >= DEFAULTS_TARGET["episodes"])
    headers = ["episodes", "success", "steps in zones", "planning ms/step (mean / p99)", "plans/s",
               "episodes with a violation", "fallbacks"]
    rows = [[*_eval_row(r), r.get("episodes_with_violation"), r.get("fallbacks")]]
    settings = (f"{r.get('planner', '-')} H {s.get('horizon', '-')}, K {s.get('samples', '-')}, "
                f"{_plural(s.get('iterations', 0), 'round')}, own settings {r.get('planner_settings') or 'none'}")
    return {"table": table(headers, rows), "target": verdict(ok), "settings": settings,
            "seed": str(s.get("seed", "-")), "agents": str(r.get("agents", "-")),
            "zones": str(r.get("no_fly_zones", "-")), "device": str(r.get("device", "-"))}


def _run_label(run: Json) -> str:
    s = run["settings"]
    label = (f"{PLANNER_NAMES.get(run['planner'], run['planner'])} H {s['horizon']}, K {s['samples']}, "
             f"{_plural(s['iterations'], 'round')}")
    if (s.get("planner_settings") or {}).get("noise_beta"):
        label += ", iCEM noise"
    if str(run.get("native", "")).startswith("disabled"):
        label += ", torch's path"
    return label


def throughput_fields(r: Json) -> dict[str, str]:
    timed = {name: run for name, run in r["runs"].items() if run["settings"].get("budget_ms") is None}
    budgeted = [run for run in r["runs"].values() if run["settings"].get("budget_ms") is not None]
    rows = [[_run_label(run), row["agents"], num(row["plans_per_s_per_core"], 0),
             f"{row['speedup_vs_reference']:.0f}x", num(row["gflops"]), pct(row["fraction_of_peak"]),
             pct(row.get("rollout_fraction_of_peak"))] for run in timed.values() for row in run["rows"]]
    headers = ["planner", "agents per call", "plans/s (one core)", "vs article", "achieved GFLOP/s", "of peak",
               "rollouts of peak"]
    best = max((row | {"label": _run_label(run)} for run in timed.values() for row in run["rows"]
                if row["agents"] == 256), key=lambda row: row["speedup_vs_reference"], default=None)
    met = best is not None and best["speedup_vs_reference"] >= 100 and best["fraction_of_peak"] >= 0.5
    refs = [run["reference"]["plans_per_s_per_core"] for run in r["runs"].values()]
    peaks = [run["peak_gflops"]["peak"] for run in r["runs"].values()]
    out = {"table": table(headers, rows), "target": verdict(met), "reference": span(refs),
           "peak": span(peaks, 0), "threads": str(r.get("threads", "-")), "repeats": str(r.get("repeats", "-")),
           "best": "-" if best is None else (f"{best['label']}: {num(best['plans_per_s_per_core'], 0)} plans/s, "
                                             f"{best['speedup_vs_reference']:.0f}x the article's planner, "
                                             f"{pct(best['fraction_of_peak'])} of the matmul peak "
                                             f"({pct(best.get('rollout_fraction_of_peak'))} in the rollouts)"),
           "deadline_table": "not run", "deadline_target": verdict(None), "deadline_settings": "-"}
    if budgeted:
        run = budgeted[0]
        out["deadline_table"] = table(["agents per call", "p50 ms", "p99 ms", "rounds run (mean)", "fallback"], [
            [row["agents"], num(row["ms_p50"]), num(row["ms_p99"]), num(row.get("iterations_mean"), 0),
             pct(row.get("fallback_fraction"), 0)] for row in run["rows"]])
        s = run["settings"]
        out["deadline_settings"] = (f"H {s['horizon']}, K {s['samples']}, {_plural(s['iterations'], 'round')}, budget "
                                    f"{num(s['budget_ms'], 0)} ms")
        out["deadline_target"] = verdict(all((r.get("deadline_met") or {"-": False}).values()))
    return out


def _fleet_row(stack: str, row: Json) -> list[Any]:
    lat = row["latency_ms"]
    success = pct(row.get("success_rate")) if row.get("episodes") else None
    return [stack, row["agents"], f"{num(row['rate_hz'])} ({num(row['rate_per_agent_hz'], 2)})",
            f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f}", row["errors"], _fallbacks(row),
            num(row.get("episodes"), 0), success, row.get("violations")]


def _fallbacks(row: Json) -> str:
    """A fleet row's fallback answers with their reasons, e.g. '24 (deadline 24)'."""
    reasons = row.get("fallbacks_by_reason") or {}
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    return f"{row.get('fallbacks', 0)}" + (f" ({detail})" if detail else "")


def _by_second(row: Json | None) -> str:
    """The range of a fleet row's per-second p99, '-' when it was not traced."""
    return span(row["p99_ms_by_second"], 0) if row and row.get("p99_ms_by_second") else "-"


def serve_fleet_fields(r: Json) -> dict[str, str]:
    main, floor, article = r["fleetwm"], r.get("serving_floor"), r.get("article") or {}
    rows = [_fleet_row("fleetwm", row) for row in r.get("fleetwm_by_agents") or [main]]
    if floor:
        rows.append(_fleet_row("serving floor (" + " ".join(floor["settings"]["serve"][2:]) + ")", floor)[:5]
                    + ["-", "-", "-", "-"])
    rows += [_fleet_row("article service", row) for row in article.get("ladder", [])]
    headers = ["stack", "agents", "requests/s (per agent)", "latency p50 / p95 / p99 ms", "errors", "fallbacks",
               "episodes", "success", "steps in zones"]
    target = r.get("target") or {}
    return {"table": table(headers, rows), "target": verdict(r.get("target_met")),
            "target_p99": num(target.get("p99_ms"), 0) or "-", "target_success": pct(target.get("success_rate"), 0)
            or "-", "serve_flags": " ".join(main["settings"]["serve"]) or "no flags: its defaults",
            "deadline": (f"{main['settings']['deadline_ms']:g} ms" if main["settings"].get("deadline_ms")
                         else "the server's default"),
            "agents": str(main["agents"]), "hz": num(main["hz"], 0) or "-", "seconds": num(main["seconds"], 0) or "-",
            "zones": str(main["settings"].get("no_fly_zones", "-")),
            "p99": num(main["latency_ms"]["p99"], 0) or "-", "rate": num(main["rate_hz"], 0) or "-",
            "success": pct(main.get("success_rate")) or "-", "errors": str(main["errors"]),
            "p99_by_second": _by_second(main), "floor_p99_by_second": _by_second(floor),
            "floor_p99": "-" if not floor else num(floor["latency_ms"]["p99"], 0) or "-",
            "transitions": num(main.get("transitions_logged"), 0) or "-",
            "article_rate": num(article.get("plans_per_s_sustained")) or "-",
            "article_agents": str(article.get("agents_sustained", "-"))}


def pendulum_fields(r: Json) -> dict[str, str]:
    rows = [[run["seed"], ", ".join(f"{x:.0f}" for x in run["returns"]), run["eval_mean_return"],
             run["oracle_eval_mean_return"], run.get("steps_to_target") or "never"] for run in r["runs"]]
    rows.append(["all", "", f"**{r['eval_mean_return']}**", r["oracle_eval_mean_return"], ""])
    headers = ["seed", "training returns", "eval mean", "oracle eval mean",
               f"first episode >= {r['target_return']:.0f} at env step"]
    return {"table": table(headers, rows), "target": verdict(r.get("target_met")),
            "target_return": f"{r['target_return']:.0f}", "budget": f"{r['budget_env_steps']:,}",
            "metric": r.get("metric", "-"), "settings": " ".join(r.get("settings") or []),
            "seeds_met": f"{r.get('seeds_meeting_target', '-')} of {len(r['runs'])}"}


def gpu_fields(r: Json) -> dict[str, str]:
    steps = r.get("steps") or []
    rows = [[s["name"], s["status"], num(s.get("seconds")), s.get("summary", "")] for s in steps]
    bench = next((s.get("result") for s in steps if s["name"] == "bench_plan" and s.get("result")), None) or {}
    bench_rows = [[row["agents"], num(row.get("plans_per_s"), 0), num(row.get("ms_p50")), num(row.get("ms_p99")),
                   pct(row.get("fraction_of_peak"))] for row in bench.get("rows", [])]
    failed = [s["name"] for s in steps if s["status"] == "failed"]
    if r.get("dry_run"):
        status = "a dry run: the steps are listed, nothing ran"
    elif r.get("mode") == "cpu":
        status = "a rehearsal at tiny sizes on the CPU (`--cpu`): the GPU path has not run"
    else:
        skipped = [s["name"] for s in steps if s["status"] == "skipped"]
        status = f"failed: {', '.join(failed) or 'no steps'}" if failed or not steps else "every step run passed"
        status += f" (skipped: {', '.join(skipped)})" if skipped else ""
    return {"steps_table": table(["step", "status", "seconds", "result"], rows), "status": status,
            "bench_device": str(bench.get("device", "-")),
            "bench_table": table(["agents per call", "plans/s", "p50 ms", "p99 ms", "of peak"], bench_rows)
            if bench_rows else "not run"}


# Headlines: one line per page for the results table of README.md and docs/README.md.

def model_fit_headline(r: Json) -> str:
    ours = [row for row in r["rows"] if row.get("coverage_2sigma") is not None]
    envs = " and ".join(dict.fromkeys(row["env"] for row in ours))
    return (f"{ours[0]['model']} on {envs}: held-out R^2 >= {min(row['r2_min'] for row in ours):.4f} on every "
            f"state dimension, 2-sigma coverage {span([row['coverage_2sigma'] for row in ours], 3)}")


def nav2d_headline(r: Json) -> str:
    row = r["rows"][0]
    return (f"{row['stack']}: {pct(row['success_rate'])} success, {row['violations']} steps in no-fly zones over "
            f"{row['episodes']:,} episodes, {row.get('agents', '-')} agents per planning call")


def defaults_headline(result: Json) -> str:
    r = result["eval"]
    return (f"{pct(r.get('success_rate'), 2)} success, {r.get('violations')} steps in no-fly zones over "
            f"{r.get('episodes', 0):,} episodes, every setting a default")


def throughput_headline(r: Json) -> str:
    fields = throughput_fields(r)
    budgeted = [run for run in r["runs"].values() if run["settings"].get("budget_ms") is not None]
    deadline = "" if not budgeted else (
        f"; under a {num(budgeted[0]['settings']['budget_ms'], 0)} ms budget, p99 "
        f"{num(max(row['ms_p99'] for row in budgeted[0]['rows']))} ms at 1 to "
        f"{budgeted[0]['rows'][-1]['agents']} agents")
    return f"{fields['best']}, at 256 agents per call on one core{deadline}"


def serve_fleet_headline(r: Json) -> str:
    main = r["fleetwm"]
    cores = (r.get("machine") or {}).get("cores")
    where = f" on {cores} cores" if cores else ""
    return (f"{main['agents']} agents at {num(main['hz'], 0)} Hz{where}: {num(main['rate_hz'], 0)} requests/s, "
            f"p99 {num(main['latency_ms']['p99'], 0)} ms, {main['errors']} errors, {pct(main.get('success_rate'))} "
            "success")


def pendulum_headline(r: Json) -> str:
    return (f"mean evaluation return {r['eval_mean_return']} within {r['budget_env_steps']:,} env steps over "
            f"{len(r['runs'])} seeds (the planner on the true model: {r['oracle_eval_mean_return']})")


def gpu_headline(r: Json) -> str:
    return gpu_fields(r)["status"]


def ingest_fields(r: Json) -> dict[str, str]:
    rows = [[num(r["transitions"], 0), r["agents"], num(r["seconds"], 2), num(r["transitions_per_s"], 0),
             r["files"], num(r["logged_rows"], 0), num(r["unique_keys"], 0), r["pending_after"]]]
    headers = ["transitions sent", "agents", "seconds", "transitions/s", "files", "rows in the logs",
               "distinct (eps_id, t)", "pending after"]
    met = r["transitions_per_s"] >= r["target_per_s"] and r["logged_rows"] == r["unique_keys"] == r["transitions"]
    return {"table": table(headers, rows), "target": verdict(met), "target_per_s": num(r["target_per_s"], 0),
            "flush_rows": num(r["flush_rows"], 0), "read_count": num(r["read_count"], 0)}


def ingest_headline(r: Json) -> str:
    return (f"{num(r['transitions_per_s'], 0)} transitions/s from the telemetry stream into Parquet on one core, "
            f"{num(r['logged_rows'], 0)} of {num(r['transitions'], 0)} logged once each")


def fleet_bus_fields(r: Json) -> dict[str, str]:
    settings, transports = r["settings"], r["transports"]
    rows, ladder = [], []
    for name, label in (("redis", "Redis Streams"), ("http", "HTTP")):
        row = transports[name]["target_row"]
        rows.append([label, row["agents"], num(row["rate_hz"], 0), num(row["latency_ms"]["p50"]),
                     num(row["latency_ms"]["p99"]), row["errors"], pct(row.get("success_rate")),
                     row.get("violations", "-")])
        steps = transports[name].get("ladder") or []
        tried = ", ".join(f"{s['agents']}: p99 {num(s['latency_ms']['p99'], 0)} ms"
                          + ("" if s["holds"] else f" ({s['errors']} errors, behind)") for s in steps)
        largest = transports[name].get("largest_fleet")
        held = f"**{largest}** agents" if largest else "**none** of the sizes tried"
        ladder.append(f"- {label}: {held} ({tried or 'not run'})")
    headers = ["transport", "agents", "requests/s", "p50 ms", "p99 ms", "errors", "success", "steps in zones"]
    target = r["target"]
    shares = {name: transports[name].get("cpu_percent_of_a_core") or {} for name in ("redis", "http")}
    roles = list(dict.fromkeys([*shares["redis"], *shares["http"]]))
    cpu = table(["process", "through Redis", "through HTTP"],
                [[role, num(shares["redis"].get(role), 0), num(shares["http"].get(role), 0)] for role in roles]
                + [["total (of 200)", num(sum(shares["redis"].values()), 0), num(sum(shares["http"].values()), 0)]])
    return {"table": table(headers, rows), "target": verdict(r.get("target_met")), "ladder": "\n".join(ladder),
            "cpu": cpu if roles else "not measured in this run",
            "cycle_ms": num(transports["redis"].get("cycle_ms")) or "-",
            "cpu_redis": num(sum(shares["redis"].values()), 0), "cpu_http": num(sum(shares["http"].values()), 0),
            **{f"deadline_{name}": num(transports[name]["target_row"]["fallbacks_by_reason"].get("deadline", 0), 0)
               for name in ("redis", "http")},
            "per_read": num(transports["redis"].get("requests_per_read")) or "-",
            "zones": str(settings["no_fly_zones"]), "hz": num(settings["hz"], 0), "agents": str(settings["agents"]),
            "ladder_p99": num(r["ladder_p99_ms"], 0), "ladder_seconds": num(settings["ladder_seconds"], 0),
            "transitions": num(r.get("transitions_logged"), 0), "target_p99": num(target["p99_ms"], 0),
            "target_success": pct(target["success_rate"], 0)}


def fleet_bus_headline(r: Json) -> str:
    redis, http = (r["transports"][k]["target_row"] for k in ("redis", "http"))
    largest = {k: r["transports"][k].get("largest_fleet") for k in ("redis", "http")}
    return (f"{redis['agents']} agents at {num(r['settings']['hz'], 0)} Hz through Redis: p99 "
            f"{num(redis['latency_ms']['p99'], 0)} ms, {redis['errors']} errors, {pct(redis.get('success_rate'))} "
            f"success (HTTP: p99 {num(http['latency_ms']['p99'], 0)} ms); largest fleet at p99 <= "
            f"{num(r['ladder_p99_ms'], 0)} ms: {largest['redis'] or 'none'} (Redis), {largest['http'] or 'none'} (HTTP)")
