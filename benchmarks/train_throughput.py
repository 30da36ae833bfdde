"""Our trainer vs transformers.Trainer, or our optimizer paths: same data, run and machine.

`--compare trainer` (default): our trainer vs transformers.Trainer, same model, data, epochs
and batch size. `--compare optimizer`: our trainer with the per-tensor AdamW loop, trained
word embeddings and clipping (the recipe before issue 10) vs the fused AdamW kernel, frozen
embeddings and clipping on or off. Prints real (non-pad) training tokens per second, the
ratio and test accuracy for each. Needs torch and transformers (and scikit-learn, pandas);
no MLflow, no Prefect, so it runs on a bare GPU box too:

    python benchmarks/train_throughput.py                 # demo data, default spec
    python benchmarks/train_throughput.py --epochs 2 --n-train 2400
    python benchmarks/train_throughput.py --compare optimizer --data /work/b77/data/spec.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

from attnops.demo.tickets import write_demo_dataset
from attnops.models.batching import encode
from attnops.models.classifier import train_classifier
from attnops.models.data import TEXT, load_labelled_data
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier, load_tokenizer, seed_everything
from attnops.models.recipe import plan_training
from attnops.models.train import param_groups
from attnops.spec import DEFAULT_SPEC, load_spec

REPO = Path(__file__).resolve().parents[1]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, encoded):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, object]:
        ids = self.encoded.input_ids[i]
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": self.encoded.labels[i],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / DEFAULT_SPEC))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--compare", choices=["trainer", "optimizer"], default="trainer")
    parser.add_argument(
        "--data",
        help="a spec whose data section to use (e.g. BANKING77's), training on a seeded sample "
        "of --n-train of its training examples; default: the demo generator",
    )
    args = parser.parse_args()

    base = load_spec(args.spec)
    folder = Path(tempfile.mkdtemp(prefix="attnops-bench-"))
    training = base.training.model_copy(
        update={"epochs": args.epochs, "early_stopping_patience": None, "compile": args.compile}
    )
    if args.data:
        data_spec = load_spec(args.data).data
        spec = base.model_copy(update={"data": data_spec, "training": training})
        data = load_labelled_data(spec.data)
        train_sample = data.splits["train"].sample(n=args.n_train, random_state=0)
        data = dataclasses.replace(data, splits={**data.splits, "train": train_sample})
    else:
        paths = write_demo_dataset(folder, seed=0, n_train=args.n_train)
        data_spec = base.data.model_copy(update={k: str(v) for k, v in paths.items()})
        spec = base.model_copy(update={"data": data_spec, "training": training})
        data = load_labelled_data(spec.data)
    tokenizer = load_tokenizer(spec.model)
    test_frame = data.in_scope("test")
    test = encode(tokenizer, test_frame[TEXT], spec.model.max_length, data.label_ids(test_frame))
    if args.compare == "optimizer":
        _optimizer_step_alone(spec, len(data.label_names))
        _compare_optimizer_paths(spec, data, test, tokenizer.pad_token_id)
        return

    ours = train_classifier(spec, data, progress=False)
    ours_acc = _accuracy(ours.model, test, tokenizer.pad_token_id, ours.device)
    ours_tps = ours.result.tokens_per_s

    seed_everything(training)
    model = build_classifier(spec.model, data.label_names)
    train_frame = data.in_scope("train")
    train = encode(tokenizer, train_frame[TEXT], spec.model.max_length, data.label_ids(train_frame))
    # Same optimizer groups (head learning rate, no decay on norms/biases) and schedule, so
    # the two differ only in how batches are formed and run.
    optimizer = torch.optim.AdamW(param_groups(model, training), lr=training.learning_rate)
    plan = plan_training(training, len(train))
    scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(folder / "hf"),
            per_device_train_batch_size=training.batch_size,
            gradient_accumulation_steps=training.grad_accum_steps,
            num_train_epochs=training.epochs,
            seed=training.seed,
            bf16=ours.device.type == "cuda" and training.bf16,  # ours autocasts to bf16 too
            use_cpu=ours.device.type == "cpu",
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
        ),
        train_dataset=_Rows(train),
        processing_class=tokenizer,
        optimizers=(optimizer, scheduler),
    )
    started = time.perf_counter()
    trainer.train()
    hf_seconds = time.perf_counter() - started
    hf_tps = training.epochs * int(train.lengths.sum()) / hf_seconds
    hf_acc = _accuracy(model, test, tokenizer.pad_token_id, ours.device)

    device = torch.cuda.get_device_name() if ours.device.type == "cuda" else "cpu"
    print(f"\ndevice: {device}, threads: {torch.get_num_threads()}, train examples: {len(train)}, "
          f"epochs: {training.epochs}, batch: {training.batch_size}")  # fmt: skip
    # Ours returns its best-validation weights (here, with a decaying learning rate, almost
    # always the last epoch's); Trainer returns the last epoch's.
    print(f"{'':24}{'real tokens/s':>15}{'test accuracy':>15}")
    print(f"{'attnops trainer':24}{ours_tps:>15.0f}{ours_acc:>15.4f}")
    print(f"{'transformers.Trainer':24}{hf_tps:>15.0f}{hf_acc:>15.4f}")
    print(f"throughput ratio: {ours_tps / hf_tps:.2f}x, accuracy difference: "
          f"{100 * (ours_acc - hf_acc):+.2f} points")  # fmt: skip


OPTIMIZER_PATHS = {
    "per-tensor AdamW, trained emb.": {
        "fused_optimizer": False, "freeze_embeddings": False, "max_grad_norm": 1.0,
    },
    "fused AdamW, trained emb.": {"fused_optimizer": True, "freeze_embeddings": False},
    "fused AdamW, frozen emb.": {"fused_optimizer": True, "freeze_embeddings": True},
    "fused, frozen, no clipping": {
        "fused_optimizer": True, "freeze_embeddings": True, "max_grad_norm": None,
    },
}  # fmt: skip
"""The recipe before issue 10 first; each later row changes one thing."""


def _optimizer_step_alone(spec, n_labels: int, repeats: int = 15) -> None:
    """CPU ms of one AdamW step and one gradient clipping per path, on random gradients."""
    model = build_classifier(spec.model, tuple(f"class {i}" for i in range(n_labels)))
    print(f"{'optimizer step alone':32}{'AdamW CPU ms':>13}{'clip CPU ms':>13}")
    for name, update in OPTIMIZER_PATHS.items():
        training = spec.training.model_copy(update=update)
        model.get_input_embeddings().weight.requires_grad_(not training.freeze_embeddings)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(model, training), lr=training.learning_rate,
                                      fused=training.fused_optimizer or None)  # fmt: skip
        for param in trainable:
            param.grad = torch.randn_like(param) * 1e-3
        optimizer.step()  # allocates the moments
        started = time.process_time()
        for _ in range(repeats):
            optimizer.step()
        step_ms = 1000 * (time.process_time() - started) / repeats
        started = time.process_time()
        for _ in range(repeats):
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        clip_ms = 1000 * (time.process_time() - started) / repeats
        clipped = f"{clip_ms:.1f}" if training.max_grad_norm else "-"
        print(f"{name:32}{step_ms:>13.1f}{clipped:>13}")
        for param in trainable:
            param.grad = None


def _compare_optimizer_paths(spec, data, test, pad_id: int) -> None:
    """Train once per optimizer path in this process; same data, seed, rates and schedule.

    Besides wall-clock tokens/s it reports the median CPU time per optimizer step (this
    process's CPU seconds between consecutive steps): on a shared machine the wall clock
    measures the neighbours too, the CPU time only our work.
    """
    rows = []
    for name, update in OPTIMIZER_PATHS.items():
        training = spec.training.model_copy(update={**update, "calibrate": False})
        stamps = []
        trained = train_classifier(
            spec.model_copy(update={"training": training}),
            data,
            progress=False,
            on_step=lambda _step, _metrics, stamps=stamps: stamps.append(time.process_time()),
        )
        cpu_ms = 1000 * float(np.median(np.diff(stamps)))
        accuracy = _accuracy(trained.model, test, pad_id, trained.device)
        rows.append((name, trained.result.tokens_per_s, cpu_ms, accuracy))
    print(f"\ndevice: cpu, threads: {torch.get_num_threads()}, train examples: "
          f"{len(data.splits['train'])}, steps: {trained.result.optimizer_steps}, "
          f"batch: {spec.training.batch_size}")  # fmt: skip
    header = f"{'real tokens/s':>15}{'CPU ms/step':>13}{'speed-up':>10}{'test accuracy':>15}"
    print(f"{'':32}{header}")
    for name, tokens_per_s, cpu_ms, accuracy in rows:
        print(f"{name:32}{tokens_per_s:>15.0f}{cpu_ms:>13.0f}"
              f"{rows[0][2] / cpu_ms:>9.2f}x{accuracy:>15.4f}")  # fmt: skip


def _accuracy(model, data, pad_id, device) -> float:
    predicted = predict(model, data, pad_id=pad_id, device=device).labels
    return float((predicted == np.asarray(data.labels)).mean())


if __name__ == "__main__":
    main()
