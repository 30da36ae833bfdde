"""Generation training: the loss sees only targets, the loop learns, resumes exactly, LoRA
trains adapters and returns a plain model, bad data is named, SmolLM2 converts once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import LlamaForCausalLM

from attnops.models import loop
from attnops.models.generation.base import (
    build_once,
    load_base_model,
    load_base_tokenizer,
    smollm2_dirs,
)
from attnops.models.generation.data import (
    IGNORE_INDEX,
    cut_counts,
    encode_examples,
    load_generation_data,
    prompt_ids,
)
from attnops.models.generation.loss import collate, target_loss
from attnops.models.generation.run_card import assess_fit
from attnops.models.generation.train import train_generator
from attnops.models.text_files import DataError
from attnops.spec import ModelSpec, PipelineSpec
from attnops.spec_generation import SMOLLM2_BASE, GenerationSpec
from tests.unit.generation.conftest import TINY_LLAMA

CPU = torch.device("cpu")
ROWS = [
    {
        "ticket": f"Where is order {i}? It has not arrived yet.",
        "article": f"Standard orders ship within {i % 4 + 1} business days.",
        "reply": f"Order {i} ships within {i % 4 + 1} business days.",
    }
    for i in range(8)
]


def _write(folder: Path, rows=ROWS) -> dict[str, str]:
    paths = {}
    for split in ("train", "validation", "test"):
        paths[split] = str(folder / f"{split}.jsonl")
        Path(paths[split]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def _spec(folder: Path, lora=None, checkpointing=False, **training) -> PipelineSpec:
    base = {
        "epochs": 30,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        "early_stopping_patience": None,
        "num_threads": 1,
    }
    return PipelineSpec.model_validate(
        {
            "name": "tiny-replies",
            "task": "generation",
            "model": {"base": SMOLLM2_BASE, "config_overrides": TINY_LLAMA},
            "data": {
                **_write(folder),
                "max_leakage_share": 1.0,  # every split the same rows: these tests overfit
                "source_column": "ticket",
                "target_column": "reply",
                "context_column": "article",
            },
            "training": base | training,
            "generation": {
                "lora": lora,
                "gradient_checkpointing": checkpointing,
                "max_prompt_tokens": 96,
                "max_target_tokens": 32,
            },
        }
    )


def test_labels_mask_exactly_the_prompt(tokenizer, tiny_llama):
    """Loss on target tokens + eos only; the fast loss equals the model's own masked loss."""
    gen = GenerationSpec(max_target_tokens=6)
    frame = pd.DataFrame(
        {"source": ["where is it?", "refund"], "context": ["Ships in 2 days.", ""],
         "target": ["In two days.", "Refunds take five to seven working days."]}
    )  # fmt: skip
    examples = encode_examples(tokenizer, gen, frame)
    for example, (_, row) in zip(examples, frame.iterrows(), strict=True):
        prompt = prompt_ids(tokenizer, gen, row["source"], row["context"])
        assert example["input_ids"][: len(prompt)] == prompt
        assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert example["labels"][len(prompt) :] == example["input_ids"][len(prompt) :]
    target = tokenizer("In two days.", add_special_tokens=False)["input_ids"]
    assert examples[0]["labels"][-len(target) - 1 :] == [*target, tokenizer.eos_token_id]
    # A target cut to max_target_tokens ends without eos: never learn to stop mid-sentence.
    assert len([t for t in examples[1]["labels"] if t != IGNORE_INDEX]) == 6
    assert examples[1]["labels"][-1] != tokenizer.eos_token_id

    batch = collate(examples, [0, 1], tokenizer.pad_token_id, CPU)
    with torch.no_grad():
        ours = target_loss(tiny_llama.get_decoder(), tiny_llama.get_output_embeddings(), batch)
        theirs = tiny_llama(**batch).loss
    torch.testing.assert_close(ours, theirs)


def test_long_prompts_lose_context_first(tokenizer):
    gen = GenerationSpec(max_prompt_tokens=64)
    source = "My parcel 123 never arrived."
    context = " ".join(f"Policy sentence number {i}." for i in range(60))
    ids = prompt_ids(tokenizer, gen, source, context)
    text = tokenizer.decode(ids)
    assert len(ids) <= 64
    assert source in text and "Policy sentence number 0." in text
    assert "Policy sentence number 59." not in text
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        prompt_ids(tokenizer, GenerationSpec(max_prompt_tokens=8), source, context)


def test_cut_prompts_and_targets_are_counted_for_the_run_card(tokenizer):
    """A long article cut to fit is said, not silent: the model never reads its end."""
    gen = GenerationSpec(max_prompt_tokens=64, max_target_tokens=8)
    frame = pd.DataFrame(
        {
            "source": ["Where is my parcel?"] * 3,
            "context": ["", "Ships in 2 days.", " ".join(f"Policy {i}." for i in range(60))],
            "target": ["Soon.", "In 2 days.", " ".join(["It ships within two days."] * 4)],
        }
    )
    assert cut_counts(tokenizer, gen, frame) == {"prompts_cut": 1, "targets_cut": 1, "rows": 3}
    assert len(prompt_ids(tokenizer, gen, "Where is my parcel?", frame["context"][2])) <= 64


