"""Training the latent world model data-parallel with Ray Train, reading the image logs through Ray Data.

``train_latent_data_parallel`` runs ``worldmodel.latent_training.train_latent`` (the same code a single process
runs) on ``workers`` Ray Train workers (``TorchTrainer``: one process each, a ``torch.distributed`` group between
them, gloo on CPUs). The driver reads the logs' episode ids alone (two columns, no frames), holds out the last
ones (as ``wm train`` does in one process) and deals the rest to the workers whole, round-robin; each worker
gets its own episodes' rows through Ray Data (each share filtered by episode id out of a read of every file, so
the logs are read once per worker; the reads run before the workers start, whose CPUs they would otherwise wait
for, into the object store, which spans the cluster's nodes; a worker then holds only its share of the frames in
memory), and ``DistributedDataParallel`` averages the gradients of every worker's batches. Worker 0 sends the
trained weights back as a checkpoint.

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
from worldmodel.latent_training import (Episodes, LatentTrainConfig, LatentTrainReport, episodes_from_logs,
                                        held_out_count, train_latent)

_WEIGHTS, _REPORT = "model.pt", "report.json"


@dataclass(frozen=True)
class DataParallelRun:
    """What ``train_latent_data_parallel`` returns: the trained model (worker 0's copy, calibrated on every
    worker's episodes), its report, the held-out episodes, the episodes each worker read, and whether the workers'
    models agreed at the end."""

    model: LatentWorldModel
    report: LatentTrainReport
    held: Episodes | None
    """None when the logs hold a single episode."""
    worker_episodes: list[list[str]]
    """The episode ids each worker read (sorted), worker 0's first."""
    workers_agree: bool
    """Whether every worker ended with the same weights and buffers (``DistributedDataParallel`` kept them one
    model; ``calibrate`` combined their statistics)."""
    train_episodes: list[str]
    """The episode ids dealt to the workers (the held-out ones not among them)."""

    @property
    def episodes_per_worker(self) -> list[int]:
        return [len(ids) for ids in self.worker_episodes]


def train_latent_data_parallel(root: str, files: list[str], cfg: LatentConfig, train_cfg: LatentTrainConfig,
                               workers: int, held_share: float, storage: str | None = None) -> DataParallelRun:
    """Train a ``LatentWorldModel(cfg)`` on the image logs ``files`` under ``root`` with ``workers`` Ray Train
    workers (Ray must be up: ``cluster.runtime.init_ray``); the last ``held_share`` of the episodes (at least one
    of two or more) are held out and returned, not trained on. ``storage``: where Ray Train keeps the run
    (default: a temporary directory here: a multi-node cluster needs storage every node reaches).

    Raises:
        ValueError: fewer training episodes than workers, or more workers than the cluster's CPUs.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if workers > cpus:  # each worker takes a CPU: more would wait for one forever
        raise ValueError(f"{workers} workers need a CPU each; the Ray cluster has {cpus:g}")
    dataset, shape = image_log_dataset(root, files=files)
    ids = log_episodes(dataset)
    held_count = held_out_count(len(ids), held_share)
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
    report, digests = LatentTrainReport(**written["report"]), [w["digest"] for w in written["workers"]]
    model.eval()
    held = episodes_from_logs(read_image_transitions(root, files=files, episodes=held_ids.tolist())) \
        if held_count else None
    return DataParallelRun(model, report, held, [w["episodes"] for w in written["workers"]],
                           max(digests) - min(digests) <= 1e-9 * max(map(abs, digests)), train_ids.tolist())


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
    # every worker's weights (to check that they stayed one model) and the episodes it read
    mine = {"digest": _digest(model), "episodes": sorted(set(data.rows.eps_id.tolist()))}
    workers: list[Any] = [None] * report.workers
    torch.distributed.all_gather_object(workers, mine)
    metrics = {"steps": report.steps, "rows": len(data)}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(model.state_dict(), Path(folder) / _WEIGHTS)
        (Path(folder) / _REPORT).write_text(json.dumps({"report": dataclasses.asdict(report), "workers": workers}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def _digest(model: torch.nn.Module) -> float:
    """A number that differs between models whose weights or buffers differ (their sum, weighted by position)."""
    flat = torch.cat([t.detach().flatten().double() for t in model.state_dict().values()])
    return float((flat * torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64)).sum())
