"""The PostgreSQL cluster's authentication files and the pgpass lookup (catdog_runtime.postgres)."""

from __future__ import annotations

import pytest

from catdog_runtime import postgres


def test_the_cluster_trusts_nobody_and_asks_every_tcp_login_for_a_password():
    hba = postgres.hba_conf()
    assert not postgres.trusts_anyone(hba)
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "catdog", "peer", f"map={postgres.PEER_MAP}"],
        ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"],
    ]
    # What `initdb --auth=trust` wrote before: refused at start (services.start_postgres).
    assert postgres.trusts_anyone("# comment\nhost all all 127.0.0.1/32 trust  # note\n")
    assert not postgres.trusts_anyone("# trust in a comment only\n")


def test_pgpass_lookup_by_role(tmp_path, monkeypatch):
    passfile = tmp_path / "pgpass"
    passfile.write_text(
        "other:5432:*:prefect:elsewhere\n127.0.0.1:*:*:prefect:p1\n*:*:*:mlflow:m1\n"
    )
    assert postgres.pgpass_password("prefect", passfile) == "p1"
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert postgres.pgpass_password("mlflow") == "m1"
    with pytest.raises(postgres.PostgresSetupError, match="no password for PostgreSQL role"):
        postgres.pgpass_password("inference_log")
    monkeypatch.delenv("PGPASSFILE")
    with pytest.raises(postgres.PostgresSetupError, match="PGPASSFILE is not set"):
        postgres.pgpass_password("mlflow")
