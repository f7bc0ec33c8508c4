"""`make up` (catdog_runtime.services up) on a slow machine and beside a foreign port holder.

The real MLflow and Prefect servers and worker, on free ports, in a temp run dir.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from catdog_runtime import services
from catdog_runtime.processes import BIN
from tests.integration.platform import platform_env, services_cli

# Longer than the progress interval: `up` must report that it is still waiting.
SLOW_START_SECONDS = services.PROGRESS_EVERY_SECONDS + 15


@pytest.fixture
def slow_bin(tmp_path):
    """A venv bin folder whose `mlflow` sleeps before it execs the real one (the services
    find their programs beside sys.executable). A venv of its own sharing the real one's
    packages: its pyvenv.cfg, and lib/ linked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "pyvenv.cfg").write_text((BIN.parent / "pyvenv.cfg").read_text())
    (tmp_path / "lib").symlink_to(BIN.parent / "lib")
    for name in ("python", "prefect"):
        (bin_dir / name).symlink_to(BIN / name)
    wrapper = bin_dir / "mlflow"
    wrapper.write_text(f'#!/bin/sh\nsleep {SLOW_START_SECONDS}\nexec {BIN / "mlflow"} "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


def test_up_waits_for_a_slow_server_and_ignores_a_stale_pid_file(tmp_path, slow_bin):
    env = platform_env(tmp_path / "run", slow_bin)  # makes the run dir (with its secrets)
    bystander = subprocess.Popen(["sleep", "600"])
    # A pid file left from another boot whose pid is now an unrelated program.
    (tmp_path / "run" / "mlflow.pid").write_text(f'{{"pid": {bystander.pid}, "argv": ["mlflow"]}}')
    try:
        result = services_cli(env, "up", python=str(slow_bin / "python"))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
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
        result = services_cli(env, "up", timeout=120)
    assert result.returncode == 1
    assert "waiting for" not in result.stdout  # failed at once, before any wait
    assert f"port {env['PREFECT_PORT']} is already held by pid {os.getpid()}" in result.stderr
    assert "PREFECT_PORT" in result.stderr
    # Nothing was started: the ports are checked before any service starts.
    assert "started" not in result.stdout
    assert not list((tmp_path / "run").glob("*.pid"))
