"""What the infra tests share: paths, the files under infra/ parsed once, and the metrics
the server exports. Checked offline, without Docker or a cluster."""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path

import yaml

from attnops.spec import DEFAULT_SPEC

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose"
K8S = INFRA / "k8s"
RULES = INFRA / "prometheus" / "rules" / "attnops.yml"
DASHBOARDS = INFRA / "grafana" / "dashboards"
RUNBOOKS = INFRA / "runbooks"
SPEC = DEFAULT_SPEC
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
def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def env_example() -> dict[str, str]:
    pairs = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


COMPOSE_VARIABLE = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)"
)


def interpolate(node, env: dict[str, str], missing: set[str]):
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, missing) for v in node]
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

    return COMPOSE_VARIABLE.sub(replace, node)


@cache
def compose_file(name: str = "docker-compose.yml") -> dict:
    missing: set[str] = set()
    data = interpolate(load_yaml(COMPOSE / name), env_example(), missing)
    assert not missing, f"{name} needs {sorted(missing)}, which .env.example does not set"
    return data


@cache
def compose_schema() -> dict:
    import importlib.resources

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def shell_steps(command) -> list[list[str]]:
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


def run_attnops_cli(argv: list[str], monkeypatch) -> tuple[int, object]:
    """Parse `argv` with the real `attnops` CLI, without running the command."""
    from attnops.flows import cli

    parsed = []
    monkeypatch.setattr(cli, "configure_process_env", lambda: None)
    monkeypatch.setattr(cli, "_preflight", lambda args: None)  # no spec or service checks
    monkeypatch.setattr(cli, "_run", parsed.append)  # returns None: the command "succeeds"
    code = cli.main(argv)
    return code, parsed[0] if parsed else None


def run_spec_overlay(argv: list[str], tmp_path: Path):
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
def exported_samples() -> tuple:
    """Every sample a fresh server of either task (and the monitor's push) writes once each
    metric has one child: prometheus_client adds the suffixes itself (_total, _created,
    _bucket, _count, _sum)."""
    from prometheus_client.metrics import MetricWrapperBase

    from attnops.monitors.pushed_metrics import MonitorMetrics
    from attnops.serving.generation_metrics import GenerationMetrics
    from attnops.serving.metrics import ServingMetrics

    samples = []
    for metrics in (ServingMetrics(), GenerationMetrics(1.0), MonitorMetrics()):
        for metric in vars(metrics).values():
            if isinstance(metric, MetricWrapperBase) and metric._labelnames:
                metric.labels(*["x"] * len(metric._labelnames))
        samples += [s for family in metrics.registry.collect() for s in family.samples]
    return tuple(samples)


@cache
def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the server exports -> its labels (with `le` on buckets)."""
    names: dict[str, set[str]] = {}
    for sample in exported_samples():
        names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


@cache
def histogram_edges() -> dict[str, frozenset[str]]:
    """Bucket series -> the `le` values prometheus_client writes ("0.5", "1.0", "+Inf")."""
    edges: dict[str, set[str]] = {}
    for sample in exported_samples():
        if sample.name.endswith("_bucket"):
            edges.setdefault(sample.name, set()).add(sample.labels["le"])
    return {name: frozenset(values) for name, values in edges.items()}


@cache
def process_series() -> frozenset[str]:
    """What prometheus_client's process collector exports (process_resident_memory_bytes...)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return frozenset(s.name for family in registry.collect() for s in family.samples)


@cache
def recorded_series() -> frozenset[str]:
    return frozenset(
        rule["record"]
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if "record" in rule
    )


@cache
def dashboard_files() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def grafana_values(board: dict) -> dict[str, str]:
    values = {}
    for variable in board["templating"]["list"]:
        if variable["type"] in ("textbox", "constant", "custom"):
            values[variable["name"]] = str(variable["query"])
        else:
            values[variable["name"]] = ".*"
    return values


def grafana_to_promql(expr: str, values: dict[str, str]) -> str:
    for builtin in GRAFANA_INTERVALS:
        expr = expr.replace(builtin, "5m")

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"dashboard variable ${name} is not defined: {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def promql_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query and annotation."""
    found = []
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            found.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))
    for name, board in dashboard_files().items():
        values = grafana_values(board)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = grafana_to_promql(target["expr"], values)
                found.append((f"{name} / {panel['title']}", expr))
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                found.append((f"{name} annotation", grafana_to_promql(annotation["expr"], values)))
    return found


def promql_selectors(expr: str) -> list[tuple[str, list]]:
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
def panel_titles() -> set[str]:
    return {
        f"{board['title']} / {panel['title']}"
        for board in dashboard_files().values()
        for panel in board["panels"]
    }


def flag_value(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def scrape_jobs() -> dict[str, dict]:
    config = load_yaml(INFRA / "prometheus" / "prometheus.yml")
    return {job["job_name"]: job for job in config["scrape_configs"]}
