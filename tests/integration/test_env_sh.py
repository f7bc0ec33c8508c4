"""scripts/env.sh, run by bash (a process: not a unit test)."""

from __future__ import annotations

import subprocess

from catdog_runtime.processes import ROOT


def test_env_sh_selects_postgresql_only_in_the_scale_profile(tmp_path):
    def settings(profile: str) -> dict:
        script = (
            f"PROFILE={profile} CATDOG_RUN_DIR={tmp_path} . scripts/env.sh && "
            "echo $CATDOG_INFERENCE_LOG; echo ${PREFECT_SERVER_DATABASE_CONNECTION_URL:-none}"
        )
        out = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
        )
        log, prefect_db = out.stdout.split()
        return {"log": log, "prefect_db": prefect_db}

    assert settings("default") == {"log": f"{tmp_path}/inference_log.sqlite", "prefect_db": "none"}
    scale = settings("scale")
    assert scale["log"] == "postgresql://catdog@127.0.0.1:5433/catdog"
    assert scale["prefect_db"] == "postgresql+asyncpg://catdog@127.0.0.1:5433/prefect"
