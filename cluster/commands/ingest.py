"""`wm ingest`: run the telemetry logger alone, from a Redis Stream into the Arrow logs, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import time
from typing import Any, Iterator


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    # Unset options take IngestConfig's defaults (actors/ingest.py), read when the command runs: importing it
    # here would load redis and pyarrow for `wm --help`.
    p = sub.add_parser("ingest", parents=[common])
    p.add_argument("--redis", required=True, metavar="URL", help="the fleet bus, e.g. redis://host:6379/0")
    p.add_argument("--log-dir", required=True, help="log directory or URI the transitions are appended to")
    p.add_argument("--consumer", default=f"ingest-{socket.gethostname()}",
                   help="this logger's name in the group; keep it across restarts (default: %(default)s)")
    p.add_argument("--prefix", help="the bus's name prefix (the app's bus_prefix): names its telemetry stream, "
                                    "logger group and dead letters (default: the app's default)")
    p.add_argument("--stream", help="telemetry stream (default: PREFIX:telemetry)")
    p.add_argument("--group", help="consumer group (default: PREFIX-ingest)")
    p.add_argument("--flush-rows", type=int, help="write a file once this many rows are held (default: IngestConfig's)")
    p.add_argument("--flush-s", type=float, help="seconds between files at most (default: IngestConfig's)")
    p.add_argument("--claim-idle-s", type=float,
                   help="claim a dead logger's entries pending this long (default: IngestConfig's)")
    p.add_argument("--env-id", default="", help="environment id written in each file's metadata")
    p.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from actors.ingest import IngestConsumer
    from actors.redis_server import shown_url
    from worldmodel.data import check_writable

    config = ingest_config(args)
    check_writable(args.log_dir)
    shown = shown_url(args.redis)
    consumer = IngestConsumer(args.redis, args.log_dir, args.consumer, config, env_id=args.env_id)
    try:
        consumer.start()
    except redis.RedisError as e:
        raise ValueError(f"cannot start ingest from Redis at {shown}: {' '.join(str(e).split())}") from None
    print(f"wm ingest: {args.consumer} logging {config.stream} (group {config.group}) from {shown} "
          f"into {args.log_dir}; SIGTERM or Ctrl-C stops it", file=sys.stderr, flush=True)
    start = time.monotonic()
    with _stop_on_signals(consumer.stop):
        stats = consumer.run(progress=_progress)
    result = {"command": "ingest", "consumer": args.consumer, "stream": config.stream, "group": config.group,
              "log_dir": args.log_dir, **stats.to_dict(), "seconds": round(time.monotonic() - start, 3)}
    result["_summary"] = [f"ingested {stats.written} transitions into {stats.files} file(s) under {args.log_dir}",
                          f"{stats.duplicates} duplicate(s) skipped, {stats.dead_letters} dead-lettered, "
                          f"{stats.buffered} left buffered"]
    return result


def ingest_config(args: argparse.Namespace) -> Any:
    """The ``IngestConfig`` the options give: the bus's names under ``--prefix`` (``actors.streams.BusNames``),
    ``--stream`` and ``--group`` over them, and ``IngestConfig``'s defaults for what is not given."""
    from actors.ingest import IngestConfig
    from actors.streams import BUS, BusNames

    names = BusNames(args.prefix) if args.prefix else BUS
    given = {"stream": args.stream or names.telemetry, "group": args.group or names.ingest_group,
             "dead_letters": names.telemetry_dead_letters, "flush_rows": args.flush_rows, "flush_s": args.flush_s,
             "claim_idle_s": args.claim_idle_s}
    return IngestConfig(**{name: value for name, value in given.items() if value is not None})


def _progress(stats: Any) -> None:
    print(f"wm ingest: read {stats.read}, written {stats.written} in {stats.files} file(s), "
          f"{stats.dead_letters} dead-lettered, {stats.errors} error(s)"
          + (f", last: {stats.last_error}" if stats.last_error else ""), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` (the consumer then flushes and acknowledges what it holds)."""
    previous = {sig: signal.signal(sig, lambda *_: stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
