"""Kubernetes manifests (kubernetes-validate), the model server's tracks and the Prefect
work pool's job template."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.unit.infra.infra_files import (
    K8S,
    K8S_VERSION,
    flag_value,
    load_yaml,
    run_attnops_cli,
    run_spec_overlay,
    shell_steps,
    yaml_documents,
)

# ---------------------------------------------------------------------------- Kubernetes


@cache
def _kustomization() -> dict:
    return load_yaml(K8S / "kustomization.yaml")


@cache
def _k8s_objects() -> list[dict]:
    return [doc for name in _kustomization()["resources"] for doc in yaml_documents(K8S / name)]


def _object(kind: str, name: str) -> dict:
    return next(o for o in _k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name)


def test_kustomization_lists_every_manifest():
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for generator in _kustomization()["configMapGenerator"]:
        for entry in generator["files"]:
            assert (K8S / entry.split("=")[-1]).is_file()


def test_k8s_objects_validate_against_the_kubernetes_schemas():
    """Strict: an unknown field (a misspelt probe) fails. Istio CRDs are checked below."""
    import kubernetes_validate

    for obj in _k8s_objects():
        if obj["apiVersion"].startswith("networking.istio.io/"):
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    broken = copy.deepcopy(_object("Deployment", "attnops-model-canary"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _pod_containers(kind: str, name: str) -> list[dict]:
    return _object(kind, name)["spec"]["template"]["spec"]["containers"]


def test_model_server_tracks_probes_and_services(monkeypatch, tmp_path):
    shares = {}
    for track in ("champion", "canary"):
        deployment = _object("Deployment", f"attnops-model-{track}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels == {"app": "attnops-model", "track": track}
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        steps = shell_steps(container["command"] + container["args"])
        spec, _ = run_spec_overlay(steps[0], tmp_path)
        shares[track] = spec.serving.canary_share
        code, args = run_attnops_cli(steps[1][1:], monkeypatch)
        assert code == 0 and args.command == "serve" and args.port == port
        assert args.spec == steps[0][-1]
        env = {e["name"]: e for e in container.get("env", [])}
        assert {"ATTNOPS_INFERENCE_DB", "ATTNOPS_ADMIN_TOKEN"} <= set(env)
        assert {"name": "attnops-config"} in [r.get("configMapRef") for r in container["envFrom"]]
    assert shares == {"champion": 0.0, "canary": 1.0}
    # One Service over both tracks (weighted by the mesh); one over the canary track only.
    assert _object("Service", "attnops-model")["spec"]["selector"] == {"app": "attnops-model"}
    canary_service = _object("Service", "attnops-model-canary")["spec"]["selector"]
    assert canary_service == {"app": "attnops-model", "track": "canary"}
    # The release's reload reaches one pod per call: it must be the canary's only pod.
    assert _object("Deployment", "attnops-model-canary")["spec"]["replicas"] == 1


def test_istio_weights_split_the_service_between_the_tracks():
    rule = _object("DestinationRule", "attnops-model")
    service = _object("Service", "attnops-model")
    assert rule["spec"]["host"] == service["metadata"]["name"]
    subsets = {s["name"]: s["labels"] for s in rule["spec"]["subsets"]}
    for track, labels in subsets.items():
        pods = _object("Deployment", f"attnops-model-{track}")["spec"]["template"]["metadata"]
        assert labels.items() <= pods["labels"].items()
    virtual = _object("VirtualService", "attnops-model")
    assert virtual["spec"]["hosts"] == [service["metadata"]["name"]]
    for route in virtual["spec"]["http"]:
        destinations = route["route"]
        assert all(d["destination"]["subset"] in subsets for d in destinations)
        assert all(d["destination"]["host"] == rule["spec"]["host"] for d in destinations)
        if len(destinations) > 1:
            assert sum(d["weight"] for d in destinations) == 100
            assert {d["destination"]["subset"] for d in destinations} == {"champion", "canary"}


def test_mlflow_deployment_serves_artifacts_for_the_tracking_uri():
    config = _object("ConfigMap", "attnops-config")["data"]
    tracking = urlsplit(config["MLFLOW_TRACKING_URI"])
    service = _object("Service", tracking.hostname)
    assert service["spec"]["ports"][0]["port"] == tracking.port
    container = _pod_containers("Deployment", "attnops-mlflow")[0]
    assert "--serve-artifacts" in container["args"]
    allowed = flag_value(container["args"], "--allowed-hosts").split(",")
    assert any(fnmatch.fnmatch(tracking.netloc, a) for a in allowed)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_every_secret_key_referenced_is_in_the_example():
    example = {
        line.split("=")[0]
        for line in (K8S / "secrets.example.env").read_text().splitlines()
        if line and not line.startswith("#")
    }
    text = "\n".join((K8S / n).read_text() for n in _kustomization()["resources"])
    keys = set(re.findall(r"secretKeyRef: \{name: attnops-secrets, key: (\w+)\}", text))
    assert keys and keys <= example
    template = _job_template()
    job = _job_container(template["job_configuration"]["job_manifest"])
    assert {"secretRef": {"name": "attnops-secrets"}} in job["envFrom"]


@cache
def _job_template() -> dict:
    return json.loads((K8S / "prefect" / "base-job-template.json").read_text())


def _job_container(job_manifest: dict) -> dict:
    return job_manifest["spec"]["template"]["spec"]["containers"][0]


def _render_job(values: dict | None = None) -> dict:
    """The job configuration as Prefect renders it from the variables' defaults."""
    from prefect.utilities.templating import apply_values

    template = _job_template()
    variables = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in variables.items() if "default" in v}
    return apply_values(template["job_configuration"], {**defaults, **(values or {})})


