"""The README and docs/ say what runs: the README's example runs, every page renders from the committed
results, every link resolves, the results table is the one the JSON files give, and the GPU check's
commands parse with today's `wm`."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import docs
from benchmarks.docs_text import machine_facts
from cluster.cli import COMMANDS, build_parser
from worldmodel.artifact import save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE_HEADING = "## Plan for a fleet in Python"
TINY_MODEL = ModelConfig(ensemble_size=2, hidden=16, layers=2, reward_hidden=16, reward_layers=2)
TINY_TRAIN = TrainConfig(epochs=2, batch_size=256, patience=2)


def readme_example() -> str:
    """The first python block after the example's heading."""
    section = README.split(EXAMPLE_HEADING, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_opens_with_the_two_commands_and_stays_short() -> None:
    assert "make demo" in README.splitlines()[3] and "make test" in README.splitlines()[4]
    assert len(README.splitlines()) <= 180


def test_readme_example_plans_for_256_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    model = train_world_model(collect("Nav2D-v0", episodes=4, seed=0), spec, TINY_MODEL, TINY_TRAIN)
    save_model(model, tmp_path / "runs" / "nav2d-model")
    monkeypatch.chdir(tmp_path)  # the example loads "runs/nav2d-model", as after the README's two commands
    scope: dict = {}
    exec(compile(code, "README.md example", "exec"), scope)
    result = scope["result"]
    assert tuple(result.actions.shape) == (256, spec.act_dim)
    assert tuple(result.plan.shape[::2]) == (256, spec.act_dim)


def test_every_page_renders_from_the_committed_results(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.docs", "--out", str(tmp_path), "--no-readme"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for page in docs.PAGES:
        text = (tmp_path / f"{page.name}.md").read_text()
        assert text.startswith(f"# {page.title}\n")
        assert "$" not in text.replace("$FLEETWM", ""), f"{page.name}: a template field left unfilled"
        if (docs.RESULTS / page.source).exists():
            assert "## " in text and "Machine" in text, f"{page.name}: rendered as not yet run"


def test_the_committed_pages_and_readme_table_match_the_results(tmp_path: Path) -> None:
    """`python -m benchmarks.docs` after a benchmark run updates them; run it when this fails."""
    assert docs.update_readme(ROOT / "README.md", docs.results_table()) == README
    docs.write_all(tmp_path, readme=None)
    for page in (*docs.PAGES, None):
        name = "README.md" if page is None else f"{page.name}.md"
        assert (tmp_path / name).read_text() == (docs.DOCS / name).read_text(), f"docs/{name} is stale"


def test_every_linked_docs_page_exists() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert {"docs/README.md", "docs/gpu.md"} <= set(links)
    for link in links:
        assert (ROOT / link).exists(), f"README links {link}, which does not exist"
    for link in re.findall(r"\]\(([^)#/]+\.md)\)", (docs.DOCS / "README.md").read_text()):
        assert (docs.DOCS / link).exists(), f"docs/README.md links {link}, which does not exist"


def test_readme_lists_every_command() -> None:
    commands = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name in COMMANDS:
        assert f"`wm {name}" in commands, f"wm {name} is missing from the README's commands"


def test_a_missing_result_renders_as_not_yet_run(tmp_path: Path) -> None:
    page = next(p for p in docs.PAGES if p.name == "gpu")
    assert "Not yet run" in docs.render(page, results=tmp_path)
    assert "| [GPU check](docs/gpu.md) | not yet run |" in docs.results_table(docs.PAGES, tmp_path)


def test_a_result_that_is_not_json_is_named(tmp_path: Path) -> None:
    page = docs.PAGES[0]
    (tmp_path / page.source).write_text("{")
    with pytest.raises(ValueError, match=page.source):
        docs.render(page, results=tmp_path)


def test_machine_facts_say_what_an_older_result_did_not_record() -> None:
    old = machine_facts({"date": "2026-11-25", "machine": {"torch": "2.13.0+cpu", "processor": "x86_64", "cpus": 2}})
    assert "model not recorded" in old and "cores not recorded" in old and "commit not recorded" in old
    from benchmarks.common import machine

    new = machine()
    assert {"cpu_model", "cores", "ray", "git_commit", "torch"} <= set(new)
    assert "not recorded" not in machine_facts({"date": "2026-12-06", "machine": new}).replace("Ray not", "")


def test_gpu_check_dry_run_lists_steps_whose_commands_parse(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and not report["passed"]
    names = [s["name"] for s in report["steps"]]
    assert names == ["collect", "train", "eval", "bench_plan", "ray_gpu", "core_tests"]
    for step in report["steps"]:
        argv = shlex.split(step["command"])
        if "cluster" in argv:  # a `wm` command: its flags and values must parse today
            wm_args = argv[argv.index("cluster") + 1:]
            build_parser(wm_args).parse_args(wm_args)
    commands = {s["name"]: s["command"] for s in report["steps"]}
    assert "--device cuda" in commands["train"] and "--device cuda" in commands["eval"]
    assert "65536" in commands["bench_plan"]
    page = next(p for p in docs.PAGES if p.name == "gpu")
    (tmp_path / "gpu_check").mkdir()
    (tmp_path / "gpu_check" / "gpu_check.json").write_text(json.dumps(report))
    assert "a dry run" in docs.render(page, results=tmp_path)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of ``parser`` and of its subcommands' parsers."""
    found: set[str] = set()
    for action in parser._actions:
        found |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def test_every_flag_the_readme_shows_exists() -> None:
    for name, rest in re.findall(r"\bwm (\w+)([^`\n|]*)", README):
        if name not in COMMANDS:
            continue
        options = _option_strings(build_parser([name]))
        for flag in re.findall(r"(--[a-z][a-z-]*)", rest):
            assert flag in options, f"README shows `wm {name} {flag}`, which wm {name} does not take"


def test_the_defaults_check_runs_commands_with_no_settings() -> None:
    from benchmarks.defaults_nav2d import EVAL_SEED, commands

    for argv in commands("logs", "model"):
        build_parser(argv).parse_args(argv)
        flags = {a for a in argv if a.startswith("--")}
        assert flags <= {"--env", "--out", "--data", "--model", "--no-fly-zones", "--episodes", "--seed"}
    assert str(EVAL_SEED) in commands("logs", "model")[-1]


def test_readme_says_whether_the_gpu_path_has_run() -> None:
    gpu = docs.RESULTS / "gpu_check" / "gpu_check.json"
    ran = gpu.exists() and json.loads(gpu.read_text()).get("mode") == "gpu" and json.loads(gpu.read_text())["passed"]
    assert ("has not yet run on a GPU" in README) != ran, "update the README's GPU sentence to the GPU check's result"


def test_every_headline_states_measured_numbers() -> None:
    # A headline reading a field the result does not have would print "None" and still be marked met.
    for page in docs.PAGES:
        result = docs._load(page, docs.RESULTS)
        if result is not None:
            line = page.headline(result)
            assert "None" not in line and "over 0 episodes" not in line, (page.name, line)
