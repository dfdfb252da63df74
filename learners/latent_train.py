"""Training the latent world model data-parallel with Ray Train, reading the image logs through Ray Data.

``train_latent_data_parallel`` runs ``worldmodel.latent_training.train_latent`` (the same code a single process
runs) on ``workers`` Ray Train workers (``TorchTrainer``: one process each, a ``torch.distributed`` group between
them, gloo on CPUs). The driver reads the logs' episode ids alone (two columns, no frames), holds out the last
ones (as ``wm train`` does in one process) and deals the rest to the workers whole, round-robin; each worker
gets its own episodes' rows through Ray Data (a filter on the episode id, read into the cluster's object store
before the workers start, whose CPUs the reads would otherwise wait for; a worker holds only its share of the
frames, so logs larger than one machine's memory train across several), and ``DistributedDataParallel``
averages the gradients of every worker's batches. Worker 0 sends the trained weights back as a checkpoint.

On one CPU it is the same code with one worker. The latent model trains on CPUs (``use_gpu`` is refused: its
training has no device placement yet).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import torch
from ray.train import Checkpoint, DataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from worldmodel.data import schema as sc
from worldmodel.data.images import ImageTransitions, image_log_dataset, log_episodes, read_image_transitions
from worldmodel.data.reader import sorted_log_table
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import latent_config_from_dict
from worldmodel.latent_training import Episodes, LatentTrainConfig, LatentTrainReport, episodes_from_logs, train_latent

_WEIGHTS, _REPORT = "model.pt", "report.json"


@dataclass(frozen=True)
class DataParallelRun:
    """What ``train_latent_data_parallel`` returns: the trained model (worker 0's copy, calibrated on its
    episodes), its report, the held-out episodes, how many training episodes each worker had, and whether the
    workers' weights agreed at the end."""

    model: LatentWorldModel
    report: LatentTrainReport
    held: Episodes | None
    """None when the logs hold a single episode."""
    episodes_per_worker: list[int]
    workers_agree: bool
    """Whether every worker ended with the same weights (``DistributedDataParallel`` kept them one model)."""


def train_latent_data_parallel(root: str, files: list[str], cfg: LatentConfig, train_cfg: LatentTrainConfig,
                               workers: int, held_share: float, storage: str | None = None) -> DataParallelRun:
    """Train a ``LatentWorldModel(cfg)`` on the image logs ``files`` under ``root`` with ``workers`` Ray Train
    workers (Ray must be up: ``cluster.runtime.init_ray``); the last ``held_share`` of the episodes (at least one
    of two or more) are held out and returned, not trained on. ``storage``: where Ray Train keeps the run
    (default: a temporary directory).

    Raises:
        ValueError: fewer training episodes than workers.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dataset, shape = image_log_dataset(root, files=files)
    ids = log_episodes(dataset)
    held_count = min(max(1, round(held_share * len(ids))), len(ids) - 1) if len(ids) > 1 else 0
    train_ids, held_ids = ids[:len(ids) - held_count], ids[len(ids) - held_count:]
    if len(train_ids) < workers:
        raise ValueError(f"{len(train_ids)} training episodes cannot be dealt to {workers} workers")
    shares = [train_ids[rank::workers].tolist() for rank in range(workers)]
    logs = ray.data.read_parquet(files, schema=dataset.schema, filesystem=dataset.filesystem)
    # Read before the workers start (into the cluster's object store): they take the CPUs Ray Data's reads need.
    datasets = {_name(rank): logs.map_batches(_rows_of, fn_kwargs={"episodes": share}, batch_format="pyarrow",
                                              batch_size=None).materialize()
                for rank, share in enumerate(shares)}
    config = {"cfg": dataclasses.asdict(cfg), "train_cfg": dataclasses.asdict(train_cfg), "shape": list(shape),
              "root": root}
    with tempfile.TemporaryDirectory(prefix="fleetwm-train-") as tmp:
        trainer = TorchTrainer(_worker, train_loop_config=config,
                               scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
                               datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
                               run_config=RunConfig(name="latent", storage_path=storage or tmp))
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            model = LatentWorldModel(cfg)
            model.load_state_dict(torch.load(Path(folder) / _WEIGHTS, weights_only=True))
            written = json.loads((Path(folder) / _REPORT).read_text())
    report, digests = LatentTrainReport(**written["report"]), written["digests"]
    model.eval()
    held = episodes_from_logs(read_image_transitions(root, files=files, episodes=held_ids.tolist())) \
        if held_count else None
    return DataParallelRun(model, report, held, [len(share) for share in shares],
                           max(digests) - min(digests) <= 1e-9 * max(map(abs, digests)))


def _rows_of(batch: pa.Table, episodes: list[str]) -> pa.Table:
    """The rows of ``batch`` in ``episodes`` (one worker's share): a Ray Data batch filter."""
    return batch.filter(pc.is_in(batch.column(sc.EPS_ID), value_set=pa.array(episodes, pa.string())))


def _name(rank: int) -> str:
    return f"episodes_{rank}"


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: read its episodes, train with the others, and (worker 0) report the weights."""
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard(_name(rank))
    table = pa.concat_tables(list(shard.iter_batches(batch_format="pyarrow", batch_size=None)))
    data = ImageTransitions.from_table(sorted_log_table(table, config["root"]), config["shape"])
    torch.manual_seed(config["train_cfg"]["seed"])
    model = LatentWorldModel(latent_config_from_dict(config["cfg"]))
    report = train_latent(model, episodes_from_logs(data), LatentTrainConfig(**config["train_cfg"]))
    digests = [None] * report.workers  # every worker's weights, to check that they stayed one model
    torch.distributed.all_gather_object(digests, _digest(model))
    metrics = {"steps": report.steps, "rows": len(data), "digests": digests}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(model.state_dict(), Path(folder) / _WEIGHTS)
        (Path(folder) / _REPORT).write_text(json.dumps({"report": dataclasses.asdict(report), "digests": digests}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _digest(model: torch.nn.Module) -> float:
    """A number that differs between models whose parameters differ (their sum, weighted by position)."""
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    return float((flat * torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64)).sum())

