"""The deployment material under infra/, checked offline without Docker or a cluster.

Compose files validate against the compose-spec schema (the copy vendored in
check-jsonschema), Kubernetes objects against the Kubernetes OpenAPI schemas
(kubernetes-validate), PromQL parses (promql-parser), and every metric a dashboard or an
alert queries is one the server's `ServingMetrics` exports, with labels it has. promtool
and amtool, when on PATH, also check and unit-test the rules and the Alertmanager config.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.conftest import command_path

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose"
K8S = INFRA / "k8s"
RULES = INFRA / "prometheus" / "rules" / "attnops.yml"
DASHBOARDS = INFRA / "grafana" / "dashboards"
RUNBOOKS = INFRA / "runbooks"
SPEC = "configs/support-tickets.yaml"
K8S_VERSION = "1.33"

# Series Prometheus itself writes for every target; queried but never exported by attnops.
PROMETHEUS_TARGET_SERIES = frozenset({"up"})
# Labels Prometheus adds to every scraped series (job, instance) or that the scrape
# configuration of infra/prometheus/prometheus.yml attaches (model).
TARGET_LABELS = frozenset({"job", "instance", "model"})
# Grafana's built-in interval variables, replaced by a duration before parsing PromQL.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


# ---------------------------------------------------------------------------- helpers


@cache
def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def _interpolate(node, env: dict[str, str], missing: set[str]):
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, missing) for v in node]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        missing.add(name)
        return ""

    return _VAR.sub(replace, node)


@cache
def _compose(name: str = "docker-compose.yml") -> dict:
    missing: set[str] = set()
    data = _interpolate(_yaml(COMPOSE / name), _env_example(), missing)
    assert not missing, f"{name} needs {sorted(missing)}, which .env.example does not set"
    return data


@cache
def _compose_schema() -> dict:
    import importlib.resources

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def _shell_steps(command) -> list[list[str]]:
    """The commands of a `sh -c "a && b && exec c"` (or an argv list) as argv lists."""
    if isinstance(command, list) and command[:2] == ["sh", "-c"]:
        command = command[2]
    if isinstance(command, list):
        return [command]
    steps = []
    for part in command.split("&&"):
        argv = shlex.split(part)
        if argv and argv[0] == "exec":
            argv = argv[1:]
        steps.append(argv)
    return steps


def _run_attnops_cli(argv: list[str], monkeypatch) -> tuple[int, object]:
    """Parse `argv` with the real `attnops` CLI, without running the command."""
    from attnops.flows import cli

    parsed = []
    monkeypatch.setattr(cli, "configure_process_env", lambda: None)
    monkeypatch.setattr(cli, "_run", parsed.append)  # returns None: the command "succeeds"
    code = cli.main(argv)
    return code, parsed[0] if parsed else None


def _overlay(argv: list[str], tmp_path: Path):
    """Run infra/scripts/spec_overlay.py as a container would (cwd = repository root)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "spec_overlay", INFRA / "scripts" / "spec_overlay.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert argv[:2] == ["python", "infra/scripts/spec_overlay.py"], argv
    args = argv[2:]
    out = tmp_path / Path(args[args.index("--output") + 1]).name
    args[args.index("--output") + 1] = str(out)
    assert module.main(args) == 0, argv
    from attnops.spec import load_spec

    return load_spec(out), args


# ---------------------------------------------------------------------------- metrics


@cache
def _exported_samples() -> tuple:
    """Every sample a fresh server (and the monitor's push) writes once each metric has one
    child: prometheus_client adds the suffixes itself (_total, _created, _bucket, _count, _sum)."""
    from prometheus_client.metrics import MetricWrapperBase

    from attnops.monitors.pushed_metrics import MonitorMetrics
    from attnops.serving.metrics import ServingMetrics

    samples = []
    for metrics in (ServingMetrics(), MonitorMetrics()):
        for metric in vars(metrics).values():
            if isinstance(metric, MetricWrapperBase) and metric._labelnames:
                metric.labels(*["x"] * len(metric._labelnames))
        samples += [s for family in metrics.registry.collect() for s in family.samples]
    return tuple(samples)


@cache
def _exported() -> dict[str, frozenset[str]]:
    """Every series name the server exports -> its labels (with `le` on buckets)."""
    names: dict[str, set[str]] = {}
    for sample in _exported_samples():
        names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


