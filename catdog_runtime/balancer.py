"""Replicas of a bento behind HAProxy: start, weigh, drain, stop.

    python -m catdog_runtime.balancer up|status|watch|reconcile

Clients call one address, HAProxy on $BENTO_PORT; behind it, each replica is
a `bentoml serve <bento_tag>` on a port of its own (catdog_runtime.services
`replica`). What serves is recorded in $CATDOG_RUN_DIR/balancer/state.json;
HAProxy's configuration is rendered from scripts/lb/haproxy.cfg.tmpl and that
state when it starts. While it runs, every change goes through its runtime
API (stats socket) instead of a reload: a weight change, a drain or a new
server takes effect at once, without a new process and without dropping a
connection (measured by bench/rollout.py).

`watch` (the `watchdog` service) restarts a replica whose process died, on the
same port; HAProxy's health check takes it out of rotation meanwhile and puts
it back once /readyz answers.

Light imports only, like catdog_runtime.services: the deploy flow imports it,
and `make` runs it before anything heavy is imported.
"""

from __future__ import annotations

import csv
import fcntl
import grp
import io
import json
import os
import pwd
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from catdog_runtime import processes, services
from catdog_runtime.processes import ROOT
from catdog_runtime.waits import WaitTimeout, api_retrying, transient_mlflow_error, wait_until
from model_lib.config import MODEL_NAME
from model_lib.files import atomic_write_text

TEMPLATE = ROOT / "scripts" / "lb" / "haproxy.cfg.tmpl"
BACKEND = "replicas"
FULL_WEIGHT = 100
# Health checks: a replica is out after 2 failed checks 1 s apart, back after 2 good ones.
CHECK = "check inter 1s fall 2 rise 2"
WATCH_EVERY_SECONDS = 2


class BalancerError(services.ServiceError):
    """The balancer or a replica did not do what was asked; the message says what to do."""


@dataclass(frozen=True)
class Replica:
    port: int
    bento_tag: str
    weight: int = FULL_WEIGHT

    @property
    def name(self) -> str:  # the HAProxy server name
        return f"r{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def service(self) -> services.Service:
        return services.replica(self.port, self.bento_tag)


# ------------------------------------------------------------------ state
def state_dir() -> Path:
    return services.run_dir() / "balancer"


def socket_path() -> Path:
    return state_dir() / "haproxy.sock"


