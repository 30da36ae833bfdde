"""`attnops ci`: what the GitHub Actions workflow (.github/workflows/attnops-ci.yml) runs.

- `--event pull_request`: train on the spec's CI budget (`ci:` in the spec), gate the new
  version against the champion (absolute limits when the registry has none), and write a
  markdown summary for the pull-request comment. Runs in this process like `attnops train`
  and `attnops gate`: Prefect's temporary server unless PREFECT_API_URL names one.
- `--event push` (a merge to main): run the `train/<name>` deployment on the team's Prefect
  server and wait for it, gate the version it registered, and when the gate passes run the
  `release/<name>` deployment for that version and wait for its decision.

Both return whether every decision said yes; the CLI turns that into the exit code.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from attnops.flows.ci_budget import write_ci_spec
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

# attnops.models (torch, MLflow) is imported where it is used: the push path's check of
# PREFECT_API_URL answers in seconds, before any of it loads.
COMMENT_MARKER = "<!-- attnops-ci -->"
"""First line of every summary: the workflow updates the comment that holds it."""
_KEY_METRICS = (
    ("test macro-F1", "test_macro_f1", "{:.3f}"),
    ("TF-IDF baseline macro-F1", "baseline_macro_f1", "{:.3f}"),
    ("calibration error (ECE)", "test_ece", "{:.3f}"),
    ("unsupported assertion rate", "unsupported_assertion_rate", "{:.3f}"),
    ("latency p95 at batch 1 (ms)", "latency_ms_p95", "{:.1f}"),
    ("optimizer steps", "optimizer_steps", "{:.0f}"),
    ("training time (s)", "train_seconds", "{:.0f}"),
)


class CiError(RuntimeError):
    """The CI run cannot go on; the message says what to set or start."""


def run_ci(spec_path: str, *, event: str, summary_path: str | None = None) -> bool:
    """Run the CI path of `event` and write its markdown summary to `summary_path`.

    Returns:
        True when every decision passed (pull_request: the gate; push: the gate and the
        release), False when one said no.

    Raises:
        CiError: push without a reachable Prefect server (PREFECT_API_URL), a deployment
            missing, or a deployment run that failed or did not finish in time. The summary
            file then says so too.
    """
    spec = load_spec(spec_path)
    run = _pull_request if event == "pull_request" else _push
    try:
        passed, summary = run(spec, spec_path)
    except BaseException as exc:
        if summary_path:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            _write(summary_path, [f"## attnops CI ({event}): ERROR", "", reason, "", *_links()])
        raise
    if summary_path:
        _write(summary_path, summary)
        print(f"summary: {summary_path}")
    return passed


def _pull_request(spec: PipelineSpec, spec_path: str) -> tuple[bool, list[str]]:
    from attnops.flows.gate import gate  # imports torch: only once the spec loaded
    from attnops.flows.train import train
    from attnops.models import registry
    from attnops.models.aliases import CHALLENGER

    settings = Settings.from_env()
    settings.prepare()
    client = registry.client_for(settings)
    challenger_before = _alias(client, spec.name, CHALLENGER)
    with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
        ci_spec, budget = write_ci_spec(spec, spec_path, Path(scratch))
        print(f"CI budget: {budget}")
        version = train(ci_spec, tags={"trigger": "ci", **_github_tags("pull_request")})
        try:
            decision = gate(ci_spec, candidate=version.version)
        finally:
            # A CI-budget version must not become what `gate`/`release` pick up by default.
            _restore_alias(client, spec.name, CHALLENGER, challenger_before)
    metrics = {**client.get_run(version.run_id).data.metrics, **version.metrics}
    verdict = "PASS" if decision.passed else "FAIL"
    versus = f"champion v{decision.champion}" if decision.champion else "absolute limits"
    lines = [
        f"## attnops CI gate: {verdict}: {spec.name} v{version.version} vs {versus}",
        "",
        f"CI budget: {budget}.",
    ]
    if decision.champion:
        lines.append(
            f"The champion v{decision.champion} was trained on its full budget: a quality gap "
            "may be the budget's, not the change's."
        )
    else:
        lines.append("No champion in this registry: the gate applies the spec's absolute limits.")
    lines += ["", *_metrics_table(metrics), "", "### Gate", "", decision.table(), ""]
    lines += _links(settings, spec.name, version.version)
    keep = challenger_before and f"v{challenger_before}"
    print(f"challenger alias left on {keep or 'no version'} (v{version.version} is a CI build)")
    return decision.passed, lines


def _push(spec: PipelineSpec, spec_path: str) -> tuple[bool, list[str]]:
    api_url = _require_prefect_server()
    from attnops.flows.gate import gate  # imports torch: only once the server answered
    from attnops.models import registry

    settings = Settings.from_env()
    marker = uuid.uuid4().hex
    tags = {"trigger": "ci", "ci_run": marker, **_github_tags("push")}
    train_run = _run_deployment(f"train/{spec.name}", {"tags": tags}, spec, spec_path, api_url)
    client = registry.client_for(settings)
    version, run_id = _version_trained_by(client, spec.name, marker, settings)
    lines = [f"Training: {_flow_run_link(train_run)}"]
    trained_sha = client.get_model_version(spec.name, version).tags.get(
        f"{registry.TAG}git_sha", ""
    )
    merged_sha = os.environ.get("GITHUB_SHA")
    if merged_sha and not trained_sha.startswith(merged_sha):
        lines.append(
            f"**Note:** the worker trained code at {trained_sha or 'an unknown commit'}, not the "
            f"merged {merged_sha}: update the worker's checkout."
        )
    decision = gate(spec_path, candidate=version)
    lines += ["", "### Gate", "", decision.table(), ""]
    promoted = False
    if decision.passed:
        release_run = _run_deployment(
            f"release/{spec.name}", {"candidate": version}, spec, spec_path, api_url
        )
        tags = client.get_model_version(spec.name, version).tags
        outcome = tags.get(f"{registry.TAG}release", "no decision recorded")
        promoted = outcome == "promoted"
        reasons = tags.get(f"{registry.TAG}release_reasons", "")
        lines.append(f"Release: {outcome}: {reasons} ({_flow_run_link(release_run)})")
    else:
        lines.append("Release: not started (the gate failed).")
    verdict = "PASS" if promoted else "FAIL"
    versus = f"champion v{decision.champion}" if decision.champion else "absolute limits"
    return promoted, [
        f"## attnops CI (merge to main): {verdict}: {spec.name} v{version} vs {versus}",
        "",
        *_metrics_table(client.get_run(run_id).data.metrics),
        "",
        *lines,
        "",
        *_links(settings, spec.name, version),
    ]


def _require_prefect_server() -> str:
    """The team's Prefect API URL, once it answers; a temporary server could not run
    deployments."""
    from attnops.flows.deploy import prefect_server

    api_url, reason = prefect_server()
    if not api_url:
        raise CiError(
            "the push path runs deployments on the team's Prefect server: set PREFECT_API_URL "
            "(in GitHub: the repository secret PREFECT_API_URL)"
        )
    if reason is not None:
        raise CiError(f"no Prefect server answers at PREFECT_API_URL={api_url} ({reason})")
    return api_url


def _run_deployment(name: str, parameters: dict, spec: PipelineSpec, spec_path: str, api_url: str):
    """Run a deployment and wait until it finishes; CiError unless it completed."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    timeout_s = spec.ci.deployment_timeout_s
    print(f"running deployment {name} on {api_url} (waiting up to {timeout_s:g} s)")
    try:
        flow_run = run_deployment(name, parameters=parameters, timeout=timeout_s, as_subflow=False)
    except ObjectNotFound:
        raise CiError(
            f"deployment {name} not found at PREFECT_API_URL={api_url}; register it with "
            f"`attnops deploy --spec {spec_path}`"
        ) from None
    state = flow_run.state
    if state is None or not state.is_final():
        raise CiError(
            f"{name} run {flow_run.name} is still {state.name if state else 'unscheduled'} after "
            f"{timeout_s:g} s (is a worker polling its pool?): {_flow_run_link(flow_run)}"
        )
    if not state.is_completed():
        message = " ".join((state.message or "").split())
        raise CiError(
            f"{name} run {flow_run.name} {state.name}: {message} {_flow_run_link(flow_run)}"
        )
    print(f"{name} run {flow_run.name} completed")
    return flow_run