def test_work_pool_job_template_requests_a_gpu():
    template = _job_template()
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    variables = template["variables"]["properties"]
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template)))
    assert placeholders <= set(variables), placeholders - set(variables)

    manifest = _render_job()["job_manifest"]
    limits = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    cpu_only = _render_job({"gpu_count": 0})["job_manifest"]
    assert _job_container(cpu_only)["resources"]["limits"]["nvidia.com/gpu"] == 0
    # An Istio sidecar would outlive the flow-run container and keep the Job running.
    pod_annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["sidecar.istio.io/inject"] == "false"
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations

    # What the Prefect Kubernetes worker requires of a job manifest (its own base
    # manifest): these two sit in the pod spec there, where Kubernetes ignores them.
    pod = manifest["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions"), pod["restartPolicy"]) == (1, 1, "Never")
    assert _job_container(manifest)["name"] == "prefect-job"
    manifest["metadata"]["generateName"] = "train-"
    import kubernetes_validate

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert _object("PersistentVolumeClaim", claim)


def test_work_pool_template_is_what_the_kubernetes_worker_accepts():
    from prefect_kubernetes import worker  # a dev dependency

    rendered = _render_job({"name": "train-x", "env": {"A": "1"}})
    configuration = worker.KubernetesWorkerJobConfiguration(**rendered)
    assert configuration.job_manifest["metadata"]["namespace"] == "attnops"


def test_worker_and_flow_runs_derive_the_same_spec(monkeypatch, tmp_path):
    """The deployments name the spec the worker derived; each flow-run pod derives it
    again, identically, and its serving.url reaches the canary track's Service."""
    container = _pod_containers("Deployment", "attnops-prefect-worker")[0]
    steps = shell_steps(container["command"] + container["args"])
    pool_create, overlay, deploy, start = steps
    assert pool_create[:4] == ["prefect", "work-pool", "create", "attnops"]
    assert pool_create[pool_create.index("--type") + 1] == "kubernetes"
    template_path = Path(pool_create[pool_create.index("--base-job-template") + 1])
    mount = next(
        m for m in container["volumeMounts"] if m["mountPath"] == str(template_path.parent)
    )
    volume = next(
        v
        for v in _object("Deployment", "attnops-prefect-worker")["spec"]["template"]["spec"][
            "volumes"
        ]
        if v["name"] == mount["name"]
    )
    generated = {g["name"]: g for g in _kustomization()["configMapGenerator"]}
    assert template_path.name in generated[volume["configMap"]["name"]]["files"][0]

    spec, _ = run_spec_overlay(overlay, tmp_path)
    host = spec.serving.host
    assert _object("Service", host)["spec"]["ports"][0]["port"] == spec.serving.port
    code, args = run_attnops_cli(deploy[1:], monkeypatch)
    assert code == 0 and args.spec == overlay[-1] and args.work_pool == "attnops"
    assert start[start.index("--pool") + 1] == "attnops"
    assert start[start.index("--type") + 1] == "kubernetes"

    job = _job_container(_render_job()["job_manifest"])
    job_steps = shell_steps(job["command"][:3])
    assert job_steps[0] == overlay, "flow-run pods must derive the spec the deployments name"
    assert job_steps[1] == ["$@"], "then run the flow-run command Prefect passes as args"
