"""`attnops demo` for a `task: generation` spec: the ticket-reply story on a CPU.

train v1 -> gate (absolute limits, gain over the zero-shot base) -> champion -> serve ->
normal traffic -> monitor: no alarm -> the knowledge base changes: three policies go under
revision and their articles are withdrawn (`demo.withdrawn_articles`), so tickets about them
arrive without one -> monitor: hallucination alarm (v1 makes numbers up) -> the support
team's corrected replies arrive through `/feedback` -> retrain v2 on them (the alarm's
event; warm start from v1) -> gate v2 vs v1 -> canary (sticky traffic split, judged on
hallucinations, PII leaks, latency and tokens per reply) -> promote.

The issue's first idea, "a policy's numbers change and the model keeps the old ones", is
not what the demo's v1 does: it reads the new article (see `demo.withdrawn_articles` for
the measurements), so that change raises no alarm, rightly.

Sizes come from the spec (`monitoring.window_size`, `release.canary_window`,
`retrain.*`); the demo adds none of its own, so what it shows is what the spec does.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from attnops.demo import reply_traffic
from attnops.demo.ticket_replies import generate_ticket_replies, write_ticket_replies
from attnops.demo.withdrawn_articles import WITHDRAWN, generate_withdrawn_article_traffic
from attnops.flows.demo import Steps, print_summary, serve_in_child
from attnops.flows.gate import gate
from attnops.flows.monitor import monitor
from attnops.flows.release import release
from attnops.flows.retrain import retrain
from attnops.flows.train import train
from attnops.models import registry
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

NORMAL_SEED, CHANGED_SEED = 101, 102
"""Seeds of the two traffic windows (the canary's batches draw from 1001 on)."""


def run_generation_demo(spec_path: str, *, regenerate: bool) -> None:
    """Tell the generative story end to end; raise when a step does not turn out as told."""
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    step = Steps()
    try:  # the steps so far are worth seeing when one fails
        outcome = _tell(spec_path, spec, settings, step, regenerate=regenerate)
    finally:
        print_summary(step.rows, settings)
    if outcome["status"] != "promoted":
        raise RuntimeError(f"v2 was not promoted: {outcome.get('reason')}")


def _tell(
    spec_path: str, spec: PipelineSpec, settings: Settings, step: Steps, *, regenerate: bool
) -> dict:
    """The story's steps; returns the retrain's outcome."""
    _write_data(spec, spec_path, regenerate, step)
    v1 = train(spec_path)
    m = v1.metrics
    step(
        "train v1",
        f"test ROUGE-L {m['test_rouge_l']:.3f}, hallucination rate "
        f"{m['test_hallucination_rate']:.3f}" + _vs_base(m),
    )
    decision = gate(spec_path, candidate=v1.version)
    if not decision.passed:
        raise RuntimeError(f"the demo's v1 did not pass the gate: {decision.reasons()}")
    limits = "absolute limits" + (", gain over the zero-shot base" if _vs_base(m) else "")
    step("gate v1", f"passed (no champion: {limits})")
    release(spec_path, candidate=v1.version)
    step("release v1", "champion (first version)")

    os.environ[spec.serving.admin_token_env] = secrets.token_hex(16)
    size = spec.monitoring.window_size
    with serve_in_child(spec_path, spec.serving.url) as url:
        step("serve", f"champion v1 at {url}")
        normal = reply_traffic.send(url, generate_ticket_replies(size, seed=NORMAL_SEED), seed=1)
        wait_for_scores(settings, normal)
        step("normal traffic", normal.summary())
        calm = monitor(spec_path)
        step("monitor", _verdict(calm, settings))

        changed = generate_withdrawn_article_traffic(size, seed=CHANGED_SEED)
        step("knowledge base changes", describe_changes())
        stale = reply_traffic.send(url, changed, seed=2)
        wait_for_scores(settings, stale)
        step("traffic after the change", f"{stale.summary()}; {_invented(stale)}")
        alarm = monitor(spec_path)
        step("monitor", _verdict(alarm, settings))
        if alarm["status"] != "alarm":
            raise RuntimeError(
                "the window after the knowledge-base change raised no alarm; the demo cannot "
                "go on (see the monitor's checks above)"
            )

        # The support team corrects the replies to tickets about the withdrawn policies.
        corrections = {rid: row["reply"] for rid, row in stale.replies.items() if row["changed"]}
        recorded = reply_traffic.send_corrections(url, corrections)
        step("corrected replies", f"{recorded} holding replies via POST /feedback")

        def canary_rows(n: int, seed: int) -> list[dict]:
            return generate_withdrawn_article_traffic(n, seed=seed)

        with reply_traffic.CanaryTickets(url, canary_rows) as canary:
            outcome = retrain(spec_path, event_id=alarm["event_id"])
        _retrain_steps(step, spec, settings, outcome, canary.sent, canary.routes, canary.seen_at)
    return outcome


def wait_for_scores(
    settings: Settings, traffic: reply_traffic.ReplyTraffic, timeout_s: float = 900.0
) -> None:
    """Until the inference log holds a detector score for every reply of `traffic`: the
    monitor judges scored replies only, and the server scores them after replying."""
    from attnops.serving.generation_log_reader import GenerationLogReader

    log, waiting = GenerationLogReader(settings.inference_db), set(traffic.replies)
    deadline = time.monotonic() + timeout_s
    while waiting:
        rows = log.window(since_ts=traffic.started_ts)
        waiting -= set(rows.loc[rows["hallucination_score"].notna(), "request_id"])
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} replies still unscored after {timeout_s:g} s")
        if waiting:
            time.sleep(1.0)


