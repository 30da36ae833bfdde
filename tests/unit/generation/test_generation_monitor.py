"""The generation monitor on windows of the ticket-reply demo: the live hallucination alarm
catches a changed knowledge base and stays quiet on same-distribution traffic; outputs not
scored yet, failed requests, PII leaks and output drift are reported as users read them.

Detector scores come from the real detector path: the demo's labelled hallucination set
fits `HallucinationDetector` (threshold at 10% of faithful outputs flagged), and every
output is scored by its text view (real groundedness with the packaged MiniLM) without
model signals. The version's outputs are simulated as in the brief: on normal traffic its
gold replies; after the knowledge base changed, the gold replies with the old numbers
against the new article, which is what a model trained on the old articles writes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnops.demo.ticket_replies import (
    article,
    generate_hallucination_set,
    generate_ticket_replies,
)
from attnops.demo.ticket_replies_changed import (
    CHANGED_TERMS,
    changed_knowledge,
    generate_changed_knowledge_traffic,
)
from attnops.models.generation.data import prompt_ids
from attnops.models.generation.decode import Signals
from attnops.models.generation.detector import HallucinationDetector, detector_features
from attnops.models.groundedness import fact_support
from attnops.monitors.generation_monitor import assess_generation_window
from attnops.spec import PipelineSpec

REFERENCE_ROWS = 32  # configs/ticket-replies.yaml: generation.eval_samples
WINDOW = 50
WINDOWS = 40


def spec(**sections) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "replies",
            "task": "generation",
            "data": {"train": "a.jsonl", "validation": "b.jsonl", "test": "c.jsonl"},
            **sections,
        }
    )


@pytest.fixture(scope="module")
def seen() -> set[str]:
    """Tickets already used: the labelled set, the reference and the traffic never share one."""
    return set()


@pytest.fixture(scope="module")
def detector(seen) -> HallucinationDetector:
    # The demo fits on half of its 400 labelled rows (generation.detector_fit_share 0.5).
    labelled = pd.DataFrame(generate_hallucination_set(100, seed=101, exclude=seen))
    features = _features(labelled, labelled["reply"])
    groups = labelled["ticket"].to_numpy(object)
    return HallucinationDetector(0.1).fit(features, labelled["label"], groups=groups)


def _features(rows: pd.DataFrame, outputs: pd.Series):
    """The detector's features; no model signals (constant), so its text view decides."""
    no_signals = [Signals([0.0], np.zeros((1, 1))) for _ in range(len(rows))]
    return detector_features(
        rows["ticket"].tolist(), rows["article"].tolist(), outputs.tolist(), no_signals
    )


@pytest.fixture(scope="module")
def log_rows(tokenizer, detector):
    """Inference-log rows (as the server writes them, scored) of tickets answered with
    `outputs`; `reference=True` gives reference-profile rows instead."""
    gen = spec().generation

    def build(rows: pd.DataFrame, outputs: pd.Series, *, reference: bool = False):
        scores = detector.score(_features(rows, outputs))
        frame = pd.DataFrame(
            {
                "source": rows["ticket"].to_numpy(),
                "context": rows["article"].to_numpy(),
                "output": outputs.to_numpy(),
                "prompt_tokens": [
                    len(prompt_ids(tokenizer, gen, s, c))
                    for s, c in zip(rows["ticket"], rows["article"], strict=True)
                ],
                "output_tokens": [
                    len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs
                ],
                "hallucination_score": scores,
            }
        )
        flags = scores >= detector.threshold
        if reference:
            return frame.assign(hallucinated=flags, source_has_pii=False, output_pii_leaks="")
        return frame.assign(
            hallucination_flag=flags, has_pii=False, output_pii_leaks="", status=200
        )

    return build


def _pools(size: int, seed: int, seen: set[str], log_rows) -> dict[str, pd.DataFrame]:
    """Scored rows per scenario; each seed's windows (and references) are drawn from them."""
    normal = pd.DataFrame(generate_ticket_replies(size, seed=seed, exclude=seen))
    changed = pd.DataFrame(generate_changed_knowledge_traffic(size, seed=seed + 1, exclude=seen))
    return {
        "normal": log_rows(normal, normal["reply"]),
        "changed": log_rows(changed, changed["stale_reply"]),
        "corrected": log_rows(changed[:100], changed["reply"][:100]),
    }


