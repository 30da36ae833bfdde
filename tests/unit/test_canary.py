"""Canary vs champion on live traffic: blocked on real differences, not on noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnops.monitors.canary import compare_canary
from attnops.serving.routing import bucket, choose_route
from attnops.spec import ReleaseSpec

LABELS = ["refund", "delivery", "login"]


def window(n: int, seed: int, *, accuracy=0.9, error_rate=0.0, latency_ms=20.0, unsupported=0.02):
    rng = np.random.default_rng(seed)
    label = rng.choice(LABELS, n)
    right = rng.random(n) < accuracy
    return pd.DataFrame(
        {
            "status": np.where(rng.random(n) < error_rate, 500, 200),
            "latency_ms": latency_ms + rng.gamma(2.0, 2.0, n),
            "prediction": np.where(right, label, rng.choice(LABELS, n)),
            "confidence": rng.uniform(0.5, 1.0, n),
            "unsupported": rng.random(n) < unsupported,
            "has_pii": rng.random(n) < 0.05,
            "label": np.where(rng.random(n) < 0.5, label, None),
        }
    )


def judge(canary, champion, **limits):
    return compare_canary(
        canary, champion, ReleaseSpec(**limits), canary_version="2", champion_version="1"
    )


def failed(decision) -> set[str]:
    return {c.name for c in decision.checks if not c.passed}


def test_an_equal_canary_is_promoted_across_seeds():
    promoted = sum(judge(window(300, s), window(900, 100 + s)).promote for s in range(20))
    assert promoted >= 19


def test_a_canary_with_more_errors_is_rolled_back():
    decision = judge(window(300, 1, error_rate=0.08), window(900, 2))
    assert failed(decision) == {"error_rate"}
    assert "of 300 vs champion 0.00% of 900" in decision.reasons()


def test_a_slower_canary_is_rolled_back_but_tail_noise_is_not():
    assert failed(judge(window(300, 1, latency_ms=60), window(900, 2))) == {"latency_ms_p95"}
    assert judge(window(300, 3, latency_ms=22), window(900, 4)).promote


def test_accuracy_drop_needs_labels_and_significance():
    worse = judge(window(400, 1, accuracy=0.6), window(900, 2))
    assert failed(worse) == {"accuracy"}
    unlabelled = window(400, 1, accuracy=0.6).assign(label=None)
    decision = judge(unlabelled, window(900, 2))
    assert decision.promote and "not compared" in decision.table()


def test_more_unsupported_assertions_block_the_canary():
    decision = judge(window(400, 1, unsupported=0.2), window(900, 2))
    assert failed(decision) == {"unsupported_assertions"}


def test_routing_is_sticky_and_shares_keys_as_configured():
    keys = [f"user-{i}" for i in range(20000)]
    routes = [choose_route(k, 0.1, has_canary=True) for k in keys]
    assert abs(routes.count("canary") / len(keys) - 0.1) < 0.01
    assert routes == [choose_route(k, 0.1, has_canary=True) for k in keys]
    assert all(choose_route(k, 0.1, has_canary=False) == "champion" for k in keys[:100])
    assert min(map(bucket, keys)) >= 0.0 and max(map(bucket, keys)) < 1.0
