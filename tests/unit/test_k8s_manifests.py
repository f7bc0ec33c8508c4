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


# kubernetes-validate bundles the built-in kinds only: the Gateway API's (CRDs)
# are checked field by field in test_gateway_* below.
CRD_GROUPS = ("gateway.networking.k8s.io/",)


def documents():
    for path in sorted(K8S.glob("*.yaml")):
        for number, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and not doc["apiVersion"].startswith(CRD_GROUPS):
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


# --- hardening: every pod the manifests can create -----------------------------------
# Pod Security Admission `restricted` (namespace label) refuses some of these at
# admission; the rest (read-only root, no token, pinned images, probes) it does
# not check, so these tests do, on every pod spec, present and future.

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Pods allowed an API token, each with the reason (a Role in this namespace).
TOKEN_ALLOWED = {"prefect-worker": "creates one Job per flow run"}


def all_documents() -> list[dict]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def rendered_job() -> dict:
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    properties = template["variables"]["properties"]
    defaults = {name: spec.get("default") for name, spec in properties.items()}
    return render(template["job_configuration"]["job_manifest"], defaults)


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod template {metadata, spec}) of every workload, the flow-run Job included."""
    pods = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"].get("name") or doc["metadata"]["generateName"]
        if kind == "Pod":
            pods.append((f"Pod/{name}", doc))
        elif kind == "CronJob":
            pods.append((f"CronJob/{name}", doc["spec"]["jobTemplate"]["spec"]["template"]))
        elif kind in POD_TEMPLATE_KINDS:
            pods.append((f"{kind}/{name}", doc["spec"]["template"]))
    return pods


def image_is_pinned(image: str) -> bool:
    """A digest, or a tag other than latest (the registry's :port is not a tag)."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


def hardening_problems(pod: dict) -> list[str]:
    """What a pod template lacks of the platform's baseline; empty when it has it all."""
    spec, labels = pod["spec"], pod.get("metadata", {}).get("labels", {})
    problems = []
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext.seccompProfile is not RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{key} is set")
    token = spec.get("automountServiceAccountToken")
    name = labels.get("app.kubernetes.io/name")
    if name in TOKEN_ALLOWED:
        if spec.get("serviceAccountName") in (None, "default"):
            problems.append("mounts an API token but uses the default service account")
    elif token is not False:
        problems.append(f"automountServiceAccountToken is {token!r}, not false")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "hostPath" in v:
            problems.append(f"volume {v['name']} is a hostPath")
    containers = spec.get("initContainers", []) + spec["containers"]
    for c in containers:
        where = f"container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities.drop is not [ALL]")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
            problems.append(f"{where}: runs as root")
        if not image_is_pinned(c.get("image", "")):
            problems.append(f"{where}: image {c.get('image')!r} is not pinned (tag or digest)")
        for mount in c.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                problems.append(f"{where}: mounts undeclared volume {mount['name']}")
            elif not mount.get("readOnly") and "emptyDir" not in volume:
                problems.append(f"{where}: writable mount {mount['name']} is not an emptyDir")
        # A secret in the environment must stay there: Kubernetes expands $(VAR) in
        # command/args into the process's argv (/proc/<pid>/cmdline).
        secret_env = {
            e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
        }
        argv = " ".join(str(a) for a in c.get("command", []) + c.get("args", []))
        for var in secret_env:
            if f"$({var})" in argv:
                problems.append(f"{where}: secret {var} expanded into argv")
    return problems


WORKLOADS = pod_templates(all_documents()) + [
    ("Job/prefect-work-pool", rendered_job()["spec"]["template"])
]


@pytest.mark.parametrize("pod", [p for _, p in WORKLOADS], ids=[n for n, _ in WORKLOADS])
def test_every_pod_is_hardened(pod):
    assert hardening_problems(pod) == []


