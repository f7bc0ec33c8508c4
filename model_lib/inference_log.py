"""The inference log: one row per classified request, never the image itself (torch-free).

An append-only SQLite file in WAL mode: several service worker processes can
append at once while the monitoring flow reads, and rows survive restarts.
With a PostgreSQL URL instead of a path (`CATDOG_INFERENCE_LOG=postgresql://...`,
PROFILE=scale) the same interface writes to a PostgreSQL table
(`PostgresInferenceLog`, below: psycopg 3, one transaction a batch, so rows a
writer committed survive it being killed), and replicas on several hosts share
one log.
Each row holds the request's image statistics (`image_stats.STAT_COLUMNS`),
the prediction, the model version, a UTC timestamp, the request id and the
`source` ("user", or "evaluation" for the evaluation flow's own traffic).

`InferenceRecorder` keeps the statistics off a request's latency path: the
service hands it the decoded image, a background thread computes the
statistics and writes rows in batches. Its queue is bounded (by count and by
pixels); when full, records are dropped and counted instead of slowing
requests down.

Serving needs no pandas: `query` returns plain rows, which
`monitoring.inference_frame` turns into a DataFrame.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from model_lib.image_stats import STAT_COLUMNS, image_statistics

ENV_PATH = "CATDOG_INFERENCE_LOG"
DEFAULT_PATH = Path(".run") / "inference_log.sqlite"
TABLE = "inferences"
EVALUATION_SOURCE = "evaluation"  # test_images/ scored by the evaluate and deploy flows
BENCHMARK_SOURCE = "benchmark"  # bench/: load tests through the service or the balancer
# The platform's own requests (X-Catdog-Source): left out of the drift window, which
# is about users. Benchmark traffic replays test_images/ thousands of times; counted,
# it raised a drift alarm (and so a retraining) on its own.
PLATFORM_SOURCES = (EVALUATION_SOURCE, BENCHMARK_SOURCE)
# Columns every record carries besides the image statistics.
RECORD_COLUMNS = (
    "timestamp",  # unix seconds, UTC
    "request_id",
    "source",
    "label",
    "confidence",
    "model_name",
    "model_version",
)
_SQL_TYPES = {
    "timestamp": "REAL NOT NULL",
    "request_id": "TEXT NOT NULL",
    "source": "TEXT NOT NULL",
    "label": "TEXT NOT NULL",
    "confidence": "REAL NOT NULL",
    "model_name": "TEXT NOT NULL",
    "model_version": "TEXT NOT NULL",
}
COLUMNS = RECORD_COLUMNS + STAT_COLUMNS
BUSY_TIMEOUT_MS = 10_000

logger = logging.getLogger("catdog.inference_log")


def default_path() -> Path:
    """$CATDOG_INFERENCE_LOG, else .run/inference_log.sqlite under the working directory."""
    return sqlite_path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def is_postgres_url(location) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def sqlite_path(location: str | Path) -> Path:
    """A path, or a SQLAlchemy-style `sqlite:///relative` / `sqlite:////absolute` URL."""
    text = str(location)
    return Path(text[len("sqlite:///") :] if text.startswith("sqlite:///") else location)


def window_filter(since, exclude_sources, placeholder: str) -> tuple[str, list]:
    """The WHERE clause (with its parameters) of `query`, shared by both stores."""
    if since is not None and since.tzinfo is None:
        raise ValueError(
            "since must be timezone-aware (e.g. datetime.now(UTC) - timedelta(hours=1))"
        )
    clauses, params = [], []
    if since is not None:
        clauses.append(f"timestamp >= {placeholder}")
        params.append(since.timestamp())
    excluded = tuple(exclude_sources or ())
    if excluded:
        clauses.append(f"source NOT IN ({', '.join(placeholder for _ in excluded)})")
        params.extend(excluded)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _timestamp(value) -> float:
    if value is None:
        return time.time()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (e.g. datetime.now(UTC))")
        return value.timestamp()
    return float(value)


@dataclass(frozen=True)
class Retention:
    """How much of the log is kept: rows younger than `max_age_days` and at most
    `max_rows` of the newest (0 turns either off). Enforced by `InferenceLog.prune`,
    which the recorder's background thread calls every `every_seconds`."""

    max_age_days: float = 30
    max_rows: int = 1_000_000
    every_seconds: float = 300
    batch: int = 5000  # rows deleted per statement: writers wait at most one batch


def _prune(execute, retention: Retention, now: float, placeholder: str) -> int:
    """Delete what `retention` does not keep, `batch` rows per statement (each its
    own transaction, so a writer from another process waits one short batch, never
    the whole clean-up). `execute(sql, params)` returns the rows affected."""
    deleted = 0
    limit = retention.batch
    if retention.max_age_days > 0:
        cutoff = now - retention.max_age_days * 86400
        while True:
            count = execute(
                f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} "
                f"WHERE timestamp < {placeholder} ORDER BY id LIMIT {limit})",
                (cutoff,),
            )
            deleted += count
            if count < limit:
                break
    if retention.max_rows > 0:
        while True:
            count = execute(
                f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} WHERE id <= "
                f"(SELECT id FROM {TABLE} ORDER BY id DESC LIMIT 1 OFFSET {placeholder}) "
                f"ORDER BY id LIMIT {limit})",
                (retention.max_rows,),
            )
            deleted += count
            if count < limit:
                break
    return deleted


