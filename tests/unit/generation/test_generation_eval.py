"""Generation quality scores and the generative evaluation's evidence (tiny random Llama)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM

from attnops.models.generation.data import CONTEXT, SOURCE, TARGET, GenerationData, prompt_ids
from attnops.models.generation.detector import (
    LOGPROB_FEATURES,
    TEXT_FEATURES,
    DetectorFeatures,
    HallucinationDetector,
)
from attnops.models.generation.evaluate import PER_INPUT, evaluate_generator
from attnops.models.generation.heads import head_report
from attnops.models.generation.quality import chrf, fact_recall, rouge_l
from attnops.models.profile import PROFILE_SUMMARY, read_profile_summary
from attnops.spec import PipelineSpec
from attnops.spec_generation import SMOLLM2_BASE
from tests.unit.generation.conftest import TINY_LLAMA

CPU = torch.device("cpu")
N_INPUTS, MAX_NEW_TOKENS = 6, 6


def test_rouge_l_is_lcs_f1_over_stemmed_words():
    scores = rouge_l(
        ["the cat sat on the mat", "the cat on the mat", "cats running", "", "dog"],
        ["the cat sat on the mat", "the cat sat on the mat", "cat runs", "a reply", "cat"],
    )
    # LCS 5 of 5 output and 6 reference words: F1 = 2 * 1 * 5/6 / (1 + 5/6) = 10/11.
    np.testing.assert_allclose(scores, [1.0, 10 / 11, 1.0, 0.0, 0.0])


def test_rouge_l_reads_words_of_every_script():
    """Cyrillic words count (two unrelated sentences sharing a "5" are not a match), a
    Japanese or Chinese answer is scored per character, full-width digits are digits."""
    scores = rouge_l(
        ["ももは１３９円です。", "Доставка займёт 5 дней.", "退款将在5个工作日内到账"],
        ["ももは139円です。", "Возврат денег 5 раз в месяц.", "退款在7个工作日内到账"],
    )
    # 1 of 4 and 1 of 6 Cyrillic tokens shared; 10 of 11 and 10 of 12 Chinese characters.
    np.testing.assert_allclose(scores, [1.0, 2 * (1 / 4) * (1 / 6) / (1 / 4 + 1 / 6), 20 / 23])


def test_chrf_averages_char_ngram_precision_and_recall_then_f2():
    scores = chrf(["the cat sat", "abc", "abcdef"], ["the cat sat", "xyz", "abcdefgh"])
    # "abcdef" vs "abcdefgh": every n-gram (n = 1..6) of the output is in the reference
    # (precision 1); recall for n is (7 - n) / (9 - n). F-beta (beta 2) of the averages.
    recall = np.mean([(7 - n) / (9 - n) for n in range(1, 7)])
    expected = 5 * recall / (4 + recall)
    np.testing.assert_allclose(scores, [1.0, 0.0, expected])
    assert ((scores >= 0) & (scores <= 1)).all()


def test_fact_recall_counts_reference_facts_the_output_reproduces():
    references = [
        "Your refund of $40.00 arrives March 3 from Acme.",  # 40, 3, "march 3", acme
        "Refund of $40 on March 3.",  # 40, 3, "march 3"
        "Thanks for waiting, we are on it.",  # no facts
        "It ships in two weeks.",  # "2" as a word
    ]
    outputs = [
        "Refund of $40 on March 3.",  # misses Acme
        "A refund of 40 dollars.",  # the amount only
        "Sorry.",
        "It ships in 2 weeks.",
    ]
    np.testing.assert_allclose(fact_recall(outputs, references), [3 / 4, 1 / 3, np.nan, 1.0])


def test_quality_scores_refuse_misaligned_inputs():
    for score in (rouge_l, chrf, fact_recall):
        with pytest.raises(ValueError, match="2 outputs but 1 references"):
            score(["a", "b"], ["a"])


def _tiny_llama(tokenizer, seed: int) -> LlamaForCausalLM:
    from transformers import LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **{k: v for k, v in TINY_LLAMA.items() if k != "head_dim"},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def test_heads_use_the_causal_prefix_and_find_input_blind_heads(tokenizer):
    """A random-init model attends almost evenly to what each query can see: entropy ~1 only
    when normalised by the visible prefix, not by the whole prompt."""
    prompts = [tokenizer(t)["input_ids"] for t in ("Where is my order 4411?", "Refund please")]
    lookback = np.full((3, 2, 2), 0.5)
    lookback[:, 1, 0] = [0.01, 0.02, 0.0]  # layer 1, head 0 never reads the input
    lookback[0, 0, 1] = 0.01  # layer 0, head 1 did on other outputs
    report = head_report(_tiny_llama(tokenizer, 0), prompts, lookback, device=CPU)
    assert report.entropy.shape == (2, 2) and (report.entropy > 0.99).all()
    assert report.input_blind_heads == [(1, 0)]
    np.testing.assert_allclose(report.lookback[1, 0], 0.01)


def _setup(tmp_path, tokenizer):
    rows = [
        {
            SOURCE: f"Where is order {4400 + i}? It has not arrived.",
            CONTEXT: f"Standard orders ship within {i % 4 + 1} business days." if i % 3 else "",
            TARGET: f"Order {4400 + i} ships within {i % 4 + 1} business days.",
        }
        for i in range(N_INPUTS + 3)
    ]
    frame = pd.DataFrame(rows)
    data = GenerationData(
        splits={"train": frame, "validation": frame, "test": frame},
        data_sha256="0" * 64,
        paths={},
    )
    spec = PipelineSpec.model_validate(
        {
            "name": "tiny-replies",
            "task": "generation",
            "model": {"base": SMOLLM2_BASE, "config_overrides": TINY_LLAMA},
            "data": {split: str(tmp_path / f"{split}.jsonl") for split in data.splits}
            | {"source_column": "ticket", "target_column": "reply"},
            "training": {"num_threads": 1},
            "evaluation": {"probe_size": 4},
            "generation": {
                "max_prompt_tokens": 96,
                "max_new_tokens": MAX_NEW_TOKENS,
                "eval_samples": N_INPUTS,
            },
        }
    )
    # A detector fitted on random features of the tiny model's shape (2 layers x 2 heads).
    rng = np.random.default_rng(0)
    features = DetectorFeatures(
        text=rng.normal(size=(20, len(TEXT_FEATURES))),
        lookback=rng.uniform(size=(20, 4)),
        logprob=rng.normal(size=(20, len(LOGPROB_FEATURES))),
    )
    detector = HallucinationDetector().fit(features, np.arange(20) % 2)
    return data, spec, detector


def test_evaluation_writes_per_input_evidence_with_baseline(tmp_path, tokenizer):
    data, spec, detector = _setup(tmp_path, tokenizer)
    model, base = _tiny_llama(tokenizer, 0), _tiny_llama(tokenizer, 1)
    out = tmp_path / "evaluation"
    result = evaluate_generator(
        model, tokenizer, data, spec, device=CPU, out_dir=out, detector=detector,
        base_model=base, fit={"still_learning": True},
    )  # fmt: skip

    assert all(path.is_file() for path in result.files)
    assert {p.name for p in result.files} >= {"evaluation.json", PER_INPUT, "lookback_ratio.png"}
    report = json.loads((out / "evaluation.json").read_text())
    assert report["metrics"] == pytest.approx(result.metrics)
    assert all(np.isfinite(v) for v in result.metrics.values())

    table = pd.read_parquet(out / PER_INPUT)
    assert len(table) == N_INPUTS == result.metrics["n_eval_inputs"]
    assert table["request_index"].is_unique
    test = data.splits["test"].loc[table["request_index"]]
    assert table[SOURCE].tolist() == test[SOURCE].tolist()
    assert table["reference"].tolist() == test[TARGET].tolist()
    # Token counts: the prompts as the model saw them, outputs within the decoding budget.
    expected_prompt_tokens = [
        len(prompt_ids(tokenizer, spec.generation, s, c))
        for s, c in zip(test[SOURCE], test[CONTEXT], strict=True)
    ]
    assert table["prompt_tokens"].tolist() == expected_prompt_tokens
    assert result.metrics["prompt_tokens_max"] == max(expected_prompt_tokens)
    assert table["output_tokens"].between(0, MAX_NEW_TOKENS).all()
    assert result.metrics["output_tokens_max"] == table["output_tokens"].max()
    # Greedy decoding repeats itself exactly.
    assert result.metrics["determinism_rate"] == 1.0
    # Scores the gate tests per input, for the candidate and the base model side by side.
    for column in ("rouge_l", "chrf", "fact_recall", "hallucination_score", "hallucinated"):
        assert column in table and f"baseline_{column}" in table
    assert result.metrics["baseline_rouge_l"] == pytest.approx(table["baseline_rouge_l"].mean())
    assert result.metrics["test_hallucination_rate"] == table["hallucinated"].mean()
    assert result.metrics["underfit"] == 1.0
    assert result.metrics["cost_per_1k_requests_usd"] > 0
    assert result.metrics["ttft_ms_p99"] >= result.metrics["ttft_ms_p50"] > 0

    reference = result.reference
    assert len(reference) == N_INPUTS
    assert reference["output"].tolist() == table["output"].tolist()
    assert {len(v) for v in reference["lookback"]} == {4}  # layers x heads
    # Compact prompt embeddings, and the projection live prompts will go through.
    assert {len(v) for v in reference["prompt_embedding"]} == {min(N_INPUTS, 32)}
    summary, projection = read_profile_summary(
        next(p for p in result.files if p.name == PROFILE_SUMMARY)
    )
    assert summary["task"] == "generation" and projection.components.shape[1] == 32
    attention = report["attention"]
    assert np.asarray(attention["entropy"]).shape == (2, 2)
    assert np.asarray(attention["lookback"]).shape == (2, 2)


def test_evaluation_without_base_model_has_no_baseline(tmp_path, tokenizer):
    data, spec, detector = _setup(tmp_path, tokenizer)
    result = evaluate_generator(
        _tiny_llama(tokenizer, 0), tokenizer, data, spec, device=CPU, out_dir=tmp_path,
        detector=detector,
    )  # fmt: skip
    table = pd.read_parquet(tmp_path / PER_INPUT)
    assert not [c for c in table.columns if c.startswith("baseline_")]
    assert not [m for m in result.metrics if m.startswith("baseline_")]
    assert "underfit" not in result.metrics
