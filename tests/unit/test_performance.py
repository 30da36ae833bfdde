"""Latency the gate can trust on a shared machine, and the thread count chosen in one place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from attnops.models import threads
from attnops.models.batching import encode
from attnops.models.modeling import build_classifier
from attnops.models.performance import QUIET_CPU_SHARE, time_side_by_side
from attnops.models.precision import native_bf16
from attnops.monitors.gate_operational import performance_checks
from attnops.spec import GateSpec, ModelSpec
from tests.conftest import TINY_BERT

CPU = torch.device("cpu")
TEXTS = [f"my order {i} never arrived and the tracking page shows nothing" for i in range(40)]


@contextmanager
def busy_process(cpu: int | None = None):
    """A child process spinning on one core (on `cpu` when given) until the block ends."""
    pin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n" if cpu is not None else ""
    spin = pin + "print('spinning', flush=True)\nwhile True: pass"
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # a tiny model's timings end before a Python child starts
    try:
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture(scope="module")
def runs(tokenizer):
    """The same tiny model twice, on the same inputs: a candidate and its champion."""
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(config_overrides=TINY_BERT), ["a", "b"])
    encoded = encode(tokenizer, TEXTS, 48)
    return [(model, encoded, tokenizer.pad_token_id)] * 2


def test_requests_are_timed_paired_on_one_thread_with_their_load(runs):
    before = torch.get_num_threads()
    timings = time_side_by_side(runs, samples=25, device=CPU, attempts=1)
    assert torch.get_num_threads() == before  # the stage's own count is restored
    assert len(timings) == 2
    for timing in timings:
        cpu_ms, wall_ms = np.asarray(timing["latency_ms"]), np.asarray(timing["wall_latency_ms"])
        assert cpu_ms.shape == wall_ms.shape == (25,)
        assert (cpu_ms > 0).all() and (cpu_ms <= wall_ms + 0.05).all()  # one thread: CPU <= wall
    load = timings[0]["load"]
    assert load is timings[1]["load"]
    assert load["clock"] == "thread_cpu" and load["threads"] == 1 and load["attempts"] == 1
    assert load["cpus"] == threads.available_cpus()
    # A share of the pass's wall time (gaps between requests included, the warm-up not).
    assert 0 < load["cpu_share"] <= 1.001
    assert load["quiet"] == (load["cpu_share"] >= QUIET_CPU_SHARE)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_core_shared_with_a_spinning_process_is_detected_and_retimed(runs):
    """Pinned to the core a neighbour spins on, the timing thread holds it about half the
    pass's wall time: every attempt is busy and all of them are made."""
    main_thread_cpus = os.sched_getaffinity(0)
    cpu = min(main_thread_cpus)
    os.sched_setaffinity(0, {cpu})
    try:
        with busy_process(cpu):
            timings = time_side_by_side(runs, samples=30, device=CPU, attempts=2, pause_s=0)
    finally:
        os.sched_setaffinity(0, main_thread_cpus)
    load = timings[0]["load"]
    assert not load["quiet"] and load["attempts"] == 2
    assert len(load["cpu_share_per_attempt"]) == 2
    assert max(load["cpu_share_per_attempt"]) == load["cpu_share"] < QUIET_CPU_SHARE


def timing(ms: float, *, quiet: bool, n: int = 200, seed: int = 0) -> dict[str, object]:
    """Evidence as `time_side_by_side` writes it: CPU ms ~`ms`, wall x1.05 (x3 when busy)."""
    rng = np.random.default_rng(seed)
    cpu_ms = ms + rng.gamma(2.0, 0.5, n)
    share = 0.95 if quiet else 0.33
    return {
        "latency_ms": cpu_ms.tolist(),
        "wall_latency_ms": (cpu_ms / share).tolist(),
        "model_size_mb": 87.0,
        "load": {
            "clock": "thread_cpu",
            "threads": 1,
            "cpu_share": share,
            "quiet": quiet,
            "quiet_cpu_share": QUIET_CPU_SHARE,
            "attempts": 1 if quiet else 3,
            "cpu_share_per_attempt": [share] if quiet else [0.3, share, 0.31],
            "loadavg_1m": 0.4 if quiet else 3.2,
            "cpus": 2,
        },
    }


def latency(candidate: dict, champion: dict | None = None, **limits) -> dict[str, object]:
    """The latency checks of `performance_checks`, by name."""
    checks = performance_checks(candidate, champion, GateSpec(**limits))
    return {c.name: c for c in checks if c.name.startswith("latency")}


