"""`attnops ci` and the GitHub Actions workflow that calls it.

The pull-request path runs for real (real MLflow on SQLite, the session's Prefect server):
a CI-budget build is trained and gated, and the summary the workflow posts holds the gate
table. The push path needs the team's Prefect server; here only its guard is exercised.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException

from attnops.flows.ci import COMMENT_MARKER
from attnops.flows.cli import main
from attnops.models import registry
from attnops.settings import Settings
from tests.conftest import command_path, tiny_spec_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "attnops-ci.yml"
# Tiny random models score low, and a busy 2-core box is slow: the limits a tiny build
# cannot meet are opened up (these tests are about the CI plumbing, not the model).
LENIENT = {
    "min_macro_f1": 0.0,
    "max_ece": 1.0,
    "max_unsupported_assertion_rate": 1.0,
    "max_latency_ms_p95": 10_000,
    "max_latency_ms_p99": 10_000,
    "latency_samples": 20,
    "min_baseline_margin": None,  # a random tiny model does not beat bag-of-words
}
CI_BUDGET = {"max_steps": 4, "train_sample": 120}


def _spec(demo_dir, write_spec, name="spec.yaml", **gate) -> str:
    spec = tiny_spec_dict(demo_dir, epochs=2)
    spec["gate"] = {**LENIENT, **gate}
    spec["monitoring"] = {"window_size": 50, "bootstrap_resamples": 200}
    spec["evaluation"]["baseline"] = False
    spec["ci"] = CI_BUDGET
    return str(write_spec(spec, name))


def _ci(spec_path: str, summary: Path) -> int:
    return main(["ci", "--event", "pull_request", "--spec", spec_path, "--summary", str(summary)])


@pytest.mark.usefixtures("prefect_server")
def test_pull_request_gates_a_ci_budget_build_and_writes_the_gate_table(
    attnops_home, demo_dir, write_spec, tmp_path
):
    """Exit 0 on a passing gate; the summary holds the table; the budget was the CI one."""
    summary = tmp_path / "gate-summary.md"
    assert _ci(_spec(demo_dir, write_spec), summary) == 0

    text = summary.read_text()
    assert text.splitlines()[0] == COMMENT_MARKER
    assert "## attnops CI gate: PASS: tiny-tickets v1 vs absolute limits" in text
    assert "| check | result | reason |" in text
    assert re.search(r"^\| quality_floor \| pass \|", text, re.M)
    assert "| optimizer steps | 4 |" in text
    # 120 of 360, but at least data.min_examples_per_class (5) of each of the 20 intents
    sampled = re.search(r"at most 4 optimizer steps, (\d+) of 360 training examples", text)
    assert sampled and 120 <= int(sampled.group(1)) < 150, text

    client = registry.client_for(Settings.from_env())
    version = client.get_model_version("tiny-tickets", "1")
    assert version.tags["attnops.gate"] == "passed"
    run = client.get_run(version.run_id)
    assert run.data.metrics["optimizer_steps"] == 4
    assert run.data.tags["attnops.trigger"] == "ci"
    assert run.data.tags["attnops.ci_event"] == "pull_request"
    # A CI build must not become the challenger that `attnops gate`/`release` pick up.
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("tiny-tickets", "challenger")


@pytest.mark.usefixtures("prefect_server")
def test_failing_gate_exits_1_and_the_summary_says_fail(
    attnops_home, demo_dir, write_spec, tmp_path
):
    summary = tmp_path / "gate-summary.md"
    assert _ci(_spec(demo_dir, write_spec, min_macro_f1=0.99), summary) == 1

    text = summary.read_text()
    assert "## attnops CI gate: FAIL: tiny-tickets v1 vs absolute limits" in text
    assert re.search(r"^\| quality_floor \| \*\*FAIL\*\* \| macro-F1", text, re.M)
    client = registry.client_for(Settings.from_env())
    assert client.get_model_version("tiny-tickets", "1").tags["attnops.gate"] == "failed"


def test_push_without_prefect_api_url_fails_with_one_line(demo_dir, write_spec, tmp_path):
    spec = _spec(demo_dir, write_spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "ATTNOPS_HOME": str(tmp_path / ".attnops"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_PROFILES_PATH": str(tmp_path / "prefect" / "profiles.toml"),
    }
    summary = tmp_path / "deploy-summary.md"
    command = ["ci", "--event", "push", "--spec", spec, "--summary", str(summary)]
    done = subprocess.run(
        [sys.executable, "-m", "attnops.flows.cli", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("attnops ci failed")]
    assert len(errors) == 1, done.stderr
    assert "set PREFECT_API_URL" in errors[0]
    assert "Traceback" not in done.stderr
    assert "ERROR" in summary.read_text() and "PREFECT_API_URL" in summary.read_text()


def _workflow() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as true
    return workflow


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflow_runs_the_tests_and_the_gate_on_pull_requests_and_deploys_on_main():
    workflow = _workflow()
    assert workflow["on"]["pull_request"]["branches"] == ["main"]
    assert workflow["on"]["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "gate", "deploy"}
    assert jobs["test"]["if"] == jobs["gate"]["if"] == "github.event_name == 'pull_request'"
    assert "make test" in _runs(jobs["test"])

    gate = jobs["gate"]
    assert "attnops ci --event pull_request" in _runs(gate)
    assert "--summary gate-summary.md" in _runs(gate)
    assert '>> "$GITHUB_STEP_SUMMARY"' in _runs(gate)
    comment = next(s for s in gate["steps"] if "github-script" in s.get("uses", ""))
    assert "gate-summary.md" in comment["with"]["script"]
    assert gate["permissions"]["pull-requests"] == "write"

    deploy = jobs["deploy"]
    assert deploy["if"].startswith("github.event_name == 'push'")
    assert "attnops ci --event push" in _runs(deploy)
    assert deploy["env"]["PREFECT_API_URL"] == "${{ secrets.PREFECT_API_URL }}"
    assert deploy["concurrency"]["cancel-in-progress"] is False


def test_workflow_passes_actionlint():
    """actionlint; with shellcheck on PATH (always in CI) it checks the `run:` scripts too."""
    binary = command_path("actionlint", "pip install -e '.[dev]'")
    if os.environ.get("CI") == "true":
        command_path("shellcheck", "Debian: apt-get install shellcheck")
    done = subprocess.run(
        [binary, "-no-color", str(WORKFLOW)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