def test_the_hardening_check_can_fail():
    """A pod spec as the manifests had them before (no seccomp, writable root, :latest)."""
    pod = {
        "metadata": {"labels": {"app.kubernetes.io/name": "x"}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "containers": [
                {
                    "name": "x",
                    "image": "registry.example.com/catdog-platform:latest",
                    "args": ["mlflow", "server", "--backend-store-uri=$(DB)"],
                    "env": [
                        {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
                    ],
                    "securityContext": {"readOnlyRootFilesystem": False},
                }
            ],
        },
    }
    problems = " | ".join(hardening_problems(pod))
    for expected in (
        "seccompProfile",
        "automountServiceAccountToken",
        "allowPrivilegeEscalation",
        "capabilities.drop",
        "readOnlyRootFilesystem",
        "not pinned",
        "expanded into argv",
    ):
        assert expected in problems
    for image in ("catdog-platform", "registry.example.com:5000/catdog-platform", "a:latest"):
        assert not image_is_pinned(image), image
    for image in ("registry.example.com:5000/catdog-platform:0.1.0", f"a@sha256:{'0' * 64}"):
        assert image_is_pinned(image), image


def test_workloads_have_probes():
    """Every long-running container (the workers too) is probed; Jobs are not."""
    for name, pod in WORKLOADS:
        if name.startswith(("Job/", "CronJob/")):
            continue
        for c in pod["spec"]["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{name}/{c['name']}"


def test_namespace_enforces_restricted_pod_security():
    labels = by_kind("Namespace", "catdog")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert by_kind("ServiceAccount", "default")["automountServiceAccountToken"] is False


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions: extend this test"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_deny_by_default_and_cover_every_pod():
    policies = [d for d in all_documents() if d["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)"
    # Each workload has its own allow policy (else default-deny cuts it off, or
    # someone later widens a shared one), and every rule names ports.
    own = [p for p in policies if p["spec"]["podSelector"]]
    for name, pod in WORKLOADS:
        labels = pod["metadata"]["labels"]
        assert any(selects(p["spec"]["podSelector"], labels) for p in own), name
    for p in policies:
        for rule in p["spec"].get("ingress", []) + p["spec"].get("egress", []):
            assert rule.get("ports"), f"{p['metadata']['name']}: a rule without ports"


def test_mlflow_reads_its_database_url_from_the_environment_and_checks_hosts():
    (container,) = by_kind("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert not any("backend-store-uri" in a for a in args)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == (
        "catdog-database-urls"
    )
    (hosts,) = [a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts=")]
    # The name the flow-run Jobs use (MLFLOW_TRACKING_URI in the job template).
    job_env = {
        e["name"]: e.get("value")
        for e in rendered_job()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    tracking_host = job_env["MLFLOW_TRACKING_URI"].removeprefix("http://")
    assert tracking_host in hosts.split(",")
    assert "*" not in hosts


def test_mlflow_requires_a_login_and_the_jobs_log_in():
    pod = by_kind("Deployment", "mlflow")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    admin = env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        == (admin["name"])
    )
    # The auth config (its database URL holds a password) comes from that Secret, read-only.
    config = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if config.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == admin["name"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    # No secret in argv: every value above is a reference, none is spelt out.
    assert not any("password" in a.lower() or "secret" in a.lower() for a in container["args"])
    job_env = {
        e["name"]: e for e in rendered_job()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert job_env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == admin
    assert job_env["MLFLOW_TRACKING_USERNAME"]["value"] == "admin"


def test_prefect_auth_string_comes_from_the_secret_on_server_workers_and_jobs():
    def container_env(deployment: str) -> dict[str, dict]:
        (container,) = by_kind("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e for e in container["env"]}

    job_container = rendered_job()["spec"]["template"]["spec"]["containers"][0]
    server = container_env("prefect-server")
    wanted = {
        "prefect-server": server["PREFECT_SERVER_API_AUTH_STRING"],
        "prefect-worker": container_env("prefect-worker")["PREFECT_API_AUTH_STRING"],
        "flow-run Job": {e["name"]: e for e in job_container["env"]}["PREFECT_API_AUTH_STRING"],
    }
    for where, entry in wanted.items():
        assert "value" not in entry, f"{where}: the auth string as a literal"
        ref = entry["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("catdog-prefect-auth", "auth-string"), where
    assert "auth-string" in by_kind("Secret", "catdog-prefect-auth")["stringData"]
    assert server["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"]["value"] == "true"
    assert "*" not in server["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"]["value"]


def test_gateway_terminates_tls_redirects_http_and_drops_the_source_header():
    listeners = {item["name"]: item for item in by_kind("Gateway", "catdog")["spec"]["listeners"]}
    https = listeners["https"]
    assert https["protocol"] == "HTTPS" and https["tls"]["mode"] == "Terminate"
    assert https["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "catdog-classifier-tls"}]
    service_ports = [p["port"] for p in by_kind("Service", "catdog-classifier")["spec"]["ports"]]
    routes = [d for d in all_documents() if d["kind"] == "HTTPRoute"]
    for route in routes:
        sections = {ref.get("sectionName") for ref in route["spec"]["parentRefs"]}
        for rule in route["spec"]["rules"]:
            filters = {f["type"]: f for f in rule.get("filters", [])}
            if sections & {"http", None}:
                # Plain HTTP only redirects: no request reaches a pod unencrypted.
                assert filters["RequestRedirect"]["requestRedirect"]["scheme"] == "https"
                assert not rule.get("backendRefs"), route["metadata"]["name"]
                continue
            # Only the classifier is public, and internet clients cannot label their traffic.
            for backend in rule["backendRefs"]:
                assert backend["name"] == "catdog-classifier" and backend["port"] in service_ports
            removed = filters["RequestHeaderModifier"]["requestHeaderModifier"]["remove"]
            assert "x-catdog-source" in {name.lower() for name in removed}
    assert any(
        {r.get("sectionName") for r in route["spec"]["parentRefs"]} == {"https"} for route in routes
    )
