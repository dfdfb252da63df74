"""Render docs/: one page per benchmark from benchmarks/results/*.json (`python -m benchmarks.docs`).

Each page is a template, ``docs/templates/NAME.md``: the hand-written part (what is measured, why
the numbers are what they are) with ``$fields`` that this module fills from the benchmark's JSON:
the machine it ran on, the tables, the target and whether it was met. `make bench` runs this after
the benchmarks; alone it re-renders from the JSON files present, and a page whose JSON is absent
says how to produce it. It also writes docs/README.md and the results table of README.md (between
its two marker lines), one headline per page, so the README states what the JSON files hold. The
fields and headlines are computed in ``benchmarks/docs_pages.py``.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.docs_pages import (defaults_fields, defaults_headline, fleet_bus_fields, fleet_bus_headline,
                                   gpu_fields, gpu_headline, ingest_fields, ingest_headline, model_fit_fields,
                                   model_fit_headline, nav2d_fields, nav2d_headline, pendulum_fields,
                                   pendulum_headline, serve_fleet_fields, serve_fleet_headline, throughput_fields,
                                   throughput_headline)
from benchmarks.docs_export import export_fields, export_headline
from benchmarks.docs_safety import safety_fields, safety_headline
from benchmarks.docs_text import machine_facts, table
from benchmarks.docs_uncertainty import uncertainty_fields, uncertainty_headline
from benchmarks.docs_perception import perception_fields, perception_headline
from benchmarks.docs_warehouse import warehouse_fields, warehouse_headline

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
TEMPLATES = DOCS / "templates"

Json = dict[str, Any]
README_BEGIN = "<!-- results: written by `python -m benchmarks.docs` from benchmarks/results/ -->"
README_END = "<!-- end of results -->"
INDEX_HEAD = ("# Benchmarks\n\nEach page is rendered from its benchmark's JSON in `benchmarks/results/` by "
              "`python -m benchmarks.docs` (`make bench` runs every benchmark, then this). Edit the hand-written "
              "text in `docs/templates/`, not the pages.\n\n")


@dataclass(frozen=True)
class Page:
    """One docs page and the result it is rendered from."""

    name: str
    """docs/NAME.md, from docs/templates/NAME.md."""
    title: str
    """The page's heading, also its line in docs/README.md."""
    source: str
    """The result file, relative to benchmarks/results/."""
    command: str
    """What writes ``source``."""
    fields: Callable[[Json], dict[str, str]]
    """The template's fields from the result (``machine`` is added for every page)."""
    headline: Callable[[Json], str]
    """The result in one line, for the results tables of README.md and docs/README.md."""


PAGES = (
    Page("model_fit", "One-step model fit", "model_fit.json", "python -m benchmarks.model_fit", model_fit_fields,
         model_fit_headline),
    Page("nav2d_closed_loop", "Nav2D closed loop", "nav2d_closed_loop.json", "python -m benchmarks.nav2d_closed_loop",
         nav2d_fields, nav2d_headline),
    Page("defaults_nav2d", "Nav2D with default settings only", "defaults_nav2d.json",
         "python -m benchmarks.defaults_nav2d", defaults_fields, defaults_headline),
    Page("plan_throughput", "Planning throughput and deadline", "plan_throughput.json",
         "python -m benchmarks.plan_throughput", throughput_fields, throughput_headline),
    Page("serve_fleet", "Fleet endpoint over HTTP", "serve_fleet.json", "python -m benchmarks.serve_fleet",
         serve_fleet_fields, serve_fleet_headline),
    Page("pendulum_mbrl", "Model-based RL on Pendulum-v1", "pendulum_mbrl.json", "python -m benchmarks.pendulum_mbrl",
         pendulum_fields, pendulum_headline),
    Page("ingest", "Telemetry ingest from Redis Streams", "ingest.json", "python -m benchmarks.ingest",
         ingest_fields, ingest_headline),
    Page("fleet_bus", "Fleet bus: Redis Streams and HTTP side by side", "fleet_bus.json",
         "python -m benchmarks.fleet_bus", fleet_bus_fields, fleet_bus_headline),
    Page("safety", "Safety: policy fallback, prior and shield", "safety.json", "python -m benchmarks.safety",
         safety_fields, safety_headline),
    Page("warehouse", "Warehouse: coordinated planning of a fleet that interacts", "warehouse.json",
         "python -m benchmarks.warehouse", warehouse_fields, warehouse_headline),
    Page("export", "Edge export: ONNX and TorchScript, and a planner without torch", "export.json",
         "python -m benchmarks.export", export_fields, export_headline),
    Page("uncertainty", "Uncertainty: ensemble against MC dropout", "uncertainty.json",
         "python -m benchmarks.uncertainty", uncertainty_fields, uncertainty_headline),
    Page("perception", "Perception: camera agents through a latent world model", "perception.json",
         "python -m benchmarks.perception", perception_fields, perception_headline),
    Page("gpu", "GPU check", "gpu_check/gpu_check.json", "bash benchmarks/gpu_check.sh", gpu_fields, gpu_headline),
)


