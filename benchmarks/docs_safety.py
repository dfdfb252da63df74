"""The safety page's fields and headline (``benchmarks/safety.py``'s result)."""

from __future__ import annotations

from typing import Any

from benchmarks.docs_text import num, pct, table, verdict

Json = dict[str, Any]
_HEADERS = ["setting", "episodes", "success", "steps in zones", "episodes with one", "fallbacks / steps",
            "shielded steps"]


def _shielded_counts(rows: list[Json]) -> str:
    """'unshielded -> shielded' steps in zones per model of the model-error rows (off and on alternate)."""
    return " / ".join(f"{off['violations']} -> {on['violations']}" for off, on in zip(rows[::2], rows[1::2]))


def _rows(rows: list[Json], extra: str | None = None, digits: int = 0) -> list[list[Any]]:
    out = []
    for r in rows:
        row = [r["name"], num(r["episodes"], 0), pct(r["success_rate"], 2), num(r["violations"], 0),
               num(r["episodes_with_violation"], 0), f"{num(r['fallbacks'], 0)} / {num(r['steps'], 0)}",
               num(r["shield_interventions"], 0)]
        if extra is not None:
            row.append(num(r.get(extra), digits))
        out.append(row)
    return out


def safety_fields(r: Json) -> dict[str, str]:
    nav, pend, met = r["nav2d"], r["pendulum"], r["met"]
    speed, policy = nav["inference"], nav["policy"]
    prior = nav["prior"]
    ratio = prior[1]["flops_per_action"] / prior[0]["flops_per_action"]
    train = policy.get("train") or {}
    return {
        "fallback_table": table(_HEADERS, _rows(nav["fallback"])),
        "prior_table": table(_HEADERS + ["FLOPs per action"], _rows(prior, "flops_per_action")),
        "error_table": table(_HEADERS + ["model R^2 min"], _rows(nav["model_error"], "model_r2_min", 3)),
        "fallback_target": verdict(met["fallback"]), "prior_target": verdict(met["prior"]),
        "error_target": verdict(met["model_error"]), "pendulum_target": verdict(met["pendulum"]),
        "inference_target": verdict(met["inference"]), "flops_ratio": num(ratio, 2),
        "target": f"{sum(met.values())} of {len(met)} met",
        "pendulum_return": num(pend["mean_return"]), "pendulum_episodes": str(pend["episodes"]),
        "pendulum_steps": f"{pend['env_steps']:,}", "pendulum_mpc": num(pend["mpc_eval_mean_return"]),
        "pendulum_train_return": num(pend["policy_train"]["real"]["mean_return"]),
        "pendulum_imagined": num(pend["policy_train"]["imagined"]["mean_return"]),
        "pendulum_train_seconds": num(pend["policy_train"].get("train_seconds"), 0),
        "pendulum_starts": _starts(pend["policy_train"]),
        "policy_ms": num(speed["policy_ms_median"], 3), "policy_p99_ms": num(speed["policy_ms_p99"], 3),
        "planner_ms": num(speed["planner_ms_median"], 1), "agents": num(speed["agents"], 0),
        "train_minutes": num(policy["train_minutes"], 1), "policy_version": str(train.get("version", "-")),
        "model_r2": num(policy.get("model_r2_min"), 4),
        "real_policy": _evaluation(train.get("real")),
        "measured_note": _measured_note(r),
    }


_SECTIONS = {"nav2d": "the Nav2D fallback and inference sections", "prior": "the prior section",
             "model_error": "the model-error section", "pendulum": "the Pendulum section"}


def _measured_note(r: Json) -> str:
    """Which sections this run measured and where the others come from, when one part was rerun alone
    (``--only``); results from before per-part stamps carry ``nav2d_measured`` instead."""
    measured, rerun = r.get("measured"), r.get("rerun")
    if measured is None and r.get("nav2d_measured"):
        measured, rerun = {"nav2d": r["nav2d_measured"], "model_error": r["nav2d_measured"]}, "pendulum"
    if not rerun:
        return "Every section below is from this one run."
    earlier = "; ".join(f"{_SECTIONS[part]} on {stamp.get('date')} (code at commit "
                        f"`{(stamp.get('git_commit') or 'unknown')[:12]}`)"
                        for part, stamp in measured.items() if part != rerun)
    return (f"{_SECTIONS[rerun][0].upper()}{_SECTIONS[rerun][1:]} was rerun alone on the machine above "
            f"(`python -m benchmarks.safety --only {rerun}`); the others are from earlier runs: {earlier}.")


def _starts(train: Json) -> str:
    """'R of the B starts' of the Pendulum policy's imagined episodes, or what older results lack."""
    logged, resets = train.get("logged_starts"), train.get("reset_starts")
    if logged is None or resets is None:
        return "an unrecorded number of the starts"
    return f"{resets:,} of the {logged + resets:,} starts"


def _evaluation(real: Json | None) -> str:
    if not real:
        return "not recorded"
    return (f"{pct(real.get('success_rate'), 1)} success, {num(real.get('violations'), 0)} steps in zones over "
            f"{num(real.get('episodes'), 0)} episodes")


def safety_headline(r: Json) -> str:
    nav, met = r["nav2d"], r["met"]
    fb, prior, err = nav["fallback"], nav["prior"], nav["model_error"]
    return (f"every call falling back: {pct(fb[0]['success_rate'])} success with the policy (zero action "
            f"{pct(fb[2]['success_rate'])}), {fb[0]['violations']} steps in zones; policy prior at "
            f"{num(prior[1]['flops_per_action'] / prior[0]['flops_per_action'], 2)}x the FLOPs: "
            f"{pct(prior[1]['success_rate'], 2)} over {num(prior[1]['episodes'], 0)} episodes; model error: "
            f"{_shielded_counts(err)} steps in zones with the shield; Pendulum policy "
            f"{num(r['pendulum']['mean_return'])} (200 episodes: {num(r['pendulum']['policy_train']['real']['mean_return'])}); policy for 1,000 agents {num(nav['inference']['policy_ms_median'], 2)} ms"
            f" ({sum(met.values())} of {len(met)} targets met)")