class InferenceLog:
    """Append-only SQLite store of per-request records.

    Nothing touches the disk until the first `append`, which creates the
    parent folders and the table; reading a log that does not exist yet
    creates nothing.
    """

    def __new__(cls, path: str | Path | None = None):
        # One entry point for both stores: callers pass what the setting holds.
        location = path if path is not None else os.environ.get(ENV_PATH)
        if cls is InferenceLog and is_postgres_url(location):
            return super().__new__(PostgresInferenceLog)
        return super().__new__(cls)

    def __init__(self, path: str | Path | None = None):
        self.path = sqlite_path(path) if path is not None else default_path()
        self._schema_ready = False
        self._lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # With WAL, NORMAL never corrupts the file and survives a crash of the
        # process; only a power cut can lose the last commits. It saves an fsync
        # per commit.
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    def _ensure_schema(self, connection: sqlite3.Connection) -> None:
        if self._schema_ready:
            return
        # WAL: readers never block the writers, and writers from several
        # processes queue on the lock instead of failing. The mode is stored
        # in the file, so this runs once per file in practice.
        self._use_wal(connection)
        columns = ", ".join(
            [f"{name} {_SQL_TYPES[name]}" for name in RECORD_COLUMNS]
            + [f"{name} REAL" for name in STAT_COLUMNS]
        )
        with connection:
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} "
                f"(id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})"
            )
            connection.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (timestamp)")
            # A file written before a statistic was added gets the new column (NULL in old rows).
            existing = {row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")}
            for name in STAT_COLUMNS:
                if name not in existing:
                    connection.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} REAL")
        self._schema_ready = True

    @staticmethod
    def _use_wal(connection: sqlite3.Connection) -> None:
        """Switch the file to WAL. Switching takes an exclusive lock that SQLite does not
        wait for (no busy handler): processes creating the file together (service
        workers starting at once) retry until one has switched it."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _row(record: dict) -> tuple:
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown inference-log fields {sorted(unknown)}; known: {COLUMNS}")
        missing = [c for c in COLUMNS if c != "timestamp" and c not in record]
        if missing:
            raise ValueError(f"inference-log record is missing {missing}")
        values = {**record, "timestamp": _timestamp(record.get("timestamp"))}
        return tuple(values[c] for c in COLUMNS)

    def append(self, record: dict) -> None:
        """Append one record: the fields of `COLUMNS` (timestamp defaults to now)."""
        self.append_many([record])

    def append_many(self, records: Iterable[dict]) -> int:
        """Append records in one transaction; returns how many."""
        rows = [self._row(r) for r in records]
        if not rows:
            return 0
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._lock:
            # One connection kept open for writing: closing the last connection
            # to a WAL file checkpoints it with an fsync, which would cost
            # milliseconds per append.
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = self._connect()
                self._ensure_schema(connection)
                self._writer = connection
            with self._writer:
                self._writer.executemany(
                    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({placeholders})", rows
                )
        return len(rows)

    def prune(self, retention: Retention, now: float | None = None) -> int:
        """Delete rows older than the retention's age or beyond its row count (oldest
        first); returns how many. A log that does not exist yet is not created."""
        if not self.path.exists():
            return 0

        def execute(sql, params):
            with self._writer:
                return self._writer.execute(sql, params).rowcount

        with self._lock:
            if self._writer is None:
                connection = self._connect()
                self._ensure_schema(connection)
                self._writer = connection
            return _prune(execute, retention, time.time() if now is None else now, "?")

    def close(self) -> None:
        """Close the writing connection (appending again reopens it)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def query(self, since: datetime | None = None, exclude_sources=PLATFORM_SOURCES) -> list:
        """Rows of `COLUMNS` (oldest first), timestamps in unix seconds.

        `since` (timezone-aware) keeps records at or after it; sources in
        `exclude_sources` are left out (the platform's own traffic by default,
        PLATFORM_SOURCES; pass () for everything). A log that does not exist yet has no
        rows, and is not created.
        """
        where, params = window_filter(since, exclude_sources, "?")
        if not self.path.exists():
            return []
        connection = self._connect()
        try:
            self._ensure_schema(connection)
            return connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY id", params
            ).fetchall()
        finally:
            connection.close()


def _size_stats(size) -> dict:
    if size is None:
        return {}
    width, height = size
    return {"width": float(width), "height": float(height), "aspect_ratio": width / height}


