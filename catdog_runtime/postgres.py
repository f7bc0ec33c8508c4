"""The platform's PostgreSQL roles and rights, and a throwaway cluster (tests, bench).

catdog_runtime.services (start_postgres) runs initdb and the server; `provision` here
gives each database its own role (README "Security", PostgreSQL):

- `prefect` owns the database prefect, `mlflow` the database mlflow: their servers
  create and migrate their own tables there, and reach nothing else;
- the database catdog (the inference log) belongs to the admin; its role
  `inference_log` may SELECT, INSERT and DELETE rows of the one table (DELETE: the
  service's retention, model_lib.inference_log.Retention), no DDL, no UPDATE;
- no role but the admin may connect to a database not its own (CONNECT revoked from PUBLIC).

Passwords come from the 0600 pgpass file named by $PGPASSFILE (scripts/env.sh writes
it from `catdog_secret`); clients find theirs there too (libpq and asyncpg read it),
so no password is in a URL, a command line or a log. They are set again at every
start, which is how a deleted (rotated) secret takes effect. The admin (superuser)
connects through the Unix socket in an owner-only folder, authenticated as the OS
user that started the platform (peer), so it needs no password itself.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catdog_runtime.processes import free_port
from model_lib.files import atomic_write_text

ADMIN = "catdog"  # the cluster's superuser: provisioning only
# database -> the role its clients log in as
ROLES = {"prefect": "prefect", "mlflow": "mlflow", "catdog": "inference_log"}
INFERENCE_DATABASE = "catdog"
INFERENCE_RIGHTS = "SELECT, INSERT, DELETE"
PEER_MAP = "catdog"  # pg_ident.conf's map: the starting OS user may log in as ADMIN


class PostgresSetupError(RuntimeError):
    """The cluster cannot be prepared; the message says what to do."""


def pgpass_password(role: str, passfile: str | os.PathLike | None = None) -> str:
    """The password of `role` for 127.0.0.1 in the pgpass file ($PGPASSFILE)."""
    path = passfile or os.environ.get("PGPASSFILE")
    if not path:
        raise PostgresSetupError("PGPASSFILE is not set: source scripts/env.sh (PROFILE=scale)")
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise PostgresSetupError(f"cannot read PGPASSFILE {path}: {error.strerror}") from None
    for line in lines:
        fields = line.split(":", 4)  # our passwords are alphanumeric: no escapes
        if len(fields) == 5 and fields[0] in ("127.0.0.1", "*") and fields[3] == role:
            return fields[4]
    raise PostgresSetupError(f"no password for PostgreSQL role {role!r} in {path}")


def hba_conf() -> str:
    return (
        "# Written by catdog_runtime/services.py when the cluster was made (README 'Security').\n"
        "# Socket (owner-only folder): the admin, as the OS user that started the platform.\n"
        f"local all {ADMIN} peer map={PEER_MAP}\n"
        "# TCP, 127.0.0.1 only: every role with its password.\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )


def trusts_anyone(hba: str) -> bool:
    """Whether a pg_hba.conf lets some connection in without authentication."""
    rules = (line.split("#", 1)[0].split() for line in hba.splitlines())
    return any(rule and rule[-1] == "trust" for rule in rules)


def ident_conf() -> str:
    return f"{PEER_MAP} {pwd.getpwuid(os.geteuid()).pw_name} {ADMIN}\n"


def admin_connection(socket_dir: Path, port: int, database: str = "postgres"):
    import psycopg

    return psycopg.connect(
        host=str(socket_dir), port=port, user=ADMIN, dbname=database, autocommit=True
    )


def provision(socket_dir: Path, port: int, passfile: str | None = None) -> None:
    """Roles, passwords, databases, rights and the inference-log table; idempotent."""
    import psycopg

    try:
        grant_rights(socket_dir, port, passfile)
    except psycopg.Error as error:
        raise PostgresSetupError(f"cannot provision PostgreSQL roles: {error}") from None


def grant_rights(socket_dir: Path, port: int, passfile: str | None) -> None:
    from psycopg import sql

    from model_lib.inference_log import TABLE, create_postgres_table

    with admin_connection(socket_dir, port) as admin:
        for role in (ADMIN, *ROLES.values()):
            if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            # Hashed here (libpq), so the statement, were it ever logged, holds no password.
            verifier = admin.pgconn.encrypt_password(
                pgpass_password(role, passfile).encode(), role.encode(), b"scram-sha-256"
            ).decode()
            admin.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(verifier)
                )
            )
        existing = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
        for database, role in ROLES.items():
            owner = ADMIN if database == INFERENCE_DATABASE else role
            name = sql.Identifier(database)
            if database not in existing:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(name, sql.Identifier(owner))
                )
            admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
            admin.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(name, sql.Identifier(role))
            )
        for database in ("postgres", "template1"):
            admin.execute(
                sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(database)
                )
            )
    with admin_connection(socket_dir, port, INFERENCE_DATABASE) as admin:
        create_postgres_table(admin)
        role = sql.Identifier(ROLES[INFERENCE_DATABASE])
        admin.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(INFERENCE_RIGHTS), sql.Identifier(TABLE), role
            )
        )
        admin.execute(
            sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                sql.Identifier(f"{TABLE}_id_seq"), role
            )
        )


# ------------------------------------------------------------------ a throwaway cluster
@contextmanager
def environment_set(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yields the admin's base URL `postgresql://catdog@127.0.0.1:PORT` (databases of ROLES).

    While it runs, $PGPASSFILE names the cluster's own pgpass file (random
    passwords), so the URL and those of ROLES' roles connect without a password in them.
    """
    from catdog_runtime import services

    # Under /tmp with mode 755, not pytest's 700 tmp_path: root runs the server
    # as the `postgres` OS user, which must be able to enter the folder.
    folder = Path(tempfile.mkdtemp(prefix="catdog-pg-"))
    folder.chmod(0o755)
    passfile = folder / "pgpass"
    atomic_write_text(
        passfile,
        "".join(
            f"127.0.0.1:*:*:{role}:{secrets.token_hex(16)}\n" for role in (ADMIN, *ROLES.values())
        ),
    )
    port = free_port()
    service = None
    with environment_set(PGPASSFILE=str(passfile)):
        try:
            with environment_set(CATDOG_RUN_DIR=str(folder)):
                (folder / "logs").mkdir()
                service = services.postgres_service(port)
                services.start_postgres(service)
            yield f"postgresql://{ADMIN}@127.0.0.1:{port}"
        finally:
            if service is not None:
                with environment_set(CATDOG_RUN_DIR=str(folder)):
                    services.stop(service)
            shutil.rmtree(folder, ignore_errors=True)
