"""The training loop learns, accumulates correctly, stops early, and resumes exactly."""

import numpy as np
import pytest
import torch

from attnops.models.batching import encode
from attnops.models.modeling import build_classifier
from attnops.models.train import fine_tune
from attnops.spec import ModelSpec, TrainingSpec
from tests.conftest import TINY_BERT

CPU = torch.device("cpu")
NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TEXTS = [
    "please refund my last order",
    "where is my parcel right now",
    "cancel the subscription today",
    "the screen arrived cracked",
    "i never got my money back",
    "tracking says it is stuck",
    "stop my plan from renewing",
    "box was crushed and item broken",
]
LABELS = [0, 1, 2, 3, 0, 1, 2, 3]


def _model(overrides=TINY_BERT, seed=0):
    torch.manual_seed(seed)
    return build_classifier(ModelSpec(config_overrides=overrides), ("a", "b", "c", "d"))


def _data(tokenizer, n_repeat=1):
    return encode(tokenizer, TEXTS * n_repeat, 32, LABELS * n_repeat)


def _cfg(**kw) -> TrainingSpec:
    base = {"learning_rate": 3e-3, "warmup_ratio": 0.0, "early_stopping_patience": None}
    return TrainingSpec(**(base | kw))


def test_overfits_one_batch(tokenizer):
    """A loop that cannot drive one batch to zero loss has a bug (nanoGPT's first check)."""
    model, data = _model(NO_DROPOUT), _data(tokenizer)
    cfg = _cfg(epochs=60, batch_size=8, learning_rate=1e-2)
    result = fine_tune(model, data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.best_val_macro_f1 == 1.0
    assert result.history[-1]["train_loss"] < 0.05
    assert result.real_tokens == 60 * sum(len(ids) for ids in data.input_ids)


def test_gradient_accumulation_matches_the_large_batch(tokenizer):
    """batch 4 x accumulate 2 takes the same steps as batch 8 (loss scaled per micro-batch)."""
    data = _data(tokenizer)
    big, small = _model(NO_DROPOUT), _model(NO_DROPOUT)
    fine_tune(big, data, data, _cfg(epochs=3, batch_size=8), pad_id=0, device=CPU, progress=False)
    accumulated = _cfg(epochs=3, batch_size=4, grad_accum_steps=2)
    result = fine_tune(small, data, data, accumulated, pad_id=0, device=CPU, progress=False)
    assert result.optimizer_steps == 3
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_early_stopping_stops_and_keeps_best_weights(tokenizer):
    data = _data(tokenizer, 2)
    cfg = _cfg(epochs=40, batch_size=8, early_stopping_patience=2)
    result = fine_tune(_model(), data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.stopped_early
    scores = [row["val_macro_f1"] for row in result.history]
    assert len(scores) < 40
    assert scores[-1] <= max(scores) and result.best_val_macro_f1 == max(scores)


class Crash(RuntimeError):
    pass


def test_resume_after_crash_reaches_the_same_weights(tokenizer, tmp_path):
    data = _data(tokenizer, 4)
    cfg = _cfg(epochs=3, batch_size=4, eval_every_steps=3, seed=7)
    reference = _model()
    fine_tune(reference, data, data, cfg, pad_id=0, device=CPU, progress=False)

    def crash_at_step_7(step, _metrics):
        if step == 7:
            raise Crash

    crashed = _model()
    with pytest.raises(Crash):
        fine_tune(crashed, data, data, cfg, pad_id=0, device=CPU, checkpoint_dir=tmp_path,
                  on_step=crash_at_step_7, progress=False)  # fmt: skip
    resumed = _model(seed=123)  # different init: everything must come from the checkpoint
    result = fine_tune(
        resumed,
        data,
        data,
        cfg,
        pad_id=0,
        device=CPU,
        checkpoint_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert result.run_card["resumed_at_step"] == 6
    assert result.optimizer_steps == 24
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_length_grouping_keeps_padding_low(tokenizer):
    from attnops.models.batching import length_grouped_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=2000)
    grouped = length_grouped_batches(lengths, 32, seed=0)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(2000))
    padded = sum(len(b) * lengths[b].max() for b in grouped)
    random_batches = np.array_split(rng.permutation(2000), 2000 // 32)
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert lengths.sum() / padded > 0.9 > lengths.sum() / padded_random
    again = length_grouped_batches(lengths, 32, seed=0)
    assert all((a == b).all() for a, b in zip(grouped, again, strict=True))


def test_truncation_keeps_the_end_token_and_counts_full_length(tokenizer):
    data = encode(tokenizer, ["word " * 100, "short"], 16)
    assert data.lengths.tolist() == [16, 3]
    assert data.full_lengths[0] == 102
    assert data.input_ids[0][-1] == tokenizer.sep_token_id
    assert data.truncated.tolist() == [True, False]


def test_head_learning_rate_applies_to_new_head_and_pooler_only():
    from attnops.models.train import param_groups

    model = _model()
    groups = param_groups(model, _cfg(learning_rate=1e-4, head_learning_rate=2e-3))
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["classifier.weight"])]["lr"] == 2e-3
    assert by_id[id(named["bert.pooler.dense.weight"])]["lr"] == 2e-3
    assert by_id[id(named["bert.encoder.layer.0.attention.self.query.weight"])]["lr"] == 1e-4
    assert by_id[id(named["bert.encoder.layer.0.output.LayerNorm.weight"])]["weight_decay"] == 0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_resuming_a_run_that_stopped_early_trains_no_further(tokenizer, tmp_path):
    data = _data(tokenizer, 2)
    cfg = _cfg(epochs=40, batch_size=8, early_stopping_patience=1)
    first = fine_tune(_model(), data, data, cfg, pad_id=0, device=CPU, checkpoint_dir=tmp_path,
                      progress=False)  # fmt: skip
    assert first.stopped_early
    again = fine_tune(_model(seed=5), data, data, cfg, pad_id=0, device=CPU,
                      checkpoint_dir=tmp_path, resume=True, progress=False)  # fmt: skip
    assert again.stopped_early
    assert again.optimizer_steps == first.optimizer_steps
    assert again.best_val_macro_f1 == first.best_val_macro_f1


def test_frozen_embeddings_stay_as_built_while_the_rest_learns(demo_dir, tmp_path):
    from attnops.models.classifier import train_classifier
    from attnops.models.data import load_labelled_data
    from attnops.models.modeling import build_classifier, seed_everything
    from attnops.spec import PipelineSpec
    from tests.conftest import tiny_spec_dict

    spec = PipelineSpec.model_validate(
        tiny_spec_dict(demo_dir, epochs=1, max_steps=3, freeze_embeddings=True)
    )
    data = load_labelled_data(spec.data)
    seed_everything(spec.training)
    before = build_classifier(spec.model, data.label_names)
    trained = train_classifier(spec, data, checkpoint_dir=tmp_path, resume=False).model
    embeddings = trained.get_input_embeddings().weight
    assert not embeddings.requires_grad
    torch.testing.assert_close(embeddings, before.get_input_embeddings().weight)
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(trained.state_dict()[layer], before.state_dict()[layer])
