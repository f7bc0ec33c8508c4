"""State files that a kill at any line leaves whole: the old content or the new, never half.

`atomic_write_text(path, text)`: the text goes to a temporary file in the same folder
(same file system, so the rename is atomic), is fsynced, renamed over `path`, and the
folder is fsynced so the rename itself survives a power cut. Used for pid files,
generated configurations (haproxy.cfg, prometheus.yml, the balancer's state) and reports.

In model_lib (not catdog_runtime) because model_lib's reports need it too, and
catdog_runtime sits on model_lib (pyproject's layer contract).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str, mode: int = 0o600) -> Path:
    """Replace `path` with `text` in one step; the file gets `mode` (owner-only by default:
    state files may name what runs where)."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | Path) -> None:
    """Make the renames and deletions in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
