"""Prometheus: scrape config, PromQL that parses, metrics every query needs, alert rules
(promtool) and Alertmanager routes (amtool)."""

from __future__ import annotations

import re
import subprocess
from functools import cache

from tests.conftest import command_path
from tests.unit.infra.infra_files import (
    INFRA,
    PROMETHEUS_TARGET_SERIES,
    ROOT,
    RULES,
    RUNBOOKS,
    TARGET_LABELS,
    compose_file,
    dashboard_files,
    exported_metrics,
    flag_value,
    histogram_edges,
    load_yaml,
    panel_titles,
    process_series,
    promql_queries,
    promql_selectors,
    recorded_series,
    scrape_jobs,
)

# ---------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_model_server_and_loads_the_rules():
    config = load_yaml(INFRA / "prometheus" / "prometheus.yml")
    jobs = scrape_jobs()
    targets = jobs["attnops-model"]["static_configs"][0]["targets"]
    host, port = targets[0].split(":")
    services = compose_file()["services"]
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
        return int(flag_value(command, "--port"))
    return load_spec(ROOT / flag_value(command, "--spec")).serving.port


def test_every_query_parses_as_promql():
    import promql_parser

    bad = []
    for where, expr in promql_queries():
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
    exported = exported_metrics()
    problems = []
    for where, expr in promql_queries():
        for name, matchers in promql_selectors(expr):
            if name in recorded_series() | PROMETHEUS_TARGET_SERIES | process_series():
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
    edges = histogram_edges()
    for where, expr in promql_queries():
        for name, matchers in promql_selectors(expr):
            for matcher in matchers:
                if matcher.name == "le":
                    assert matcher.value in edges[name], f"{where}: le={matcher.value}"


def test_grafana_variable_queries_use_exported_labels():
    for name, board in dashboard_files().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(
                r"label_values\((\w+),\s*(\w+)\)", variable["definition"]
            ).groups()
            assert label in exported_metrics()[metric], f"{name}: ${variable['name']}"


def test_the_server_exports_process_metrics():
    assert "process_resident_memory_bytes" in exported_metrics()


@cache
def _rules() -> list[dict]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


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
        assert annotations["dashboard"] in panel_titles(), f"{name}: {annotations['dashboard']}"
    referenced = {
        re.search(r"[\w-]+\.md$", a["annotations"]["runbook_url"]).group(0) for a in _alerts()
    }
    unused = {p.name for p in RUNBOOKS.glob("*.md")} - referenced - {"README.md"}
    assert not unused, f"runbooks no alert points at: {sorted(unused)}"


def test_slo_alerts_are_multiwindow_multi_burn_rate():
    """Page at 14.4x (1h and 5m) and 6x (6h and 30m), ticket at 3x (1d and 2h), for the
    99.9 % error objective, the 99 % latency objective and the 99 % time-to-first-token
    objective of generation."""
    budgets = {"errors": 0.001, "latency": 0.01, "ttft": 0.01}
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
                assert f"attnops:sli_{slo}:ratio_rate{window}" in recorded_series()
            found.add((alert["labels"]["severity"], long, short, float(f1)))
        assert found == expected, slo
    latency_rule = next(
        r for r in _rules() if r.get("record") == "attnops:sli_latency:ratio_rate1h"
    )
    assert 'le="0.5"' in latency_rule["expr"]
    ttft_rule = next(r for r in _rules() if r.get("record") == "attnops:sli_ttft:ratio_rate1h")
    assert 'le="2.5"' in ttft_rule["expr"]


def test_safety_alerts_page():
    alerts = {a["alert"]: a for a in _alerts()}
    pii = alerts["AttnopsPIIExposure"]
    assert pii["labels"]["severity"] == "page" and "attnops_pii_hits_total" in pii["expr"]
    rollback = alerts["AttnopsCanaryRolledBack"]
    assert rollback["labels"]["severity"] == "page"
    assert 'attnops_served_version{route="canary"}' in rollback["expr"]
    leak = alerts["AttnopsOutputPIILeak"]
    assert leak["labels"]["severity"] == "page"
    assert "attnops_generation_pii_leaks_total" in leak["expr"]
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
    config = load_yaml(INFRA / "alertmanager" / "alertmanager.yml")
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
