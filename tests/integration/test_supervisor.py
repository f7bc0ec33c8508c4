"""The supervisor (catdog_runtime.services, .processes) on real processes: pid files, ports,
fatal logs. (Starts processes, so not a unit test.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from catdog_runtime import services
from catdog_runtime.processes import free_port, start_server
from catdog_runtime.waits import http_ok


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CATDOG_RUN_DIR", str(tmp_path))
    (tmp_path / "logs").mkdir()
    return tmp_path


@pytest.fixture
def sleeper():
    """An unrelated program whose pid a stale pid file could hold."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def test_pid_file_of_another_program_is_stale_and_never_signalled(run_dir, sleeper, capsys):
    service = services.Service("mlflow", [sys.executable, "-m", "mlflow", "server"])
    service.pid_file.write_text(json.dumps({"pid": sleeper.pid, "argv": service.argv}))

    services.stop(service)

    assert sleeper.poll() is None, "stop() signalled a process that is not the service"
    assert not service.pid_file.exists()
    assert f"stale pid file {service.pid_file} (pid {sleeper.pid} is now `sleep 300`)" in (
        capsys.readouterr().out
    )


def test_pid_file_of_the_service_is_trusted_and_stopped(run_dir):
    service = services.Service("sleeper", ["sleep", "300"], stop_signal=signal.SIGTERM)
    pid = services.start(service)
    assert services.owned_pid(service) == pid
    services.stop(service)
    assert services.command_line(pid) in (None, [])  # gone (or a zombie of this test)
    assert not service.pid_file.exists()


def test_port_held_by_a_foreign_process_names_it(run_dir):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0));"
            "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(holder.stdout.readline())
        service = services.Service("mlflow", ["mlflow", "server"], port=port)
        with pytest.raises(services.ServiceError) as error:
            services.start(service)
        message = str(error.value)
        assert f"port {port} is already held by pid {holder.pid}" in message
        assert "socket.socket()" in message  # the holder's command line
        assert "MLFLOW_PORT" in message
        assert not service.pid_file.exists()
    finally:
        holder.kill()
        holder.wait()


def test_free_port_passes():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert services.listener_pids(port) == set()
    services.check_port_free(services.Service("x", ["x"], port=port))


def test_process_exit_during_start_fails_at_once_with_the_log(run_dir, monkeypatch):
    monkeypatch.setenv("CATDOG_START_TIMEOUT", "600")
    service = services.Service(
        "broken",
        [sys.executable, "-c", "import sys; print('cannot open the database'); sys.exit(3)"],
        health_url="http://127.0.0.1:9/health",
    )
    services.start(service)
    started = time.monotonic()
    with pytest.raises(services.ServiceError, match="exited during start-up") as error:
        services.wait_healthy(service)
    assert time.monotonic() - started < 30
    assert "cannot open the database" in str(error.value)


def test_fatal_log_line_fails_at_once(run_dir, monkeypatch):
    monkeypatch.setenv("CATDOG_START_TIMEOUT", "600")
    service = services.Service(
        "bento",
        [
            sys.executable,
            "-c",
            'import time; print(\'{"event":"model_missing"}\', flush=True);time.sleep(300)',
        ],
        health_url="http://127.0.0.1:9/readyz",
        fatal=('"event":"model_missing"',),
    )
    pid = services.start(service)
    started = time.monotonic()
    with pytest.raises(services.ServiceError, match="failed to start: .*model_missing"):
        services.wait_healthy(service)
    assert time.monotonic() - started < 30
    assert services.command_line(pid) in (None, [])  # stopped, not left running


def test_start_timeout_must_be_a_positive_number(monkeypatch):
    monkeypatch.setenv("CATDOG_START_TIMEOUT", "soon")
    with pytest.raises(services.ServiceError, match="CATDOG_START_TIMEOUT='soon'"):
        services.settings()


def test_a_fatal_line_of_an_earlier_start_does_not_fail_the_next(run_dir):
    service = services.Service("sleeper", ["sleep", "300"], fatal=("boom",))
    service.log_file.write_text("boom: the last start failed\n")
    services.start(service)
    try:
        assert services.fatal_line(service) is None
        with open(service.log_file, "a") as log:
            log.write("boom again\n")
        assert services.fatal_line(service) == "boom again"
    finally:
        services.stop(service)


# First start: prints `line` and exits 1; every later start serves HTTP on the port.
FAILS_ONCE = """
import http.server, pathlib, sys
starts, port, line = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with starts.open("a") as log:
    log.write("start\\n")
if len(starts.read_text().splitlines()) == 1:
    print(line, flush=True)
    sys.exit(1)
handler = http.server.SimpleHTTPRequestHandler
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""
LOST_INTERNAL_PORT = "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:48043')"
OWN_PORT_TAKEN = (
    "ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 3000): "
    "address already in use"
)


def fails_once(tmp_path, line: str) -> tuple[services.Service, object]:
    port = free_port()
    starts = tmp_path / "starts"
    argv = [sys.executable, "-c", FAILS_ONCE, str(starts), str(port), line]
    return services.Service("replica", argv, port, f"http://127.0.0.1:{port}/"), starts


def test_a_replica_that_lost_one_of_bentomls_own_ports_is_started_again(run_dir, tmp_path):
    service, starts = fails_once(tmp_path, LOST_INTERNAL_PORT)
    services.start(service)
    try:
        services.wait_healthy_restarting(service)
        assert http_ok(service.health_url)
        assert len(starts.read_text().splitlines()) == 2
    finally:
        services.stop(service)


def test_a_clash_on_the_replicas_own_port_is_not_retried(run_dir, tmp_path):
    service, starts = fails_once(tmp_path, OWN_PORT_TAKEN)
    services.start(service)
    with pytest.raises(services.ServiceError, match="Errno 98"):
        services.wait_healthy_restarting(service)
    assert len(starts.read_text().splitlines()) == 1


def test_an_owned_server_that_lost_one_of_bentomls_own_ports_is_started_again(tmp_path):
    service, starts = fails_once(tmp_path, LOST_INTERNAL_PORT)
    server = start_server(
        "replica", service.argv, tmp_path / "log", dict(os.environ), service.health_url
    )
    try:
        assert http_ok(service.health_url)
        assert len(starts.read_text().splitlines()) == 2
    finally:
        server.stop()
