"""The Compose stack (compose-spec schema vendored in check-jsonschema), the Dockerfile and
the spec overlay the containers use."""

from __future__ import annotations

import copy
import fnmatch
import re
from functools import cache
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.unit.infra.infra_files import (
    COMPOSE,
    COMPOSE_VARIABLE,
    INFRA,
    ROOT,
    SPEC,
    compose_file,
    compose_schema,
    env_example,
    flag_value,
    run_attnops_cli,
    run_spec_overlay,
    scrape_jobs,
    shell_steps,
)

# ---------------------------------------------------------------------------- Compose


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_validate_against_the_compose_spec(name):
    """Interpolated with .env.example, each file is valid Compose (compose-spec schema)."""
    schema = compose_schema()
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(compose_file(name)), key=str
    )
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_misspelt_key():
    """The schema is strict enough to catch a typo, so passing it means something."""
    broken = copy.deepcopy(compose_file())
    broken["services"]["model-server"]["helthcheck"] = broken["services"]["model-server"].pop(
        "healthcheck"
    )
    assert not jsonschema.Draft202012Validator(compose_schema()).is_valid(broken)


def test_env_example_sets_every_variable_and_nothing_unused():
    text = (COMPOSE / "docker-compose.yml").read_text()
    used = {m.group(1) or m.group(4) for m in COMPOSE_VARIABLE.finditer(text) if m.group(0) != "$$"}
    required = {m.group(1) for m in COMPOSE_VARIABLE.finditer(text) if m.group(2) in (":?", "?")}
    assert required <= set(env_example()), required - set(env_example())
    unused = set(env_example()) - used
    assert not unused, f".env.example sets {sorted(unused)}, which docker-compose.yml never uses"
    assert all("change-me" in env_example()[k] for k in env_example() if "PASSWORD" in k)


def test_compose_services_images_and_builds():
    services = compose_file()["services"]
    expected = "postgres minio minio-init mlflow prefect-server prefect-worker model-server"
    observability = {"prometheus", "pushgateway", "alertmanager", "grafana"}
    assert set(services) >= {*expected.split(), *observability}
    for name, service in services.items():
        image = service.get("image", "")
        assert image, f"{name} has no image"
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin a tag ({image})"
        if "build" in service:
            build = service["build"]
            context = (COMPOSE / build["context"]).resolve()
            assert context == ROOT, f"{name} builds from {context}"
            assert (context / build["dockerfile"]).is_file()
            stages = _dockerfile_stages()
            assert build["target"] in stages, f"{name}: no stage {build['target']}"
    # The servers of the stack run the versions the project image pins.
    args = _dockerfile_args()
    assert services["prefect-server"]["image"].startswith(
        f"prefecthq/prefect:{args['PREFECT_VERSION']}-"
    )
    assert services["mlflow"]["image"].endswith(f":{args['MLFLOW_VERSION']}")


def test_compose_commands_run_real_cli_commands(monkeypatch, tmp_path):
    """The server and worker commands parse with the real `attnops` CLI; the worker
    registers the deployments for the pool it then polls, with a spec whose server is the
    model-server service."""
    services = compose_file()["services"]
    server = services["model-server"]["command"]
    assert server == ["attnops", "serve", "--spec", SPEC, "--host", "0.0.0.0"]
    code, args = run_attnops_cli(server[1:], monkeypatch)
    assert code == 0 and args.command == "serve" and (ROOT / args.spec).is_file()

    steps = shell_steps(services["prefect-worker"]["command"])
    assert [s[:2] for s in steps] == [
        ["python", "infra/scripts/spec_overlay.py"],
        ["attnops", "deploy"],
        ["prefect", "worker"],
    ]
    spec, overlay_args = run_spec_overlay(steps[0], tmp_path)
    assert overlay_args[1:-2] == ["serving.host=model-server"]
    assert spec.serving.url == "http://model-server:8000"
    code, deploy = run_attnops_cli(steps[1][1:], monkeypatch)
    assert code == 0 and deploy.spec == steps[0][-1], "deploy must use the derived spec"
    worker = steps[2]
    assert worker[:3] == ["prefect", "worker", "start"]
    assert worker[worker.index("--pool") + 1] == deploy.work_pool
    assert worker[worker.index("--type") + 1] == "process"


