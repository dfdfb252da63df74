#!/usr/bin/env bash
# fleetwm's GPU path, checked in one run on a machine with a CUDA GPU (at most 7.5 minutes and the
# summary: the run stops its steps when its budget is spent). From the repository root:
#
#   bash benchmarks/gpu_check.sh             # on the GPU
#   bash benchmarks/gpu_check.sh --dry-run   # list the steps, run nothing
#   bash benchmarks/gpu_check.sh --cpu       # every step at tiny sizes on the CPU: checks this script
#
# Ray-free part (needs torch, numpy, pyarrow, gymnasium): the core's tests (tests/worldmodel,
# tests/planners) with CUDA visible; `wm train --device cuda`; the Nav2D closed loop (`wm eval
# --device cuda`); `wm bench plan` from 256 to 65,536 agents per call (it plans on the GPU when one
# is visible). Where Ray is installed: an ensemble worker (what the planner deployment holds) and a
# learner, each placed by Ray with num_gpus=1, must plan and train on CUDA.
#
# Each step's output goes to DIR/STEP.out and DIR/STEP.err, and DIR/gpu_check.json sums them up
# (`python -m benchmarks.docs` renders it as docs/gpu.md). DIR is $OUT when set, else
# benchmarks/results/gpu_check/ on the GPU and a temporary folder for --cpu and --dry-run, so a
# rehearsal never stands in for a GPU run. The exit status is 0 only when every step passed.
set -uo pipefail

MODE=gpu DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --cpu) MODE=cpu ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --dry-run, --cpu or --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
if [[ $MODE == gpu && $DRY == 0 ]] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check.sh: torch sees no CUDA GPU here (run with --cpu to rehearse on the CPU)" >&2
  exit 1
fi

