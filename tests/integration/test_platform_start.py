"""`make up` (scripts/services.py up) on a slow machine and beside a foreign port holder.

The real MLflow and Prefect servers and worker, on free ports, in a temp run dir.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import BIN, ROOT, free_port

SLOW_START_SECONDS = 45


def platform_env(run_dir: Path, bin_dir: Path = BIN, extra: dict | None = None) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "BENTO", "CATDOG_"))
    }
    env.update(
        CATDOG_RUN_DIR=str(run_dir),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        BENTO_PORT=str(free_port()),
        CATDOG_START_TIMEOUT="900",
        **(extra or {}),
    )
    # scripts/env.sh derives the rest (URLs, state folders) from these.
    script = f". {ROOT}/scripts/env.sh && env -0"
    raw = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=True).stdout
    derived = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    return {**derived, "PATH": f"{bin_dir}{os.pathsep}{derived['PATH']}"}


def services_cli(env: dict, action: str, python: str = sys.executable, timeout: float = 1200):
    return subprocess.run(
        [python, str(ROOT / "scripts" / "services.py"), action],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def slow_bin(tmp_path):
    """A venv bin folder whose `mlflow` sleeps before it execs the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "prefect"):
        (bin_dir / name).symlink_to(BIN / name)
    wrapper = bin_dir / "mlflow"
    wrapper.write_text(f'#!/bin/sh\nsleep {SLOW_START_SECONDS}\nexec {BIN / "mlflow"} "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


def test_up_waits_for_a_slow_server_and_ignores_a_stale_pid_file(tmp_path, slow_bin):
    env = platform_env(tmp_path / "run", slow_bin)
    (tmp_path / "run").mkdir()
    bystander = subprocess.Popen(["sleep", "600"])
    # A pid file left from another boot whose pid is now an unrelated program.
    (tmp_path / "run" / "mlflow.pid").write_text(f'{{"pid": {bystander.pid}, "argv": ["mlflow"]}}')
    try:
        started = time.monotonic()
        result = services_cli(env, "up", python=str(slow_bin / "python"))
        took = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert took >= SLOW_START_SECONDS
        assert "stale pid file" in output
        assert "waiting for mlflow to be healthy" in output or "waiting for prefect" in output
        assert "mlflow healthy at" in output
        assert "worker online in work pool 'local'" in output
        status = services_cli(env, "status").stdout
        assert "mlflow: running" in status and "worker: running" in status
    finally:
        down = services_cli(env, "down", timeout=120)
        assert bystander.poll() is None, "down signalled an unrelated process"
        bystander.kill()
        bystander.wait()
    assert down.returncode == 0, down.stderr
    assert "mlflow: stopped" in services_cli(env, "status").stdout


def test_up_fails_within_seconds_when_a_port_is_held(tmp_path):
    env = platform_env(tmp_path / "run")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["PREFECT_PORT"])))
        holder.listen()
        started = time.monotonic()
        result = services_cli(env, "up", timeout=120)
        took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 20
    assert f"port {env['PREFECT_PORT']} is already held by pid {os.getpid()}" in result.stderr
    assert "PREFECT_PORT" in result.stderr
    # Nothing was started: the ports are checked before any service starts.
    assert "started" not in result.stdout
    assert not list((tmp_path / "run").glob("*.pid"))
