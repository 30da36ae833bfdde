"""The generation gate's decision on per-input evidence built in code (one behaviour per test)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from attnops.monitors.gate_generation import GenerationEvidence, decide_generation
from attnops.spec import GateSpec
from attnops.spec_generation import GenerationGateSpec

N = 200
REPLY = "Thanks for reaching out. Your replacement card ships within three working days."


def champion(seed: int = 0) -> GenerationEvidence:
    """A fine-tuned version: ROUGE-L ~0.5, 5% flagged; the base ~0.2 and 60% flagged."""
    rng = np.random.default_rng(seed)
    rouge_l = rng.beta(5, 5, N)
    per_input = pd.DataFrame(
        {
            "source": [f"Ticket {i}: my card was declined at checkout" for i in range(N)],
            "context": [f"Article {i % 7}: declined cards are replaced free" for i in range(N)],
            "reference": REPLY,
            "output": REPLY,
            "output_tokens": rng.integers(30, 50, N),
            "rouge_l": rouge_l,
            "hallucinated": rng.random(N) < 0.05,
            "baseline_rouge_l": np.clip(rouge_l - 0.3 + rng.normal(0, 0.05, N), 0, 1),
            "baseline_hallucinated": rng.random(N) < 0.6,
        }
    )
    return GenerationEvidence(
        version="1",
        per_input=per_input,
        performance={
            "ttft_ms": (100 + rng.gamma(2.0, 5.0, N)).tolist(),
            "inter_token_ms": (20 + rng.gamma(2.0, 1.0, N)).tolist(),
            "model_size_mb": 540.0,
            "load": {},
        },
        attention={"entropy": np.full((2, 4), 0.6).tolist(), "input_blind_heads": [[1, 2]]},
        tokenizer_sha256="a" * 64,
    )


def candidate_from(base: GenerationEvidence, **columns) -> GenerationEvidence:
    """Version 2 with the given per-input columns replaced."""
    per_input = base.per_input.assign(**columns)
    return dataclasses.replace(base, version="2", per_input=per_input)


def gate_of(candidate, champion_evidence, **limits):
    return decide_generation(
        candidate, champion_evidence, GenerationGateSpec(**limits), shared=GateSpec()
    )


def failed(decision) -> set[str]:
    return {c.name for c in decision.failed_checks}


def check(decision, name: str):
    return next(c for c in decision.checks if c.name == name)


def test_equal_candidate_passes_every_check():
    base = champion()
    decision = gate_of(candidate_from(base), base)
    assert decision.passed, decision.reasons()
    assert decision.verdict == "no_difference"
    assert decision.reasons().startswith("all 12 checks passed")
    assert [c.name for c in decision.checks] == [
        "rouge_l_floor", "rouge_l_vs_champion", "hallucination", "rouge_l_vs_base",
        "hallucination_vs_base", "pii_leakage", "output_tokens", "ttft_ms_p95",
        "inter_token_ms_p95", "tokenizer", "attention_health", "pii",
    ]  # fmt: skip


def test_many_more_hallucinations_than_the_champion_are_blocked_naming_rate_and_test():
    base = champion()
    flags = base.per_input["hallucinated"].to_numpy()
    worse = flags | (np.random.default_rng(1).random(N) < 0.2)  # below the absolute 0.3
    decision = gate_of(candidate_from(base, hallucinated=worse), base)
    assert failed(decision) == {"hallucination"}
    rate, champ_rate = worse.mean(), flags.mean()
    reason = check(decision, "hallucination").reason
    assert reason.startswith(f"hallucination rate {rate:.3f} vs champion {champ_rate:.3f}: higher")
    assert "McNemar exact p=" in reason
    assert check(decision, "hallucination").values["p_value"] < 0.001
    # The same increase is accepted when the spec tolerates it.
    assert gate_of(candidate_from(base, hallucinated=worse), base,
                   max_hallucination_increase=0.25).passed  # fmt: skip


def test_hallucinations_on_other_inputs_at_the_same_rate_are_not_blocked():
    """Swapping which outputs are flagged, at the same rate, is noise for McNemar."""
    base = champion()
    flags = base.per_input["hallucinated"].to_numpy()
    decision = gate_of(candidate_from(base, hallucinated=np.roll(flags, 1)), base)
    assert decision.passed, decision.reasons()


def test_hallucination_rate_over_the_limit_is_blocked_without_a_champion():
    base = champion()
    flags = np.arange(N) % 5 < 2  # 40%
    decision = gate_of(candidate_from(base, hallucinated=flags), None)
    assert failed(decision) == {"hallucination"}
    assert "hallucination rate 0.400 of 200 outputs over the limit 0.3" in decision.reasons()


def test_output_with_an_email_not_in_its_input_is_blocked_as_pii_leakage():
    base = champion()
    outputs = base.per_input["output"].copy()
    outputs[3] = "Please write to ann.lee@example.com and she will replace the card."
    decision = gate_of(candidate_from(base, output=outputs), base)
    assert failed(decision) == {"pii_leakage"}
    leak = check(decision, "pii_leakage")
    assert leak.reason.startswith("PII leakage: 1 of 200 outputs hold PII not found in their")
    assert "EMAIL_ADDRESS" in leak.reason and "row 3" in leak.reason
    assert leak.values["examples"] == [
        {
            "row": 3,
            "entities": ["EMAIL_ADDRESS"],
            "output": "Please write to <EMAIL_ADDRESS> and she will replace the card.",
        }
    ]
    assert "ann.lee" not in str(decision.to_dict())


def test_pii_the_customer_gave_is_not_a_leak():
    base = champion()
    sources, outputs = base.per_input["source"].copy(), base.per_input["output"].copy()
    sources[5] = "My card was declined. Reach me at bob@example.org or +1 (415) 555-0123."
    outputs[5] = "We will email bob@example.org and call 415.555.0123 today."
    evidence = candidate_from(base, source=sources, output=outputs)
    decision = gate_of(evidence, dataclasses.replace(base, per_input=evidence.per_input))
    assert decision.passed, decision.reasons()
    assert check(decision, "pii_leakage").values["leaks"] == 0


def test_output_token_growth_beyond_the_limit_is_blocked():
    base = champion()
    longer = base.per_input["output_tokens"] * 1.5
    decision = gate_of(candidate_from(base, output_tokens=longer), base)
    assert failed(decision) == {"output_tokens"}
    assert "output grew" in decision.reasons() and "x1.50 (max x1.25)" in decision.reasons()
    assert gate_of(candidate_from(base, output_tokens=longer), base,
                   max_output_tokens_increase=0.6).passed  # fmt: skip


def test_without_a_champion_only_absolute_limits_apply():
    base = champion()
    three_times_longer = candidate_from(base, output_tokens=base.per_input["output_tokens"] * 3)
    decision = gate_of(three_times_longer, None)
    assert decision.passed, decision.reasons()
    assert decision.verdict == "no_champion" and decision.champion is None
    assert "rouge_l_vs_champion" not in {c.name for c in decision.checks}
    assert "not compared with a champion" in check(decision, "output_tokens").reason
    low = gate_of(candidate_from(base, rouge_l=base.per_input["rouge_l"] * 0.3), None)
    assert failed(low) == {"rouge_l_floor", "rouge_l_vs_base"}
    assert "floor 0.2" in check(low, "rouge_l_floor").reason


def test_worse_rouge_l_than_the_champion_is_blocked_as_worse():
    base = champion()
    decision = gate_of(candidate_from(base, rouge_l=base.per_input["rouge_l"] - 0.1), base)
    assert failed(decision) == {"rouge_l_vs_champion"}
    assert decision.verdict == "worse"
    assert check(decision, "rouge_l_vs_champion").reason.startswith("worse: ROUGE-L")


def test_versions_decoded_on_different_inputs_are_not_compared():
    base = champion()
    sources = base.per_input["source"].copy()
    sources[7] = "another ticket"
    decision = gate_of(candidate_from(base, source=sources), base)
    assert decision.verdict == "not_comparable"
    assert failed(decision) == {"same_inputs"}
    assert "1 of 200 (source, context) pairs differ, the first at row 7" in decision.reasons()


def test_candidate_must_beat_the_zero_shot_base_unless_switched_off():
    base = champion()
    passed = gate_of(candidate_from(base), None)
    assert {"rouge_l_vs_base", "hallucination_vs_base"} <= {c.name for c in passed.checks}
    assert passed.passed, passed.reasons()

    rouge_l = base.per_input["rouge_l"]
    close = candidate_from(base, baseline_rouge_l=rouge_l - 0.05)
    assert failed(gate_of(close, None)) == {"rouge_l_vs_base"}
    assert "the gain itself is below it" in gate_of(close, None).reasons()

    flags = base.per_input["hallucinated"]
    as_grounded = candidate_from(base, baseline_hallucinated=flags | (np.arange(N) == 0))
    decision = gate_of(as_grounded, None)
    assert failed(decision) == {"hallucination_vs_base"}
    assert "not significantly fewer hallucinations than the zero-shot base" in decision.reasons()

    assert gate_of(as_grounded, None, require_beats_base=False).passed
    no_base = dataclasses.replace(base, per_input=base.per_input.drop(columns=["baseline_rouge_l",
                                  "baseline_hallucinated"]))  # fmt: skip
    assert "not compared" in check(gate_of(no_base, None), "vs_zero_shot_base").reason


def test_slower_first_token_than_the_champion_is_blocked_and_a_busy_machine_inconclusive():
    base = champion()
    slow_perf = {**base.performance, "ttft_ms": np.asarray(base.performance["ttft_ms"]) * 1.8}
    slow = dataclasses.replace(candidate_from(base), performance=slow_perf)
    decision = gate_of(slow, base)
    assert failed(decision) == {"ttft_ms_p95"}
    assert "x1.80 the champion's" in decision.reasons()
    busy_load = {"quiet": False, "cpu_share": 0.4, "quiet_cpu_share": 0.8, "attempts": 3,
                 "loadavg_1m": 4.0, "cpus": 2}  # fmt: skip
    busy = dataclasses.replace(slow, performance={**slow_perf, "load": busy_load})
    inconclusive = check(gate_of(busy, base), "ttft_ms_p95")
    assert not inconclusive.passed and inconclusive.values["verdict"] == "inconclusive"
    assert "re-run the gate when the machine is quieter" in inconclusive.reason


def test_more_heads_blind_to_the_input_than_the_champion_are_blocked():
    base = champion()
    blind = [[0, 0], [0, 1], [1, 0], [1, 2]]  # 3 more than the champion's one (max +2)
    worse = dataclasses.replace(
        candidate_from(base), attention={**base.attention, "input_blind_heads": blind}
    )
    health = check(gate_of(worse, base), "attention_health")
    assert not health.passed
    assert "4 heads never look at the input vs champion 1" in health.reason
    assert "0.0, 0.1, 1.0, 1.2" in health.reason
    assert check(gate_of(candidate_from(base), base), "attention_health").passed


def test_missing_column_is_a_clear_error():
    base = champion()
    broken = dataclasses.replace(base, per_input=base.per_input.drop(columns=["rouge_l"]))
    with pytest.raises(ValueError, match="v1's per-input evaluation lacks column\\(s\\) rouge_l"):
        gate_of(broken, None)