if [[ -n ${OUT:-} ]]; then DIR=$OUT
elif [[ $MODE == gpu && $DRY == 0 ]]; then DIR=benchmarks/results/gpu_check
else DIR=$(mktemp -d -t gpu_check.XXXXXX)
fi
WORK=$(mktemp -d -t gpu_check_work.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DIR" && : > "$DIR/steps.tsv"

# Sizes: the GPU's, or tiny ones that only prove the steps run.
if [[ $MODE == gpu ]]; then
  DEVICE=cuda EPISODES=100 TRAIN=() AGENTS=100 EVAL_EPISODES=200 REPEATS=5
  BENCH_AGENTS=256,1024,4096,16384,65536 TESTS=(tests/worldmodel tests/planners)
else
  DEVICE=cpu EPISODES=12 TRAIN=(--epochs 2) AGENTS=4 EVAL_EPISODES=4 REPEATS=1
  BENCH_AGENTS=16,64 TESTS=(tests/worldmodel/test_envs.py)
fi
WM=("$PY" -m cluster)

# The whole run stops within BUDGET_S (7.5 minutes): each step gets at most its own limit and what is left.
BUDGET_S=450
END=$((SECONDS + BUDGET_S))

# run_step NAME LIMIT_S COMMAND...: run it (stdout to DIR/NAME.out, stderr to DIR/NAME.err) and record
# NAME, passed|failed|planned|skipped, seconds and the command in DIR/steps.tsv; fails unless it passed.
run_step() {
  local name=$1 limit=$2 start=$SECONDS status=passed
  shift 2
  echo "== $name: $*" >&2
  if (( DRY )); then
    printf '%s\tplanned\t0\t%s\n' "$name" "$*" >> "$DIR/steps.tsv"
    return 0
  fi
  (( limit > END - SECONDS )) && limit=$((END - SECONDS))
  if (( limit < 10 )); then
    skip_step "$name" "out of time: the run's ${BUDGET_S} s were spent"
    return 1
  fi
  timeout "$limit" "$@" > "$DIR/$name.out" 2> "$DIR/$name.err" || status=failed
  (( SECONDS - start >= limit )) && echo "timed out after $limit s" >> "$DIR/$name.err"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$*" >> "$DIR/steps.tsv"
  [[ $status == passed ]]
}

skip_step() {  # NAME WHY
  echo "== $1: skipped ($2)" >&2
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$DIR/steps.tsv"
}

# Ray-free: train, plan in closed loop, measure; the Ray placement; then the core's tests in the time left.
if run_step collect 60 "${WM[@]}" collect --env Nav2D-v0 --episodes "$EPISODES" --out "$WORK/logs" --seed 0 --json \
   && run_step train 150 "${WM[@]}" train --data "$WORK/logs" --out "$WORK/model" --device "$DEVICE" --quiet \
        "${TRAIN[@]}" --json; then
  run_step eval 90 "${WM[@]}" eval --model "$WORK/model" --device "$DEVICE" --agents "$AGENTS" \
    --episodes "$EVAL_EPISODES" --no-fly-zones 2 --seed 7 --json
  run_step bench_plan 120 "${WM[@]}" bench plan --model "$WORK/model" --agents "$BENCH_AGENTS" \
    --repeats "$REPEATS" --json
  if "$PY" -c 'import ray' 2> /dev/null; then
    cat > "$WORK/ray_gpu.py" <<'PYTHON'
"""An ensemble worker and a learner, placed by Ray: each must see its GPU (num_gpus=1) and use it."""
import json
import os
import sys

import numpy as np
import ray
import torch

from actors.common import gpus_per_worker
from actors.ensemble import start_ensemble_worker
from cluster.runtime import init_ray
from learners.learner import start_learner
from worldmodel.registry import ModelRegistry

model_dir, logs, work, want = sys.argv[1:5]
init_ray(num_cpus=4)
sees_gpu = lambda actor: ray.get(actor.__ray_call__.remote(  # noqa: E731
    lambda self: {"cuda": torch.cuda.is_available(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
worker = start_ensemble_worker(model_dir)
worker_info = ray.get(worker.info.remote())
ray.get(worker.plan.remote(np.zeros((64, worker_info["obs_dim"]), np.float32)))
worker_sees = sees_gpu(worker)
ray.kill(worker)  # one GPU: the learner asks for it next
learner = start_learner(checkpoint_root=f"{work}/checkpoints")
retrained = ray.get(learner.retrain.remote(logs, f"{work}/registry", train_cfg={"epochs": 3}))
trained_on = ModelRegistry(f"{work}/registry").load(retrained["version"]).metrics["device"]
out = {"gpus_per_worker": gpus_per_worker(), "worker_device": worker_info["device"], "worker": worker_sees,
       "learner_device": trained_on, "learner": sees_gpu(learner), "version": retrained["version"]}
print(json.dumps(out))
ray.shutdown()
placed = out["gpus_per_worker"] == (1.0 if want == "cuda" else 0.0)
sys.exit(0 if placed and trained_on.startswith(want) and out["worker_device"].startswith(want) else 1)
PYTHON
    run_step ray_gpu 180 env PYTHONPATH="$PWD" "$PY" "$WORK/ray_gpu.py" "$WORK/model" "$WORK/logs" "$WORK" "$DEVICE"
  else
    skip_step ray_gpu "Ray is not installed"
  fi
else
  for name in eval bench_plan ray_gpu; do skip_step "$name" "no model: collect or train failed"; done
fi

# Slow closed loops are left out: they test planning quality, which the eval step measures.
run_step core_tests 240 "$PY" -m pytest "${TESTS[@]}" -x -m "not slow" -p no:cacheprovider --timeout 120

# Sum the steps up in DIR/gpu_check.json and print a summary; fail when any step did.
"$PY" - "$DIR" "$MODE" "$DRY" "$DEVICE" <<'PYTHON'
import json
import sys
import time
from pathlib import Path

from benchmarks.common import machine

folder, mode, dry, want = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]


def summary(name: str, out: dict) -> str:
    """One line of what a step measured; raises KeyError when its output lacks it."""
    if name == "collect":
        return f"{out['episodes']} episodes, {out['transitions']:,} transitions"
    if name == "train":
        metrics = out["metrics"]
        return f"on {metrics['device']}: {out['seconds']:.1f} s, R^2 min {metrics['dynamics']['r2_min']:.4f}"
    if name == "eval":
        return (f"on {out['device']}: {out['episodes']} episodes, success {out['success_rate']:.1%}, "
                f"{out['violations']} steps in zones, {out['plan_ms_mean']:.1f} ms/step")
    if name == "bench_plan":
        best = max(out["rows"], key=lambda row: row["plans_per_s"])
        return f"on {out['device']}: up to {best['plans_per_s']:,.0f} plans/s ({best['agents']:,} agents a call)"
    if name == "ray_gpu":
        return f"worker on {out['worker_device']}, learner trained on {out['learner_device']}"
    return f"{len(out)} fields"


steps = []
for line in (folder / "steps.tsv").read_text().splitlines():
    name, status, seconds, command = line.split("\t", 3)
    step = {"name": name, "status": status, "seconds": float(seconds), "command": command, "summary": ""}
    out_file = folder / f"{name}.out"
    text = out_file.read_text().strip() if status in ("passed", "failed") and out_file.exists() else ""
    try:
        step["result"] = json.loads(text.splitlines()[-1]) if text else None
    except json.JSONDecodeError:  # pytest's output: its last line is the verdict
        step["result"] = None
    if step["result"] is not None:
        try:
            step["summary"] = summary(name, step["result"])
        except (KeyError, TypeError, ValueError) as err:
            step["summary"] = f"output lacks {err}"
    elif status == "failed" and (folder / f"{name}.err").exists():  # the error's last line says why
        errors = (folder / f"{name}.err").read_text().strip().splitlines()
        step["summary"] = errors[-1][:160] if errors else text[-160:]
    elif text:
        step["summary"] = text.splitlines()[-1][:160]
    elif status == "skipped":
        step["summary"] = command
    on_device = (step["result"] or {}).get("device") or (step["result"] or {}).get("metrics", {}).get("device", want)
    if status == "passed" and name in ("train", "eval", "bench_plan") and not str(on_device).startswith(want):
        step["status"], step["summary"] = "failed", f"ran on {on_device}, not {want}: {step['summary']}"
    steps.append(step)

passed = all(s["status"] == "passed" for s in steps)
report = {"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(),
          "mode": mode, "dry_run": dry, "passed": passed and not dry, "steps": steps}
(folder / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
for s in steps:
    print(f"{s['name']:<11} {s['status']:<8} {s['seconds']:6.0f} s  {s['summary'] or s['command']}")
print(f"{'dry run' if dry else 'passed' if passed else 'FAILED'}: {folder / 'gpu_check.json'}")
sys.exit(0 if dry or passed else 1)
PYTHON
