"""The service's dependencies are pinned once: pyproject's [serve] extra names them,
requirements.lock fixes their versions, bento/requirements.txt (the bento and its
image) is generated from that lock (`make lock`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", re.MULTILINE)


def pins(path: Path) -> dict[str, str]:
    return {
        name.lower().replace("_", "-"): version for name, version in PIN.findall(path.read_text())
    }


def test_bento_requirements_are_the_locked_versions():
    locked = pins(ROOT / "requirements.lock")
    bento = pins(ROOT / "bento/requirements.txt")
    assert bento, "bento/requirements.txt pins nothing"
    differ = {
        name: (version, locked.get(name))
        for name, version in bento.items()
        if locked.get(name) != version
    }
    assert not differ, (
        f"bento/requirements.txt differs from requirements.lock: {differ}; run make lock"
    )


def test_every_serve_dependency_is_in_the_bento_and_nothing_heavy_is():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    bento = pins(ROOT / "bento/requirements.txt")
    for requirement in extras["serve"]:
        name = re.split(r"[=<>\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in bento, f"[serve] dependency {name} is missing from bento/requirements.txt"
    assert not {"torch", "torchvision", "pandas", "mlflow", "prefect"} & set(bento)


def test_lock_pins_every_direct_dependency_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins(ROOT / "requirements.lock")
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = re.split(r"[=<>\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name == "catdog-mlops":
            continue
        assert name in locked, f"{name} is not in requirements.lock: run make lock"
        if "==" in requirement:
            assert locked[name] == requirement.split("==")[1], (
                f"{name}: lock differs from pyproject"
            )


LOCKS = ["requirements.lock", "bento/requirements.txt", "requirements-remotes.lock"]


def entries(path: Path) -> dict[str, str]:
    """name -> the pin with its continuation lines (hashes)."""
    text = path.read_text()
    starts = list(PIN.finditer(text))
    return {
        m[1].lower(): text[m.start() : starts[i + 1].start() if i + 1 < len(starts) else None]
        for i, m in enumerate(starts)
    }


@pytest.mark.parametrize("name", LOCKS)
def test_every_pin_carries_its_hashes(name):
    """`make lock` writes hashes (scripts/lock.sh); install.sh, CI and the image verify them."""
    pinned = entries(ROOT / name)
    missing = [n for n, e in pinned.items() if "--hash=sha256:" not in e]
    assert not missing, f"{name}: pins without a hash: {missing}; run make lock"


def test_dvc_plugins_are_locked_at_the_main_lock_versions():
    locked = pins(ROOT / "requirements.lock")
    remotes = pins(ROOT / "requirements-remotes.lock")
    assert {"dvc-s3", "dvc-gs", "dvc-azure"} <= set(remotes)
    differ = {n: (v, locked[n]) for n, v in remotes.items() if n in locked and locked[n] != v}
    assert not differ, f"requirements-remotes.lock differs from requirements.lock: {differ}"


def test_the_project_build_backend_is_locked():
    """install.sh builds `-e .` without build isolation, with the locked setuptools."""
    assert "setuptools" in pins(ROOT / "requirements.lock")


def test_uv_is_bootstrapped_from_hashes_at_the_version_install_sh_expects():
    wanted = re.search(r"^UV_VERSION=(\S+)", (ROOT / "scripts/install.sh").read_text(), re.M)
    (entry,) = entries(ROOT / "scripts/uv-bootstrap.txt").values()
    assert entry.startswith(f"uv=={wanted[1]} ") and "--hash=sha256:" in entry