@cache
def _histogram_edges() -> dict[str, frozenset[str]]:
    """Bucket series -> the `le` values prometheus_client writes ("0.5", "1.0", "+Inf")."""
    edges: dict[str, set[str]] = {}
    for sample in _exported_samples():
        if sample.name.endswith("_bucket"):
            edges.setdefault(sample.name, set()).add(sample.labels["le"])
    return {name: frozenset(values) for name, values in edges.items()}


@cache
def _process_series() -> frozenset[str]:
    """What prometheus_client's process collector exports (process_resident_memory_bytes...)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return frozenset(s.name for family in registry.collect() for s in family.samples)


@cache
def _recorded() -> frozenset[str]:
    return frozenset(
        rule["record"]
        for group in _yaml(RULES)["groups"]
        for rule in group["rules"]
        if "record" in rule
    )


@cache
def _dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _grafana_values(board: dict) -> dict[str, str]:
    values = {}
    for variable in board["templating"]["list"]:
        if variable["type"] in ("textbox", "constant", "custom"):
            values[variable["name"]] = str(variable["query"])
        else:
            values[variable["name"]] = ".*"
    return values


def _grafana_to_promql(expr: str, values: dict[str, str]) -> str:
    for builtin in GRAFANA_INTERVALS:
        expr = expr.replace(builtin, "5m")

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"dashboard variable ${name} is not defined: {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query and annotation."""
    found = []
    for group in _yaml(RULES)["groups"]:
        for rule in group["rules"]:
            found.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))
    for name, board in _dashboards().items():
        values = _grafana_values(board)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = _grafana_to_promql(target["expr"], values)
                found.append((f"{name} / {panel['title']}", expr))
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                found.append((f"{name} annotation", _grafana_to_promql(annotation["expr"], values)))
    return found


def _selectors(expr: str) -> list[tuple[str, list]]:
    import promql_parser

    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = list(node.matchers.matchers)
            name = node.name or next(m.value for m in matchers if m.name == "__name__")
            found.append((name, [m for m in matchers if m.name != "__name__"]))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@cache
def _panel_titles() -> set[str]:
    return {
        f"{board['title']} / {panel['title']}"
        for board in _dashboards().values()
        for panel in board["panels"]
    }