def test_overfits_one_batch(tmp_path, model_cache):
    """A loop that cannot drive one batch's loss far down has a bug."""
    spec = _spec(tmp_path, epochs=60)
    trained = train_generator(
        spec, load_generation_data(spec.data), cache_dir=model_cache, progress=False
    )
    history = trained.result.history
    assert trained.result.optimizer_steps == 60 and len(history) == 60
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
    assert trained.result.best_val_loss == min(row["val_loss"] for row in history)
    assert trained.result.run_card["trainable_parameters"] == trained.result.run_card["parameters"]
    assert trained.result.real_tokens == 60 * trained.result.run_card["tokens"]
    assert isinstance(trained.model, LlamaForCausalLM) and not trained.model.training


class Crash(RuntimeError):
    pass


def test_resume_after_crash_reaches_the_same_weights(tmp_path, model_cache, monkeypatch):
    spec = _spec(tmp_path, epochs=6, batch_size=4, eval_every_steps=3, learning_rate=3e-3)
    data = load_generation_data(spec.data)
    whole = train_generator(spec, data, cache_dir=model_cache, progress=False)

    real_save = loop.save_checkpoint

    def save_then_crash(folder, model, optimizer, scheduler, state):
        real_save(folder, model, optimizer, scheduler, state)
        if state.step == 6:
            raise Crash

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    checkpoints = tmp_path / "ckpt"
    with pytest.raises(Crash):
        train_generator(spec, data, cache_dir=model_cache, checkpoint_dir=checkpoints)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    resumed = train_generator(
        spec, data, cache_dir=model_cache, checkpoint_dir=checkpoints, resume=True
    )
    assert resumed.result.run_card["resumed_at_step"] == 6
    assert resumed.result.optimizer_steps == whole.result.optimizer_steps == 12
    assert [r["val_loss"] for r in resumed.result.history] == pytest.approx(
        [r["val_loss"] for r in whole.result.history], rel=1e-5
    )
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    other = _spec(tmp_path, epochs=6, batch_size=4, eval_every_steps=3, learning_rate=1e-3)
    with pytest.raises(ValueError, match="other data or other model"):
        train_generator(other, data, cache_dir=model_cache, checkpoint_dir=checkpoints, resume=True)


