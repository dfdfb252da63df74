"""`wm info`: a model directory's version, configs and held-out metrics."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common])
    p.add_argument("model_dir")
    p.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.artifact import load_model

    model = load_model(args.model_dir)
    result = {"command": "info", "model_dir": args.model_dir, "version": model.version,
              "data_fingerprint": model.data_fingerprint, "spec": model.spec.to_dict(),
              "model_config": model.model_config.to_dict(), "train_config": model.train_config.to_dict(),
              "metrics": model.metrics}
    result["_summary"] = [f"{args.model_dir}: {model.spec.env_id} world model v{model.version}",
                          f"data {model.data_fingerprint}",
                          f"model {model.model_config.to_dict()}", *summary_lines(model.metrics)]
    return result


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The held-out numbers a person checks first."""
    from worldmodel.metrics import fmt_metric

    dyn, rew, term = metrics["dynamics"], metrics["reward"], metrics.get("termination")
    listed = lambda xs: "[" + ", ".join(fmt_metric(x) for x in xs) + "]"  # noqa: E731
    lines = [f"dynamics test R^2 per dim {listed(dyn['r2'])}, of the change {listed(dyn['r2_delta'])}"]
    if "coverage_2sigma_mean" in dyn:
        lines.append(f"dynamics coverage 1-sigma {dyn['coverage_1sigma_mean']:.3f}, "
                     f"2-sigma {dyn['coverage_2sigma_mean']:.3f}, NLL {dyn['nll']:.3f}")
    lines.append(f"reward test R^2 {fmt_metric(rew['r2'][0])}")
    if term:
        lines.append(f"termination test accuracy {term['accuracy']:.4f}, recall {term['recall']:.3f}")
    return lines
