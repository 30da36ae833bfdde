"""Lookback ratios, greedy decoding with on-the-fly signals, and the hallucination detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnops.models.generation.decode import Signals, decode, teacher_forced, teacher_forced_ids
from attnops.models.generation.detector import (
    TEXT_FEATURES,
    DetectorFeatures,
    HallucinationDetector,
    detector_features,
)
from attnops.models.generation.detector_report import auc_report, split_fit_holdout
from attnops.models.generation.lookback import lookback_ratios, mean_lookback

CPU = torch.device("cpu")
MESSAGES = ("Where is my order 4411?", "Refund please", "The zipper broke after two days of use.")


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(m, add_special_tokens=False)["input_ids"] for m in MESSAGES]


def _generate(model, tokenizer, prompts, max_new_tokens: int) -> list[list[int]]:
    """`generate` on the left-padded batch, cut at the first eos (which it keeps)."""
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad)  # fmt: skip
    eos = model.generation_config.eos_token_id
    rows = [row[width:].tolist() for row in out]
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def test_lookback_ratio_on_hand_built_map():
    """2 input keys (one padding), 3 generated keys; ratio = A_ctx / (A_ctx + A_new) of means."""
    attention = torch.tensor([[[
        [0.0, 1.0, 0.0, 0.0, 0.0],  # writes the first output token: no generated key yet
        [0.0, 0.6, 0.4, 0.0, 0.0],  # A_ctx 0.6 (pad key 0 not counted), A_new 0.4
        [0.0, 0.3, 0.1, 0.5, 0.1],  # A_ctx 0.3, A_new (0.1 + 0.5 + 0.1) / 3
    ]]])  # fmt: skip
    context = torch.tensor([[False, True, False, False, False]])
    keys, queries = torch.arange(5), torch.tensor([1, 2, 4])
    generated = ((keys[None] >= 2) & (keys[None] <= queries[:, None]))[None]
    ratios = lookback_ratios(attention, context, generated)
    assert ratios.shape == (1, 1, 3)
    assert torch.isnan(ratios[0, 0, 0])
    expected = [0.6 / 1.0, 0.3 / (0.3 + 0.7 / 3)]
    np.testing.assert_allclose(ratios[0, 0, 1:].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(mean_lookback(ratios[0][None]), [[np.mean(expected)]], rtol=1e-6)


def test_lookback_of_an_output_without_scored_step_is_one():
    assert mean_lookback(torch.full((2, 3, 1), float("nan"))).tolist() == np.ones((2, 3)).tolist()


def test_decode_matches_generate_batched_and_alone(tokenizer, tiny_llama):
    """Left padding, position ids and the KV cache give generate's greedy tokens exactly."""
    prompts = _prompts(tokenizer)
    batched = decode(tiny_llama, tokenizer, prompts, max_new_tokens=12, device=CPU, batch_size=3)
    assert [d.token_ids for d in batched] == _generate(tiny_llama, tokenizer, prompts, 12)
    alone = decode(tiny_llama, tokenizer, prompts, max_new_tokens=12, device=CPU, batch_size=1)
    for prompt, d in zip(prompts, alone, strict=True):
        assert d.token_ids == _generate(tiny_llama, tokenizer, [prompt], 12)[0]
    # Padding is masked out of the ratios too: a padded prompt reads like the same one alone.
    for a, b in zip(batched, alone, strict=True):
        np.testing.assert_allclose(a.lookback, b.lookback, atol=1e-5)


def test_decode_stops_at_eos(tokenizer, tiny_llama):
    """A token the model writes mid-output, declared eos, ends that output there."""
    prompts = _prompts(tokenizer)
    free = decode(tiny_llama, tokenizer, prompts, max_new_tokens=12, device=CPU, signals=False)
    row, stop_token = next(
        (i, t) for i, d in enumerate(free) for t in d.token_ids if t != d.token_ids[0]
    )
    cut = free[row].token_ids.index(stop_token)
    tiny_llama.generation_config.eos_token_id = stop_token
    stopped = decode(tiny_llama, tokenizer, prompts, max_new_tokens=12, device=CPU)
    assert stopped[row].token_ids == free[row].token_ids[:cut]
    assert stopped[row].stopped_at_eos and len(stopped[row].token_logprobs) == cut
    assert not any(
        d.stopped_at_eos for i, d in enumerate(stopped) if stop_token not in free[i].token_ids
    )
    assert [d.token_ids for d in stopped] == _generate(tiny_llama, tokenizer, prompts, 12)


