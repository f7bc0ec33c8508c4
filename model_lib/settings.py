"""Every `CATDOG_*` setting of the platform, declared once: type, default, one-line doc.

One settings object in parts, each part the settings of one component, read from the
environment by pydantic-settings when a component builds it (never at import time):

- `ServiceSettings`: the BentoML service (bento/settings.py reads it);
- `PlatformSettings`: the runtime (catdog_runtime: services, balancer, run_deployment)
  and the flows' stores;
- `LoopSettings`: the closed loop and ingest (prefect.yaml reads some at deploy time);
- `ContainerSettings`: scripts/container/run.sh (shell; declared here for the table);
- `PortSettings`: the servers' ports (no `CATDOG_` prefix: `BENTO_PORT`, ...).

scripts/env.sh exports the defaults for shell commands; a unit test checks that its
defaults are these. README's configuration table is `markdown_table()` (a unit test
fails when they differ: `python -m model_lib.settings` prints it).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from model_lib.config import MODEL_NAME
from model_lib.preprocess import DEFAULT_MAX_PIXELS

MiB = 1024 * 1024
PREFIX = "CATDOG_"
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("environ", default=None)


def available_cpus(cgroup_root="/sys/fs/cgroup", proc_self="/proc/self") -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota.

    In a container (Kubernetes `resources.limits.cpu`, `docker --cpus`) the
    affinity is the whole node; the quota is what the process really gets."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(cgroup_root), Path(proc_self))
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path, proc_self: Path) -> float | None:
    """CPUs allowed by the tightest CFS quota on this process's cgroup or its
    ancestors (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None without one."""
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "0::/path"
            base, names = root, [("cpu.max", None)]
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            base = next((root / n for n in ("cpu", "cpu,cpuacct") if (root / n).is_dir()), None)
            names = [("cpu.cfs_quota_us", "cpu.cfs_period_us")]
            if base is None:
                continue
        else:
            continue
        folder = base / path.lstrip("/")
        for here in (folder, *folder.parents):
            if not here.is_relative_to(base):
                break
            for quota_name, period_name in names:
                quotas.append(_read_quota(here, quota_name, period_name))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _read_quota(folder: Path, quota_name: str, period_name: str | None) -> float | None:
    try:
        if period_name is None:  # v2: "max 100000" or "150000 100000"
            quota, period = (folder / quota_name).read_text().split()[:2]
        else:
            quota = (folder / quota_name).read_text().strip()
            period = (folder / period_name).read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


class _MappingSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self._environ = environ
        self.env_vars = self._load_env_vars()

    def _load_env_vars(self):
        environ = getattr(self, "_environ", os.environ)
        return parse_env_vars(
            environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class Part(BaseSettings):
    """One component's settings: `Part.from_env()` reads them, errors name the variable."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        environ = _ENVIRON.get()
        env = env_settings if environ is None else _MappingSource(settings_cls, environ)
        return (init_settings, env)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None):
        """Read from `environ` (default: os.environ); an empty value counts as unset."""
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as error:
            problems = "; ".join(
                f"{cls.variable(str(e['loc'][0]))}={e.get('input')!r}: {e['msg']}"
                for e in error.errors()
            )
            raise ValueError(f"bad setting: {problems}") from None
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def variable(cls, field: str) -> str:
        """The variable of `field` (a validation alias, e.g. PROFILE, is its own name)."""
        if field.isupper():
            return field
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def doc(text: str, shown: str | None = None, **kwargs: Any):
    """A field's one-line doc; `shown`: its default as the README shows it, when the
    default is derived (from the machine or other settings)."""
    extra = {"shown": shown} if shown is not None else None
    return Field(description=text, json_schema_extra=extra, **kwargs)


