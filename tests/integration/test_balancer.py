"""The real HAProxy from scripts/lb/haproxy.cfg.tmpl in front of two small HTTP
replicas: weights, drain, and retries when a replica dies mid-load.

The replicas here are tiny stand-ins (they answer /readyz and POST /classify
with their own port) so that these tests judge the balancer alone, in seconds;
tests/integration/test_rollout.py does the same with real bentoml replicas.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from catdog_runtime import balancer, services
from catdog_runtime.processes import Server, free_port

REPLICA = """
import http.server, sys
POSTS = [0]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered: each answer leaves in one write, so a replica killed mid-load either
    # held the request unanswered (which HAProxy replays) or had answered it whole. A
    # response cut between its headers and its body cannot be replayed by anyone.
    wbufsize = 1 << 16
    def answer(self):
        body = sys.argv[1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/posts":  # how many POSTs reached this replica
            body = str(POSTS[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        self.answer()
    def do_POST(self):
        POSTS[0] += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/source":  # what reached the replica
            body = self.headers.get("X-Catdog-Source", "-").encode()
            self.send_response(200)
        elif self.path == "/drop":  # a replica that dies holding the request
            self.close_connection = True
            return
        elif self.path.startswith("/status/"):  # a replica answering this status
            body = sys.argv[1].encode()
            self.send_response(int(self.path.rsplit("/", 1)[1]))
        else:
            return self.answer()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def short_tmp_path():
    """A temp folder with a short path: HAProxy refuses a stats socket path longer than 97
    characters, which pytest's own temp paths (popen-gwN/<test name>N/...) can pass."""
    folder = Path(tempfile.mkdtemp(prefix="catdog-lb-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def lb(short_tmp_path, monkeypatch, request):
    if shutil.which("haproxy") is None and not os.path.exists(services.haproxy_binary()):
        pytest.fail("haproxy is not installed: `apt-get install -y haproxy` (make serve does it)")
    tmp_path = short_tmp_path
    monkeypatch.setenv("CATDOG_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("BENTO_PORT", str(free_port()))
    monkeypatch.setenv("CATDOG_PLATFORM_PORT", str(free_port()))
    # Requests per client in 10 s: a test asks for its own limit (indirect parametrize).
    asked = getattr(request, "param", {})
    monkeypatch.setenv("CATDOG_LB_CLIENT_RATE", str(asked.get("rate", 100_000)))
    monkeypatch.setenv("CATDOG_LB_REPLAY_DROPPED", str(asked.get("replay_dropped", True)))
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    replicas = {}
    for _ in range(2):
        port = free_port()
        server = Server(
            f"replica-{port}",
            ["python3", str(script), str(port)],
            tmp_path / f"{port}.log",
            dict(os.environ),
        )
        server.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=600)
        replicas[port] = server
    (tmp_path / "run" / "balancer").mkdir(parents=True)
    (tmp_path / "run" / "balancer" / "haproxy.cfg").write_text(balancer.render([]))
    haproxy = services.balancer_services()["haproxy"]
    services.start(haproxy)
    try:
        services.wait_healthy(haproxy)
        yield {
            "url": f"http://127.0.0.1:{os.environ['BENTO_PORT']}",
            "platform_url": f"http://127.0.0.1:{balancer.platform_port()}",
            "replicas": [balancer.Replica(port, "stand-in", 0) for port in replicas],
            "servers": replicas,
        }
    finally:
        services.stop(haproxy)
        for server in replicas.values():
            server.stop()


def answers(url: str, count: int) -> Counter:
    with httpx.Client(timeout=30) as client:
        return Counter(client.post(f"{url}/classify", content=b"photo").text for _ in range(count))


def test_weights_split_the_traffic(lb):
    stable, canary = lb["replicas"]
    balancer.attach(stable, 90)
    balancer.attach(canary, 10)
    seen = answers(lb["url"], 200)
    assert seen[str(canary.port)] == pytest.approx(20, abs=3)
    assert seen[str(stable.port)] == pytest.approx(180, abs=3)
    assert {r.port: r.weight for r in balancer.load()} == {stable.port: 90, canary.port: 10}


def test_retired_replica_gets_nothing_and_leaves_the_state(lb):
    old, new = lb["replicas"]
    balancer.attach(old, 100)
    balancer.attach(new, 100)
    balancer.retire(old)
    assert answers(lb["url"], 50) == Counter({str(new.port): 50})
    assert [r.port for r in balancer.load()] == [new.port]
    assert old.name not in balancer.server_stats()


def test_a_replica_killed_mid_load_costs_no_request(lb):
    """A refused connection is retried on the other replica, and so is a request the
    replica held when it died (closed without an answer)."""
    first, second = lb["replicas"]
    balancer.attach(first, 100)
    balancer.attach(second, 100)
    seen, stop = Counter(), threading.Event()

    def loop():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    seen[client.post(f"{lb['url']}/classify", content=b"photo").status_code] += 1
                except httpx.HTTPError as exc:
                    seen[type(exc).__name__] += 1

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        balancer.wait_for(lambda: sum(seen.values()) > 100, "100 requests answered", 60)
        os.killpg(lb["servers"][first.port].process.pid, signal.SIGKILL)
        # HAProxy's health check marks it down (2 failed checks, 1 s apart).
        balancer.wait_for(
            lambda: balancer.server_stats()[first.name]["status"] == "DOWN", "DOWN", 30
        )
        answered = sum(seen.values())
        balancer.wait_for(lambda: sum(seen.values()) > answered + 100, "100 more answers", 60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    # Requests held by the dead replica are replayed on the other one, and those sent
    # to it before HAProxy marked it down are redispatched: no client sees a failure.
    assert set(seen) == {200}, seen


def test_the_public_frontend_drops_x_catdog_source_and_the_platforms_keeps_it(lb):
    stable, _ = lb["replicas"]
    balancer.attach(stable, 100)
    header = {"X-Catdog-Source": "evaluation"}
    public = httpx.post(f"{lb['url']}/source", headers=header, content=b"x", timeout=30)
    platform = httpx.post(f"{lb['platform_url']}/source", headers=header, content=b"x", timeout=30)
    assert (public.text, platform.text) == ("-", "evaluation")


def posts_per_replica(lb) -> list[int]:
    return [int(httpx.get(f"{r.url}/posts", timeout=10).text) for r in lb["replicas"]]


def test_a_503_or_a_dropped_request_is_retried_once_and_a_500_never(lb):
    first, second = lb["replicas"]
    balancer.attach(first, 100)
    balancer.attach(second, 100)
    with httpx.Client(timeout=30) as client:
        # both replicas answer 503: one retry on the other replica, then the 503
        overloaded = [client.post(f"{lb['url']}/status/503", content=b"x") for _ in range(4)]
        broken = [client.post(f"{lb['url']}/status/500", content=b"x") for _ in range(4)]
    # Both replicas close the connection without an answer: one retry, then a 502 (on
    # a fresh client connection; a reused one would be closed without an answer).
    dropped = [httpx.post(f"{lb['url']}/drop", content=b"x", timeout=30) for _ in range(4)]
    assert {r.status_code for r in overloaded} == {503}
    assert {r.status_code for r in broken} == {500}
    assert {r.status_code for r in dropped} == {502}
    # 503s and drops reached a replica twice each (a retry, never a third try); 500s once.
    assert sum(posts_per_replica(lb)) == 4 * 2 + 4 + 4 * 2


@pytest.mark.parametrize("lb", [{"replay_dropped": False}], indirect=True)
def test_with_replay_dropped_off_a_dropped_request_is_not_replayed(lb):
    first, second = lb["replicas"]
    balancer.attach(first, 100)
    balancer.attach(second, 100)
    dropped = [httpx.post(f"{lb['url']}/drop", content=b"x", timeout=30) for _ in range(4)]
    assert {r.status_code for r in dropped} == {502}
    assert sum(posts_per_replica(lb)) == 4


@pytest.mark.parametrize("lb", [{"rate": 400}], indirect=True)
def test_one_client_beyond_its_request_rate_gets_429(lb):
    stable, _ = lb["replicas"]
    balancer.attach(stable, 100)
    seen = answers(lb["url"], 50)  # 400 per 10 s allowed
    assert set(seen) == {str(stable.port)}
    with httpx.Client(timeout=30) as client:
        statuses = Counter(
            client.post(f"{lb['url']}/classify", content=b"x").status_code for _ in range(400)
        )
    assert statuses[429] >= 40 and statuses[200] <= 350, statuses
    platform = httpx.post(f"{lb['platform_url']}/classify", content=b"x", timeout=30)
    assert platform.status_code == 200  # the platform's own traffic is not limited


def test_config_rendered_from_the_recorded_replicas_is_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("CATDOG_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("BENTO_PORT", "18000")
    replicas = [
        balancer.Replica(18001, "catdog-classifier:a", 90),
        balancer.Replica(18002, "b", 10),
    ]
    balancer.save(replicas)
    assert balancer.load() == replicas
    config = tmp_path / "haproxy.cfg"
    config.write_text(balancer.render(balancer.load()))
    text = config.read_text()
    assert "server r18001 127.0.0.1:18001 check inter 1s fall 2 rise 2 weight 90" in text
    assert "bind 127.0.0.1:18000" in text and "bind 127.0.0.1:18001" in text  # platform
    assert "retry-on conn-failure empty-response 503" in text and "retries 1" in text
    check = subprocess.run(
        [services.haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_haproxy_started_as_root_runs_as_an_unprivileged_user(lb):
    config = str(services.run_dir() / "balancer" / "haproxy.cfg")
    (process,) = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "haproxy" and config in (p.info["cmdline"] or [])
    ]
    if os.geteuid() == 0:
        assert process.uids().effective != 0 and balancer.run_as().startswith("    user ")
    else:
        assert process.uids().effective == os.geteuid() and balancer.run_as() == ""
    assert httpx.get(f"{lb['url']}{services.BALANCER_MONITOR_URI}", timeout=10).is_success
