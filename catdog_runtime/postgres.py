"""A throwaway PostgreSQL cluster (tests, bench), started by the platform's own code.

catdog_runtime.services (start_postgres) runs initdb and the server in a fresh
folder on a free port, exactly as `make up PROFILE=scale` does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from catdog_runtime import services
from catdog_runtime.processes import free_port


@contextmanager
def run_dir_set(folder: Path) -> Iterator[None]:
    saved = os.environ.get("CATDOG_RUN_DIR")
    os.environ["CATDOG_RUN_DIR"] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["CATDOG_RUN_DIR"]
        else:
            os.environ["CATDOG_RUN_DIR"] = saved


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yields the base URL `postgresql://catdog@127.0.0.1:PORT` (databases of PG_DATABASES)."""
    # Under /tmp with mode 755, not pytest's 700 tmp_path: root runs the server
    # as the `postgres` OS user, which must be able to enter the folder.
    folder = Path(tempfile.mkdtemp(prefix="catdog-pg-"))
    folder.chmod(0o755)
    port = free_port()
    service = services.postgres_service(port)
    try:
        with run_dir_set(folder):
            (folder / "logs").mkdir()
            service = services.postgres_service(port)
            services.start_postgres(service)
        yield f"postgresql://{services.PG_USER}@127.0.0.1:{port}"
    finally:
        with run_dir_set(folder):
            services.stop(service)
        shutil.rmtree(folder, ignore_errors=True)
