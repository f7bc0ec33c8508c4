"""MLflow as `make up` starts it: nobody without the platform's credentials reads or
changes the registry, and its secrets are in no process's argv, pid file or log."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import onnx
import psutil
import pytest

from catdog_runtime.processes import command_line
from tests.integration.conftest import run_deployment

REGISTRY_SEARCH = "/api/2.0/mlflow/registered-models/search"
SET_ALIAS = "/api/2.0/mlflow/registered-models/alias"
GET_ALIAS = "/api/2.0/mlflow/registered-models/alias"
MODEL = "catdog-auth-test"  # its own registered model: the session's champion is not touched


@pytest.fixture(scope="module")
def mlflow(platform):
    env = platform["env"]
    return {
        "url": env["MLFLOW_TRACKING_URI"],
        "auth": (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
    }


def call(mlflow, method: str, path: str, auth=None, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{mlflow['url']}{path}", auth=auth, timeout=60, **kwargs)


def made_with_platform_credentials(mlflow, path: str, body: dict) -> dict:
    """POST `body` to the REST `path` as the platform's clients do; the answer, asserted 200."""
    answer = call(mlflow, "POST", f"/api/2.0/mlflow/{path}", mlflow["auth"], json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def version(mlflow):
    """A registered model version, made with the platform's credentials."""
    experiment = made_with_platform_credentials(mlflow, "experiments/create", {"name": MODEL})
    run = made_with_platform_credentials(
        mlflow, "runs/create", {"experiment_id": experiment["experiment_id"]}
    )
    run_id = run["run"]["info"]["run_id"]
    made_with_platform_credentials(mlflow, "registered-models/create", {"name": MODEL})
    made = made_with_platform_credentials(
        mlflow,
        "model-versions/create",
        {"name": MODEL, "source": f"runs:/{run_id}/model", "run_id": run_id},
    )
    return made["model_version"]["version"]


def alias_of(mlflow) -> str | None:
    found = call(
        mlflow, "GET", GET_ALIAS, mlflow["auth"], params={"name": MODEL, "alias": "champion"}
    )
    return found.json()["model_version"]["version"] if found.status_code == 200 else None


def test_the_registry_refuses_requests_without_the_platforms_credentials(mlflow, version):
    wrong = (mlflow["auth"][0], "not-the-password")
    for auth in (None, wrong):
        assert call(mlflow, "GET", REGISTRY_SEARCH, auth).status_code in (401, 403)
        moved = call(
            mlflow,
            "POST",
            SET_ALIAS,
            auth,
            json={"name": MODEL, "alias": "champion", "version": version},
        )
        assert moved.status_code in (401, 403)
        # The UI and the artifact proxy (the package flow downloads the ONNX file there).
        assert call(mlflow, "GET", "/", auth).status_code in (401, 403)
        listing = call(mlflow, "GET", "/api/2.0/mlflow-artifacts/artifacts", auth)
        assert listing.status_code in (401, 403)
    assert alias_of(mlflow) is None  # nothing moved


def test_the_platforms_own_credentials_read_and_write(mlflow, version):
    found = call(mlflow, "GET", REGISTRY_SEARCH, mlflow["auth"])
    assert found.status_code == 200
    assert MODEL in [m["name"] for m in found.json()["registered_models"]]
    moved = call(
        mlflow,
        "POST",
        SET_ALIAS,
        mlflow["auth"],
        json={"name": MODEL, "alias": "champion", "version": version},
    )
    assert moved.status_code == 200, moved.text
    assert alias_of(mlflow) == version


def test_host_and_origin_checks_let_only_the_platforms_clients_in(mlflow):
    """MLflow's own checks (>= 3.5): a Host it does not know (DNS rebinding) and a
    write from another origin (a web page in a browser here) are refused, logged in or not."""
    auth = mlflow["auth"]
    port = mlflow["url"].rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert call(mlflow, "GET", REGISTRY_SEARCH, auth, headers={"Host": host}).status_code == 200
    assert (
        call(mlflow, "GET", REGISTRY_SEARCH, auth, headers={"Host": "evil.example"}).status_code
        == 403
    )
    create = {"json": {"name": f"{MODEL}-cross-origin"}}
    path = "/api/2.0/mlflow/registered-models/create"
    foreign = call(mlflow, "POST", path, auth, headers={"Origin": "http://evil.example"}, **create)
    assert foreign.status_code == 403
    own = call(mlflow, "POST", path, auth, headers={"Origin": mlflow["url"]}, **create)
    assert own.status_code == 200, own.text


def test_package_refuses_a_model_file_changed_in_the_artifact_store(platform, trained):
    """Someone who can write MLflow's artifacts (not its registry) swaps the champion's
    ONNX file: `package/champion` fails, saying what happened and what to do."""
    from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
    from model_lib.tracking import SHA256_KEYS, file_sha256

    client, _ = trained
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    recorded = champion.tags[SHA256_KEYS["float32"]]
    artifacts = Path(platform["state"]) / "mlflow" / "artifacts"
    # Every copy: a rollout candidate made from the champion holds the same bytes.
    stored = [p for p in artifacts.rglob("model.onnx") if file_sha256(p) == recorded]
    assert stored, f"no file with the recorded sha256 {recorded} under {artifacts}"
    originals = {path: path.read_bytes() for path in stored}
    swapped = onnx.load_from_string(originals[stored[0]])
    swapped.doc_string = "not the model training registered"
    try:
        for path in stored:
            onnx.save(swapped, str(path))  # a valid ONNX file, another one
        flow_run = run_deployment(
            platform, "package/champion", {"precision": "float32"}, check=False
        )
    finally:
        for path, original in originals.items():
            path.write_bytes(original)  # later tests package this champion
    assert flow_run["state"]["type"] == "FAILED"
    message = flow_run["state"]["message"]
    assert "changed after registration" in message and recorded in message, message
    assert "make train" in message


def platform_argvs(run_dir: Path) -> dict[int, list[str]]:
    """pid -> argv of every process of the platform (pid files under the run dir) and
    their descendants (a zombie, such as a finished flow run, has none left)."""
    found = {}
    for pid_file in run_dir.glob("*.pid"):
        try:
            process = psutil.Process(json.loads(pid_file.read_text())["pid"])
            for member in (process, *process.children(recursive=True)):
                found[member.pid] = command_line(member.pid) or []
        except psutil.NoSuchProcess:
            continue  # a replica stopped by another test
    return found


def test_no_secret_in_any_argv_pid_file_or_log(platform, mlflow):
    env, run_dir = platform["env"], Path(platform["env"]["CATDOG_RUN_DIR"])
    backend_uri = f"sqlite:///{run_dir}/mlflow/mlflow.db"
    secrets = {
        "admin password": env["MLFLOW_TRACKING_PASSWORD"],
        "CSRF signing key": env["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        "backend-store URI": backend_uri,
    }
    argvs = platform_argvs(run_dir)
    names = [" ".join(argv[:3]) for argv in argvs.values()]
    assert any("mlflow" in name and "server" in name for name in names), names
    texts = {
        f"argv of pid {pid} ({' '.join(argv[:3])})": " ".join(argv) for pid, argv in argvs.items()
    }
    files = [*run_dir.glob("*.pid"), *run_dir.glob("logs/*.log")]
    assert any(f.suffix == ".log" for f in files)
    texts |= {str(f): f.read_text(errors="replace") for f in files}
    for what, secret in secrets.items():
        seen = [where for where, text in texts.items() if secret in text]
        assert not seen, f"the {what} is readable in {seen}"

    # The URI reached MLflow through its environment (readable by its owner only).
    server = psutil.Process(json.loads((run_dir / "mlflow.pid").read_text())["pid"])
    assert server.environ()["MLFLOW_BACKEND_STORE_URI"] == backend_uri
    # The auth config holds the admin password: owner-only, in the owner-only secrets folder.
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config.parent == Path(env["CATDOG_SECRETS_DIR"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert "default_permission = NO_PERMISSIONS" in config.read_text()