def _version_trained_by(client, name: str, marker: str, settings: Settings) -> tuple[str, str]:
    """(version, run id) registered by the training run tagged `attnops.ci_run=marker`."""
    from attnops.models import registry

    experiment = client.get_experiment_by_name(name)
    runs = experiment and client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{registry.TAG}ci_run` = '{marker}'"
    )
    found = runs and client.search_model_versions(
        f"name = '{name}' and run_id = '{runs[0].info.run_id}'"
    )
    if not found:
        raise CiError(
            f"the train run completed but registered no version of '{name}' in "
            f"MLFLOW_TRACKING_URI={settings.tracking_uri}; point MLFLOW_TRACKING_URI at the "
            "tracking server the worker uses"
        )
    return str(found[0].version), found[0].run_id


def _alias(client, name: str, alias: str) -> str | None:
    from attnops.models import aliases

    try:
        return aliases.version_of(client, name, alias)
    except LookupError:  # no registered model of that name yet
        return None


def _restore_alias(client, name: str, alias: str, version: str | None) -> None:
    if version is None:
        if _alias(client, name, alias) is not None:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def _metrics_table(metrics: dict[str, float]) -> list[str]:
    rows = [
        f"| {label} | {fmt.format(metrics[key])} |"
        for label, key, fmt in _KEY_METRICS
        if metrics.get(key) is not None
    ]
    return ["| measure | value |", "|---|---|", *rows]


def _github_tags(event: str) -> dict[str, str]:
    """What triggered the run, for its MLflow tags (attnops.ci_event, attnops.ci_commit, ...)."""
    tags = {"ci_event": event}
    if sha := os.environ.get("GITHUB_SHA"):
        tags["ci_commit"] = sha
    if url := _github_run_url():
        tags["ci_url"] = url
    return tags


def _github_run_url() -> str | None:
    parts = [os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return f"{parts[0]}/{parts[1]}/actions/runs/{parts[2]}" if all(parts) else None


def _flow_run_link(flow_run) -> str:
    from prefect.settings import get_current_settings

    ui_url = get_current_settings().ui_url
    label = f"flow run {flow_run.name}"
    return f"[{label}]({ui_url}/runs/flow-run/{flow_run.id})" if ui_url else label


def _links(settings: Settings | None = None, name: str = "", version: str = "") -> list[str]:
    links = []
    if url := _github_run_url():
        links.append(f"- [workflow run]({url}) (logs and artifacts)")
    if settings and settings.tracking_uri.startswith(("http://", "https://")):
        base = settings.tracking_uri.rstrip("/")
        links.append(f"- [MLflow: {name} v{version}]({base}/#/models/{name}/versions/{version})")
    elif settings:
        links.append(f"- MLflow (embedded store): `{settings.mlflow_ui_command()}`")
    return ["### Links", "", *links] if links else []


def _write(path: str, lines: list[str]) -> None:
    Path(path).write_text("\n".join([COMMENT_MARKER, *lines]).rstrip() + "\n")
