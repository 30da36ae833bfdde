"""`attnops demo` on a generation spec: the story's milestones, with a tiny random Llama.

Everything the demo drives is real: training and registration, the gate, the HTTP server
(here in a thread of the test process), the inference log, off-path scoring by v1's
registered detector, `monitor` with its drift event, `/feedback`, `retrain` on the
corrections, the gate of v2 against v1, the canary on live traffic and the promotion.

What a tiny random model cannot do is write replies: it answers every ticket with the same
empty lines, so nothing it serves could be a hallucination. Served v1 therefore answers the
tickets that arrive after the knowledge-base change with the scenario's `stale_reply` (the
old article's reply, numbers included, where the article was withdrawn; the correct reply
elsewhere), chosen at the decoding seam (`GenerationEngine._advance`) token by token, and
scored like any other reply. What a real v1 writes there (it makes numbers up) is the full
demo's to show; this test holds the story's mechanics to account.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from attnops.demo.withdrawn_articles import generate_withdrawn_article_traffic
from attnops.flows import demo_generation
from attnops.models import aliases
from attnops.models.generation.data import prompt_ids
from attnops.serving.generation_engine import GenerationEngine
from attnops.serving.generation_versions import GenerationVersions
from attnops.settings import Settings
from attnops.spec import load_spec
from tests.integration.generation_fixtures import TINY_MODEL_GATES, write_generation_spec
from tests.integration.generation_log_rows import registry_client
from tests.integration.serving_fixtures import free_port, running_server
from tests.unit.generation.conftest import model_cache, tokenizer  # noqa: F401

pytestmark = [pytest.mark.usefixtures("prefect_server", "model_cache"), pytest.mark.slow]
NAME = "tiny-ticket-replies"
WINDOW = 24
CORRECTED = 6
"""Tickets about a withdrawn policy in the demo's window (seed CHANGED_SEED): corrected."""
CANARY_BATCHES = 40
"""Canary traffic batches the script covers (seeds 1001..): more than the release needs."""


def _spec(folder: Path) -> str:
    return write_generation_spec(
        folder,
        NAME,
        n_test=16,
        n_labelled=60,
        # The detector of a random model is arbitrary: on seed 0's labelled set it flags
        # every one of its own (newline) replies, leaving stale replies nothing to raise.
        seed=2,
        generation={"max_new_tokens": 64, "eval_samples": 16},  # a stale reply: <= 63 tokens
        **TINY_MODEL_GATES,
        monitoring={"window_size": WINDOW, "bootstrap_resamples": 1000},
        serving={"port": free_port(), "log_flush_interval_s": 0.1, "canary_share": 0.5},
        release={"canary_window": 10, "timeout_s": 120, "max_latency_increase": 10.0},
        retrain={"min_new_labels": CORRECTED, "replay_examples": 8},
    )


def _scripts(spec_path: str, tokenizer) -> tuple[dict, dict]:  # noqa: F811
    """Prompt ids -> reply tokens (then eos) for every ticket the demo sends after the
    knowledge base changed: the stale replies of a model trained on the old articles, and
    the correct ones (holding replies where the article is withdrawn)."""
    spec = load_spec(spec_path)
    rows = generate_withdrawn_article_traffic(WINDOW, seed=demo_generation.CHANGED_SEED)
    for seed in range(1001, 1001 + CANARY_BATCHES):
        rows += generate_withdrawn_article_traffic(16, seed=seed)

    def script(column: str) -> dict[tuple[int, ...], list[int]]:
        return {
            tuple(prompt_ids(tokenizer, spec.generation, row["ticket"], row["article"])): [
                *tokenizer(row[column], add_special_tokens=False)["input_ids"],
                tokenizer.eos_token_id,
            ]
            for row in rows
        }

    return script("stale_reply"), script("reply")


@pytest.fixture
def stale_v1(monkeypatch, spec_path, tokenizer):  # noqa: F811
    """Served v1 writes the stale replies and v2 the correct ones: a tiny random model
    learns neither (its own replies are newlines), and the test is about the loop."""
    stale, correct = _scripts(spec_path, tokenizer)
    scripts = {"1": stale, "2": correct}
    load, advance = GenerationVersions._load, GenerationEngine._advance

    def scripted_load(self, client, version):
        slot = load(self, client, version)
        slot.engine.script = scripts.get(version, {})
        return slot

    def scripted_advance(self, row, token):
        reply = self.script.get(tuple(row.request.prompt_ids))
        if reply is not None:
            token = reply[min(len(row.tokens), len(reply) - 1)]
        return advance(self, row, token)

    monkeypatch.setattr(GenerationVersions, "_load", scripted_load)
    monkeypatch.setattr(GenerationEngine, "script", {}, raising=False)
    monkeypatch.setattr(GenerationEngine, "_advance", scripted_advance)


