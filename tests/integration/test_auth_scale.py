"""PROFILE=scale refuses whoever lacks the platform's credentials (issue 21, README "Security").

`catdog_runtime.services up` with PROFILE=scale on free ports (no training: the servers
alone), then, as an outsider would try: PostgreSQL over TCP without a password, each
database role on another's database, the inference log's role beyond its rights;
Prometheus and the Pushgateway without credentials. And what the platform must never
expose: a secret in a process's command line, a pid file or a log; a file under the
run dir that other users can open.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from psycopg import errors

from catdog_runtime.waits import poll
from model_lib.inference_log import InferenceLog, Retention
from model_lib.pushgateway import USER, push_evaluation
from tests.integration.platform import scale_platform_up
from tests.unit.test_inference_log import record

# database -> the role its server connects as (catdog_runtime/postgres.py)
ROLES = {"prefect": "prefect", "mlflow": "mlflow", "catdog": "inference_log"}


@pytest.fixture(scope="module")
def scale():
    # Scrape every second: the Pushgateway's scrape is checked below.
    with scale_platform_up(CATDOG_SCRAPE_INTERVAL="1s") as platform:
        yield platform


def secrets_of(platform) -> dict[str, str]:
    """Every generated secret's value, by file name (scripts/env.sh's catdog_secret)."""
    folder = Path(platform["env"]["CATDOG_SECRETS_DIR"])
    found = {path.name: path.read_text().strip() for path in folder.iterdir()}
    found.pop("pgpass")  # their lines: the postgres-* secrets
    assert {"postgres-catdog", "postgres-prefect", "monitoring"} <= set(found)
    assert all(len(value) >= 32 for value in found.values())
    return found


def connect(platform, role: str, database: str, **kwargs):
    env = platform["env"]
    return psycopg.connect(
        host="127.0.0.1",
        port=int(env["CATDOG_PG_PORT"]),
        user=role,
        dbname=database,
        connect_timeout=10,
        **kwargs,
    )


# ------------------------------------------------------------------ PostgreSQL
@pytest.mark.parametrize("role", ["catdog", *ROLES.values()])
def test_postgres_refuses_tcp_logins_without_the_password(scale, role, tmp_path):
    database = next((db for db, r in ROLES.items() if r == role), "postgres")
    empty = tmp_path / "empty-pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        connect(scale, role, database, passfile=str(empty))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(scale, role, database, password="not-the-password")
    # The platform's own: the password in PGPASSFILE (a 0600 file, not in a URL).
    with connect(scale, role, database) as connection:
        assert connection.execute("SELECT current_user").fetchone() == (role,)


def test_each_role_reaches_its_own_database_only(scale):
    for database, role in ROLES.items():
        with connect(scale, role, database) as connection:
            (superuser,) = connection.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert superuser is False, role
        for other in (*ROLES, "postgres"):
            if other != database:
                with pytest.raises(psycopg.OperationalError, match="permission denied"):
                    connect(scale, role, other)


def test_a_database_owner_cannot_run_programs(scale):
    """The issue's escalation (COPY ... FROM PROGRAM: a shell as the server's OS user)."""
    with connect(scale, "prefect", "prefect") as connection:
        with pytest.raises(errors.InsufficientPrivilege):
            connection.execute("COPY (SELECT 1) TO PROGRAM 'true'")


def test_the_inference_log_role_reads_inserts_and_prunes_only(scale):
    url = scale["env"]["CATDOG_INFERENCE_LOG"]
    assert "inference_log@" in url and ":" not in url.split("//", 1)[1].split("@", 1)[0]
    log = InferenceLog(url)  # as the service and the evaluate flow use it
    log.append_many([record("auth-a"), record("auth-b")])
    assert len(log.query(None, ())) == 2
    # DELETE: the service's retention (Retention) is the one deletion it makes.
    assert log.prune(Retention(max_age_days=0, max_rows=1)) == 1
    log.close()
    forbidden = [
        "UPDATE inferences SET label = 'cat'",
        "DROP TABLE inferences",
        "TRUNCATE inferences",
        "ALTER TABLE inferences ADD COLUMN x REAL",
        "CREATE TABLE other (x INT)",
        "CREATE INDEX inferences_label ON inferences (label)",
    ]
    with connect(scale, "inference_log", "catdog", autocommit=True) as connection:
        for statement in forbidden:
            with pytest.raises(errors.InsufficientPrivilege):
                connection.execute(statement)
        (rows,) = connection.execute("SELECT count(*) FROM inferences").fetchone()
    assert rows == 1


# ------------------------------------------------------------------ Prometheus, Pushgateway
def test_prometheus_and_pushgateway_ask_for_the_platform_password(scale):
    env = scale["env"]
    auth = (USER, env["CATDOG_MONITORING_PASSWORD"])
    pushgateway = env["CATDOG_PUSHGATEWAY_URL"]
    prometheus = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}"
    reads = [f"{pushgateway}/metrics", f"{prometheus}/api/v1/query?query=up"]
    for url in reads:
        assert httpx.get(url, timeout=10).status_code == 401, url
        assert httpx.get(url, auth=(USER, "wrong"), timeout=10).status_code == 401, url
        assert httpx.get(url, auth=auth, timeout=10).status_code == 200, url
    # The forgery: PUT and DELETE of the evaluation's figures.
    group = f"{pushgateway}/metrics/job/catdog-evaluate"
    forged = "catdog_evaluation_accuracy 1\n"
    assert httpx.put(group, content=forged, timeout=10).status_code == 401
    assert httpx.delete(group, timeout=10).status_code == 401
    with pytest.raises(Exception, match="401"):
        push_evaluation(pushgateway, password="wrong", **FIGURES)

    # The evaluate flow's push (password from CATDOG_MONITORING_PASSWORD) and
    # Prometheus's scrape of it both authenticate.
    push_evaluation(pushgateway, password=env["CATDOG_MONITORING_PASSWORD"], **FIGURES)

    def scraped() -> list:
        query = {"query": 'catdog_evaluation_accuracy{job="catdog-evaluate"}'}
        answer = httpx.get(f"{prometheus}/api/v1/query", params=query, auth=auth, timeout=10)
        return answer.json()["data"]["result"]

    result = poll(scraped, bool, 120, interval=1)
    assert [float(r["value"][1]) for r in result] == [FIGURES["accuracy"]]


FIGURES = {
    "accuracy": 0.93,
    "min_accuracy": 0.85,
    "errors": 0,
    "requests": 10,
    "window_requests": 0,
}


# ------------------------------------------------------------------ secrets, files
def exposed_in(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def secret_leaks(platform) -> list[tuple[str, str]]:
    """(where, which secret) for every secret in a process's argv (any process on the
    machine), a pid file, a log of the run dir, or what `services up` printed."""
    secrets = secrets_of(platform)
    leaks = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        leaks += [(f"pid {process.info['pid']} argv", n) for n in exposed_in(command, secrets)]
    run_dir = platform["run_dir"]
    written = [*run_dir.glob("*.pid"), *(p for p in (run_dir / "logs").rglob("*") if p.is_file())]
    assert any(p.suffix == ".pid" for p in written) and any(p.suffix == ".log" for p in written)
    for path in written:
        leaks += [(str(path), n) for n in exposed_in(path.read_text(errors="replace"), secrets)]
    leaks += [("`services up` output", n) for n in exposed_in(platform["up"], secrets)]
    return leaks


def open_to_others(run_dir: Path) -> list[str]:
    """What under `run_dir` a user other than its owner can open: a path with group or
    other permission bits whose folders all let such a user through. A 0700 run dir
    closes everything below it (files copied with their modes, like the bento store's,
    stay unreachable); root's 0710 one lets the `postgres` group into postgres/ alone."""
    found = []

    def walk(folder: Path) -> None:
        for path in folder.iterdir():
            info = path.lstat()
            shared = info.st_mode & 0o077
            if stat.S_ISLNK(info.st_mode) or not shared:
                continue
            if path == run_dir / "postgres" and shared == 0o010:  # PostgreSQL's way in
                walk(path)
                continue
            found.append(f"{path} {oct(info.st_mode & 0o777)}")
            if stat.S_ISDIR(info.st_mode) and shared & 0o011:
                walk(path)

    if run_dir.stat().st_mode & 0o011:
        walk(run_dir)
    return found


def test_no_secret_in_command_lines_pid_files_or_logs(scale):
    assert secret_leaks(scale) == []


def test_the_run_dir_is_owner_only(scale):
    """Nothing under the run dir opens for other users: logs, pid files, databases,
    secrets, configs. Root's run dir lets the `postgres` group pass (x), not list."""
    run_dir = scale["run_dir"]
    mode = run_dir.stat().st_mode & 0o777
    if os.geteuid() == 0:
        assert mode == 0o710 and run_dir.stat().st_gid == grp.getgrnam("postgres").gr_gid
    else:
        assert mode == 0o700
    assert open_to_others(run_dir) == []
    # Every state folder of the platform is under it.
    env = scale["env"]
    for name in ("PREFECT_HOME", "BENTOML_HOME", "CATDOG_SECRETS_DIR", "PGPASSFILE"):
        assert Path(env[name]).is_relative_to(run_dir), name
    secrets_dir = Path(scale["env"]["CATDOG_SECRETS_DIR"])
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in secrets_dir.iterdir()} == {0o600}
