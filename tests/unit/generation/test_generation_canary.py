"""The generative canary on live traffic: rolled back for what users and the bill notice
(hallucinations, PII leaks, slower tokens, longer replies, errors), promoted when equal,
and left running while the window is too small to say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnops.monitors.canary_generation import compare_generation_canary
from attnops.spec import PipelineSpec

SPEC = PipelineSpec(
    name="replies",
    task="generation",
    data={"train": "t.jsonl", "validation": "v.jsonl", "test": "s.jsonl"},
    release={"canary_window": 200},
)


def window(
    n: int,
    seed: int,
    *,
    version: str = "2",
    hallucinated=0.05,
    scored=1.0,
    leaks=0.0,
    error_rate=0.0,
    ttft_ms=120.0,
    itl_ms=25.0,
    tokens=40.0,
) -> pd.DataFrame:
    """n logged replies as `GenerationLogReader.window` returns them."""
    rng = np.random.default_rng(seed)
    status = np.where(rng.random(n) < error_rate, 500, 200)
    flag = pd.Series(rng.random(n) < hallucinated, dtype=object)
    flag[rng.random(n) >= scored] = None
    output_tokens = np.maximum(1, rng.poisson(tokens, n))
    return pd.DataFrame(
        {
            "version": version,
            "status": status,
            "hallucination_flag": flag,
            "output_pii_leaks": np.where(rng.random(n) < leaks, "EMAIL_ADDRESS", ""),
            "ttft_ms": ttft_ms * rng.lognormal(0, 0.3, n),
            "itl_ms": np.where(output_tokens > 1, itl_ms * rng.lognormal(0, 0.2, n), np.nan),
            "output_tokens": output_tokens,
        }
    )


def judge(canary, champion, spec=SPEC):
    return compare_generation_canary(canary, champion, spec)


def failed(decision) -> set[str]:
    return {c.name for c in decision.checks if not c.passed}


def test_an_equal_canary_is_promoted_across_seeds():
    decisions = [judge(window(300, s), window(900, 100 + s, version="1")) for s in range(20)]
    assert sum(d.promote for d in decisions) >= 19
    assert not any(d.keep_observing for d in decisions)
    assert (decisions[0].canary, decisions[0].champion) == ("2", "1")


def test_a_canary_that_hallucinates_more_is_rolled_back_with_both_rates():
    decision = judge(window(300, 1, hallucinated=0.2), window(900, 2, version="1"))
    assert failed(decision) == {"hallucination_rate"}
    assert not decision.promote and not decision.keep_observing
    reason = decision.reasons()
    assert "canary replies vs" in reason and "of 300 canary" in reason
    assert "of 900 champion replies" in reason


def test_unscored_replies_are_left_out_and_counted():
    canary = window(300, 1, hallucinated=0.2, scored=0.8)
    decision = judge(canary, window(900, 2, version="1"))
    check = {c.name: c for c in decision.checks}["hallucination_rate"]
    unscored = int(canary.loc[canary["status"] == 200, "hallucination_flag"].isna().sum())
    assert check.values["canary_unscored"] == unscored > 0
    assert f"{unscored} canary and 0 champion replies not scored yet" in check.reason
    scored = canary["hallucination_flag"].dropna().astype(bool)
    assert check.values["canary"] == pytest.approx(scored[canary["status"] == 200].mean())


def test_too_little_canary_traffic_keeps_observing():
    decision = judge(window(50, 1, hallucinated=0.5), window(900, 2, version="1"))
    assert decision.keep_observing and not decision.promote
    assert [c.name for c in decision.checks] == ["canary_traffic"]
    assert "not enough canary traffic: canary 50 and champion 900" in decision.reasons()
    assert decision.to_dict()["keep_observing"] is True


def test_replies_the_detector_has_not_scored_yet_keep_observing_unless_something_failed():
    waiting = judge(window(300, 1, scored=0.3), window(900, 2, version="1"))
    assert waiting.keep_observing and failed(waiting) == {"hallucination_rate"}
    assert "the detector has scored" in waiting.reasons()
    broken = judge(window(300, 1, scored=0.3, error_rate=0.2), window(900, 2, version="1"))
    assert failed(broken) == {"hallucination_rate", "error_rate"}
    assert not broken.keep_observing  # errors are a verdict already: roll back now


def test_slower_first_tokens_are_rolled_back_but_tail_noise_is_not():
    slow = judge(window(300, 1, ttft_ms=300), window(900, 2, version="1"))
    assert failed(slow) == {"ttft_ms_p95"}
    assert "ms vs champion" in slow.reasons()
    slower_tokens = judge(window(300, 1, itl_ms=60), window(900, 2, version="1"))
    assert failed(slower_tokens) == {"inter_token_ms_p95"}
    assert judge(window(300, 3, ttft_ms=130, itl_ms=27), window(900, 4, version="1")).promote


def test_a_canary_that_leaks_pii_is_rolled_back():
    spec = SPEC.model_copy(
        update={"release": SPEC.release.model_copy(update={"max_pii_share_increase": 0.0})}
    )
    decision = judge(window(300, 1, leaks=0.05), window(900, 2, version="1"), spec)
    assert failed(decision) == {"pii_leaks"}
    assert "canary replies leaked PII (EMAIL_ADDRESS x" in decision.reasons()
    assert "0.0% of 900 champion replies" in decision.reasons()


def test_longer_replies_are_rolled_back_and_shorter_ones_are_not():
    canary, champion = window(300, 1, tokens=60), window(900, 2, version="1")
    longer = judge(canary, champion)
    assert failed(longer) == {"output_tokens"}
    mean1, mean0 = canary["output_tokens"].mean(), champion["output_tokens"].mean()
    assert (
        f"average {mean1:.1f} output tokens (300 replies) vs champion {mean0:.1f} (900)"
        in longer.reasons()
    )
    assert judge(window(300, 1, tokens=30), window(900, 2, version="1")).promote


def test_client_errors_are_not_server_errors():
    canary = window(300, 1)
    canary.loc[canary.index[:30], "status"] = 422
    assert "error_rate" not in failed(judge(canary, window(900, 2, version="1")))
    canary.loc[canary.index[:30], "status"] = 503
    assert "error_rate" in failed(judge(canary, window(900, 2, version="1")))
