"""The gate's latency verdict does not depend on a busy neighbour (attnops issue 11).

On 2 cores with one kept busy, the demo's v1 (about 20 ms a request when quiet) was timed
at 564 ms p95 on torch's default threads and failed the 250 ms budget. Here the real MiniLM
classifier is timed as the gate times it, 5 times on the machine as it is and 5 times with
a process spinning on one core; the budget is 3x its quiet cost, so a verdict judged on
stretched wall time (x10 and more under that collapse) would fail where the model passes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from attnops.models.batching import encode
from attnops.models.modeling import build_classifier
from attnops.models.performance import model_size_mb, time_side_by_side
from attnops.monitors.gate_operational import performance_checks
from attnops.spec import GateSpec, ModelSpec

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
SAMPLES = 60  # the demo spec's gate.latency_samples


def verdicts(timing: dict, gate: GateSpec) -> dict[str, str]:
    """Each latency check's verdict (passed, failed or inconclusive) on the gate's evidence."""
    checks = performance_checks(timing, None, gate)
    return {c.name: c.values["verdict"] for c in checks if c.name.startswith("latency")}


def test_the_same_version_gets_the_same_latency_verdict_with_and_without_a_busy_core(
    tokenizer, demo_dir
):
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(), ["billing", "delivery", "refund"])  # real MiniLM
    texts = pd.read_csv(demo_dir / "test.csv")["text"].tolist()
    run = [(model, encode(tokenizer, texts, 128), tokenizer.pad_token_id)]

    (first,) = time_side_by_side(run, samples=SAMPLES, device=CPU)
    cost_ms = float(np.percentile(first["latency_ms"], 99))
    within = GateSpec(max_latency_ms_p95=3 * cost_ms, max_latency_ms_p99=3 * cost_ms)
    under = GateSpec(max_latency_ms_p95=cost_ms / 3, max_latency_ms_p99=cost_ms / 3)

    outcomes = []
    for busy in [False] * 5 + [True] * 5:
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            (timing,) = time_side_by_side(run, samples=SAMPLES, device=CPU)
            timing["model_size_mb"] = model_size_mb(model)  # as `measure_side_by_side` adds it
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        load = timing["load"]
        outcomes.append((busy, timing, verdicts(timing, within), verdicts(timing, under)))
        print(
            f"neighbour busy: {busy}; CPU p95 {np.percentile(timing['latency_ms'], 95):.1f} ms, "
            f"wall p95 {np.percentile(timing['wall_latency_ms'], 95):.1f} ms, CPU share "
            f"{load['cpu_share']:.0%} over {load['attempts']} attempt(s), load average "
            f"{load['loadavg_1m']:.1f}"
        )

    print(f"budgets: {3 * cost_ms:.1f} ms (within) and {cost_ms / 3:.1f} ms (under)")
    # Within budget: all 10 pass, whatever the neighbour does.
    assert [v for _, _, v, _ in outcomes] == [
        {"latency_ms_p95": "passed", "latency_ms_p99": "passed"}
    ] * 10
    # Over budget: never a pass; a fail needs a quiet measurement, else it is inconclusive.
    for _, timing, _, over in outcomes:
        expected = "failed" if timing["load"]["quiet"] else "inconclusive"
        assert set(over.values()) == {expected}