def test_over_budget_on_a_quiet_machine_fails_and_records_the_load():
    checks = latency(timing(30, quiet=True), max_latency_ms_p95=25)
    p95, p99 = checks["latency_ms_p95"], checks["latency_ms_p99"]
    assert not p95.passed and p95.values["verdict"] == "failed"
    assert p95.reason.startswith("3") and "over the budget 25" in p95.reason
    assert p99.passed and p99.values["verdict"] == "passed"
    assert p95.values["load"]["loadavg_1m"] == 0.4 and p95.values["load"]["cpu_share"] == 0.95
    assert p95.values["wall_ms"] > p95.values["candidate"]


def test_over_budget_on_a_busy_machine_is_inconclusive_not_failed():
    checks = latency(timing(30, quiet=False), max_latency_ms_p95=25)
    p95 = checks["latency_ms_p95"]
    assert not p95.passed and p95.values["verdict"] == "inconclusive"
    assert p95.reason.startswith("inconclusive, machine busy: ")
    for figure in ("33%", "3 attempt(s)", "load average 3.2 on 2 CPU(s)", "over the budget 25"):
        assert figure in p95.reason


def test_within_budget_on_a_busy_machine_passes_saying_it_was_busy():
    """Contention only adds to a request's CPU time, so under the budget busy is under it quiet."""
    checks = latency(timing(30, quiet=False))
    p95 = checks["latency_ms_p95"]
    assert p95.passed and p95.values["verdict"] == "passed"
    assert "(budget 250)" in p95.reason and "machine busy" in p95.reason


def test_slower_than_the_champion_on_a_busy_machine_is_inconclusive():
    champion = timing(20, quiet=False, seed=1)
    checks = latency(timing(40, quiet=False), champion)
    assert {c.values["verdict"] for c in checks.values()} == {"inconclusive"}
    assert "the champion's" in checks["latency_ms_p95"].reason
    quiet = latency(timing(40, quiet=True), timing(20, quiet=True))
    assert {c.values["verdict"] for c in quiet.values()} == {"failed"}


def test_the_environment_overrides_the_spec_which_overrides_the_measurement(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.choose_threads(2).threads == 3
    assert threads.choose_threads(2).source == threads.ENV_VAR
    monkeypatch.delenv(threads.ENV_VAR)
    assert threads.choose_threads(2).threads == 2
    assert threads.choose_threads(2).source == "training.num_threads"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(threads.available_cpus() * 2))
    assert threads.choose_threads().threads == 1  # torchrun ranks share the CPUs out


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "all")
    with pytest.raises(ValueError, match="ATTNOPS_NUM_THREADS='all' is not a positive integer"):
        threads.choose_threads()


def test_a_busy_neighbour_is_measured_and_its_core_left_to_it(monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with busy_process():
        busy = threads.busy_cpus(0.5)
        choice = threads.choose_threads()
    assert busy >= 0.7  # the spinning child alone keeps most of a core busy
    assert choice.source == "CPUs free now"
    assert choice.threads == max(1, choice.cpus - round(choice.busy_cpus))
    assert choice.threads <= max(1, choice.cpus - 1)


def test_use_threads_sets_the_calling_thread_and_pinning_restores_it(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setenv(threads.ENV_VAR, "1")
    try:
        assert threads.use_threads(4, stage="serving") == 1
        assert torch.get_num_threads() == 1
        assert "serving: 1 torch thread(s)" in capsys.readouterr().out
        with threads.pinned_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no native bf16")
def test_the_model_timed_first_does_not_pay_for_building_bf16_kernels():
    """oneDNN builds bf16 kernels per input shape, shared by same-shaped models: once made
    the gate fail an identical candidate (timed first) at x2.4 its champion. A fresh process,
    as `attnops gate` is, with inputs of many lengths; the same model on both sides."""
    probe = """
import json, numpy as np, torch
from attnops.models.batching import encode
from attnops.models.modeling import build_classifier, load_tokenizer
from attnops.models.performance import time_side_by_side
from attnops.spec import ModelSpec
from tests.conftest import TINY_BERT
torch.manual_seed(0)
tokenizer = load_tokenizer(ModelSpec())
model = build_classifier(ModelSpec(config_overrides=TINY_BERT), ["a", "b"])
texts = [" ".join(["refund"] * (1 + i % 40)) for i in range(80)]
run = (model, encode(tokenizer, texts, 48), tokenizer.pad_token_id)
timed = time_side_by_side([run, run], samples=80, device=torch.device("cpu"), bf16_on_cpu=True)
print(json.dumps([float(np.percentile(t["latency_ms"], 95)) for t in timed]))
"""
    child = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    first, second = json.loads(child.stdout.strip().splitlines()[-1])
    assert first < 1.5 * second, (first, second)