class ServiceSettings(Part):
    """The BentoML service (bento/service.py)."""

    model_tag: str = doc("BentoML model the service loads", default=f"{MODEL_NAME}:latest")
    max_upload_bytes: int = doc("largest upload accepted (413 beyond)", default=10 * MiB, ge=1)
    max_pixels: int = doc(
        "largest decoded image, in pixels (413 beyond)", default=DEFAULT_MAX_PIXELS, ge=1
    )
    # Thread and process layout (README, "Serving"): one worker process per core, ONNX
    # Runtime with one thread per call and as many parallel calls as cores, decode
    # threads for every core in each worker.
    workers: int = doc(
        "service worker processes", shown="one per core", default_factory=available_cpus, ge=1
    )
    batch_workers: int = doc(
        "parallel model calls", shown="one per core", default_factory=available_cpus, ge=1
    )
    decode_threads: int = doc(
        "decode threads per worker", shown="one per core", default_factory=available_cpus, ge=1
    )
    ort_threads: int = doc("ONNX Runtime threads per model call", default=1, ge=1)
    max_batch_size: int = doc("micro-batch size", default=32, ge=1)
    max_queue: int = doc("requests waiting for the model (503 beyond)", default=512, ge=1)
    max_in_flight: int = doc("uploads in progress per worker (503 beyond)", default=256, ge=1)
    max_in_flight_bytes: int = doc(
        "bytes of the uploads in progress per worker (503 beyond)", default=64 * MiB, ge=1
    )
    # Reserved from each image's header before a pixel is decoded (the decoded image
    # plus one working copy: model_lib.preprocess.Header.cost).
    max_decoded_bytes: int = doc(
        "bytes one worker's images may take while they decode", default=256 * MiB, ge=1
    )
    decode_wait_seconds: int = doc(
        "seconds a request waits for decode room, then 503", default=10, ge=1
    )
    # A client trickling a 10 MB body would otherwise hold its share of the byte budget.
    upload_timeout_seconds: int = doc(
        "seconds the whole body may take to arrive after the headers (408 beyond)",
        default=60,
        ge=1,
    )
    inference_log_queue: int = doc(
        "records waiting for their statistics (0 turns the inference log off)", default=1024, ge=0
    )
    inference_log_retention_days: int = doc(
        "inference-log rows older than this are deleted in the background (0: kept)",
        default=30,
        ge=0,
    )
    inference_log_max_rows: int = doc(
        "all but this many of the newest inference-log rows are deleted (0: no limit)",
        default=1_000_000,
        ge=0,
    )
    neither_threshold: float | None = doc(
        "lowest pet score answered with a pet (0..1): overrides the threshold stored with "
        "the model; below it the answer is `neither`",
        shown="the model's",
        default=None,
        ge=0.0,
        le=1.0,
    )


class PlatformSettings(Part):
    """The runtime (catdog_runtime) and the stores the flows and the service share."""

    root: Path | None = doc("the project folder", shown="this checkout", default=None)
    run_dir: Path | None = doc(
        "state: pids, logs, SQLite databases, MLflow artifacts", shown=".run/", default=None
    )
    secrets_dir: Path | None = doc(
        "generated credentials, one 0600 file each (scripts/env.sh)",
        shown=".run/secrets/",
        default=None,
    )
    profile: Literal["default", "scale"] = doc(
        "`scale`: PostgreSQL, 2 workers, Prometheus (also `PROFILE`)",
        default="default",
        validation_alias=AliasChoices("CATDOG_PROFILE", "PROFILE"),
    )
    work_pool: str = doc("the process work pool the worker serves", default="local")
    service_url: str | None = doc(
        "where clients and `evaluate/scheduled` send photos",
        shown="http://127.0.0.1:$CATDOG_PLATFORM_PORT",
        default=None,
    )
    inference_log: str | None = doc(
        "the inference log: a SQLite path or a postgresql:// URL",
        shown=".run/inference_log.sqlite",
        default=None,
    )
    start_timeout: int = doc(
        "seconds `make up` / `make serve` wait for a server to become healthy", default=600, ge=1
    )
    pickup_timeout: int = doc(
        "seconds a make target waits for a worker to pick its run up", default=300, ge=1
    )
    run_timeout: int = doc("seconds a make target waits for its run to end", default=7200, ge=1)
    api_patience: int = doc(
        "seconds a Prefect API call that times out or answers 5xx is retried", default=300, ge=1
    )
    platform_port: int | None = doc(
        "HAProxy's 127.0.0.1 frontend for the platform's own traffic (keeps X-Catdog-Source)",
        shown="$BENTO_PORT + 1",
        default=None,
    )
    lb_client_rate: int = doc(
        "requests per client per 10 s on the public frontend (429 beyond)", default=2000, ge=1
    )
    lb_client_conns: int = doc(
        "connections per client on the public frontend (429 beyond)", default=64, ge=1
    )
    lb_bufsize: int = doc("HAProxy's buffer size (bytes)", default=131072, ge=1)
    lb_replay_dropped: bool = doc(
        "HAProxy replays once, on another replica, a request whose replica closed the"
        " connection without answering (killed mid-request)",
        default=True,
    )
    lb_maxconn: int = doc("HAProxy's connection limit", default=512, ge=1)
    pg_port: int = doc("PostgreSQL's port (scale profile)", default=5433, ge=1)
    pg_bin: Path | None = doc(
        "folder of PostgreSQL's programs", shown="newest /usr/lib/postgresql/*/bin", default=None
    )
    prefect_workers: int = doc("process workers on the pool (scale profile)", default=2, ge=1)
    mlflow_backend_uri: str | None = doc(
        "MLflow's backend store", shown="SQLite (scale: PostgreSQL)", default=None
    )
    pushgateway_url: str | None = doc(
        "the evaluate flow pushes its figures there", shown="set by the scale profile", default=None
    )
    scrape_interval: str = doc("Prometheus scrape interval (scale profile)", default="15s")
    monitoring_password: str | None = doc(
        "password of user `catdog` on Prometheus and the Pushgateway (scale profile)",
        shown="generated: .run/secrets/monitoring",
        default=None,
    )