def test_compose_env_wiring():
    services = compose_file()["services"]
    server_env = services["model-server"]["environment"]
    worker_env = services["prefect-worker"]["environment"]
    postgres_env = services["postgres"]["environment"]
    databases = postgres_env["ATTNOPS_DATABASES"].split()
    mlflow_port = flag_value(services["mlflow"]["command"], "--port")
    for env in (server_env, worker_env):
        tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
        assert (tracking.hostname, str(tracking.port)) == ("mlflow", mlflow_port)
        log_db = urlsplit(env["ATTNOPS_INFERENCE_DB"])
        assert log_db.scheme == "postgresql+psycopg" and log_db.hostname == "postgres"
        assert log_db.path.lstrip("/") in databases
        assert log_db.username == postgres_env["POSTGRES_USER"]
        assert log_db.password == postgres_env["POSTGRES_PASSWORD"]
        assert env["ATTNOPS_ADMIN_TOKEN"] == env_example()["ATTNOPS_ADMIN_TOKEN"]
        assert urlsplit(env["PREFECT_API_URL"]).hostname == "prefect-server"
    # The monitor flow runs on the worker and pushes where Prometheus scrapes.
    pushgateway = urlsplit(worker_env["ATTNOPS_PUSHGATEWAY_URL"])
    scraped = scrape_jobs()["attnops-monitor"]["static_configs"][0]["targets"]
    assert [f"{pushgateway.hostname}:{pushgateway.port}"] == scraped
    assert pushgateway.hostname in services

    mlflow_env = services["mlflow"]["environment"]
    assert urlsplit(mlflow_env["MLFLOW_BACKEND_STORE_URI"]).path.lstrip("/") in databases
    assert urlsplit(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert (
        mlflow_env["AWS_SECRET_ACCESS_KEY"]
        == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    )
    bucket = urlsplit(flag_value(services["mlflow"]["command"], "--artifacts-destination")).hostname
    assert f"local/{bucket}" in services["minio-init"]["command"][0]
    assert "--serve-artifacts" in services["mlflow"]["command"]
    allowed = flag_value(services["mlflow"]["command"], "--allowed-hosts").split(",")
    assert any(fnmatch.fnmatch(f"mlflow:{mlflow_port}", a) for a in allowed), (
        "MLflow >= 3.5 refuses the Host header the other containers send"
    )
    prefect_db = urlsplit(
        services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    )
    assert prefect_db.scheme == "postgresql+asyncpg" and prefect_db.path == "/prefect"
    assert prefect_db.path.lstrip("/") in databases


def test_compose_health_and_startup_order():
    services = compose_file()["services"]
    assert "/ready" in " ".join(services["model-server"]["healthcheck"]["test"])
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {d: {"condition": "service_started"} for d in depends_on}
        for dependency, condition in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has none"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )
    # Every host path a service mounts exists in the repository.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name} mounts missing {source}"


def test_postgres_init_creates_each_database_the_stack_uses():
    script = (COMPOSE / "postgres" / "init-databases.sh").read_text()
    assert "CREATE DATABASE" in script and "ATTNOPS_DATABASES" in script
    env = compose_file()["services"]["postgres"]["environment"]
    assert set(env["ATTNOPS_DATABASES"].split()) == {"mlflow", "prefect", "inference"}


def test_gpu_override_reserves_a_gpu_for_the_worker():
    worker = compose_file("docker-compose.gpu.yml")["services"]["prefect-worker"]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


# ---------------------------------------------------------------------------- Dockerfile


@cache
def _dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+", text, flags=re.M)[1:]
    return {re.search(r"\bAS\s+(\S+)", p.splitlines()[0]).group(1): p for p in parts}


@cache
def _dockerfile_args() -> dict[str, str]:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


def test_dockerfile_has_cpu_and_cuda_torch_before_the_project():
    stages = _dockerfile_stages()
    assert {"mlflow", "torch-cpu", "torch-cuda", "app"} <= set(stages)
    assert _dockerfile_args()["TORCH_VARIANT"] == "cpu"
    assert stages["app"].splitlines()[0].startswith("torch-${TORCH_VARIANT}")
    assert (
        "--index-url" in stages["torch-cpu"] and "/cpu" in _dockerfile_args()["TORCH_CPU_INDEX_URL"]
    )
    assert "--index-url" in stages["torch-cuda"]
    # The project (its `torch>=2.4` requirement) is installed on top of a torch stage and
    # never asks pip for torch itself.
    installs = re.findall(r"pip install((?:[^\n]*\\\n)*[^\n]*)", stages["app"])
    assert installs and not any("torch" in i for i in installs), installs
    assert "psycopg" in stages["app"] and "psycopg" in stages["mlflow"]
    assert "boto3" in stages["mlflow"]
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".attnops", "infra/compose/.env", "data"} <= set(ignore)


# ---------------------------------------------------------------------------- spec overlay


def test_spec_overlay_changes_only_the_named_fields(tmp_path):
    from attnops.spec import load_spec

    argv = [
        "python",
        "infra/scripts/spec_overlay.py",
        SPEC,
        "serving.host=model-server",
        "serving.canary_share=1.0",
        "--output",
        "deploy/x.yaml",
    ]
    derived, _ = run_spec_overlay(argv, tmp_path)
    original = load_spec(ROOT / SPEC)
    assert derived.serving.host == "model-server" and derived.serving.canary_share == 1.0
    expected = original.model_copy(
        update={
            "serving": original.serving.model_copy(
                update={"host": "model-server", "canary_share": 1.0}
            )
        }
    )
    assert derived == expected


def test_spec_overlay_refuses_what_the_spec_refuses(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("o", INFRA / "scripts" / "spec_overlay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = str(tmp_path / "s.yaml")
    assert module.main([str(ROOT / SPEC), "serving.canary_share=2", "-o", out]) == 1
    assert "canary_share" in capsys.readouterr().err
    assert module.main([str(ROOT / SPEC), "serving", "-o", out]) == 1
