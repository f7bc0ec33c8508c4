"""The inference log on PostgreSQL: `InferenceLog("postgresql://...")` (PROFILE=scale).

Same records, same interface and the same table name as the SQLite file
(model_lib/inference_log.py); several service replicas, on any host, append
to one table while the evaluation flow reads a time window across all of them.
A batch is one transaction: once `append_many` returns, its rows survive the
writer process being killed. psycopg 3 only (no SQLAlchemy, no torch): the
serving path stays light.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import (
    _SQL_TYPES,
    COLUMNS,
    ENV_PATH,
    RECORD_COLUMNS,
    TABLE,
    InferenceLog,
    empty_frame,
    window_filter,
    with_utc_timestamps,
)

logger = logging.getLogger("catdog.inference_log")
CONNECT_TIMEOUT_SECONDS = 10
# A statement that waits longer than this (a lock, an overloaded server) fails
# instead of holding a request's log batch, or the evaluation, forever.
STATEMENT_TIMEOUT_MS = 60_000
# Any constant: serialises schema creation across processes that start together
# (concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL's catalog).
_SCHEMA_LOCK_KEY = 0x6361_7464_6F67  # "catdog"
_PG_TYPES = {"REAL NOT NULL": "DOUBLE PRECISION NOT NULL", "TEXT NOT NULL": "TEXT NOT NULL"}


def redacted(url: str) -> str:
    """The URL without its password (it appears in logs and the service's status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class InferenceLogUnavailable(RuntimeError):
    """The PostgreSQL server of the inference log cannot be reached."""


class PostgresInferenceLog(InferenceLog):
    """Append-only PostgreSQL table of per-request records (see InferenceLog)."""

    def __init__(self, path: str | None = None):
        self.url = str(path if path is not None else os.environ[ENV_PATH])
        self.path = redacted(self.url)  # what logs and the service's status show
        self._schema_ready = False
        self._lock = threading.Lock()
        self._writer = None

    def _connect(self):
        import psycopg

        try:
            connection = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                application_name="catdog-inference-log",
            )
        except psycopg.OperationalError as exc:
            raise InferenceLogUnavailable(
                f"inference log at {self.path} is unreachable ({str(exc).strip()}); "
                "is PostgreSQL running (make up PROFILE=scale) and CATDOG_INFERENCE_LOG right?"
            ) from exc
        return connection

    def _ensure_schema(self, connection) -> None:
        if self._schema_ready:
            return
        columns = ", ".join(
            [f"{name} {_PG_TYPES[_SQL_TYPES[name]]}" for name in RECORD_COLUMNS]
            + [f"{name} DOUBLE PRECISION" for name in STAT_COLUMNS]
        )
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGSERIAL PRIMARY KEY, {columns})"
            )
            connection.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (timestamp)")
            for name in STAT_COLUMNS:  # a table from before a statistic was added
                connection.execute(
                    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} DOUBLE PRECISION"
                )
        self._schema_ready = True

    def append_many(self, records: Iterable[dict]) -> int:
        """Append records in one transaction; returns how many."""
        import psycopg

        rows = [self._row(r) for r in records]
        if not rows:
            return 0
        insert = (
            f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('%s' for _ in COLUMNS)})"
        )
        with self._lock:
            # One connection kept open per log; a server restart breaks it, so a
            # failed batch is retried once on a fresh connection.
            for attempt in (1, 2):
                try:
                    if self._writer is None or self._writer.closed:
                        self._writer = self._connect()
                        self._ensure_schema(self._writer)
                    with self._writer.transaction(), self._writer.cursor() as cursor:
                        cursor.executemany(insert, rows)
                    return len(rows)
                except psycopg.OperationalError:
                    self._close_writer()
                    if attempt == 2:
                        raise
                    logger.warning("inference log connection lost; reconnecting to %s", self.path)
        raise AssertionError("unreachable")

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        """Close the writing connection (appending again reopens it)."""
        with self._lock:
            self._close_writer()

    def query(self, since=None, exclude_sources=("evaluation",)) -> list[tuple]:
        """Rows of `COLUMNS` (oldest first), timestamps in unix seconds; see `read`."""
        where, params = window_filter(since, exclude_sources, "%s")
        with self._connect() as connection:
            exists = connection.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0]
            if exists is None:  # nothing logged yet
                return []
            # The binary protocol skips parsing every float from text (10 k rows
            # x 20 columns per evaluation window).
            with connection.cursor(binary=True) as cursor:
                cursor.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY id", params
                )
                return cursor.fetchall()

    def read(self, since=None, exclude_sources=("evaluation",)):
        """Records (oldest first) as a pandas DataFrame; see InferenceLog.read."""
        import pandas as pd

        rows = self.query(since, exclude_sources)
        if not rows:
            return empty_frame()
        return with_utc_timestamps(pd.DataFrame(rows, columns=list(COLUMNS)))