@pytest.fixture
def spec_path(attnops_home, tmp_path) -> str:
    return _spec(tmp_path)


@contextmanager
def _server_in_thread(spec_path: str, url: str):
    with running_server(spec_path) as served:
        assert served == url
        yield served


def _evidence(run_id: str, stage: str) -> dict:
    return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{stage}/{stage}.json"))


def test_the_demo_alarms_on_stale_replies_retrains_on_corrections_and_promotes_v2(
    spec_path, stale_v1, monkeypatch, capsys
):
    monkeypatch.setattr(demo_generation, "serve_in_child", _server_in_thread)
    demo_generation.run_generation_demo(spec_path, regenerate=False)

    out = capsys.readouterr().out
    summary = out.split("=== attnops demo: what happened ===")[1]
    for step in ("train v1", "gate v1", "release v1", "serve", "normal traffic", "monitor",
                 "knowledge base changes", "traffic after the change", "corrected replies",
                 "retrain -> v2, gate vs v1", "canary v2"):  # fmt: skip
        assert f"  {step}" in summary, step
    assert "no alarm: detector flags 0.0% of" in summary  # v1's own replies, as at evaluation
    assert "ALARM (high): " in summary and "hallucinations: the detector flags" in summary

    client = registry_client()
    monitoring = client.get_experiment_by_name(f"{NAME}-monitoring")
    runs = client.search_runs(
        [monitoring.experiment_id],
        "tags.`attnops.stage` = 'monitor'",
        order_by=["attributes.start_time ASC"],
    )
    assert [r.data.tags["attnops.alarm"] for r in runs] == ["false", "true"]
    alarm = runs[1].data
    assert alarm.tags["attnops.severity"] == "high"
    # (output_tokens drifts too: v1's own replies, the reference, are empty lines)
    assert "hallucinations: the detector flags" in alarm.tags["attnops.reasons"]
    assert alarm.metrics["hallucination_rate"] > alarm.metrics["reference_hallucination_rate"]
    event_id = alarm.tags["attnops.event_id"]

    # v2: trained on the window's corrected replies, started by the alarm's event
    (retrain_spec,) = (Settings.from_env().home / "retrain").glob("*/spec.yaml")
    raw = yaml.safe_load(retrain_spec.read_text())
    trained_on = pd.read_json(raw["data"]["train"], lines=True)
    validated_on = pd.read_json(raw["data"]["validation"], lines=True)
    window = generate_withdrawn_article_traffic(WINDOW, seed=demo_generation.CHANGED_SEED)
    holding = {row["reply"] for row in window if row["changed"]}
    # A quarter of the corrections (2 of 6) validate, the rest train beside 8 replayed rows.
    assert len(holding) == CORRECTED and len(trained_on) == 8 + CORRECTED - 2
    live = pd.concat([trained_on.tail(CORRECTED - 2), validated_on.tail(2)])
    assert set(live["reply"]) == holding
    assert set(live["article"].fillna("")) == {""}  # as logged
    v1, v2 = (client.get_model_version(NAME, v) for v in ("1", "2"))
    assert v1.tags["attnops.retrain_trigger"].startswith(f"started: {CORRECTED} new corrected")
    assert v2.tags["attnops.gate"] == "passed" and v2.tags["attnops.gate_champion"] == "1"

    # the canary: both versions served the same period, judged on their scored replies
    release = _evidence(v2.run_id, "release")
    checks = {c["name"]: c for c in release["checks"]}
    assert checks["hallucination_rate"]["passed"]
    assert checks["hallucination_rate"]["values"]["canary_scored"] >= 10
    assert checks["hallucination_rate"]["values"]["champion"] > 0  # v1 still stale
    assert v2.tags["attnops.release"] == "promoted"
    assert aliases.version_of(client, NAME, aliases.CHAMPION) == "2"
    assert aliases.version_of(client, NAME, aliases.PREVIOUS) == "1"
    assert aliases.version_of(client, NAME, aliases.CANARY) is None
    assert event_id in {r.data.tags.get("attnops.event_id") for r in _trigger_runs(client)}


def _trigger_runs(client) -> list:
    monitoring = client.get_experiment_by_name(f"{NAME}-monitoring")
    return client.search_runs(
        [monitoring.experiment_id], "tags.`attnops.stage` = 'retrain_trigger'"
    )
