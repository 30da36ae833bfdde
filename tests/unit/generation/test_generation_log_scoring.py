"""Scoring logged outputs off the request path: the version's detector on a tiny random Llama,
rows scored whole or not at all, a lower-priority single-threaded worker."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from attnops.models.generation.data import prompt_ids
from attnops.models.generation.detector import (
    DETECTOR_JSON,
    LOGPROB_FEATURES,
    TEXT_FEATURES,
    HallucinationDetector,
    detector_features,
)
from attnops.models.generation.teacher_forcing import teacher_forced_batch
from attnops.serving.generation_log_store import GenerationLog, GenerationRecord
from attnops.serving.generation_scoring import GenerationScorer, ScoringModel, eager_twin
from attnops.spec_generation import GenerationSpec

ARTICLE = "Refunds reach the original payment method within 14 days of the return arriving."
SOURCES = [f"Where is the refund for order {i}? I returned it {i} days ago." for i in range(12)]
OUTPUTS = [f"Your refund arrives within {14 + i % 3} days." for i in range(12)]


def detector_json(n_lookback: int, seed: int = 0) -> str:
    """A fitted-looking detector with random weights over the tiny model's feature sizes."""
    rng = np.random.default_rng(seed)

    def linear(n: int) -> dict:
        return {
            "mean": rng.normal(size=n).tolist(),
            "scale": np.ones(n).tolist(),
            "coef": (rng.normal(size=n) * 0.3).tolist(),
            "intercept": 0.0,
        }

    n_text, n_logprob = len(TEXT_FEATURES), len(LOGPROB_FEATURES)
    detector = HallucinationDetector()
    return json.dumps(
        {
            "max_false_positive_rate": 0.1,
            "attention_c": 0.05,
            "c": 1.0,
            "n_folds": 5,
            "threshold": 0.5,
            "feature_names": detector.feature_names,
            "parts": {
                "text": linear(n_text),
                "attention": linear(n_lookback),
                "logprob": linear(n_logprob),
                "combined": linear(n_text + 1 + n_logprob),
            },
        }
    )


@pytest.fixture
def evidence(tmp_path, tiny_llama):
    folder = tmp_path / "v1"
    (folder / "evaluation").mkdir(parents=True)
    n_lookback = tiny_llama.config.num_hidden_layers * tiny_llama.config.num_attention_heads
    (folder / "evaluation" / DETECTOR_JSON).write_text(detector_json(n_lookback))
    return folder


def records(tokenizer, version: str = "1") -> list[GenerationRecord]:
    spec = GenerationSpec()
    return [
        GenerationRecord(
            request_id=f"v{version}-{i}",
            ts=1_700_000_000.0 + i,
            model_name="tiny",
            version=version,
            route="champion",
            source=source,
            context=ARTICLE,
            output=output,
            prompt_tokens=0,
            output_tokens=0,
            ttft_ms=1.0,
            itl_ms=None,
            latency_ms=2.0,
            prompt_ids=prompt_ids(tokenizer, spec, source, ARTICLE),
            sample_lookback=i % 3 == 0,
        )
        for i, (source, output) in enumerate(zip(SOURCES, OUTPUTS, strict=True))
    ]


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_twin_shares_the_weights_and_leaves_the_served_model_as_it_was(tiny_llama):
    tiny_llama.set_attn_implementation("sdpa")
    twin = eager_twin(tiny_llama)
    assert tiny_llama.config._attn_implementation == "sdpa"
    assert twin.config._attn_implementation == "eager"
    shared = {p.data_ptr() for p in tiny_llama.parameters()}
    assert {p.data_ptr() for p in twin.parameters()} == shared


def test_logged_outputs_get_the_registered_detectors_scores_later(
    tmp_path, tiny_llama, tokenizer, evidence
):
    """The stored score is the detector's own score of the teacher-forced output; lookback
    ratios only for the sampled rows; the worker is niced below the server."""
    scoring = ScoringModel.for_version("1", tiny_llama, tokenizer, "cpu", evidence, name="tiny")
    log = GenerationLog(
        f"sqlite:///{tmp_path / 'inference.db'}",
        flush_interval_s=0.05,
        on_written=lambda written: scorer.submit(written),
    )
    scorer = GenerationScorer(log.record_scores, batch_size=4)
    scorer.serve([scoring])
    scorer.start()
    log.start()
    batch = records(tokenizer)
    for record in batch:
        log.submit(record)
    wait_until(lambda: log.window()["hallucination_score"].notna().all())
    niceness = os.getpriority(os.PRIO_PROCESS, scorer._thread.native_id)
    assert niceness > os.getpriority(os.PRIO_PROCESS, 0) or niceness == 19
    log.close()
    scorer.close()
    window = log.window()

    signals = teacher_forced_batch(
        tiny_llama, tokenizer, [r.prompt_ids for r in batch], OUTPUTS, "cpu"
    )
    features = detector_features(SOURCES, [ARTICLE] * len(batch), OUTPUTS, signals)
    expected = HallucinationDetector.from_json(
        (evidence / "evaluation" / DETECTOR_JSON).read_text()
    ).score(features)
    np.testing.assert_allclose(window["hallucination_score"], expected, rtol=1e-5)
    assert (window["hallucination_flag"] == (expected >= 0.5)).all()
    sampled = window["lookback_ratio"].notna().to_numpy()
    assert sampled.tolist() == [r.sample_lookback for r in batch]
    means = [float(s.lookback.mean()) for s in signals]
    np.testing.assert_allclose(window["lookback_ratio"][sampled], np.array(means)[sampled])
    assert scorer.scored == len(batch) and scorer.backlog == 0


def test_close_scores_whole_rows_or_leaves_them_null(tmp_path, tiny_llama, tokenizer, evidence):
    """A shutdown with a backlog: scored rows have score and flag, the rest neither."""
    scoring = ScoringModel.for_version("1", tiny_llama, tokenizer, "cpu", evidence, name="tiny")
    with GenerationLog(f"sqlite:///{tmp_path / 'inference.db'}", redact=False) as log:
        first = records(tokenizer)[0]
        many = [GenerationRecord(**{**vars(first), "request_id": f"r{k}"}) for k in range(80)]
        for record in many:
            log.submit(record)
    scorer = GenerationScorer(log.record_scores, batch_size=2)
    scorer.serve([scoring])
    scorer.submit(many)
    scorer.start()
    scorer.close(timeout_s=0.3)
    window = log.window()
    scored = window["hallucination_score"].notna()
    assert (window["hallucination_flag"].notna() == scored).all()
    assert 0 < scored.sum() < len(many), scored.sum()
    assert scorer.backlog == len(many) - scored.sum()


def test_a_version_without_a_detector_is_served_unscored(tmp_path, tiny_llama, tokenizer, caplog):
    """Its rows stay NULL and a warning says why, once, when the version loads."""
    scoring = ScoringModel.for_version("7", tiny_llama, tokenizer, "cpu", tmp_path, name="tiny")
    assert scoring.detector is None
    assert "tiny v7 has no usable hallucination detector" in caplog.text
    with GenerationLog(f"sqlite:///{tmp_path / 'inference.db'}", redact=False) as log:
        batch = records(tokenizer, version="7")[:3]
        for record in batch:
            log.submit(record)
    scorer = GenerationScorer(log.record_scores)
    scorer.serve([scoring])
    scorer.start()
    scorer.submit(batch)
    scorer.close()
    assert not scorer.has_detector("7") and scorer.unscorable == 3
    assert log.window()["hallucination_score"].isna().all()
