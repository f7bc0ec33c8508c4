"""Start, stop and inspect the platform's background services.

    python -m catdog_runtime.services up|down|status      (make up / down / status)

The balancer and its replicas are started by catdog_runtime.balancer (make serve).

Every service runs in its own session (so it outlives this command and stops
as a group), with its pid file and log under $CATDOG_RUN_DIR. Settings come
from the environment that scripts/env.sh exports. Processes are started, inspected
and stopped by catdog_runtime.processes; every wait is catdog_runtime.waits.

Made for slow and busy machines: a cold start may take minutes (waited for,
with progress, up to $CATDOG_START_TIMEOUT seconds), while a real error fails
at once: the process exited, its port is held by another program, or its log
shows a fatal error. A pid file is trusted only while that pid still runs the
command it was started with, so `down` never signals an unrelated process.

Light imports only (psutil, tenacity, httpx): this runs before anything heavy is imported.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from catdog_runtime import postgres, prefect_api
from catdog_runtime.processes import (
    ROOT,
    START_ATTEMPTS,
    command_line,
    describe,
    listener_pids,
    lost_internal_port_race,
    runs_command,
    spawn,
    stop_tree,
)
from catdog_runtime.waits import WaitTimeout, http_ok, wait_until
from model_lib import pushgateway
from model_lib.files import atomic_write_text
from model_lib.settings import PlatformSettings, PortSettings

PROGRESS_EVERY_SECONDS = 15
# Lines that mean the process will never become healthy; seen in these servers' logs.
# Written to a service's log before each start (fatal_line reads after the last one).
START_MARKER = "[services] starting"
COMMON_FATAL = ("[Errno 98]", "address already in use", "ModuleNotFoundError: ")


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says what to do."""


def log(message: str) -> None:
    print(f"[services] {message}", flush=True)


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    port: int | None = None
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    fatal: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
    health_auth: tuple[str, str] | None = None  # basic auth of the health check

    @property
    def pid_file(self) -> Path:
        return run_dir() / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return run_dir() / "logs" / f"{self.name}.log"


def run_dir() -> Path:
    return settings().run_dir or ROOT / ".run"


def secure_run_dir() -> None:
    """$CATDOG_RUN_DIR owner-only (0700), and so is everything this process and the
    services it starts create (umask 077): logs, pid files, databases, the inference
    log, the bento store, the balancer's configuration all live under it.

    Root runs PostgreSQL as PG_OS_USER, which must pass through to its data folder:
    then the folder is 0710 with that user's group (enter, not list).
    """
    os.umask(0o077)
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and (
        current_profile() == "scale" or folder.stat().st_gid == pg_os_group_id()
    ):
        let_pg_os_user_enter(folder)  # `down` of a scale platform too
    else:
        folder.chmod(0o700)


def settings() -> PlatformSettings:
    """The runtime's part of the settings (model_lib.settings), read now."""
    try:
        return PlatformSettings.from_env()
    except ValueError as error:
        raise ServiceError(str(error)) from None


def secrets_dir() -> Path:
    return settings().secrets_dir or run_dir() / "secrets"


def prefect_secret_file() -> Path:
    """The secret of the Prefect API's auth string `catdog:<secret>` (scripts/env.sh)."""
    return secrets_dir() / "prefect-api"


def ports() -> PortSettings:
    try:
        return PortSettings.from_env()
    except ValueError as error:
        raise ServiceError(str(error)) from None


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ServiceError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


# ------------------------------------------------------------------ processes
def owned_pid(service: Service) -> int | None:
    """The pid in the service's pid file, if that process still runs the service."""
    try:
        recorded = json.loads(service.pid_file.read_text())
    except (OSError, ValueError):
        return None
    pid = recorded.get("pid") if isinstance(recorded, dict) else None
    if not isinstance(pid, int):
        return None
    if runs_command(pid, recorded.get("argv") or service.argv):
        return pid
    now = command_line(pid)
    what = f"is now `{' '.join(now)[:120]}`" if now else "has exited"
    log(f"{service.name}: stale pid file {service.pid_file} (pid {pid} {what}); ignoring it")
    service.pid_file.unlink(missing_ok=True)
    return None