def _load(page: Page, results: Path) -> Json | None:
    """The page's result, or None when it has not been run."""
    source = results / page.source
    if not source.exists():
        return None
    try:
        return json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not a JSON file ({err})") from None


def render(page: Page, results: Path = RESULTS, templates: Path = TEMPLATES) -> str:
    """The page's markdown: its template filled from its result, or a 'not yet run' page.

    Raises:
        ValueError: naming the result file that is not JSON, or the template field nothing fills.
    """
    result = _load(page, results)
    if result is None:
        return (f"# {page.title}\n\nNot yet run: `{page.command}` writes `benchmarks/results/{page.source}`, "
                "and `python -m benchmarks.docs` renders this page from it.\n")
    fields = {"title": page.title, "source": f"benchmarks/results/{page.source}",
              "machine": machine_facts(result)} | page.fields(result)
    try:
        return string.Template((templates / f"{page.name}.md").read_text()).substitute(fields)
    except KeyError as err:
        raise ValueError(f"docs/templates/{page.name}.md: no value for field ${err.args[0]}") from None


def results_table(pages: tuple[Page, ...] = PAGES, results: Path = RESULTS, link: str = "docs/") -> str:
    """One line per page: its headline, whether its targets were met, the date; ``link`` prefixes page links."""
    rows = []
    for page in pages:
        result = _load(page, results)
        if result is None:
            rows.append([f"[{page.title}]({link}{page.name}.md)", "not yet run", "-", "-"])
            continue
        fields = page.fields(result)
        targets = " / ".join(fields[k] for k in ("target", "deadline_target") if k in fields) or "-"
        rows.append([f"[{page.title}]({link}{page.name}.md)", page.headline(result), targets,
                     result.get("date", "not recorded")])
    return table(["benchmark", "result", "target", "run on"], rows)


def update_readme(readme: Path, generated: str) -> str:
    """``readme``'s text with the part between README_BEGIN and README_END replaced by ``generated``.

    Raises:
        ValueError: naming the file when it lacks the two marker lines.
    """
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme}: no results block ('{README_BEGIN}' ... '{README_END}') to fill")
    head, rest = text.split(README_BEGIN, 1)
    return f"{head}{README_BEGIN}\n{generated}\n{README_END}{rest.split(README_END, 1)[1]}"


def write_all(out: Path = DOCS, results: Path = RESULTS, readme: Path | None = ROOT / "README.md") -> list[Path]:
    """Render every page, docs/README.md and README.md's results table; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for page in PAGES:
        path = out / f"{page.name}.md"
        path.write_text(render(page, results))
        written.append(path)
    (out / "README.md").write_text(INDEX_HEAD + results_table(PAGES, results, link="") + "\n")
    written.append(out / "README.md")
    if readme is not None:
        readme.write_text(update_readme(readme, results_table(PAGES, results)))
        written.append(readme)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DOCS, help="where to write the pages (default: docs/)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results' folder")
    parser.add_argument("--no-readme", dest="readme", action="store_false",
                        help="leave README.md's results table as it is")
    args = parser.parse_args(argv)
    try:
        written = write_all(args.out, args.results, ROOT / "README.md" if args.readme else None)
    except (OSError, ValueError) as err:
        print(f"benchmarks.docs: error: {err}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
