"""The platform as `make up` starts it (catdog_runtime.services), on free ports in a temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catdog_runtime.postgres import environment_set
from catdog_runtime.processes import BIN, ROOT, free_port


def platform_env(run_dir: Path, bin_dir: Path = BIN, **settings: str) -> dict:
    """The environment scripts/env.sh gives every command, for a platform in `run_dir`
    on free ports; none of the caller's platform settings leak in."""
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
        **settings,
    )
    script = f". {ROOT}/scripts/env.sh && env -0"
    raw = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=True).stdout
    derived = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    return {**derived, "PATH": f"{bin_dir}{os.pathsep}{derived['PATH']}"}


def services_cli(env: dict, action: str, python: str = sys.executable, timeout: float = 1200):
    """`make up|down|status|serve`: python -m catdog_runtime.services ACTION in `env`."""
    return subprocess.run(
        [python, "-m", "catdog_runtime.services", action],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def scale_platform_up(**settings: str) -> Iterator[dict]:
    """`make up PROFILE=scale` on free ports in a temp run dir; yields {"env", "run_dir", "up"}
    (`up`: what `services up` printed). Stopped (`make down`) and removed afterwards."""
    # Under /tmp with mode 755: root runs PostgreSQL as the `postgres` OS user.
    parent = Path(tempfile.mkdtemp(prefix="catdog-scale-"))
    parent.chmod(0o755)
    run_dir = parent / "run"
    env = platform_env(
        run_dir,
        **{
            "PROFILE": "scale",
            "CATDOG_PG_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(free_port()),
            "PUSHGATEWAY_PORT": str(free_port()),
            **settings,
        },
    )
    try:
        started = services_cli(env, "up")
        assert started.returncode == 0, started.stdout + started.stderr
        # The test's own PostgreSQL clients (psycopg, InferenceLog) find the roles' passwords.
        with environment_set(PGPASSFILE=env["PGPASSFILE"]):
            yield {"env": env, "run_dir": run_dir, "up": started.stdout + started.stderr}
    finally:
        stopped = services_cli(env, "down")
        print(stopped.stdout, stopped.stderr)
        shutil.rmtree(parent, ignore_errors=True)


MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def log_into_mlflow(monkeypatch, env: dict) -> None:
    """This process's MLflow clients (MlflowClient, mlflow.*) log in as the platform of
    `env` does: MLflow reads the credentials from the environment at each request."""
    for name in MLFLOW_CREDENTIALS:
        monkeypatch.setenv(name, env[name])