def check_port_free(service: Service) -> None:
    if service.port is None:
        return
    holders = listener_pids(service.port)
    if holders == set():
        return
    who = (
        ", ".join(describe(pid) for pid in sorted(holders)) if holders else "another user's process"
    )
    raise ServiceError(
        f"{service.name} cannot start: port {service.port} is already held by {who}. "
        f"Stop that program, or give {service.name} another port "
        f"(e.g. {port_variable(service)}=...; see scripts/env.sh)."
    )


def port_variable(service: Service) -> str:
    return {
        "mlflow": "MLFLOW_PORT",
        "prefect-server": "PREFECT_PORT",
        **SCALE_PORT_VARIABLES,
    }.get(service.name, "BENTO_PORT")


def log_tail(service: Service, lines: int = 25) -> str:
    try:
        text = service.log_file.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def fatal_line(service: Service) -> str | None:
    try:
        text = service.log_file.read_text(errors="replace")
    except OSError:
        return None
    # Only this start's lines: the log is appended to, and an error of an earlier
    # start (fixed since) must not fail this one.
    for line in text.rsplit(START_MARKER, 1)[-1].splitlines():
        lowered = line.lower()
        if any(p.lower() in lowered for p in (*COMMON_FATAL, *service.fatal)):
            return line.strip()
    return None