class InferenceRecorder:
    """Computes image statistics and appends records on a background thread.

    `submit` never blocks: when `max_pending` records or `max_pending_pixels`
    pixels are already waiting, the record is dropped and `on_drop` called
    (the service counts it in a metric). A single image bigger than the pixel
    budget is still accepted when nothing else is waiting.
    """

    def __init__(
        self,
        log: InferenceLog,
        max_pending: int = 1024,
        max_pending_pixels: int = 32_000_000,
        batch_size: int = 64,
        on_drop: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        nice: int = 10,
        retention: Retention | None = None,
    ):
        self.log = log
        self.retention = retention
        self.pruned = 0
        self._next_prune = time.monotonic()  # the first batch written prunes
        self.max_pending = max_pending
        self.max_pending_pixels = max_pending_pixels
        self.batch_size = batch_size
        self.on_drop = on_drop
        self.on_error = on_error
        self.nice = nice
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # notified when nothing is pending
        self._pending = 0
        self._pending_pixels = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def submit(self, image, file_size: int, record: dict, source_size=None) -> bool:
        """Queue (decoded RGB image, upload byte count, record without statistics).
        `source_size`: the upload's own (width, height), when `image` was decoded
        reduced (a large photo): its width, height and aspect ratio are recorded."""
        pixels = image.width * image.height
        with self._lock:
            full = self._pending >= self.max_pending or (
                self._pending > 0 and self._pending_pixels + pixels > self.max_pending_pixels
            )
            if not full and not self._stopping.is_set():
                self._pending += 1
                self._pending_pixels += pixels
                self._queue.put((image, file_size, record, source_size, pixels))
                return True
            self.dropped += 1
        if self.on_drop:
            self.on_drop()
        return False

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def _run(self) -> None:
        if self.nice:
            # Linux applies niceness per thread: statistics yield the CPU to
            # requests under load (raising niceness needs no privilege).
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError as exc:  # e.g. a platform without per-thread priorities
                logger.warning("could not lower the inference-log thread's priority: %s", exc)
        while True:
            self._maybe_prune()
            try:
                item = self._queue.get(timeout=self._prune_wait())
            except queue.Empty:
                continue
            if item is None:
                return
            items = [item]
            while len(items) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after writing this batch
                    break
                items.append(nxt)
            self._write(items)

    def _prune_wait(self) -> float | None:
        if self.retention is None:
            return None
        return max(0.0, self._next_prune - time.monotonic())

    def _maybe_prune(self) -> None:
        """Retention, on this thread: requests never wait for it. Each worker (and
        replica) prunes the shared log; deleting what is already gone costs little."""
        if self.retention is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.retention.every_seconds
        try:
            self.pruned += self.log.prune(self.retention)
        except Exception as exc:  # noqa: BLE001 - reported; the thread must live on
            logger.exception("pruning the inference log %s failed", self.log.path)
            if self.on_error:
                self.on_error(exc)

    def _write(self, items) -> None:
        try:
            records = [
                {**record, **image_statistics(image, file_size), **_size_stats(source_size)}
                for image, file_size, record, source_size, _ in items
            ]
            self.log.append_many(records)
            self.written += len(records)
        except Exception as exc:  # noqa: BLE001 - reported through on_error, the thread must live on
            self.failed += len(items)
            logger.exception(
                "writing %d inference-log records to %s failed", len(items), self.log.path
            )
            if self.on_error:
                self.on_error(exc)
        finally:
            with self._lock:
                self._pending -= len(items)
                self._pending_pixels -= sum(p for *_, p in items)
                if self._pending == 0:
                    self._drained.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (True) or `timeout` passes."""
        with self._drained:
            return self._drained.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting records, write the queued ones, stop the thread."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            self.log.close()
        return stopped


# ------------------------------------------------------------------ PostgreSQL (PROFILE=scale)
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


def create_postgres_table(connection) -> None:
    """The inference-log table, its index, and any statistic column added since (idempotent).

    Run by whoever may create tables: the platform's admin when it provisions the
    database, or the writer itself on a database it owns (tests, bench)."""
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
        # The platform's writers may only read, insert and delete rows (PROFILE=scale:
        # catdog_runtime.postgres provisions the table): no DDL once it is complete.
        present = {
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                (TABLE,),
            )
        }
        if not set(COLUMNS) <= present:
            create_postgres_table(connection)
        self._schema_ready = True

    def append_many(self, records: Iterable[dict]) -> int:
        """Append records in one transaction; returns how many."""
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

    def prune(self, retention: Retention, now: float | None = None) -> int:
        """See InferenceLog.prune (autocommit: one transaction per batch)."""

        def execute(sql, params):
            return self._writer.execute(sql, params).rowcount

        with self._lock:
            if self._writer is None or self._writer.closed:
                self._writer = self._connect()
                self._ensure_schema(self._writer)
            return _prune(execute, retention, time.time() if now is None else now, "%s")

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        """Close the writing connection (appending again reopens it)."""
        with self._lock:
            self._close_writer()

    def query(self, since=None, exclude_sources=PLATFORM_SOURCES) -> list[tuple]:
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