@pytest.fixture(scope="module")
def pools(seen, log_rows) -> dict[str, pd.DataFrame]:
    return _pools(300, 102, seen, log_rows)


def _as_reference(rows: pd.DataFrame) -> pd.DataFrame:
    renamed = {"hallucination_flag": "hallucinated", "has_pii": "source_has_pii"}
    return rows.drop(columns="status").rename(columns=renamed)


def _window_and_reference(
    pools, scenario: str, seed: int, size: int = WINDOW
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A version's reference (normal traffic it answered at evaluation) and a window of
    `scenario` traffic; no row in both."""
    rng = np.random.default_rng(seed)
    normal = pools["normal"].iloc[rng.permutation(len(pools["normal"]))]
    reference = _as_reference(normal.iloc[:REFERENCE_ROWS])
    if scenario == "normal":
        return normal.iloc[REFERENCE_ROWS : REFERENCE_ROWS + size], reference
    rows = pools[scenario]
    return rows.iloc[rng.choice(len(rows), size, replace=False)], reference


def _alarm_rates(pools, windows: int, size: int) -> dict[str, float]:
    """Share of windows raising the hallucination alarm per scenario, and any alarm on
    normal traffic."""
    judged = {
        scenario: [
            assess_generation_window(*_window_and_reference(pools, scenario, seed, size), spec())
            for seed in range(windows)
        ]
        for scenario in ("normal", "changed")
    }
    rates = {
        scenario: float(np.mean(["hallucination_rate" in a.drift.drifted_checks for a in found]))
        for scenario, found in judged.items()
    }
    rates["any_on_normal"] = float(np.mean([a.alarm for a in judged["normal"]]))
    print(f"\nalarms over {windows} windows of {size} (reference {REFERENCE_ROWS}): "
          f"hallucination on changed knowledge {rates['changed']:.1%}, on normal "
          f"{rates['normal']:.1%}; any alarm on normal {rates['any_on_normal']:.1%}")  # fmt: skip
    return rates


def test_changed_knowledge_scenario_stale_replies_cite_numbers_the_new_article_lacks():
    rows = generate_changed_knowledge_traffic(120, seed=5)
    assert rows == generate_changed_knowledge_traffic(120, seed=5)
    for row in rows:
        source = row["ticket"] + "\n" + row["article"]
        assert row["changed"] == (row["intent"] in CHANGED_TERMS)
        assert not fact_support(source, row["reply"])[1], row["reply"]  # correct: grounded
        stale = fact_support(source, row["stale_reply"])[1]
        if row["changed"]:
            assert any(fact.startswith("number:") for fact in stale), row["stale_reply"]
        else:
            assert row["stale_reply"] == row["reply"]
    assert "Basic plan costs $12 per month" in article("plan_prices", changed_knowledge())
    with pytest.raises(ValueError, match=r"names term\(s\) price of plan_prices; its terms are"):
        changed_knowledge({"plan_prices": {"price": "$5"}})
    with pytest.raises(ValueError, match="names intent 'pricing'; known: billing_dates"):
        changed_knowledge({"pricing": {"basic": "$5"}})


def test_stale_replies_are_flagged_and_corrected_ones_are_not(pools):
    """The detector's view of the scenario: stale numbers are flagged, the corrections (what
    retrain learns) are flagged as rarely as normal replies."""
    stale = pools["changed"]["hallucination_flag"].mean()
    normal = pools["normal"]["hallucination_flag"].mean()
    corrected = pools["corrected"]["hallucination_flag"].mean()
    assert stale > normal + 0.2 and corrected < normal + 0.05, (stale, normal, corrected)


def test_hallucination_alarm_fires_on_changed_knowledge_and_not_on_normal_traffic(pools):
    """Done-when: over seeds, >= 95% of changed-knowledge windows raise the hallucination
    alarm, <= 5% of same-distribution windows do."""
    rates = _alarm_rates(pools, WINDOWS, WINDOW)
    assert rates["changed"] >= 0.95 and rates["normal"] <= 0.05
    window, reference = _window_and_reference(pools, "changed", seed=0)
    alarm = assess_generation_window(window, reference, spec())
    assert alarm.severity == "high"
    assert alarm.reasons()[0].startswith("hallucinations: the detector flags ")
    assert "| hallucination_rate | mean score increase" in alarm.table()


@pytest.mark.slow
def test_alarm_rates_over_many_windows_of_a_larger_pool(seen, log_rows):
    """The same over 200 windows of 100 (pools of 800): the hallucination alarm as above,
    and any alarm on normal traffic within the 5% false-alarm budget (8%: two standard
    errors at 200 windows)."""
    rates = _alarm_rates(_pools(800, 202, seen, log_rows), 200, 100)
    assert rates["changed"] >= 0.95 and rates["normal"] <= 0.05
    assert rates["any_on_normal"] <= 0.08


def test_outputs_not_scored_yet_are_left_out_and_reported(pools):
    window, reference = _window_and_reference(pools, "changed", seed=0)
    window = window.assign(hallucination_flag=window["hallucination_flag"].astype(object))
    window.iloc[:10, window.columns.get_loc("hallucination_flag")] = None  # NULL: not scored
    judged = assess_generation_window(window, reference, spec())
    assert judged.hallucinations.judged == WINDOW - 10 and judged.hallucinations.pending == 10
    assert f"10 of the window's {WINDOW} outputs are not scored" in judged.notes()[0]

    window["hallucination_flag"] = None
    unjudged = assess_generation_window(window, reference, spec())
    assert unjudged.drift.check("hallucination_rate") is None and not unjudged.alarm
    assert unjudged.notes() == [
        "no output of the window is scored yet: its hallucination rate is unjudged"
    ]
    assert unjudged.to_dict()["rates"]["hallucination_rate"]["not_judged"] == WINDOW


def test_failed_requests_are_left_out(pools):
    window, reference = _window_and_reference(pools, "normal", seed=1)
    failed = window.iloc[:5].assign(status=503, output="", output_tokens=0)
    judged = assess_generation_window(pd.concat([window, failed]), reference, spec())
    assert judged.n == WINDOW and judged.n_failed == 5
    assert "5 failed requests (no output) are left out" in judged.notes()


def test_pii_leaks_raise_a_high_severity_alarm(pools):
    window, reference = _window_and_reference(pools, "normal", seed=2)
    leaking = window.assign(output_pii_leaks=["EMAIL_ADDRESS"] * 5 + [""] * (WINDOW - 5))
    judged = assess_generation_window(leaking, reference, spec())
    assert judged.drift.drifted_checks == ["pii_leak_rate"] and judged.severity == "high"
    assert judged.reasons()[0].startswith(
        "PII leaks: 10.0% of the window's 50 outputs hold PII that their input lacks, "
        "against 0.0% of the reference's 32 (increase 0.1, significant above "
    )
    unchecked = window.assign(output_pii_leaks=None)  # a store that does not redact
    assert (
        assess_generation_window(unchecked, reference, spec()).drift.check("pii_leak_rate") is None
    )


def test_outputs_cut_short_are_output_drift_of_low_severity(pools):
    window, reference = _window_and_reference(pools, "normal", seed=3)
    cut = window.assign(output_tokens=window["output_tokens"] // 3)
    judged = assess_generation_window(cut, reference, spec())
    assert judged.drift.drifted_checks == ["output_tokens"] and judged.severity == "low"
    assert judged.reasons()[0].startswith("output_tokens: drift (KS D ")
    floors = spec(monitoring={"effect_size_floors": {"output_tokens": 0.99}})
    assert not assess_generation_window(cut, reference, floors).alarm


def test_a_floor_for_an_unknown_check_is_refused_by_name(pools):
    window, reference = _window_and_reference(pools, "normal", seed=4)
    bad = spec(monitoring={"effect_size_floors": {"confidence": 0.2}})
    with pytest.raises(ValueError, match=r"unknown check\(s\) confidence for task generation"):
        assess_generation_window(window, reference, bad)