class LoopSettings(Part):
    """The closed loop (prefect.yaml's automations) and ingest."""

    loop: str = doc(
        "the loop switch, applied at deploy time (`make loop-on` / `loop-off`)",
        shown="on (or .run/loop)",
        default="on",
    )
    loop_enabled: bool = doc("derived from CATDOG_LOOP by scripts/env.sh", default=True)
    retrain_cooldown: str = doc(
        "one alarm-driven retraining per this ISO 8601 duration", default="PT6H"
    )
    rollout_delay: str = doc(
        "a new bento is rolled out this long after it is built (veto window)", default="PT10M"
    )
    max_neither_share: float = doc(
        "share of `neither` answers in the evaluation window above which `evaluate` warns "
        "(no retraining)",
        default=0.2,
        ge=0.0,
        le=1.0,
    )
    data_dir: Path = doc("where `ingest/labelled` adds photos", default=Path("data"))
    dvc_remote: str = doc("the DVC remote ingest pushes to", default="catdog-local")
    test_ingest_kill_at: str | None = doc(
        "fault-injection tests only: the ingest step at which ingest SIGKILLs itself",
        default=None,
    )
    test_rollout_kill_at: str | None = doc(
        "fault-injection tests only: the rollout step (`switched`: traffic moved, the "
        "production alias not yet) at which the deploy flow SIGKILLs itself",
        default=None,
    )
    loop_screenshots: Path | None = doc(
        "folder where tests/integration/test_loop.py saves the UI's automations page",
        default=None,
    )


class ContainerSettings(Part):
    """scripts/container/run.sh (read by the shell script; declared here)."""

    container_name: str | None = doc(
        "name of the container run.sh starts", shown="catdog-PORT-TIME", default=None
    )
    publish_host: str = doc("interface the container's port is published on", default="127.0.0.1")


class PortSettings(Part):
    """The servers' ports (variables without the CATDOG_ prefix)."""

    model_config = SettingsConfigDict(env_prefix="", frozen=True, extra="ignore")

    prefect_port: int = doc("Prefect server", default=4200, ge=1)
    mlflow_port: int = doc("MLflow server", default=5000, ge=1)
    bento_port: int = doc("the balancer in front of the service replicas", default=3000, ge=1)
    prometheus_port: int = doc("Prometheus (scale profile)", default=9090, ge=1)
    pushgateway_port: int = doc("Pushgateway (scale profile)", default=9091, ge=1)


PARTS: tuple[type[Part], ...] = (
    ServiceSettings,
    PlatformSettings,
    LoopSettings,
    ContainerSettings,
    PortSettings,
)


def shown_default(field) -> str:
    extra = field.json_schema_extra or {}
    if "shown" in extra:
        return str(extra["shown"])
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"{value // MiB} MiB"
    return str(value)


def type_name(annotation) -> str:
    """`int`, `path or none`, `default or scale`: a type as the README table shows it."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return " or ".join(map(str, args))
    if args:
        return " or ".join(type_name(arg) for arg in args)
    return "none" if annotation is type(None) else annotation.__name__.lower()


def catalog() -> list[tuple[str, str, str, str]]:
    """(variable, type, default as shown, doc) of every setting, part by part."""
    rows = []
    for part in PARTS:
        for name, field in part.model_fields.items():
            kind = type_name(field.annotation)
            rows.append((part.variable(name), kind, shown_default(field), field.description))
    return rows


def catdog_variables() -> list[str]:
    return [variable for variable, *_ in catalog() if variable.startswith(PREFIX)]


def markdown_table() -> str:
    """README's configuration table, with the count of `CATDOG_*` settings under it."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{v}` | {t} | {d} | {m} |" for v, t, d, m in catalog()]
    ports = len(PortSettings.model_fields)
    lines += ["", f"{len(catdog_variables())} `CATDOG_*` settings, and {ports} ports."]
    return "\n".join(lines) + "\n"


README_TABLE_START = "<!-- settings table: generated by `python -m model_lib.settings` -->"
README_TABLE_END = "<!-- end of settings table -->"


def readme_with_table(readme: str) -> str:
    """README's text with the configuration table between its markers regenerated."""
    head, rest = readme.split(README_TABLE_START, 1)
    tail = rest.split(README_TABLE_END, 1)[1]
    return f"{head}{README_TABLE_START}\n\n{markdown_table().strip()}\n\n{README_TABLE_END}{tail}"


if __name__ == "__main__":
    # `--readme PATH` rewrites that README's table in place; without it, print the table.
    if sys.argv[1:2] == ["--readme"]:
        path = Path(sys.argv[2])
        path.write_text(readme_with_table(path.read_text()))
    else:
        sys.stdout.write(markdown_table())