def load() -> list[Replica]:
    """The replicas the platform serves (as last recorded)."""
    try:
        raw = json.loads((state_dir() / "state.json").read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise BalancerError(f"{state_dir() / 'state.json'} is not valid JSON ({exc})") from None
    return [Replica(**item) for item in raw["replicas"]]


def save(replicas: list[Replica]) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    state = json.dumps({"replicas": [asdict(r) for r in replicas]}, indent=1)
    atomic_write_text(state_dir() / "state.json", state)  # a reader never sees half a file
    # Prometheus (PROFILE=scale) scrapes each replica, not the balancer in front of them.
    services.write_service_targets([f"127.0.0.1:{r.port}" for r in replicas])


def _server_line(replica: Replica) -> str:
    return f"server {replica.name} 127.0.0.1:{replica.port} {CHECK} weight {replica.weight}"


def render(replicas: list[Replica]) -> str:
    return Template(TEMPLATE.read_text()).substitute(
        socket=socket_path(),
        port=services.ports().bento_port,
        platform_port=platform_port(),
        client_rate=services.settings().lb_client_rate,
        client_conns=services.settings().lb_client_conns,
        run_as=run_as(),
        bufsize=services.settings().lb_bufsize,
        retry_on=retry_on(),
        maxconn=services.settings().lb_maxconn,
        monitor_uri=services.BALANCER_MONITOR_URI,
        servers="\n".join(f"    {_server_line(r)}" for r in replicas),
    )


def retry_on() -> str:
    """What HAProxy retries (once, on another replica): a connection that failed and a
    503 (the service answers 503 only before it decodes anything), and, unless
    CATDOG_LB_REPLAY_DROPPED is off, a request its replica dropped without an answer."""
    dropped = " empty-response" if services.settings().lb_replay_dropped else ""
    return f"conn-failure{dropped} 503"


def run_as() -> str:
    """HAProxy's `user`/`group` lines when started as root: `haproxy` (Debian's
    package creates it), else `nobody`. Empty for anyone else (HAProxy can only
    drop privileges it has)."""
    if os.geteuid() != 0:
        return ""
    for name in ("haproxy", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return f"    user {user.pw_name}\n    group {grp.getgrgid(user.pw_gid).gr_name}"
    raise BalancerError("started as root, and neither user haproxy nor nobody exists")


def platform_port() -> int:
    """HAProxy's second, local-only frontend for the platform's own traffic."""
    return services.settings().platform_port or services.ports().bento_port + 1


@contextmanager
def exclusive(what: str):
    """One change of what serves at a time (a rollout and a rollback would fight)."""
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "change.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BalancerError(
                f"cannot {what}: another rollout or rollback is changing the replicas right now; "
                "wait for it to finish (Prefect UI, flow `deploy`)"
            ) from None
        handle.write(f"{what}\n")
        handle.flush()
        yield


# ------------------------------------------------------------------ runtime API
def command(line: str, timeout: float = 10) -> str:
    """One runtime-API command on the stats socket; its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path()))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise BalancerError(
            f"HAProxy's runtime API at {socket_path()} does not answer ({exc}); "
            "is the balancer running (`make serve`)?"
        ) from None
    return b"".join(chunks).decode(errors="replace").strip()


# What the runtime API answers when a command worked; `set`/`enable` answer nothing.
SUCCESS_ANSWERS = ("", "New server registered.", "Server deleted.")


def checked(line: str) -> str:
    """A command that must succeed (anything but a known success answer is an error)."""
    answer = command(line)
    if answer not in SUCCESS_ANSWERS:
        raise BalancerError(f"HAProxy refused `{line}`: {answer}")
    return answer


def server_stats() -> dict[str, dict[str, str]]:
    """`show stat` of the replicas backend: server name -> its columns (status, weight, scur...)."""
    text = command("show stat").lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        row["svname"]: row
        for row in rows
        if row.get("pxname") == BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")
    }


def wait_for(condition, what: str, timeout: float, detail=None) -> None:
    try:
        wait_until(condition, what, timeout, detail=detail)
    except WaitTimeout as exc:
        raise BalancerError(str(exc)) from None


def checked_up(name: str) -> bool:
    row = server_stats().get(name, {})
    return row.get("status") == "UP" and row.get("check_status") == "L7OK"


# ------------------------------------------------------------------ operations
def up() -> None:
    """Start HAProxy (with the recorded replicas) and the watchdog, unless they run."""
    platform = services.balancer_services()
    balancer = platform["haproxy"]
    if services.owned_pid(balancer) is None:
        state_dir().mkdir(parents=True, exist_ok=True)
        # Replicas that died while the balancer was down come back first.
        for replica in load():
            _ensure_running(replica)
        atomic_write_text(state_dir() / "haproxy.cfg", render(load()))
        services.start(balancer)
    services.wait_healthy(balancer)
    services.start(platform["watchdog"])


def _ensure_running(replica: Replica) -> None:
    if services.owned_pid(replica.service) is None:
        _clear_leftovers(replica)
        services.prepare_replica_home(replica.port)
        services.start(replica.service)
        services.wait_healthy(replica.service)


def _clear_leftovers(replica: Replica) -> None:
    """Kill what is left of a replica whose main process died.

    bentoml's worker processes run in sessions of their own: when the `bentoml
    serve` process is killed they live on, answering on its port (so HAProxy
    still sees the replica healthy) with nothing to supervise them, and block
    the restart. Only processes listening on the replica's port and running
    its bento are killed.
    """
    leftovers = {
        pid
        for pid in processes.listener_pids(replica.port) or ()
        if replica.bento_tag in (processes.command_line(pid) or [])
    }
    if leftovers:
        services.log(f"{replica.name}: killing leftover worker(s) {sorted(leftovers)}")
        processes.kill_all(leftovers)
        wait_for(
            lambda: not processes.listener_pids(replica.port),
            f"port {replica.port} to be free",
            timeout=30,
        )


def start_replicas(bento_tag: str, count: int) -> list[Replica]:
    """`count` new replicas of `bento_tag`, ready, but not yet behind the balancer.

    They start at once and are waited for together: their cold starts overlap."""
    replicas = [Replica(port, bento_tag, weight=0) for port in processes.free_ports(count)]
    try:
        for replica in replicas:
            services.prepare_replica_home(replica.port)
            services.start(replica.service)
        for replica in replicas:
            services.wait_healthy_restarting(replica.service)
    except services.ServiceError:
        for replica in replicas:
            services.stop(replica.service)
        raise
    return replicas


def attach(replica: Replica, weight: int) -> Replica:
    """Put a ready replica behind the balancer with `weight`; returns it as recorded."""
    replica = Replica(replica.port, replica.bento_tag, weight)
    # Added servers start in maintenance; health checks and traffic are switched on after.
    checked(f"add server {BACKEND}/{replica.name} 127.0.0.1:{replica.port} {CHECK} weight 0")
    checked(f"enable health {BACKEND}/{replica.name}")
    checked(f"set server {BACKEND}/{replica.name} state ready")
    # A server leaving maintenance counts as UP before its first check: wait for a
    # passed check (L7OK) before it gets a weight.
    wait_for(
        lambda: checked_up(replica.name),
        f"HAProxy's health check of replica {replica.name} to pass",
        timeout=60,
        detail=lambda: server_stats().get(replica.name, {}).get("last_chk", ""),
    )
    checked(f"set server {BACKEND}/{replica.name} weight {weight}")
    save([*[r for r in load() if r.port != replica.port], replica])
    return replica


def set_weight(replica: Replica, weight: int) -> Replica:
    checked(f"set server {BACKEND}/{replica.name} weight {weight}")
    updated = Replica(replica.port, replica.bento_tag, weight)
    save([updated if r.port == replica.port else r for r in load()])
    return updated


def retire(replica: Replica, drain_timeout: float = 60) -> None:
    """Drain (no new requests, in-flight ones finish), take out of HAProxy, stop the process."""
    stats = server_stats()
    if replica.name in stats:
        checked(f"set server {BACKEND}/{replica.name} state drain")
        wait_for(
            lambda: int(server_stats()[replica.name]["scur"] or 0) == 0,
            f"replica {replica.name} to finish its requests in flight",
            timeout=drain_timeout,
        )
        checked(f"set server {BACKEND}/{replica.name} state maint")
        # Refused while HAProxy still holds a connection to it, idle ones included.
        wait_for(
            lambda: command(f"del server {BACKEND}/{replica.name}") == "Server deleted.",
            f"HAProxy to delete server {replica.name}",
            timeout=30,
            detail=lambda: command(f"del server {BACKEND}/{replica.name}"),
        )
    # Out of the state before the process stops, so the watchdog does not restart it.
    save([r for r in load() if r.port != replica.port])
    services.stop(replica.service)


def resize(fleet: list[Replica], count: int) -> list[Replica]:
    """The fleet's bento on `count` replicas: new ones ready and attached at the fleet's
    weight, surplus ones (the newest) drained and retired. Returns the fleet as recorded."""
    if count < 1:
        raise BalancerError(f"a fleet needs at least one replica, got {count}")
    if count > len(fleet):
        for replica in start_replicas(fleet[0].bento_tag, count - len(fleet)):
            attach(replica, fleet[0].weight)
    for replica in fleet[count:]:
        retire(replica)
    return load()


def running_replicas() -> dict[int, str]:
    """port -> bento of every replica process alive (by its pid file), behind HAProxy or not."""
    return {
        service.port: service.argv[2]
        for service in services.replicas_started()
        if services.owned_pid(service) is not None
    }


def reconcile(target: str | None, say=services.log) -> list[str]:
    """Make what serves agree with `target` (the bento production names; None: nothing).

    Starts the balancer if it is down (with the recorded replicas), then carries out
    model_lib.rollout.reconcile_plan; returns what it fixed, one line per action."""
    from model_lib.rollout import RETIRE, START, STOP, WEIGHT, Served, reconcile_plan

    up()
    # A server left draining or in maintenance (a retire that stopped half way) takes
    # no traffic whatever its weight: it counts as weight 0.
    in_haproxy = {
        int(name[1:]): 0
        if row.get("status", "").startswith(("DRAIN", "MAINT"))
        else int(row.get("uweight") or row.get("weight") or 0)
        for name, row in server_stats().items()
        if name.startswith("r") and name[1:].isdigit()
    }
    recorded = [Served(r.port, r.bento_tag, r.weight) for r in load()]
    actions = reconcile_plan(target, recorded, in_haproxy, running_replicas(), FULL_WEIGHT)
    fixed = []
    for action in actions:
        say(f"reconcile: {action}")
        if action.kind == START:
            for replica in start_replicas(action.bento_tag, action.count):
                attach(replica, FULL_WEIGHT)
        elif action.kind == WEIGHT:
            replica = Replica(action.port, action.bento_tag)
            checked(f"set server {BACKEND}/{replica.name} state ready")  # out of drain/maint
            set_weight(replica, action.weight)
        elif action.kind == RETIRE:
            retire(Replica(action.port, action.bento_tag))
        elif action.kind == STOP:
            services.stop(services.replica(action.port, action.bento_tag))
        fixed.append(str(action))
    return fixed


MLFLOW_PATIENCE_SECONDS = 120


def reconcile_with_production(model_name: str, say=services.log) -> list[str]:
    """Make HAProxy serve what the MLflow alias `production` names, and the outcome tags of
    interrupted rollouts true; says what it fixed, or that nothing needed fixing.

    The deploy flow runs this first (with the rollout lock held); `make up` too,
    when replicas were recorded (after a restart of the machine they serve again)."""
    from mlflow import MlflowClient

    from model_lib.config import PRODUCTION_ALIAS
    from model_lib.tracking import alias_bento, settle_rollout_tags

    client = MlflowClient()
    retrying = api_retrying(MLFLOW_PATIENCE_SECONDS, retry_on=transient_mlflow_error, say=say)
    production = retrying(alias_bento, client, model_name, PRODUCTION_ALIAS)
    if production is None:
        up()
        say(
            f"reconcile: {model_name} has no '{PRODUCTION_ALIAS}' alias (nothing rolled out "
            f"yet): the {len(load())} recorded replica(s) serve as they were; nothing to fix"
        )
        return []
    version, bento_tag = production
    if bento_tag is None:
        raise BalancerError(
            f"{model_name} v{version} ({PRODUCTION_ALIAS}) records no bento (tags rollout_bento, "
            "bento_tag): cannot tell what should serve; roll a bento out (`make serve`)"
        )
    fixed = reconcile(bento_tag, say)
    for change in retrying(settle_rollout_tags, client, model_name, version):
        say(f"reconcile: {change}")
        fixed.append(change)
    if fixed:
        say(f"reconcile: fixed {len(fixed)} thing(s); HAProxy serves {bento_tag} (v{version})")
    else:
        say(
            f"reconcile: nothing to fix: HAProxy serves {bento_tag}, which {PRODUCTION_ALIAS} "
            f"(v{version}) names"
        )
    return fixed


def restore() -> None:
    """`make up`: serve again what production names, without a rollout (after `make down`
    or a restart of the machine). Nothing when no replica was ever recorded here."""
    if not load():
        services.log("balancer: no replica recorded: `make serve` rolls out the champion")
        return
    services.require_debian_packages("haproxy")
    reconcile_with_production(MODEL_NAME)


def reconcile_now() -> None:
    services.require_debian_packages("haproxy")
    reconcile_with_production(MODEL_NAME)


def watch() -> None:
    """Restart replicas whose process died (the `watchdog` service runs this)."""
    services.log("watchdog: restarting replicas that die")
    while True:
        for replica in load():
            if services.owned_pid(replica.service) is None:
                services.log(f"watchdog: replica {replica.name} is not running: restarting it")
                try:
                    _ensure_running(replica)
                except services.ServiceError as exc:
                    services.log(f"watchdog: restart of {replica.name} failed: {exc}")
        time.sleep(WATCH_EVERY_SECONDS)


def status() -> None:
    stats = server_stats() if services.owned_pid(services.balancer_services()["haproxy"]) else {}
    for replica in load():
        row = stats.get(replica.name, {})
        print(
            f"{replica.name}: {replica.bento_tag} on {replica.url}, weight {replica.weight}, "
            f"HAProxy: {row.get('status', 'not running')}"
        )


def main(argv: list[str]) -> int:
    actions = {"up": up, "status": status, "watch": watch, "reconcile": reconcile_now}
    if len(argv) != 1 or argv[0] not in actions:
        print(f"usage: python -m catdog_runtime.balancer {'|'.join(actions)}", file=sys.stderr)
        return 2
    try:
        actions[argv[0]]()
    except services.ServiceError as error:
        print(f"[balancer] ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
