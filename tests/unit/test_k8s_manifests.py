"""deploy/k8s/ validates against the bundled Kubernetes schemas (offline, strict)."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
import yaml

from catdog_runtime.processes import ROOT

K8S = ROOT / "deploy" / "k8s"
VERSION = "1.37.0"


def documents():
    for path in sorted(K8S.glob("*.yaml")):
        for number, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield pytest.param(doc, id=f"{path.name}#{number}-{doc['kind']}")


@pytest.mark.parametrize("doc", list(documents()))
def test_manifest_is_valid(doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


def by_kind(kind: str, name: str) -> dict:
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in {K8S}")


def test_a_broken_manifest_is_caught():
    """The validator is strict: a typo'd field fails (so the test above can fail)."""
    doc = by_kind("Deployment", "catdog-classifier")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_service_probes_scaling_and_inference_log():
    deployment = by_kind("Deployment", "catdog-classifier")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CATDOG_INFERENCE_LOG"]["valueFrom"]["secretKeyRef"]["name"] == (
        "catdog-database-urls"
    )
    hpa = by_kind("HorizontalPodAutoscaler", "catdog-classifier")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2
    assert by_kind("PodDisruptionBudget", "catdog-classifier")["spec"]["minAvailable"] == 1


SAMPLE_VALUES = {
    "command": ["prefect", "flow-run", "execute"],
    "env": [{"name": "PREFECT__FLOW_RUN_ID", "value": "abc"}],
    "labels": {"prefect.io/flow-run-id": "abc"},
    "name": "catdog-flow",
}


def render(value, defaults: dict):
    """The base job template with its {{ variables }} filled as the worker would."""
    if isinstance(value, dict):
        return {k: render(v, defaults) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, defaults) for v in value]
    if isinstance(value, str):
        whole = re.fullmatch(r"\{\{ (\w+) \}\}", value)
        if whole:
            return SAMPLE_VALUES.get(whole[1], defaults.get(whole[1]))
        return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(defaults[m[1]]), value)
    return value


def test_prefect_work_pool_job_renders_to_a_valid_job():
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    properties = template["variables"]["properties"]
    defaults = {name: spec.get("default") for name, spec in properties.items()}
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= set(properties), f"undeclared variables: {used - set(properties)}"
    job = render(template["job_configuration"]["job_manifest"], defaults)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "catdog"
    kubernetes_validate.validate(job, VERSION, strict=True)