# ------------------------------------------------------------------ start / stop
def start(service: Service) -> int:
    """Start `service` unless it already runs; returns its pid."""
    pid = owned_pid(service)
    if pid is not None:
        log(f"{service.name} already running (pid {pid})")
        return pid
    check_port_free(service)
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(service.log_file, "a") as log_handle:
        log_handle.write(f"{START_MARKER} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    process = spawn(service.argv, service.log_file, {**os.environ, **service.env})
    atomic_write_text(service.pid_file, json.dumps({"pid": process.pid, "argv": service.argv}))
    log(f"started {service.name} (pid {process.pid}), log: {service.log_file}")
    return process.pid


def wait_for_service(service: Service, ready, what: str) -> None:
    """Wait until `ready()`; fail at once when the service cannot get there."""
    timeout = settings().start_timeout

    def check() -> None:
        if owned_pid(service) is None:
            raise ServiceError(
                f"{service.name} exited during start-up; last lines of {service.log_file}:\n"
                f"{log_tail(service)}"
            )
        line = fatal_line(service)
        if line is not None:
            stop(service)
            raise ServiceError(
                f"{service.name} failed to start: {line}\nlast lines of {service.log_file}:\n"
                f"{log_tail(service)}"
            )

    def progress(elapsed: float) -> None:
        log(f"  waiting for {service.name} to be {what}: {elapsed:.0f} s of up to {timeout} s")

    try:
        waited = wait_until(
            ready,
            f"{service.name} {what}",
            timeout,
            interval=1,
            check=check,
            progress=progress,
            progress_every=PROGRESS_EVERY_SECONDS,
        )
    except WaitTimeout:
        raise ServiceError(
            f"{service.name} still not {what} after {timeout} s (it is running, "
            f"pid {owned_pid(service)}); a slow machine may need more: CATDOG_START_TIMEOUT=1200. "
            f"Last lines of {service.log_file}:\n{log_tail(service)}"
        ) from None
    log(f"{service.name} {what} (waited {waited:.0f} s)")


def wait_healthy(service: Service) -> None:
    wait_for_service(
        service,
        lambda: http_ok(service.health_url, auth=service.health_auth),
        f"healthy at {service.health_url}",
    )


def wait_healthy_restarting(service: Service) -> None:
    """`wait_healthy`, starting `service` again (up to START_ATTEMPTS in all) when it
    lost a race for one of bentoml's internal ports (catdog_runtime.processes)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            wait_healthy(service)
            return
        except ServiceError as error:
            if attempt == START_ATTEMPTS or not lost_internal_port_race(str(error)):
                raise
            log(
                f"{service.name} lost one of bentoml's internal ports to another process: "
                f"starting it again ({attempt + 1}/{START_ATTEMPTS})"
            )
            stop(service)
            start(service)


def stop(service: Service, grace_seconds: float = 20) -> None:
    pid = owned_pid(service)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return
    if not stop_tree(pid, service.stop_signal, grace_seconds):
        log(f"{service.name} did not stop within {grace_seconds:.0f} s: killed it")
    service.pid_file.unlink(missing_ok=True)
    log(f"stopped {service.name}")


# ------------------------------------------------------------------ the platform
def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def services(profile: str | None = None) -> dict[str, Service]:
    """The platform's services for `profile` (default: $CATDOG_PROFILE)."""
    state = run_dir()
    mlflow_port, prefect_port = ports().mlflow_port, ports().prefect_port
    mlflow_dir = state / "mlflow"
    platform = {
        "mlflow": Service(
            "mlflow",
            [
                bin_path("mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                # Users, passwords and permissions ($MLFLOW_AUTH_CONFIG_PATH, written by
                # write_mlflow_auth_config); every request but /health must log in.
                "--app-name",
                "basic-auth",
                "--artifacts-destination",
                str(mlflow_dir / "artifacts"),
                # uvicorn's supervisor kills a worker that is slow to import mlflow;
                # one or two workers are plenty for one team's tracking.
                "--workers",
                str(env_int("MLFLOW_WORKERS", 1)),
            ],
            port=mlflow_port,
            health_url=f"http://127.0.0.1:{mlflow_port}/health",
            # From the environment, not argv: the scale profile's URI holds a password,
            # and argv is world-readable (/proc/<pid>/cmdline) and kept in the pid file.
            env={"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{mlflow_dir}/mlflow.db"},
        ),
        "prefect-server": Service(
            "prefect-server",
            [
                bin_path("prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(prefect_port),
            ],
            port=prefect_port,
            health_url=f"http://127.0.0.1:{prefect_port}/api/health",
        ),
        "worker": Service(
            "worker",
            [
                bin_path("prefect"),
                "worker",
                "start",
                "--pool",
                settings().work_pool,
                "--type",
                "process",
                # A name of its own, so `up` can tell this worker's heartbeat from
                # the last heartbeat of a worker that was just stopped.
                "--name",
                f"{socket.gethostname()}-{os.getpid()}",
            ],
            # A worker whose server has gone may ignore SIGTERM for a while; SIGINT stops it.
            stop_signal=signal.SIGINT,
        ),
        **balancer_services(),
    }
    if (profile or current_profile()) == "scale":
        platform.update(scale_services(platform))
    return platform


BALANCER_MONITOR_URI = "/lb/healthz"


def balancer_services() -> dict[str, Service]:
    """The balancer and its watchdog: they need only BENTO_PORT (and CATDOG_RUN_DIR)."""
    bento_port = ports().bento_port
    return {
        # The one address clients call (CATDOG_SERVICE_URL); replicas sit behind it.
        "haproxy": Service(
            "haproxy",
            [haproxy_binary(), "-db", "-f", str(run_dir() / "balancer" / "haproxy.cfg")],
            port=bento_port,
            health_url=f"http://127.0.0.1:{bento_port}{BALANCER_MONITOR_URI}",
            fatal=("[ALERT]",),
            # Soft stop: finish the requests in flight, then exit.
            stop_signal=signal.SIGUSR1,
        ),
        # Restarts a replica that died (catdog_runtime.balancer watch).
        "watchdog": Service("watchdog", [sys.executable, "-m", "catdog_runtime.balancer", "watch"]),
    }


def haproxy_binary() -> str:
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        if Path(folder, "haproxy").is_file():
            return f"{folder}/haproxy"
    return "haproxy"


def replica(port: int, bento_tag: str) -> Service:
    """One `bentoml serve` of exactly `bento_tag`, on its own port, behind the balancer."""
    return Service(
        f"replica-{port}",
        [bin_path("bentoml"), "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)],
        port=port,
        health_url=f"http://127.0.0.1:{port}/readyz",
        env={"BENTOML_HOME": str(replica_home(port))},
        # The service logs why it cannot become ready (bento/service.py).
        fatal=('"event":"model_missing"', '"event":"model_unavailable"'),
    )


def replica_home(port: int) -> Path:
    return run_dir() / "replicas" / str(port) / "bentoml"


def prepare_replica_home(port: int) -> None:
    """A BENTOML_HOME of the replica's own that shares the platform's bento and model store.

    `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it
    starts: replicas sharing one home would wipe each other's /metrics.
    """
    home = replica_home(port)
    home.mkdir(parents=True, exist_ok=True)
    shared = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    for store in ("bentos", "models"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        link = home / store
        if not link.is_symlink():
            link.symlink_to(shared / store)


def replicas_started() -> list[Service]:
    """Every replica with a pid file in the state folder (running or not)."""
    found = []
    for pid_file in sorted(run_dir().glob("replica-*.pid")):
        try:
            argv = json.loads(pid_file.read_text())["argv"]
            found.append(replica(int(argv[argv.index("--port") + 1]), argv[2]))
        except (OSError, ValueError, KeyError, IndexError):
            log(f"ignoring unreadable pid file {pid_file}")
    return found


def worker_online(pool: str, name: str) -> bool:
    """Whether the Prefect API lists worker `name` online in `pool`."""
    try:
        return name in prefect_api.PrefectAPI(patience=0).online_workers(pool)
    except prefect_api.PrefectAPIError:
        return False


# ------------------------------------------------------------------ MLflow's basic-auth app
MLFLOW_ADMIN_PASSWORD_FILE = "mlflow-admin-password"  # in $CATDOG_SECRETS_DIR (scripts/env.sh)
# A call only a logged-in user with rights on the registry gets an answer to.
MLFLOW_AUTH_PROBE = "/api/2.0/mlflow/registered-models/search?max_results=1"
MLFLOW_AUTH_CACHE_SECONDS = 60


def mlflow_auth_db() -> Path:
    return run_dir() / "mlflow" / "basic_auth.db"


def mlflow_credentials() -> tuple[str, str]:
    """The platform's own MLflow user (the auth app's admin), from scripts/env.sh."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or not password:
        raise ServiceError(
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD are not set: "
            "run this through make (scripts/env.sh makes the password on first use)"
        )
    return user, password


def write_mlflow_auth_config() -> Path:
    """The file $MLFLOW_AUTH_CONFIG_PATH names: nobody but the admin (the platform's own
    user) may read or change anything. It holds the admin password, so it is owner-only
    and lives with the other secrets. MLflow creates the admin from it when its user
    database (under the run dir) is new."""
    configured = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if not configured:
        raise ServiceError("MLFLOW_AUTH_CONFIG_PATH is not set: run this through make")
    user, password = mlflow_credentials()
    mlflow_auth_db().parent.mkdir(parents=True, exist_ok=True)

    def value(text: str) -> str:  # MLflow's configparser expands `%`
        return text.replace("%", "%%")

    path = Path(configured)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(
        path,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{value(str(mlflow_auth_db()))}\n"
        f"admin_username = {value(user)}\n"
        f"admin_password = {value(password)}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Checking a password (scrypt) is most of a small request's cost; a verified
        # login is remembered this long. A password changed through MLflow's API is
        # forgotten at once (with MLFLOW_WORKERS=1, the default); one changed in the
        # database by hand counts after this delay (README, Security).
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_SECONDS}\n",
    )
    return path


def check_mlflow_login(service: Service) -> None:
    """The platform's clients get in with their credentials, and nobody gets in without.

    The admin password counts only when MLflow's user database is created: a database
    kept from an earlier password (its secret file deleted since) refuses every client.
    """
    url = f"http://127.0.0.1:{service.port}{MLFLOW_AUTH_PROBE}"
    anonymous = httpx.get(url, timeout=30).status_code
    logged_in = httpx.get(url, auth=mlflow_credentials(), timeout=30).status_code
    if anonymous not in (401, 403):
        raise ServiceError(
            f"MLflow answers {anonymous} to a request without credentials: it is not running "
            f"the basic-auth app (see {service.log_file})"
        )
    if logged_in != 200:
        raise ServiceError(
            f"MLflow refuses the platform's own credentials ({logged_in}): its user database "
            f"{mlflow_auth_db()} was made with another admin password than the one in "
            f"{mlflow_password_file()}. Put the old password back in that file, "
            f"or `make down`, delete {mlflow_auth_db()} (its users) and `make up` again."
        )
    # Where the password is, never the password: this output ends up in logs.
    log(
        f"MLflow UI http://127.0.0.1:{service.port}: log in as {mlflow_credentials()[0]!r} "
        f"with the password in {mlflow_password_file()} (owner-only; `cat` it)"
    )


def mlflow_password_file() -> Path:
    secrets = os.environ.get("CATDOG_SECRETS_DIR") or run_dir() / "secrets"
    return Path(secrets) / MLFLOW_ADMIN_PASSWORD_FILE


def up() -> None:
    platform = services()
    for service in platform.values():  # every port first: fail before starting anything
        if service.name in ("mlflow", "prefect-server") and owned_pid(service) is None:
            check_port_free(service)
    if "postgres" in platform:
        start_postgres(platform["postgres"])  # the servers' database comes first
    write_mlflow_auth_config()
    for name in ("mlflow", "prefect-server"):
        start(platform[name])  # both start at once; their cold starts overlap
    wait_healthy(platform["prefect-server"])
    # The workers need only Prefect: they start while MLflow is still starting.
    workers = [s for s in platform.values() if s.name.startswith("worker")]
    for worker in workers:
        start(worker)
    wait_healthy(platform["mlflow"])
    check_mlflow_login(platform["mlflow"])
    for worker in workers:
        argv = json.loads(worker.pid_file.read_text())["argv"]  # the running worker's own
        pool, name = argv[argv.index("--pool") + 1], argv[argv.index("--name") + 1]
        wait_for_service(
            worker, lambda p=pool, n=name: worker_online(p, n), f"online in work pool {pool!r}"
        )
    if "prometheus" in platform:
        start_monitoring(platform)
    # Where the credentials are, never what they are (README "Security").
    log(f"secrets (owner-only files): {secrets_dir()}")
    log(
        f"Prefect UI http://127.0.0.1:{ports().prefect_port}: sign in with catdog:<the contents "
        f"of {prefect_secret_file()}>  (copy it: echo catdog:$(cat {prefect_secret_file()}))"
    )
    from catdog_runtime import balancer  # it imports this module

    balancer.restore()  # what `production` names serves again, without a rollout


def down() -> None:
    # Every service either profile starts: `make down` stops what runs, whatever
    # PROFILE it was started with (a service without a live pid file is skipped).
    platform = services("scale")
    workers = [name for name in platform if name.startswith("worker")]
    for service in (
        *(platform[name] for name in workers),
        platform["watchdog"],
        platform["haproxy"],
        *replicas_started(),
    ):
        stop(service)
    for name in (*SCALE_MONITORING, "prefect-server", "mlflow", "postgres"):
        stop(platform[name])


def status() -> None:
    profile = current_profile()
    print(f"profile: {profile}")
    wanted = services()
    for service in (*services("scale").values(), *replicas_started()):
        pid = owned_pid(service)
        if pid or service.name in wanted:
            print(f"{service.name}: {f'running (pid {pid})' if pid else 'stopped'}")


# ------------------------------------------------------------------ the scale profile
# `make up PROFILE=scale`: the multi-machine shape, run here. PostgreSQL (a
# cluster under $CATDOG_RUN_DIR/postgres) holds Prefect's, MLflow's and the
# inference log's data; MLflow serves the artifacts (no shared folder between
# hosts); several workers share the pool; Prometheus scrapes the service
# replicas and the servers and evaluates monitoring/alerts.yml; the evaluate
# flow pushes its figures to the Pushgateway.
SCALE_PORT_VARIABLES = {
    "postgres": "CATDOG_PG_PORT",
    "prometheus": "PROMETHEUS_PORT",
    "pushgateway": "PUSHGATEWAY_PORT",
}
SCALE_MONITORING = ("prometheus", "pushgateway")
PG_DATABASES = tuple(postgres.ROLES)
PG_USER = postgres.ADMIN  # the cluster's superuser (provisioning); servers have their own roles
# PostgreSQL refuses to run as root: root runs it as this OS user (Debian's package creates it).
PG_OS_USER = "postgres"
MONITORING_DIR = ROOT / "monitoring"


def current_profile() -> str:
    return settings().profile


def require_debian_packages(*packages: str) -> None:
    """Install missing Debian packages (scripts/debian_packages.sh), or say what to do."""
    result = subprocess.run([str(ROOT / "scripts" / "debian_packages.sh"), *packages])
    if result.returncode != 0:
        raise ServiceError(
            f"could not install {' '.join(packages)} (exit {result.returncode}); "
            f"install them (apt-get install {' '.join(packages)}) and run this again"
        )


def pg_bin(program: str, required: bool = True) -> str:
    """A PostgreSQL server program: $CATDOG_PG_BIN, else the newest /usr/lib/postgresql/*/bin.

    Not `required`: the bare name when not installed yet (`down` and `status`
    need the service's name only).
    """
    configured = settings().pg_bin
    candidates = [Path(configured)] if configured else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for folder in candidates:
        if (folder / program).is_file():
            return str(folder / program)
    if not required:
        return program
    looked = ", ".join(map(str, candidates)) or "/usr/lib/postgresql/*/bin"
    raise ServiceError(
        f"PostgreSQL's {program} not found (looked in {looked}); "
        "install Debian's postgresql or set CATDOG_PG_BIN"
    )


def as_pg_os_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def scale_services(base: dict[str, Service]) -> dict[str, Service]:
    """The services PROFILE=scale adds or changes, given the default profile's."""
    state = run_dir()
    pg_port = settings().pg_port
    prometheus_port, pushgateway_port = ports().prometheus_port, ports().pushgateway_port
    mlflow = base["mlflow"]
    argv = list(mlflow.argv)
    backend = settings().mlflow_backend_uri or mlflow.env["MLFLOW_BACKEND_STORE_URI"]
    # Clients upload and download artifacts through the server: workers on
    # other hosts need no shared folder (and no object-store credentials).
    # (No --expose-prometheus: it needs prometheus-flask-exporter, a Flask-era
    # add-on; Prometheus watches MLflow through the flows' own alerts instead.)
    argv.append("--serve-artifacts")
    added = {
        "mlflow": replace(
            mlflow, argv=argv, env={**mlflow.env, "MLFLOW_BACKEND_STORE_URI": backend}
        ),
        "postgres": postgres_service(pg_port),
        "prometheus": Service(
            "prometheus",
            [
                "prometheus",
                f"--config.file={state / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={state / 'prometheus' / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--storage.tsdb.retention.time=15d",
                f"--web.config.file={web_config_file('prometheus')}",
            ],
            port=prometheus_port,
            health_url=f"http://127.0.0.1:{prometheus_port}/-/ready",
            fatal=('err="error loading config', "Error loading config"),
            health_auth=monitoring_auth(),
        ),
        "pushgateway": Service(
            "pushgateway",
            [
                "prometheus-pushgateway",
                f"--web.listen-address=127.0.0.1:{pushgateway_port}",
                # The evaluation's last figures survive a restart.
                f"--persistence.file={state / 'pushgateway' / 'metrics'}",
                f"--web.config.file={web_config_file('pushgateway')}",
            ],
            port=pushgateway_port,
            health_url=f"http://127.0.0.1:{pushgateway_port}/-/ready",
            health_auth=monitoring_auth(),
        ),
    }
    # Each worker runs one flow run at a time, as one per host would: a second
    # run waiting in the pool goes to the other worker (a worker without a
    # limit would take every run it sees in one poll).
    worker = base["worker"]
    worker = replace(worker, argv=[*worker.argv, "--limit", "1"])
    added["worker"] = worker
    name_at = worker.argv.index("--name") + 1
    for number in range(2, settings().prefect_workers + 1):
        argv = list(worker.argv)
        argv[name_at] = f"{argv[name_at]}-{number}"
        added[f"worker-{number}"] = replace(worker, name=f"worker-{number}", argv=argv)
    return added


def pg_os_group_id() -> int | None:
    try:
        return grp.getgrnam(PG_OS_USER).gr_gid
    except KeyError:  # PostgreSQL not installed (yet)
        return None


def let_pg_os_user_enter(folder: Path) -> None:
    """Root's folder that PG_OS_USER must pass through: 0710, group PG_OS_USER's."""
    group = pg_os_group_id()
    if group is None:
        folder.chmod(0o700)
        return
    os.chown(folder, -1, group)
    folder.chmod(0o710)


def pg_dir() -> Path:
    return run_dir() / "postgres"


def pg_socket_dir() -> Path:
    """The Unix socket's owner-only folder: the admin's way in (peer authentication)."""
    return pg_dir() / "socket"


def postgres_service(port: int) -> Service:
    """The PostgreSQL server of the cluster in $CATDOG_RUN_DIR/postgres/data."""
    return Service(
        "postgres",
        as_pg_os_user(
            [
                pg_bin("postgres", required=False),
                "-D",
                str(pg_dir() / "data"),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={pg_socket_dir()}",
                "-c",
                "unix_socket_permissions=0700",
            ]
        ),
        port=port,
        fatal=(
            "could not create any TCP/IP sockets",
            'lock file "postmaster.pid"',
            "could not create any Unix-domain sockets",
        ),
        # SIGTERM waits for every client to disconnect; SIGINT is the fast
        # shutdown that still writes a clean checkpoint.
        stop_signal=signal.SIGINT,
    )


def pg_ready(service: Service) -> bool:
    port = str(service.port)
    result = subprocess.run(
        [pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", port], capture_output=True
    )
    return result.returncode == 0


def prepare_pg_folders() -> None:
    """postgres/ (data, socket) under the run dir, owner-only; root's for PG_OS_USER."""
    folders = (pg_dir() / "data", pg_socket_dir())
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for folder in (run_dir(), pg_dir()):
            let_pg_os_user_enter(folder)
        for folder in folders:
            shutil.chown(folder, PG_OS_USER, PG_OS_USER)
    else:
        pg_dir().chmod(0o700)
    for folder in folders:
        folder.chmod(0o700)


def pg_write(path: Path, text: str) -> None:
    """A file of the cluster's, owned by the OS user the server runs as."""
    atomic_write_text(path, text)
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)


def initdb() -> None:
    """A new cluster: passwords for TCP (scram-sha-256), peer on the socket, never trust."""
    data = pg_dir() / "data"
    log(f"creating a PostgreSQL cluster in {data}")
    # initdb reads the superuser's password from a file only: 0600, removed at once.
    pwfile = pg_dir() / "initdb-password"
    pg_write(pwfile, postgres.pgpass_password(PG_USER) + "\n")
    try:
        result = subprocess.run(
            as_pg_os_user(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    PG_USER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-instructions",
                ]
            ),
            capture_output=True,
            text=True,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        hint = (
            f" The OS user {PG_OS_USER!r} must be able to enter every folder above {data}"
            " (pick a CATDOG_RUN_DIR it can reach)."
            if "Permission denied" in result.stderr
            else ""
        )
        raise ServiceError(f"initdb failed: {result.stderr.strip()[-600:]}{hint}")
    # Stricter than initdb's own: only the admin on the socket, and only by peer.
    pg_write(data / "pg_hba.conf", postgres.hba_conf())
    pg_write(data / "pg_ident.conf", postgres.ident_conf())


def start_postgres(service: Service) -> None:
    """initdb on first use, start the server, provision roles, databases and rights."""
    require_debian_packages("postgresql")
    service = postgres_service(service.port)  # the server's path, now that it is installed
    data = pg_dir() / "data"
    try:
        prepare_pg_folders()
        if not (data / "PG_VERSION").exists():
            initdb()
        elif postgres.trusts_anyone((data / "pg_hba.conf").read_text()):
            raise ServiceError(
                f"the PostgreSQL cluster in {data} predates passwords and per-database roles "
                "(it trusts every local connection). Stop the platform (make down), move "
                f"{pg_dir()} away and run make up PROFILE=scale again: it makes a new one "
                "(Prefect's, MLflow's and the inference log's data start empty)."
            )
        start(service)
        wait_for_service(
            service, lambda: pg_ready(service), f"accepting connections on {service.port}"
        )
        postgres.provision(pg_socket_dir(), service.port)
    except postgres.PostgresSetupError as error:
        raise ServiceError(str(error)) from None
    log(f"PostgreSQL: databases {', '.join(PG_DATABASES)}, one role each (README 'Security')")


# ------------------------------------------------------------------ Prometheus + Pushgateway
# Both behind basic auth (--web.config.file): user MONITORING_USER, the password
# $CATDOG_MONITORING_PASSWORD (scripts/env.sh: `catdog_secret monitoring`). The web
# configs hold its bcrypt hash only; Prometheus's own config holds it for the scrape
# of the Pushgateway. All owner-only.
MONITORING_USER = pushgateway.USER
# bcrypt's work factor, paid by every request: the usual default.
BCRYPT_COST = 10


def monitoring_auth() -> tuple[str, str] | None:
    password = settings().monitoring_password
    return (MONITORING_USER, password) if password else None


def monitoring_password() -> str:
    auth = monitoring_auth()
    if auth is None:
        raise ServiceError(
            "CATDOG_MONITORING_PASSWORD is not set: run through make, or source scripts/env.sh "
            "with PROFILE=scale (it makes one in $CATDOG_SECRETS_DIR/monitoring)"
        )
    return auth[1]


def web_config_file(name: str) -> Path:
    return run_dir() / name / "web.yml"


def bcrypt_hash(password: str) -> str:
    """The password's bcrypt hash, by htpasswd (apache2-utils), the password on its stdin."""
    result = subprocess.run(
        ["htpasswd", "-niBC", str(BCRYPT_COST), MONITORING_USER],
        input=password,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServiceError(f"htpasswd failed: {result.stderr.strip()}")
    return result.stdout.strip().split(":", 1)[1]


def write_web_configs() -> None:
    """Basic auth of Prometheus and the Pushgateway (their --web.config.file)."""
    hashed = bcrypt_hash(monitoring_password())
    for name in SCALE_MONITORING:
        web_config_file(name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            web_config_file(name), f"basic_auth_users:\n  {MONITORING_USER}: '{hashed}'\n"
        )


def service_targets_file() -> Path:
    """Prometheus file_sd targets of the service replicas (one JSON list of groups)."""
    return run_dir() / "prometheus" / "targets" / "service.json"


def write_service_targets(addresses: list[str]) -> None:
    """Point Prometheus at these replicas (`host:port`); it rereads the file by itself
    (written atomically: it never reads half a file)."""
    target = service_targets_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    groups = [{"targets": [address], "labels": {"replica": address}} for address in addresses]
    atomic_write_text(target, json.dumps(groups, indent=1) + "\n")


def render_prometheus_config(interval: str | None = None, rules: Path | None = None) -> Path:
    """monitoring/prometheus.yml.in with this platform's ports and folders."""
    values = {
        "interval": interval or settings().scrape_interval,
        "rules": str(rules or MONITORING_DIR / "alerts.yml"),
        "service_targets": str(service_targets_file()),
        "prefect": f"127.0.0.1:{ports().prefect_port}",
        "prefect_password_file": str(prefect_secret_file()),
        "pushgateway": f"127.0.0.1:{ports().pushgateway_port}",
        "monitoring_user": MONITORING_USER,
        "monitoring_password": monitoring_password(),
    }
    text = string.Template((MONITORING_DIR / "prometheus.yml.in").read_text()).substitute(values)
    config = run_dir() / "prometheus" / "prometheus.yml"
    # Prometheus watches the targets' folder: it must exist when Prometheus starts.
    service_targets_file().parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(config, text)


def start_monitoring(platform: dict[str, Service]) -> None:
    require_debian_packages("prometheus", "prometheus-pushgateway", "apache2-utils")
    render_prometheus_config()
    write_web_configs()
    if not service_targets_file().exists():
        # No replica yet: scrape nothing until the first rollout records its replicas
        # (catdog_runtime.balancer rewrites this file whenever the replicas change).
        write_service_targets([])
    for name in SCALE_MONITORING:
        start(platform[name])
    for name in SCALE_MONITORING:
        wait_healthy(platform[name])


def main(argv: list[str]) -> int:
    actions = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in actions:
        print(f"usage: python -m catdog_runtime.services {'|'.join(actions)}", file=sys.stderr)
        return 2
    try:
        secure_run_dir()
        (run_dir() / "logs").mkdir(parents=True, exist_ok=True)
        actions[argv[0]]()
    except ServiceError as error:
        print(f"[services] ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