def test_signals_shapes_determinism_and_teacher_forcing(tokenizer, tiny_llama):
    """Signals have one log-prob per token and a [layers, heads] lookback; the same prompts
    decode to the same outputs; teacher forcing the decoded tokens gives the same signals."""
    tiny_llama.set_attn_implementation("sdpa")
    prompts = _prompts(tokenizer)
    first = decode(tiny_llama, tokenizer, prompts, max_new_tokens=8, device=CPU)
    again = decode(tiny_llama, tokenizer, prompts, max_new_tokens=8, device=CPU)
    assert tiny_llama.config._attn_implementation == "sdpa"  # eager only for the call
    for d, e, prompt in zip(first, again, prompts, strict=True):
        assert d.token_ids == e.token_ids and d.text == e.text
        assert len(d.token_logprobs) == len(d.token_ids) == len(d.fact_tokens) == 8
        assert all(lp <= 0 for lp in d.token_logprobs)
        assert d.lookback.shape == (2, 2) and ((d.lookback > 0) & (d.lookback <= 1)).all()
        assert d.ttft_s > 0 and len(d.inter_token_s) == 7
        forced = teacher_forced_ids(tiny_llama, prompt, d.token_ids, CPU)
        np.testing.assert_allclose(forced.token_logprobs, d.token_logprobs, atol=1e-4)
        np.testing.assert_allclose(forced.lookback, d.lookback, atol=1e-5)
    reply = "Order 4411 ships today."
    text_signals = teacher_forced(tiny_llama, tokenizer, prompts[0], reply, CPU)
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer(reply, add_special_tokens=False)["input_ids"]
    )
    assert len(text_signals.token_logprobs) == len(tokens)
    # Fact tokens are the ones holding the order number's digits.
    assert (
        [t for t, f in zip(tokens, text_signals.fact_tokens, strict=True) if f]
        == [t for t in tokens if any(c.isdigit() for c in t)]
        != []
    )
    assert decode(tiny_llama, tokenizer, prompts, max_new_tokens=3, device=CPU,
                  signals=False)[0].lookback is None  # fmt: skip


def _synthetic(n: int, seed: int) -> tuple[DetectorFeatures, np.ndarray]:
    """Hallucinated rows (label 1) shifted on a few features of every view."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    text = rng.normal(size=(n, len(TEXT_FEATURES)))
    text[:, 1] += 3.0 * y
    lookback = rng.uniform(0.3, 0.9, size=(n, 12))
    lookback[:, 5] -= 0.3 * y
    logprob = rng.normal(-1.0, 0.3, size=(n, 4)) - 0.8 * y[:, None]
    return DetectorFeatures(text, lookback, logprob), y


def test_detector_separates_synthetic_features_and_round_trips():
    fit_x, fit_y = _synthetic(200, seed=0)
    held_x, held_y = _synthetic(400, seed=1)
    detector = HallucinationDetector(max_false_positive_rate=0.1).fit(fit_x, fit_y)
    report = auc_report(
        detector, held_x, held_y, ["faithful" if v == 0 else "swap" for v in held_y]
    )
    assert report["overall"]["combined"] > 0.99
    assert report["per_kind"]["swap"]["combined"] == report["overall"]["combined"]
    assert min(report["overall"][k] for k in ("text", "attention", "logprob")) > 0.8
    # The threshold holds the false positive rate on the fitting set's faithful outputs.
    assert detector.flag(fit_x)[fit_y == 0].mean() <= 0.1
    assert report["false_positive_rate"] <= 0.2 and report["recall"] > 0.9
    loaded = HallucinationDetector.from_json(detector.to_json())
    assert loaded.threshold == detector.threshold
    np.testing.assert_array_equal(loaded.score(held_x), detector.score(held_x))


def test_detector_refuses_one_class_and_too_few_examples():
    x, y = _synthetic(40, seed=0)
    with pytest.raises(ValueError, match=r"hal\.jsonl: 20 faithful \(label 0\) and 0 halluc"):
        HallucinationDetector().fit(x.subset(y == 0), y[y == 0], source="hal.jsonl")
    few = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:3]]
    with pytest.raises(ValueError, match=r"3 hallucinated .* at least 5"):
        HallucinationDetector().fit(x.subset(few), y[few], source="hal.jsonl")


def test_split_keeps_groups_together():
    groups = np.repeat(np.arange(10), 2)
    fit, held = split_fit_holdout(groups, 0.6, seed=0)
    assert len(fit) == 12 and len(held) == 8
    assert not set(groups[fit]) & set(groups[held])


def test_text_features_count_an_unsupported_number():
    """The text view reads groundedness against source + context: a changed number counts."""
    signals = [Signals([-0.5, -2.0], np.full((2, 2), 0.7), [False, True])] * 2
    features = detector_features(
        ["My order 4411 is late."] * 2,
        ["Refunds take 5 days."] * 2,
        ["Refunds take 5 days.", "Refunds take 9 days."],
        signals,
    )
    n_numbers = features.text[:, TEXT_FEATURES.index("unsupported_numbers")]
    assert n_numbers.tolist() == [0.0, 1.0]
    # All tokens (mean, min), then the fact (digit) tokens only.
    np.testing.assert_allclose(features.logprob, [[-1.25, -2.0, -2.0, -2.0]] * 2)
    assert features.lookback.shape == (2, 4)


def test_batched_teacher_forcing_gives_each_row_its_own_signals(tiny_llama, tokenizer):
    """Right-padded batches give the same log-probs and lookback as one pass per output."""
    from attnops.models.generation.decode import teacher_forced
    from attnops.models.generation.teacher_forcing import teacher_forced_batch

    prompts = [
        tokenizer(t)["input_ids"] for t in ("Refunds take 30 days.", "Ship in 2 days, ok?", "Hi")
    ]
    outputs = ["Your refund of $40 takes 30 days.", "It ships in 2 days.", "Hello there, Ana."]
    batched = teacher_forced_batch(tiny_llama, tokenizer, prompts, outputs, "cpu", batch_size=2)
    for prompt, output, got in zip(prompts, outputs, batched, strict=True):
        one = teacher_forced(tiny_llama, tokenizer, prompt, output, "cpu")
        np.testing.assert_allclose(got.token_logprobs, one.token_logprobs, atol=1e-4)
        np.testing.assert_allclose(got.lookback, one.lookback, atol=1e-5)
        assert got.fact_tokens == one.fact_tokens
