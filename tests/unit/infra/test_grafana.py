"""Grafana dashboards: their panels, the questions their queries answer, provisioning."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from tests.unit.infra.infra_files import (
    COMPOSE,
    DASHBOARDS,
    INFRA,
    compose_file,
    dashboard_files,
    load_yaml,
)

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
        "Generation: output tokens / s",
        "Generation: cost per 1k requests",
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
        "Generation: time to first token p50 / p99 by version",
        "Generation: queue and batch occupancy",
        "Generation: KV cache in use",
        "Generation: inter-token latency p50 / p99",
        "Generation: scoring backlog",
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
        "Generation: hallucination flags by version",
        "Generation: PII leaks in outputs by version",
        "Generation: prompt and generated tokens per request",
        "Generation: prefix-cache hit rate",
    },
}


def test_dashboards_load_with_the_expected_panels():
    boards = dashboard_files()
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
    board = {n: {p["title"]: p for p in b["panels"]} for n, b in dashboard_files().items()}

    def exprs(name, title):
        return " ".join(t["expr"] for t in board[name][title]["targets"])

    assert "$price_per_hour" in exprs("executive", "Cost per 1k answered inputs (last hour)")
    variables = {v["name"] for v in dashboard_files()["executive"]["templating"]["list"]}
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
    flags = exprs("debug", "Generation: hallucination flags by version")
    assert "attnops_generation_hallucination_flags_total" in flags and "by (version)" in flags
    assert "attnops_generation_scored_outputs_total" in flags
    leaks = exprs("debug", "Generation: PII leaks in outputs by version")
    assert "attnops_generation_pii_leaks_total" in leaks and "by (version)" in leaks
    ttft = exprs("oncall", "Generation: time to first token p50 / p99 by version")
    assert "histogram_quantile(0.99" in ttft and "attnops_generation_ttft_seconds_bucket" in ttft
    for name, burn in (("errors", 0.001), ("latency", 0.01)):
        assert f"attnops:sli_{name}:ratio_rate1h / {burn}" in exprs("executive", "SLO burn rate")


@cache
def _datasource() -> dict:
    path = INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    return load_yaml(path)["datasources"][0]


def test_grafana_provisioning_points_at_the_stack():
    source = _datasource()
    url = urlsplit(source["url"])
    services = compose_file()["services"]
    assert url.hostname in services and url.port == 9090
    provider = load_yaml(INFRA / "grafana" / "provisioning" / "dashboards" / "attnops.yml")
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert (COMPOSE / next(k for k, v in mounts.items() if v == path)).resolve() == DASHBOARDS
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).relative_to(path)).is_file()
