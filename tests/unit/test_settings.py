"""The one settings object (model_lib.settings), the service's part (bento.settings), and
where they are documented (README's table, scripts/env.sh's defaults)."""

import math
import re

import pytest

from bento.settings import Settings, available_cpus
from catdog_runtime.processes import ROOT
from model_lib import settings as catalog
from model_lib.settings import cgroup_cpu_quota


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.model_tag == "catdog-classifier:latest"
    assert settings.workers == settings.batch_workers == available_cpus()
    assert settings.max_upload_bytes == 10 * 1024 * 1024


def test_every_field_is_read_from_its_variable():
    environ = {"CATDOG_MODEL_TAG": "catdog-classifier:abc", "CATDOG_MAX_IN_FLIGHT_BYTES": "123"}
    environ |= {"CATDOG_WORKERS": "3", "CATDOG_INFERENCE_LOG_QUEUE": "0", "CATDOG_MAX_PIXELS": ""}
    settings = Settings.from_env(environ)
    assert settings.model_tag == "catdog-classifier:abc"
    assert (settings.max_in_flight_bytes, settings.workers) == (123, 3)
    assert settings.inference_log_queue == 0  # 0 turns the log off
    assert settings.max_pixels == Settings().max_pixels  # empty means unset


@pytest.mark.parametrize(
    "name, raw, message",
    [
        ("CATDOG_WORKERS", "0", "greater than or equal to 1"),
        ("CATDOG_MAX_UPLOAD_BYTES", "ten", "valid integer"),
        ("CATDOG_INFERENCE_LOG_QUEUE", "-1", "greater than or equal to 0"),
        ("CATDOG_NEITHER_THRESHOLD", "high", "valid number"),
        ("CATDOG_NEITHER_THRESHOLD", "1.5", "less than or equal to 1"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(name, raw, message):
    with pytest.raises(ValueError, match=message) as caught:
        Settings.from_env({name: raw})
    assert name in str(caught.value)


def test_neither_threshold_is_unset_by_default_and_read_as_a_probability():
    assert Settings.from_env({}).neither_threshold is None  # the model's own threshold
    assert Settings.from_env({"CATDOG_NEITHER_THRESHOLD": ""}).neither_threshold is None
    assert Settings.from_env({"CATDOG_NEITHER_THRESHOLD": "0.35"}).neither_threshold == 0.35
    assert Settings.from_env({"CATDOG_NEITHER_THRESHOLD": "0"}).neither_threshold == 0.0


def test_settings_are_frozen():
    with pytest.raises(ValueError, match="frozen"):
        Settings().workers = 5


TABLE_START, TABLE_END = catalog.README_TABLE_START, catalog.README_TABLE_END


def test_readme_configuration_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert TABLE_START in readme and TABLE_END in readme
    shown = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == catalog.markdown_table().strip(), (
        "README's configuration table differs from model_lib/settings.py: regenerate it with "
        "`.venv/bin/python -m model_lib.settings --readme README.md`"
    )


def test_every_setting_is_declared_once_with_a_doc():
    variables = [row[0] for row in catalog.catalog()]
    assert len(variables) == len(set(variables))
    assert all(row[3] for row in catalog.catalog())


def test_env_sh_defaults_are_the_declared_defaults():
    """scripts/env.sh exports defaults for the shell: the literal ones must be the same."""
    declared = {v: d for v, _, d, _ in catalog.catalog()}
    literal = re.findall(
        r"^export (\w+)=\$\{\1:-([^$}]+)\}$", (ROOT / "scripts/env.sh").read_text(), re.M
    )
    checked = {name: value for name, value in literal if name in declared}
    assert checked, "no default of scripts/env.sh is a declared setting"
    assert {name: declared[name] for name in checked} == checked


def test_every_catdog_variable_in_the_code_is_declared():
    used = set()
    for folder in ("model_lib", "bento", "flows", "catdog_runtime", "scripts", "bench"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".sh", ".yaml", ".tmpl", ".j2") and path.is_file():
                used |= set(re.findall(r"\bCATDOG_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    used |= set(re.findall(r"\bCATDOG_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / "prefect.yaml").read_text()))
    assert sorted(used - set(catalog.catdog_variables())) == []


def cgroup(tmp_path, proc_line: str, files: dict) -> tuple:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text(proc_line + "\n")
    for name, text in files.items():
        path = tmp_path / "cg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "cg", tmp_path / "proc"


@pytest.mark.parametrize(
    "proc_line, files, expected",
    [
        ("0::/kubepods/pod1/c1", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 1.5),
        ("0::/kubepods/pod1/c1", {"kubepods/pod1/c1/cpu.max": "max 100000\n"}, None),
        # the tightest quota on the way up counts (a pod limit above its container)
        ("0::/pod/c", {"pod/cpu.max": "100000 100000", "pod/c/cpu.max": "max 100000"}, 1.0),
        (
            "4:cpu,cpuacct:/docker/abc",
            {
                "cpu/docker/abc/cpu.cfs_quota_us": "50000",
                "cpu/docker/abc/cpu.cfs_period_us": "100000",
            },
            0.5,
        ),
        (
            "4:cpu,cpuacct:/",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            None,
        ),
        ("0::/", {}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_in_v1_and_v2(tmp_path, proc_line, files, expected):
    root, proc = cgroup(tmp_path, proc_line, files)
    assert cgroup_cpu_quota(root, proc) == expected
    if expected is not None:  # a fraction of a CPU still gets one thread
        assert available_cpus(root, proc) == min(available_cpus(), max(1, math.ceil(expected)))


def test_new_limits_have_their_defaults():
    settings = Settings()
    assert settings.max_pixels == 16_000_000
    assert settings.max_decoded_bytes == 256 * 1024 * 1024
    assert settings.decode_wait_seconds == 10 and settings.upload_timeout_seconds == 60
