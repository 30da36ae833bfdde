"""The training loop learns, accumulates correctly, stops early, and resumes exactly."""

import numpy as np
import pytest
import torch

from attnops.models.batching import encode
from attnops.models.modeling import build_classifier
from attnops.models.precision import native_bf16
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
    # fp32: these tests compare weights across batch shapes, optimizers and resumes at fp32
    # tolerances, which bf16 rounding (autocast on a CPU with native bf16) exceeds.
    base = {
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "early_stopping_patience": None,
        "bf16": False,
    }
    return TrainingSpec(**(base | kw))


def test_overfits_one_batch(tokenizer):
    """A loop that cannot drive one batch to zero loss has a bug (nanoGPT's first check)."""
    model, data = _model(NO_DROPOUT), _data(tokenizer)
    cfg = _cfg(epochs=60, batch_size=8, learning_rate=1e-2)
    result = fine_tune(model, data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.best_val_macro_f1 == 1.0
    assert result.history[-1]["train_loss"] < 0.05
    assert result.real_tokens == 60 * sum(len(ids) for ids in data.input_ids)


@pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no native bf16")
def test_a_cpu_with_native_bf16_trains_under_autocast_and_still_learns(tokenizer):
    model, data = _model(NO_DROPOUT), _data(tokenizer)
    cfg = _cfg(epochs=60, batch_size=8, learning_rate=1e-2, bf16=True)
    result = fine_tune(model, data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.run_card["dtype"] == "bf16 autocast"
    assert result.best_val_macro_f1 == 1.0
    assert next(model.parameters()).dtype == torch.float32  # fp32 master weights
    fp32 = fine_tune(_model(NO_DROPOUT), data, data, _cfg(epochs=1), pad_id=0, device=CPU,
                     progress=False)  # fmt: skip
    assert fp32.run_card["dtype"] == "fp32"


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


def test_cuda_batches_come_in_few_widths_cpu_batches_unpadded(tokenizer):
    """On CUDA each new batch shape costs a kernel set-up: widths are rounded up to 32."""
    from attnops.models.batching import collate, length_grouped_batches, padded_width

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=2000)
    grouped = length_grouped_batches(lengths, 32, seed=0)
    widths = {int(lengths[b].max()) for b in grouped}
    assert len(widths) > 40
    assert {padded_width(w, cuda=True) for w in widths} == {32, 64, 96, 128}
    assert all(padded_width(w, cuda=False) == w for w in widths)

    data = encode(tokenizer, ["refund my order please", "hi"], 16)
    batch = collate(data, np.array([0, 1]), tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, max(data.lengths))
    assert batch["attention_mask"].sum().item() == data.lengths.sum()


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


def test_default_recipe_plans_by_data_size_and_says_why():
    """Epochs for ~700 steps within 3-30, clamped warmup, head at 20x the encoder."""
    from attnops.models.recipe import plan_training

    plan = plan_training(TrainingSpec(), 7924)  # BANKING77's 67 trained intents
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps) == (248, 3, 744)
    assert plan.warmup_steps == 45 and plan.head_learning_rate == 2e-3
    assert plan.reasons["head_learning_rate"].startswith("0.002: default, 20x the encoder's")
    assert "early stopping after 2 evaluations" in plan.reasons["epochs"]
    tiny, huge = plan_training(TrainingSpec(), 100), plan_training(TrainingSpec(), 500_000)
    assert (tiny.epochs, tiny.warmup_steps) == (30, 10)  # 4 steps/epoch: capped, warmup floor
    assert (huge.epochs, huge.warmup_steps) == (3, 500)  # floor of epochs, warmup cap
    capped = plan_training(TrainingSpec(epochs=4, max_steps=50, warmup_ratio=0.0), 7924)
    assert (capped.total_steps, capped.warmup_steps) == (50, 0)
    assert capped.reasons["epochs"].startswith("up to 4: set in the spec, cut to max_steps 50")


def test_head_rate_and_frozen_embeddings_defaults():
    from attnops.models.recipe import freeze_embeddings, head_learning_rate

    assert head_learning_rate(TrainingSpec(learning_rate=5e-5)) == 2e-3
    assert head_learning_rate(TrainingSpec(learning_rate=3e-3)) == 3e-3  # never below encoder
    assert head_learning_rate(TrainingSpec(head_learning_rate=1e-3)) == 1e-3
    assert freeze_embeddings(TrainingSpec(), ModelSpec())[0] is True
    assert freeze_embeddings(TrainingSpec(), ModelSpec(config_overrides=TINY_BERT))[0] is False
    assert freeze_embeddings(TrainingSpec(freeze_embeddings=False), ModelSpec()) == (
        False,
        "trained: set in the spec",
    )
    with pytest.raises(ValueError, match="min_warmup_steps 20 is above max_warmup_steps 10"):
        TrainingSpec(min_warmup_steps=20, max_warmup_steps=10)


