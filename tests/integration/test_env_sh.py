"""scripts/env.sh, run by bash (a process: not a unit test)."""

from __future__ import annotations

import subprocess

from catdog_runtime.processes import ROOT


def test_env_sh_selects_postgresql_only_in_the_scale_profile(tmp_path):
    def settings(profile: str) -> dict:
        script = (
            f"PROFILE={profile} CATDOG_RUN_DIR={tmp_path} . scripts/env.sh && "
            "echo $CATDOG_INFERENCE_LOG; echo ${PREFECT_SERVER_DATABASE_CONNECTION_URL:-none}; "
            "echo ${PGPASSFILE:-none}; echo ${CATDOG_MONITORING_PASSWORD:-none}"
        )
        out = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
        )
        log, prefect_db, passfile, monitoring = out.stdout.split()
        return {"log": log, "prefect_db": prefect_db, "pgpass": passfile, "monitoring": monitoring}

    assert settings("default") == {
        "log": f"{tmp_path}/inference_log.sqlite",
        "prefect_db": "none",
        "pgpass": "none",
        "monitoring": "none",
    }
    scale = settings("scale")
    # Each database's own role, and no password in the URL: it is in PGPASSFILE.
    assert scale["log"] == "postgresql://inference_log@127.0.0.1:5433/catdog"
    assert scale["prefect_db"] == "postgresql+asyncpg://prefect@127.0.0.1:5433/prefect"
    secrets = tmp_path / "secrets"
    assert scale["pgpass"] == str(secrets / "pgpass")
    assert (secrets / "pgpass").stat().st_mode & 0o777 == 0o600
    assert (secrets / "pgpass").read_text().splitlines() == [
        f"127.0.0.1:*:*:{role}:{(secrets / f'postgres-{role}').read_text()}"
        for role in ("catdog", "prefect", "mlflow", "inference_log")
    ]
    assert scale["monitoring"] == (secrets / "monitoring").read_text()
    assert settings("scale") == scale  # made once, the same on every later source