def test_lora_trains_adapters_and_returns_a_merged_plain_model(tmp_path, model_cache):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    spec = _spec(tmp_path, lora=lora, checkpointing=True, epochs=5)
    trained = train_generator(
        spec, load_generation_data(spec.data), cache_dir=model_cache, progress=False
    )
    card = trained.result.run_card
    # q_proj 32x32 (4 x 32 + 32 x 4), v_proj 32x16 (4 x 32 + 16 x 4), 2 layers.
    assert card["trainable_parameters"] == 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))
    assert card["method"] == "LoRA r=4 alpha=8"
    assert type(trained.model) is LlamaForCausalLM
    assert not any("lora" in name for name in trained.model.state_dict())

    torch.manual_seed(spec.training.seed)  # the same random base the run started from
    base, _ = load_base_model(spec.model, model_cache)
    merged, original = trained.model.state_dict(), base.state_dict()
    changed = {name for name in original if not torch.equal(merged[name], original[name])}
    assert changed == {
        f"model.layers.{i}.self_attn.{proj}.weight"
        for i in range(2)
        for proj in ("q_proj", "v_proj")
    }
    ids = torch.tensor([load_base_tokenizer(spec.model, model_cache)("where is it")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(trained.model(ids).logits, base(ids).logits)


def test_underfit_is_a_budget_that_ran_out_while_still_learning():
    falling = [
        {"train_loss_mean": 3.0, "val_loss": 3.1},
        {"train_loss_mean": 2.0, "val_loss": 2.4},
    ]
    fit = assess_fit(falling, stopped_early=False)
    assert fit["still_learning"] and fit["note"].startswith("fit: underfit")
    assert not assess_fit(falling, stopped_early=True)["still_learning"]
    flat = [{**falling[0], "train_loss_mean": 2.05}, falling[1]]
    assert not assess_fit(flat, stopped_early=False)["still_learning"]
    # A loss that never moved (10.80 -> 10.80, chance for a 49k vocabulary) is not "ok".
    stuck = [
        {"train_loss_mean": 10.80, "val_loss": 10.81},
        {"train_loss_mean": 10.79, "val_loss": 10.80},
    ]
    fit = assess_fit(stuck, stopped_early=False)
    assert fit["not_learning"] and fit["note"].startswith("fit: not learning")
    assert not assess_fit(falling, stopped_early=False)["not_learning"]
    assert not assess_fit(stuck[:1], stopped_early=False)["not_learning"]  # one epoch: unknown


def test_bad_data_is_named(tmp_path):
    spec = _spec(tmp_path)
    wrong = spec.data.model_copy(update={"target_column": "answer"})
    with pytest.raises(DataError, match=r"column 'answer' not found in .*train\.jsonl.*"
                       r"columns: ticket, article, reply.*data\.target_column"):  # fmt: skip
        load_generation_data(wrong, "configs/replies.yaml")
    rows = [*ROWS[:2], {**ROWS[2], "reply": "  "}, {**ROWS[3], "reply": None}]
    _write(tmp_path, rows)
    with pytest.raises(DataError, match=r"2 row\(s\) with empty or non-text 'reply'.*lines 3, 4"):
        load_generation_data(spec.data)
    _write(tmp_path, [*ROWS[:2], {**ROWS[2], "ticket": ""}])
    with pytest.raises(DataError, match=r"'ticket' \(data.source_column; line 3"):
        load_generation_data(spec.data)
    _write(tmp_path, [{**ROWS[0], "article": None}, ROWS[1]])
    data = load_generation_data(spec.data)  # a row without context is fine
    assert data.splits["train"]["context"].tolist() == ["", ROWS[1]["article"]]


def test_smollm2_cache_is_keyed_by_version_and_written_atomically(tmp_path, model_cache):
    """The tokenizer alone never converts the weights; a failed build leaves nothing."""
    full, light = smollm2_dirs(model_cache)
    assert full.name == "smollm2-135m-instruct-0.1.2" and light.is_dir() and not full.exists()

    def crash(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("half")
        raise Crash

    target = tmp_path / "cache" / "model-x"
    with pytest.raises(Crash):
        build_once(target, crash)
    assert not target.exists() and list(target.parent.iterdir()) == []
    calls = []
    build_once(target, lambda tmp: calls.append(tmp) or tmp.mkdir())
    build_once(target, lambda tmp: calls.append(tmp) or tmp.mkdir())
    assert target.is_dir() and len(calls) == 1


@pytest.mark.slow
def test_smollm2_converts_once_and_reloads_fast(tmp_path, tokenizer):
    """The real 135M conversion (~30 s), then a reload from safetensors with the same logits."""
    spec = ModelSpec(base=SMOLLM2_BASE)
    model, _ = load_base_model(spec, tmp_path)
    full, _ = smollm2_dirs(tmp_path)
    assert (full / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [full.name]
    started = time.perf_counter()
    again, _ = load_base_model(spec, tmp_path)
    assert time.perf_counter() - started < 10
    ids = torch.tensor([tokenizer("Where is my order?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_without_a_validation_file_a_share_of_train_is_set_aside(tmp_path):
    """The same rows every time, said to come from train."""
    rows = [{**ROWS[i % 8], "ticket": f"Where is order {i}? Still waiting."} for i in range(40)]
    spec = _spec(tmp_path).data.model_copy(update={"validation": None, "validation_share": 0.2})
    _write(tmp_path, rows)
    data = load_generation_data(spec)
    train, validation = data.splits["train"], data.splits["validation"]
    assert (len(train), len(validation)) == (32, 8)
    assert not set(train["source"]) & set(validation["source"])
    assert data.paths["validation"].endswith("train.jsonl (validation: 0.2 of it set aside)")
    assert load_generation_data(spec).data_sha256 == data.data_sha256


def test_a_test_split_that_repeats_train_inputs_stops_the_data_step(tmp_path):
    """A test input seen in training scores the memory of its target, not the model."""
    update = {"validation": None, "max_leakage_share": 0.2}
    spec = _spec(tmp_path).data.model_copy(update=update)
    rows = [{**ROWS[i % 8], "ticket": f"Where is order {i}? Still waiting."} for i in range(40)]
    _write(tmp_path, rows)  # test holds the train rows
    with pytest.raises(DataError, match=r"test\.jsonl: 36 of 40 test rows \(90\.0%\) also"):
        load_generation_data(spec)
    # The same source over different articles is no repeat: the prompt differs.
    test = [{**row, "article": row["article"] + " Weekends excluded."} for row in rows]
    Path(spec.test).write_text("".join(json.dumps(row) + "\n" for row in test))
    test_in_train = load_generation_data(spec).leakage[1]
    assert (test_in_train.later, test_in_train.earlier, test_in_train.near) == ("test", "train", 0)


def test_one_instruction_over_many_articles_still_sets_validation_aside(tmp_path):
    """Summarisation and grounded QA repeat the source; the prompt differs by its article."""
    rows = [
        {"ticket": "Summarise the policy.", "article": f"Orders ship in {i} days.", "reply": f"{i}"}
        for i in range(40)
    ]
    spec = _spec(tmp_path).data.model_copy(update={"validation": None, "validation_share": 0.2})
    _write(tmp_path, rows)
    train, validation = (load_generation_data(spec).splits[s] for s in ("train", "validation"))
    assert (len(train), len(validation)) == (32, 8)
    assert not set(train["context"]) & set(validation["context"])