def test_run_card_is_printed_with_reasons(tokenizer, capsys):
    data = _data(tokenizer)
    cfg = _cfg(epochs=2, batch_size=8, max_grad_norm=None)
    result = fine_tune(_model(), data, data, cfg, pad_id=0, device=CPU, progress=False,
                       card_notes={"word_embeddings": "trained: a test"})  # fmt: skip
    out = capsys.readouterr().out
    assert "  epochs: up to 2: set in the spec; no early stopping" in out
    assert "  max_grad_norm: no clipping (None)" in out
    assert "  word_embeddings: trained: a test" in out
    assert result.run_card["optimizer"] == "AdamW (fused)"
    assert "grad_norm" not in result.history[-1]  # no clipping: no norm computed
    assert out.splitlines()[-1].startswith("fit: ")
    assert result.run_card["fit"] == result.fit


def test_starved_run_is_diagnosed_underfit(tokenizer):
    """One epoch at a tiny learning rate cannot learn 4 classes: the result says so."""
    data = _data(tokenizer, 4)
    cfg = _cfg(epochs=1, batch_size=8, learning_rate=1e-6, head_learning_rate=1e-6)
    result = fine_tune(_model(NO_DROPOUT), data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.underfit
    assert result.fit["train_accuracy"] < 0.9 and result.fit["train_accuracy_examples"] == 32
    assert result.fit["reasons"][0].startswith(
        f"train accuracy {result.fit['train_accuracy']:.3f} on 32 training examples is below 0.9"
    )
    assert "raise training.epochs" in result.fit["advice"]


def test_overfit_one_batch_run_is_not_underfit(tokenizer):
    model, data = _model(NO_DROPOUT), _data(tokenizer)
    cfg = _cfg(epochs=60, batch_size=8, learning_rate=1e-2)
    result = fine_tune(model, data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.fit["diagnosis"] == "ok" and result.fit["reasons"] == []
    assert result.fit["train_accuracy"] == 1.0 and result.fit["stopped_by"] == "epochs"


def test_budget_running_out_while_still_learning_is_a_note_not_underfit():
    """Validation still improving and loss still falling at the end: more epochs may help."""
    from attnops.models.fit import diagnose_fit

    rising = [
        {"val_macro_f1": 0.80, "train_loss_mean": 1.0},
        {"val_macro_f1": 0.85, "train_loss_mean": 0.5},
        {"val_macro_f1": 0.88, "train_loss_mean": 0.4},
    ]
    args = {"train_accuracy": 0.95, "train_sample": 1000, "min_train_accuracy": 0.9}
    fit = diagnose_fit(rising, stopped_by="epochs", **args)
    assert (fit["diagnosis"], fit["still_learning"]) == ("ok", True)
    assert fit["notes"] == [
        "the budget (epochs) ran out while still learning: the last evaluation set a new best "
        "validation macro-F1 (0.8800) and the mean train loss fell 20% over the last interval; "
        "more epochs may help"
    ]
    assert not diagnose_fit(rising, stopped_by="early_stopping", **args)["still_learning"]
    plateau = [*rising[:2], {"val_macro_f1": 0.85, "train_loss_mean": 0.4}]
    assert not diagnose_fit(plateau, stopped_by="epochs", **args)["still_learning"]
    starved = diagnose_fit(rising, stopped_by="epochs", **(args | {"train_accuracy": 0.6}))
    assert starved["diagnosis"] == "underfit" and len(starved["notes"]) == 1


def test_warmup_evaluations_do_not_count_towards_patience(tokenizer):
    data = _data(tokenizer)
    # Warmup over all 6 planned steps at batch 8 (one step per epoch): the loss-free
    # validation plateau during warmup must not stop the run.
    cfg = _cfg(epochs=6, batch_size=8, learning_rate=1e-6, head_learning_rate=1e-6,
               early_stopping_patience=1, warmup_ratio=0.5, min_warmup_steps=6)  # fmt: skip
    result = fine_tune(_model(), data, data, cfg, pad_id=0, device=CPU, progress=False)
    assert result.optimizer_steps == 6 and not result.stopped_early


def test_model_card_leads_an_underfit_model_with_its_reasons():
    from attnops.models.card import _fit_section
    from attnops.models.fit import diagnose_fit

    history = [
        {"val_macro_f1": 0.5, "train_loss_mean": 2.5},
        {"val_macro_f1": 0.6, "train_loss_mean": 2.09},
    ]
    fit = diagnose_fit(history, train_accuracy=0.62, train_sample=1000, stopped_by="epochs",
                       min_train_accuracy=0.9)  # fmt: skip
    text = "\n".join(_fit_section(fit))
    assert "**underfit**: train accuracy 0.620 on 1000 training examples" in text
    assert "- train accuracy 0.620 on 1000 training examples is below 0.9" in text
    assert "Fix: train longer" in text
    assert "- Note: the budget (epochs) ran out while still learning" in text
    assert _fit_section(None) == []


def test_fused_optimizer_takes_the_same_steps_as_the_per_tensor_loop(tokenizer):
    data = _data(tokenizer)
    fused, loop = _model(NO_DROPOUT), _model(NO_DROPOUT)
    for model, flag in ((fused, True), (loop, False)):
        cfg = _cfg(epochs=3, batch_size=4, fused_optimizer=flag)
        fine_tune(model, data, data, cfg, pad_id=0, device=CPU, progress=False)
    for (name, a), b in zip(fused.state_dict().items(), loop.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
