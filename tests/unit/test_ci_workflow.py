"""The GitHub workflow keeps its secrets to the steps that use them and installs
only locked packages (what actionlint does not check)."""

from __future__ import annotations

import re

import pytest
import yaml

from catdog_runtime.processes import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
SECRET = re.compile(r"\$\{\{[^}]*\bsecrets\.")
# `secrets.X != ''` says whether a secret is set (a step's `if:` cannot read
# secrets), not what it is.
SECRET_IS_SET = re.compile(r"^\$\{\{\s*secrets\.\w+\s*!=\s*''\s*\}\}$")


def load(path):
    return yaml.safe_load(path.read_text())


def steps(path):
    for job_name, job in load(path)["jobs"].items():
        for number, step in enumerate(job.get("steps", [])):
            yield job_name, step.get("name", f"step {number}"), step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_only_in_the_env_of_the_steps_that_use_them(path):
    workflow = load(path)
    scopes = [("workflow", workflow.get("env", {}))] + [
        (f"job {name}", job.get("env", {})) for name, job in workflow["jobs"].items()
    ]
    for scope, env in scopes:
        for key, value in env.items():
            if SECRET.search(str(value)):
                assert SECRET_IS_SET.match(str(value)), f"{scope} env {key} holds a secret"
    for job_name, step_name, step in steps(path):
        where = f"{job_name} / {step_name}"
        # A secret inlined in a script ends up in the script file on the runner.
        assert not SECRET.search(step.get("run", "")), f"{where}: secret inlined in run"
        step_env = " ".join(str(v) for v in step.get("env", {}).values())
        if SECRET.search(step_env):
            for channel in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_PATH"):
                assert channel not in step.get("run", ""), f"{where} writes {channel}"
            # Nothing that installs code runs with a credential in its environment.
            assert not re.search(r"pip install|uv pip|make ", step.get("run", "")), where


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_packages_come_from_the_locks_and_one_index(path):
    text = path.read_text()
    assert "unsafe-best-match" not in text, "an index strategy that mixes indexes"
    assert "EXTRA_INDEX_URL" not in text, "a second index: PyPI only, hashes from the lock"
    for _, step_name, step in steps(path):
        script = re.sub(r"\\\n\s*", " ", step.get("run", ""))  # join continued lines
        for line in script.splitlines():
            if not re.search(r"\bpip install\b", line):
                continue
            if " -r " in line:  # a lock: its hashes are checked
                assert "--require-hashes" in line, f"{step_name}: {line.strip()!r}"
            else:  # outside a lock, exact pins only (the lint job's ruff)
                assert "==" in line or "$ruff_req" in line, f"{step_name}: {line.strip()!r}"
