"""`wm serve` refuses what cannot work before Ray starts (a port in use, an unwritable log or state
location, a Redis it cannot reach) in one line, keeps agent state by default, and owns its fleet bus's
redis-server unless told otherwise; no Ray, no Serve in this module."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import ray

from actors.ports import RAY_WORKER_PORTS, ephemeral_ports, free_ports
from actors.redis_server import INSTALL_HINT, check_reachable
from actors.telemetry_config import FlushResult, LoggerStats
from cluster.cli import main
from cluster.runtime import check_port_free
from cluster.commands.serve import (_stop, add_serve_options, app_kwargs, default_redis_dir, default_state_dir,
                                    fleet_bus, redis_choice, state_dir)
from serving.deploy import LOCAL_DRAIN, LOCAL_PORTS, serve_env

from .helpers import run_json


@pytest.fixture
def listener() -> Iterator[int]:
    """A port this test process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _serve(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `wm serve ARGS --json` in process; returns (exit code, stderr), checking that Ray never started."""
    start = time.monotonic()
    code, out, err = run_json(capsys, "serve", *args)
    assert code == 1 and out["ok"] is False
    assert not ray.is_initialized(), "the check must come before Ray starts"
    assert time.monotonic() - start < 30
    assert len(err.strip().splitlines()) == 1, err
    return code, err.strip()


def test_a_port_in_use_is_one_line_naming_its_holder(capsys: pytest.CaptureFixture[str], listener: int,
                                                     tmp_path: Path) -> None:
    _, err = _serve(capsys, "--model", str(tmp_path), "--port", str(listener), "--no-state-dir")
    assert err.startswith(f"wm: error: port {listener} on 127.0.0.1 is in use by ")
    assert f"(pid {os.getpid()})" in err


def test_an_haproxy_left_behind_is_named_with_how_to_stop_it(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    # A process named haproxy whose parent is gone: what a killed server's Ray Serve leaves holding its port.
    fake = tmp_path / "haproxy"
    fake.symlink_to(os.path.realpath(sys.executable))
    port_file = tmp_path / "port"
    code = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            f"open({str(port_file)!r}, 'w').write(str(s.getsockname()[1])); time.sleep(120)")
    # The shell starts it in the background and exits, so it is reparented as an orphan would be.
    subprocess.run(["sh", "-c", f'"{fake}" -c "{code}" > /dev/null 2>&1 & echo $! > "{tmp_path}/pid"'], check=True)
    pid = int((tmp_path / "pid").read_text())
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        _, err = _serve(capsys, "--model", str(tmp_path), "--port", str(port), "--no-state-dir")
        assert err == (f"wm: error: port {port} on 127.0.0.1 is in use by an HAProxy (pid {pid}) left behind by a "
                       f"Ray Serve that is no longer running; stop it: kill {pid}")
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("option", ["--log-dir", "--state-dir"])
def test_an_unwritable_location_is_one_line_before_ray_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              option: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    others = ["--no-state-dir"] if option == "--log-dir" else []
    _, err = _serve(capsys, "--model", str(tmp_path), "--port", "0", option, str(blocker / "logs"), *others)
    assert err.startswith("wm: error: ") and str(blocker) in err


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    return parser.parse_args(argv)


def test_agent_state_is_snapshotted_by_default_per_host_and_port(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert state_dir(_args("--port", "8100")) == str(tmp_path / "fleetwm" / "agent-state" / "127.0.0.1-8100")
    assert default_state_dir("0.0.0.0", 8101) == tmp_path / "fleetwm" / "agent-state" / "0.0.0.0-8101"
    assert state_dir(_args("--state-dir", "s3://bucket/state")) == "s3://bucket/state"
    assert state_dir(_args("--no-state-dir")) is None
    on_a_cluster = _args("--port", "8100")
    on_a_cluster.address = "ray://head:10001"
    with pytest.raises(ValueError, match="with --address, pass --state-dir URI"):
        state_dir(on_a_cluster)
    with pytest.raises(SystemExit):
        _args("--state-dir", "x", "--no-state-dir")


def test_help_states_what_each_state_setting_can_lose(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "a shard crash loses at most the last second of agent updates" in help_text
    assert "--no-state-dir no snapshots: a shard crash or a restart loses every agent's state" in help_text


def test_a_local_endpoint_gets_its_own_serve_ports_and_a_short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*LOCAL_DRAIN, *LOCAL_PORTS):
        monkeypatch.delenv(name, raising=False)
    env = serve_env("haproxy", [18404, 19101, 18500, 19500])
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "19101"
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "18500" and env["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"] == "19500"
    assert env.items() >= LOCAL_DRAIN.items()
    cluster = serve_env("haproxy")  # a cluster node keeps Serve's fixed ports and drain
    assert not {*LOCAL_PORTS, *LOCAL_DRAIN} & set(cluster)
    with pytest.raises(ValueError, match="local_ports must give 4 ports"):
        serve_env("haproxy", [18404])


def test_free_ports_are_chosen_where_no_process_is_handed_one() -> None:
    """Ports the kernel hands out (bind to 0, outgoing connections, Ray's own picks above them) can be taken
    by another process before the server they were chosen for binds; free_ports chooses below them."""
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert all(RAY_WORKER_PORTS.stop <= port < ephemeral_ports().start for port in ports)
    for port in ports:
        check_port_free("127.0.0.1", port)


def test_planner_settings_without_planner_are_checked_against_the_served_default() -> None:
    from planners.service import ServiceConfig

    service = app_kwargs(_args("--planner-opt", "elites=4"), None)["service"]
    assert service["planner"] == ServiceConfig.planner and service["settings"] == {"elites": 4}
    with pytest.raises(ValueError, match="bogus"):
        app_kwargs(_args("--planner-opt", "bogus=1"), None)


def test_the_ab_candidate_planner_is_deployed_only_with_a_registry() -> None:
    assert app_kwargs(_args(), None)["ab"] is False
    assert app_kwargs(_args("--registry", "/tmp/registry", "--ab"), None)["ab"] is True
    with pytest.raises(ValueError, match="--ab needs --registry"):
        app_kwargs(_args("--ab"), None)


def test_stopping_flushes_the_telemetry_logger_the_app_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.deploy as deploy_module
    from actors.state import StateConfig

    asked: list[tuple] = []
    monkeypatch.setattr(deploy_module, "shutdown_app", lambda *args, **kw: asked.append((*args, kw)) or {
        "telemetry": None, "not_written": None, "unwritten_pending_in": None, "problems": []})
    state = StateConfig(name="my-state")
    _stop({"url": "http://x"}, {"state": state, "telemetry_name": "my-telemetry"})
    _stop({"url": "http://x"}, {"state": state})
    # With the bus, the logger reads the app's telemetry stream: what it leaves unwritten waits there.
    _stop({"url": "http://x"}, {"state": state, "redis_url": "redis://h:1/0", "log_uri": "/logs"})
    _stop({"url": "http://x"}, {"state": state, "redis_url": "redis://h:1/0", "log_uri": "/logs", "bus_prefix": "b"})
    assert asked == [(state, "my-telemetry", {"telemetry_stream": None}), (state, None, {"telemetry_stream": None}),
                     (state, None, {"telemetry_stream": "fleetwm:telemetry"}),
                     (state, None, {"telemetry_stream": "b:telemetry"})]


def test_shutdown_looks_up_the_telemetry_actor_by_the_apps_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.deploy as deploy_module
    from actors.state import StateConfig
    from serving.config import AppConfig

    looked_up: list[str] = []
    monkeypatch.setattr(deploy_module.serve, "delete", lambda name: None)
    monkeypatch.setattr(deploy_module, "find_actor", lambda name: looked_up.append(name))
    deploy_module.shutdown_app(StateConfig(name="s"), "my-telemetry", timeout_s=2)
    deploy_module.shutdown_app(StateConfig(name="s"), timeout_s=2)
    assert looked_up == ["my-telemetry", "s-0", AppConfig.telemetry_name, "s-0"]


class _Logger:
    """A telemetry logger's handle as ``shutdown_app`` uses it, without Ray: 5 rows it could not write."""

    class _Call:
        def __init__(self, value: object) -> None:
            self.remote = lambda *args, **kw: value

    flush = _Call(FlushResult(written=0, unwritten=5, error="disk full"))
    stats = _Call(LoggerStats(written=10, buffered=5, duplicates=0, files=1, dropped=0, last_error="disk full",
                              failing_since=None, retry_in_s=None, run_id="r"))


@pytest.mark.parametrize("stream", [None, "fleetwm:telemetry"])
def test_shutdown_says_whether_unwritten_transitions_wait_in_redis(monkeypatch: pytest.MonkeyPatch,
                                                                  stream: str | None) -> None:
    import serving.deploy as deploy_module
    from actors.state import StateConfig

    monkeypatch.setattr(deploy_module.serve, "delete", lambda name: None)
    monkeypatch.setattr(deploy_module, "find_actor", lambda name: _Logger() if name == "t" else None)
    monkeypatch.setattr(deploy_module.ray, "get", lambda value, timeout=None: value)
    monkeypatch.setattr(deploy_module.ray, "kill", lambda actor, no_restart=True: None)
    result = deploy_module.shutdown_app(StateConfig(name="s"), "t", timeout_s=2, telemetry_stream=stream)
    assert result["not_written"] == 5 and result["unwritten_pending_in"] == stream
    (problem,) = result["problems"]
    assert problem.startswith("telemetry: 5 transitions not written") and problem.endswith("disk full")
    assert ("still pending in Redis stream fleetwm:telemetry: not lost" in problem) == (stream is not None)


def test_the_redis_option_is_checked_before_anything_starts(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    _, err = _serve(capsys, "--model", str(tmp_path), "--port", "0", "--no-state-dir",
                    "--redis", "redis://:s3cret@127.0.0.1:1/0")
    assert err.startswith("wm: error: no Redis answers at redis://:***@127.0.0.1:1/0") and "s3cret" not in err
    _, err = _serve(capsys, "--model", str(tmp_path), "--port", "0", "--no-state-dir", "--redis", "nowhere")
    assert err == "wm: error: --redis takes local, none or a redis://HOST:PORT/DB URL, got 'nowhere'"
    _, err = _serve(capsys, "--model", str(tmp_path), "--no-state-dir", "--address", "ray://head:10001")
    assert err.startswith("wm: error: --redis local starts a redis-server on this machine") and "6380" in err
    _, err = _serve(capsys, "--model", str(tmp_path), "--port", "0", "--no-state-dir", "--redis", "none",
                    "--consumer-replicas", "2")
    assert err.startswith("wm: error: --consumer-replicas 2: stream consumers need the bus")
    assert redis_choice("redis://head:6380/0", "ray://head:10001") == "redis://head:6380/0"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason=INSTALL_HINT)
def test_the_default_bus_is_a_redis_server_owned_per_host_and_port(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = _args("--port", "8100")
    assert args.redis == "local" and app_kwargs(args, None)["consumer_replicas"] is None
    data_dir = default_redis_dir(args.host, args.port)
    assert data_dir == tmp_path / "fleetwm" / "redis" / "127.0.0.1-8100"
    with pytest.raises(RuntimeError, match="the app failed"), fleet_bus("local", data_dir) as bus:
        assert bus.owned and bus.shown() == {"url": bus.url, "owned": True, "data_dir": str(data_dir)}
        check_reachable(bus.url)
        raise RuntimeError("the app failed")  # however the block ends, the server stops
    with pytest.raises(ValueError, match="no Redis answers"):
        check_reachable(bus.url, timeout_s=1.0)
    assert list((data_dir / "appendonlydir").glob("*.aof"))
    with fleet_bus("none", data_dir) as none:
        assert none is None


def test_the_demo_reports_a_logger_that_wrote_nothing_instead_of_failing(tmp_path: Path) -> None:
    from cluster.commands.demo import _report

    (tmp_path / "served-logs").mkdir()  # the logger's directory, with no file in it
    drive = {"latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}, "requests": 60, "rate_hz": 20.0, "errors": 0,
             "episodes": 2, "success_rate": 1.0, "violations": 0, "fallbacks": 0, "fallbacks_by_reason": {}}
    report = {"drive": drive, "fleet_logs": {"transitions": 100, "episodes": 4}, "served_version": "1.0.0",
              "learn": {}, "telemetry_not_written": 59, "unwritten_pending_in": "fleetwm:telemetry",
              "redis": {"url": "redis://127.0.0.1:1/0", "owned": True, "data_dir": "d"},
              "shutdown_problems": ["telemetry: 59 transitions not written (still pending ...): disk full"]}
    args = argparse.Namespace(agents=2)
    result = _report(args, tmp_path, report, seconds=1.0)
    assert result["served_transitions_logged"] == 0
    summary = "\n".join(result["_summary"])
    assert "(59 not written, pending in redis://127.0.0.1:1/0 stream fleetwm:telemetry)" in summary
    assert "problem: telemetry: 59 transitions not written" in summary