# ---------------------------------------------------------------------------- Compose


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_validate_against_the_compose_spec(name):
    """Interpolated with .env.example, each file is valid Compose (compose-spec schema)."""
    schema = _compose_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(_compose(name)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_misspelt_key():
    """The schema is strict enough to catch a typo, so passing it means something."""
    broken = copy.deepcopy(_compose())
    broken["services"]["model-server"]["helthcheck"] = broken["services"]["model-server"].pop(
        "healthcheck"
    )
    assert not jsonschema.Draft202012Validator(_compose_schema()).is_valid(broken)


def test_env_example_sets_every_variable_and_nothing_unused():
    text = (COMPOSE / "docker-compose.yml").read_text()
    used = {m.group(1) or m.group(4) for m in _VAR.finditer(text) if m.group(0) != "$$"}
    required = {m.group(1) for m in _VAR.finditer(text) if m.group(2) in (":?", "?")}
    assert required <= set(_env_example()), required - set(_env_example())
    unused = set(_env_example()) - used
    assert not unused, f".env.example sets {sorted(unused)}, which docker-compose.yml never uses"
    assert all("change-me" in _env_example()[k] for k in _env_example() if "PASSWORD" in k)


def test_compose_services_images_and_builds():
    services = _compose()["services"]
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
    services = _compose()["services"]
    server = services["model-server"]["command"]
    assert server == ["attnops", "serve", "--spec", SPEC, "--host", "0.0.0.0"]
    code, args = _run_attnops_cli(server[1:], monkeypatch)
    assert code == 0 and args.command == "serve" and (ROOT / args.spec).is_file()

    steps = _shell_steps(services["prefect-worker"]["command"])
    assert [s[:2] for s in steps] == [
        ["python", "infra/scripts/spec_overlay.py"],
        ["attnops", "deploy"],
        ["prefect", "worker"],
    ]
    spec, overlay_args = _overlay(steps[0], tmp_path)
    assert overlay_args[1:-2] == ["serving.host=model-server"]
    assert spec.serving.url == "http://model-server:8000"
    code, deploy = _run_attnops_cli(steps[1][1:], monkeypatch)
    assert code == 0 and deploy.spec == steps[0][-1], "deploy must use the derived spec"
    worker = steps[2]
    assert worker[:3] == ["prefect", "worker", "start"]
    assert worker[worker.index("--pool") + 1] == deploy.work_pool
    assert worker[worker.index("--type") + 1] == "process"


def test_compose_env_wiring():
    services = _compose()["services"]
    server_env = services["model-server"]["environment"]
    worker_env = services["prefect-worker"]["environment"]
    postgres_env = services["postgres"]["environment"]
    databases = postgres_env["ATTNOPS_DATABASES"].split()
    mlflow_port = _flag(services["mlflow"]["command"], "--port")
    for env in (server_env, worker_env):
        tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
        assert (tracking.hostname, str(tracking.port)) == ("mlflow", mlflow_port)
        log_db = urlsplit(env["ATTNOPS_INFERENCE_DB"])
        assert log_db.scheme == "postgresql+psycopg" and log_db.hostname == "postgres"
        assert log_db.path.lstrip("/") in databases
        assert log_db.username == postgres_env["POSTGRES_USER"]
        assert log_db.password == postgres_env["POSTGRES_PASSWORD"]
        assert env["ATTNOPS_ADMIN_TOKEN"] == _env_example()["ATTNOPS_ADMIN_TOKEN"]
        assert urlsplit(env["PREFECT_API_URL"]).hostname == "prefect-server"
    # The monitor flow runs on the worker and pushes where Prometheus scrapes.
    pushgateway = urlsplit(worker_env["ATTNOPS_PUSHGATEWAY_URL"])
    scraped = _scrape_jobs()["attnops-monitor"]["static_configs"][0]["targets"]
    assert [f"{pushgateway.hostname}:{pushgateway.port}"] == scraped
    assert pushgateway.hostname in services

    mlflow_env = services["mlflow"]["environment"]
    assert urlsplit(mlflow_env["MLFLOW_BACKEND_STORE_URI"]).path.lstrip("/") in databases
    assert urlsplit(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert (
        mlflow_env["AWS_SECRET_ACCESS_KEY"]
        == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    )
    bucket = urlsplit(_flag(services["mlflow"]["command"], "--artifacts-destination")).hostname
    assert f"local/{bucket}" in services["minio-init"]["command"][0]
    assert "--serve-artifacts" in services["mlflow"]["command"]
    allowed = _flag(services["mlflow"]["command"], "--allowed-hosts").split(",")
    assert any(fnmatch.fnmatch(f"mlflow:{mlflow_port}", a) for a in allowed), (
        "MLflow >= 3.5 refuses the Host header the other containers send"
    )
    prefect_db = urlsplit(
        services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    )
    assert prefect_db.scheme == "postgresql+asyncpg" and prefect_db.path == "/prefect"
    assert prefect_db.path.lstrip("/") in databases


def test_compose_health_and_startup_order():
    services = _compose()["services"]
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
    env = _compose()["services"]["postgres"]["environment"]
    assert set(env["ATTNOPS_DATABASES"].split()) == {"mlflow", "prefect", "inference"}


def test_gpu_override_reserves_a_gpu_for_the_worker():
    worker = _compose("docker-compose.gpu.yml")["services"]["prefect-worker"]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def _flag(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


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
    derived, _ = _overlay(argv, tmp_path)
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


# ---------------------------------------------------------------------------- Prometheus


def _scrape_jobs() -> dict[str, dict]:
    config = _yaml(INFRA / "prometheus" / "prometheus.yml")
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_the_model_server_and_loads_the_rules():
    config = _yaml(INFRA / "prometheus" / "prometheus.yml")
    jobs = _scrape_jobs()
    targets = jobs["attnops-model"]["static_configs"][0]["targets"]
    host, port = targets[0].split(":")
    services = _compose()["services"]
    assert host in services and port == str(_run_port(services[host]))
    assert jobs["attnops-model"]["metrics_path"] == "/metrics"
    from attnops.monitors.pushed_metrics import PUSH_JOB

    # Without honor_labels the pushed job/model labels become exported_job/exported_model.
    assert jobs[PUSH_JOB]["honor_labels"] is True
    rule_files = [
        p for pattern in config["rule_files"] for p in (INFRA / "prometheus").glob(pattern)
    ]
    assert RULES in rule_files
    am_host, am_port = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][
        0
    ].split(":")
    assert am_host in services and am_port == "9093"
    assert "../prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def _run_port(service: dict) -> int:
    """The port `attnops serve` listens on: --port, else the spec's serving.port."""
    from attnops.spec import load_spec

    command = service["command"]
    if "--port" in command:
        return int(_flag(command, "--port"))
    return load_spec(ROOT / _flag(command, "--spec")).serving.port


def test_every_query_parses_as_promql():
    import promql_parser

    bad = []
    for where, expr in _queries():
        try:
            promql_parser.parse(expr)
        except Exception as exc:
            bad.append(f"{where}: {exc}")
    assert not bad, "\n".join(bad)


def test_every_queried_metric_is_exported_by_the_server():
    """The contract of attnops/serving/metrics.py and attnops/monitors/pushed_metrics.py:
    dashboards and alerts query only what the server exports or the monitor pushes (with
    their labels), rules' own recorded series, and Prometheus' per-target `up`. process_*
    comes from the process collector the server registers."""
    exported = _exported()
    problems = []
    for where, expr in _queries():
        for name, matchers in _selectors(expr):
            if name in _recorded() | PROMETHEUS_TARGET_SERIES | _process_series():
                allowed = TARGET_LABELS
            elif name in exported:
                allowed = exported[name] | TARGET_LABELS
            else:
                problems.append(f"{where}: {name} is exported by neither server nor monitor")
                continue
            for matcher in matchers:
                if matcher.name not in allowed:
                    problems.append(f"{where}: {name} has no label {matcher.name!r}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_every_bucket_bound_queried_is_a_bucket_edge():
    """`le="0.5"` selects nothing unless 0.5 is one of the histogram's bucket edges."""
    edges = _histogram_edges()
    for where, expr in _queries():
        for name, matchers in _selectors(expr):
            for matcher in matchers:
                if matcher.name == "le":
                    assert matcher.value in edges[name], f"{where}: le={matcher.value}"


def test_grafana_variable_queries_use_exported_labels():
    for name, board in _dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(
                r"label_values\((\w+),\s*(\w+)\)", variable["definition"]
            ).groups()
            assert label in _exported()[metric], f"{name}: ${variable['name']}"


def test_the_server_exports_process_metrics():
    assert "process_resident_memory_bytes" in _exported()


@cache
def _rules() -> list[dict]:
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def test_alerts_have_severity_runbook_and_dashboard_panel():
    names = [alert["alert"] for alert in _alerts()]
    assert len(names) == len(set(names))
    for alert in _alerts():
        name, labels, annotations = alert["alert"], alert["labels"], alert["annotations"]
        assert labels["severity"] in ("page", "ticket"), name
        assert annotations["summary"] and annotations["description"], name
        runbook = re.search(r"/infra/runbooks/([\w-]+\.md)$", annotations["runbook_url"])
        assert runbook and (RUNBOOKS / runbook.group(1)).is_file(), name
        assert annotations["dashboard"] in _panel_titles(), f"{name}: {annotations['dashboard']}"
    referenced = {
        re.search(r"[\w-]+\.md$", a["annotations"]["runbook_url"]).group(0) for a in _alerts()
    }
    unused = {p.name for p in RUNBOOKS.glob("*.md")} - referenced - {"README.md"}
    assert not unused, f"runbooks no alert points at: {sorted(unused)}"


def test_slo_alerts_are_multiwindow_multi_burn_rate():
    """Page at 14.4x (1h and 5m) and 6x (6h and 30m), ticket at 3x (1d and 2h), for the
    99.9 % error objective and the 99 % latency objective."""
    budgets = {"errors": 0.001, "latency": 0.01}
    expected = {("page", "1h", "5m", 14.4), ("page", "6h", "30m", 6.0), ("ticket", "1d", "2h", 3.0)}
    for slo, budget in budgets.items():
        found = set()
        for alert in _alerts():
            if alert["labels"].get("slo") != slo:
                continue
            windows = re.findall(
                rf"attnops:sli_{slo}:ratio_rate(\w+) > \(([\d.]+) \* ([\d.]+)\)", alert["expr"]
            )
            assert len(windows) == 2, alert["alert"]
            (long, f1, b1), (short, f2, b2) = windows
            assert f1 == f2 and float(b1) == float(b2) == budget, alert["alert"]
            for window in (long, short):
                assert f"attnops:sli_{slo}:ratio_rate{window}" in _recorded()
            found.add((alert["labels"]["severity"], long, short, float(f1)))
        assert found == expected, slo
    latency_rule = next(
        r for r in _rules() if r.get("record") == "attnops:sli_latency:ratio_rate1h"
    )
    assert 'le="0.5"' in latency_rule["expr"]


def test_safety_alerts_page():
    alerts = {a["alert"]: a for a in _alerts()}
    pii = alerts["AttnopsPIIExposure"]
    assert pii["labels"]["severity"] == "page" and "attnops_pii_hits_total" in pii["expr"]
    rollback = alerts["AttnopsCanaryRolledBack"]
    assert rollback["labels"]["severity"] == "page"
    assert 'attnops_served_version{route="canary"}' in rollback["expr"]
    drift = [a for a in alerts.values() if a["annotations"]["runbook_url"].endswith("drift.md")]
    assert drift and all(a["labels"]["severity"] == "ticket" for a in drift)


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = command_path("promtool", "Debian: apt-get install prometheus")
    for argv in (
        [promtool, "check", "rules", str(RULES)],
        [promtool, "check", "config", str(INFRA / "prometheus" / "prometheus.yml")],
        [promtool, "test", "rules", str(INFRA / "prometheus" / "tests" / "attnops.test.yml")],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_checks_the_alertmanager_config():
    amtool = command_path("amtool", "Debian: apt-get install prometheus-alertmanager")
    config = INFRA / "alertmanager" / "alertmanager.yml"
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_every_severity_to_a_receiver():
    config = _yaml(INFRA / "alertmanager" / "alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    routed = {}
    for child in route["routes"]:
        assert child["receiver"] in receivers
        for matcher in child["matchers"]:
            label, value = re.fullmatch(r'(\w+)="([^"]*)"', matcher).groups()
            routed.setdefault(label, {})[value] = child["receiver"]
    assert routed["severity"] == {"page": "page", "ticket": "ticket"}
    used = {alert["labels"]["severity"] for alert in _alerts()}
    assert used <= set(routed["severity"])


# ---------------------------------------------------------------------------- Grafana


EXPECTED_PANELS = {
    "executive": {
        "Answered inputs / s",
        "Cost per 1k answered inputs (last hour)",
        "Cost per 1k answered inputs",
        "Traffic by route",
        "SLO burn rate",
        "Quality trend (label-free)",
        "Availability, 30 days (objective 99.9 %)",
        "Error budget left, 30 days",
    },
    "oncall": {
        "Latency p95 / p99 by route",
        "5xx share vs error budget",
        "Errors by status and reason",
        "Up and restarts",
        "Resident memory (OOM watch)",
        "Served versions",
        "Canary vs champion: traffic",
        "Canary vs champion: p95 latency",
        "Reloads by outcome",
        "Recent gate and release decisions",
        "Inference log",
    },
    "debug": {
        "Token length distribution",
        "Tokens per input",
        "Truncated inputs by version",
        "Unsupported assertions by version",
        "Confidence distribution",
        "PII entities redacted",
        "Attention entropy per head",
        "Drift score per check (alarm above 1)",
        "Label-free accuracy estimate",
        "Monitor: last judged window",
    },
}


def test_dashboards_load_with_the_expected_panels():
    boards = _dashboards()
    assert set(boards) == set(EXPECTED_PANELS)
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        titles = [p["title"] for p in board["panels"]]
        assert EXPECTED_PANELS[name] <= set(titles), EXPECTED_PANELS[name] - set(titles)
        assert len(titles) == len(set(titles)), name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        cells = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area
            if panel["type"] != "text":
                assert panel["targets"], panel["title"]
                assert panel["datasource"]["uid"] == _datasource()["uid"]


def test_dashboard_queries_answer_the_questions_asked():
    board = {n: {p["title"]: p for p in b["panels"]} for n, b in _dashboards().items()}

    def exprs(name, title):
        return " ".join(t["expr"] for t in board[name][title]["targets"])

    assert "$price_per_hour" in exprs("executive", "Cost per 1k answered inputs (last hour)")
    variables = {v["name"] for v in _dashboards()["executive"]["templating"]["list"]}
    assert "price_per_hour" in variables
    latency = exprs("oncall", "Latency p95 / p99 by route")
    assert "histogram_quantile(0.95" in latency and "histogram_quantile(0.99" in latency
    assert "attnops_request_latency_seconds_bucket" in latency and "route" in latency
    assert "by (route, version)" in exprs("oncall", "Canary vs champion: traffic")
    assert "up{" in exprs("oncall", "Up and restarts")
    assert "attnops_reloads_total" in exprs("oncall", "Reloads by outcome")
    assert "attnops_input_tokens_bucket" in exprs("debug", "Token length distribution")
    assert "attnops_truncated_inputs_total" in exprs("debug", "Truncated inputs by version")
    assert "attnops_unsupported_assertions_total" in exprs(
        "debug", "Unsupported assertions by version"
    )
    entropy = exprs("debug", "Attention entropy per head")
    assert "attnops_attention_entropy_sum" in entropy and "by (version, layer, head)" in entropy
    assert "attnops_monitor_drift_score" in exprs("debug", "Drift score per check (alarm above 1)")
    assert "by (version, check)" in exprs("debug", "Drift score per check (alarm above 1)")
    assert 'bound="estimate"' in exprs("executive", "Quality trend (label-free)")
    for name, burn in (("errors", 0.001), ("latency", 0.01)):
        assert f"attnops:sli_{name}:ratio_rate1h / {burn}" in exprs("executive", "SLO burn rate")


@cache
def _datasource() -> dict:
    path = INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    return _yaml(path)["datasources"][0]


def test_grafana_provisioning_points_at_the_stack():
    source = _datasource()
    url = urlsplit(source["url"])
    services = _compose()["services"]
    assert url.hostname in services and url.port == 9090
    provider = _yaml(INFRA / "grafana" / "provisioning" / "dashboards" / "attnops.yml")
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert (COMPOSE / next(k for k, v in mounts.items() if v == path)).resolve() == DASHBOARDS
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).relative_to(path)).is_file()


# ---------------------------------------------------------------------------- Kubernetes


@cache
def _kustomization() -> dict:
    return _yaml(K8S / "kustomization.yaml")


@cache
def _k8s_objects() -> list[dict]:
    return [doc for name in _kustomization()["resources"] for doc in _docs(K8S / name)]


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
        steps = _shell_steps(container["command"] + container["args"])
        spec, _ = _overlay(steps[0], tmp_path)
        shares[track] = spec.serving.canary_share
        code, args = _run_attnops_cli(steps[1][1:], monkeypatch)
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
    allowed = _flag(container["args"], "--allowed-hosts").split(",")
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
    steps = _shell_steps(container["command"] + container["args"])
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

    spec, _ = _overlay(overlay, tmp_path)
    host = spec.serving.host
    assert _object("Service", host)["spec"]["ports"][0]["port"] == spec.serving.port
    code, args = _run_attnops_cli(deploy[1:], monkeypatch)
    assert code == 0 and args.spec == overlay[-1] and args.work_pool == "attnops"
    assert start[start.index("--pool") + 1] == "attnops"
    assert start[start.index("--type") + 1] == "kubernetes"

    job = _job_container(_render_job()["job_manifest"])
    job_steps = _shell_steps(job["command"][:3])
    assert job_steps[0] == overlay, "flow-run pods must derive the spec the deployments name"
    assert job_steps[1] == ["$@"], "then run the flow-run command Prefect passes as args"


# ---------------------------------------------------------------------------- runbooks


# A version tag, a monitoring-run tag or an artifact folder of a run.
MLFLOW_EVIDENCE = re.compile(
    r"attnops\.(gate|release|tokenizer|alarm)|(gate|release|monitor|evaluation)/"
)
# The subcommands of `attnops` (attnops/flows/cli.py), as a regex alternation.
CLI_COMMANDS = "train|gate|release|rollback|serve|monitor|retrain|deploy|traffic|labels|demo"


def test_runbooks_name_a_panel_a_command_and_the_mlflow_evidence(monkeypatch):
    titles = {t.split(" / ", 1)[1] for t in _panel_titles()}
    pages = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
    index = (RUNBOOKS / "README.md").read_text()
    assert pages
    for page in pages:
        text = page.read_text()
        assert f"]({page.name})" in index, f"README.md does not list {page.name}"
        named = set(re.findall(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", text)) & titles
        assert named, f"{page.name} names no dashboard panel"
        assert MLFLOW_EVIDENCE.search(text), f"{page.name} names no MLflow evidence"
        commands = re.findall(rf"attnops ((?:{CLI_COMMANDS})\b[^`\n)]*)", text)
        assert commands, f"{page.name} names no attnops command"
        for command in commands:
            argv = shlex.split(command.replace("$SPEC", SPEC), comments=True)
            argv = ["3" if a == "N" else a for a in argv]
            code, _ = _run_attnops_cli(argv, monkeypatch)
            assert code == 0, f"{page.name}: attnops {command}"