def _write_data(spec: PipelineSpec, spec_path: str, regenerate: bool, step: Steps) -> None:
    paths = [Path(f) for f in spec.data.split_files]
    if spec.generation.hallucination_set:
        paths.append(Path(spec.generation.hallucination_set))
    if not regenerate and all(p.is_file() for p in paths):
        return
    written = write_ticket_replies(paths[0].parent, seed=spec.training.seed)
    missing = [p for p in paths if p not in written.values()]
    if missing:
        raise ValueError(
            f"{spec_path} points at {missing[0]}, which the demo generator does not write; the "
            f"demo expects data.train/validation/test and generation.hallucination_set as "
            f"{paths[0].parent}/train|validation|test|hallucination.jsonl"
        )
    step("data", f"demo tickets and replies written to {paths[0].parent}/")


def describe_changes() -> str:
    """The demo's knowledge-base change in words."""
    names = ", ".join(intent.replace("_", " ") for intent in WITHDRAWN)
    return f"{names}: under revision, their articles withdrawn (tickets arrive without one)"


def _vs_base(metrics: dict[str, float]) -> str:
    if "baseline_rouge_l" not in metrics:
        return ""
    return (
        f" (zero-shot base {metrics['baseline_rouge_l']:.3f} / "
        f"{metrics['baseline_hallucination_rate']:.3f})"
    )


def _invented(traffic: reply_traffic.ReplyTraffic) -> str:
    n, invented, old = traffic.changed_replies()
    example = f' (e.g. "{invented[0]}")' if invented else ""
    return (
        f"of {n} replies to tickets without their article, {len(invented)} state a number "
        f"the ticket does not hold{example}, {old} a term of the old article"
    )


def _verdict(result: dict, settings: Settings) -> str:
    """The monitor's verdict with the window's hallucination figures (from its MLflow run)."""
    if result["status"] not in ("ok", "alarm"):
        return f"{result['status']} ({result.get('records')} requests logged)"
    metrics = registry.client_for(settings).get_run(result["run_id"]).data.metrics
    rate, reference = metrics["hallucination_rate"], metrics["reference_hallucination_rate"]
    figures = (
        f"detector flags {rate:.1%} of {metrics['hallucination_scored']:.0f} replies vs "
        f"{reference:.1%} in the reference"
    )
    if result["status"] == "ok":
        return f"no alarm: {figures}"
    reasons = "; ".join(result["reasons"])
    if "hallucinations:" not in reasons:  # the hallucination reason states the figures itself
        reasons += f" ({figures})"
    return f"ALARM ({result['severity']}): {reasons}"


def _retrain_steps(
    step: Steps,
    spec: PipelineSpec,
    settings: Settings,
    outcome: dict,
    canary_sent: int,
    canary_routes: dict[str, int],
    canary_started: float | None,
) -> None:
    """The retrain's stages as steps: v2 trained and gated (until the canary started), then
    its canary (until the release decided)."""
    version = outcome.get("version")
    if version is None:
        step("retrain", f"{outcome['status']}: {outcome.get('reason', '')}")
        return
    client = registry.client_for(settings)
    mv = client.get_model_version(spec.name, version)
    metrics = client.get_run(mv.run_id).data.metrics
    verdict = mv.tags.get("attnops.gate", "unknown")
    # Passed: its hallucination figures; failed: why.
    why = _checks(mv.run_id, "gate").get("hallucination", "")
    if verdict != "passed":
        why = mv.tags.get("attnops.gate_reasons", "")
    step(
        f"retrain -> v{version}, gate vs v1",
        f"warm start from v1 on the corrections ({metrics['train_seconds']:.0f} s of "
        f"fine-tuning): test ROUGE-L {metrics['test_rouge_l']:.3f}, hallucination rate "
        f"{metrics['test_hallucination_rate']:.3f}; gate {verdict}: {why}",
        ended=canary_started,
    )
    if canary_started is None:
        if outcome["status"] != "blocked":
            step(f"release v{version}", f"{outcome['status']}: {outcome.get('reason', '')}")
        return
    step(
        f"canary v{version}",
        f"{canary_sent} tickets after the change, routes {canary_routes}; "
        f"{outcome['status']}: {_checks(mv.run_id, 'release').get('hallucination_rate', '')}",
    )


def _checks(run_id: str, stage: str) -> dict[str, str]:
    """A decision's check reasons by name (`gate/gate.json`, `release/release.json`)."""
    try:
        record = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{stage}/{stage}.json"))
    except (MlflowException, OSError):  # the summary says what it has; the decision stands
        return {}
    return {check["name"]: check["reason"] for check in record.get("checks", [])}
