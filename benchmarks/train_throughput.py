"""Our trainer vs transformers.Trainer: same model, data, epochs, batch size and machine.

Prints real (non-pad) training tokens per second for both, their ratio, and test accuracy
for both. Needs torch and transformers (and scikit-learn, pandas); no MLflow, no Prefect,
so it runs on a bare GPU box too:

    python benchmarks/train_throughput.py                 # demo data, default spec
    python benchmarks/train_throughput.py --epochs 2 --n-train 2400
"""

from __future__ import annotations

import argparse
import math
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
from attnops.models.train import param_groups
from attnops.spec import load_spec

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
    parser.add_argument("--spec", default=str(REPO / "configs" / "support-tickets.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    args = parser.parse_args()

    base = load_spec(args.spec)
    folder = Path(tempfile.mkdtemp(prefix="attnops-bench-"))
    paths = write_demo_dataset(folder, seed=0, n_train=args.n_train)
    data_spec = base.data.model_copy(update={k: str(v) for k, v in paths.items()})
    training = base.training.model_copy(
        update={"epochs": args.epochs, "early_stopping_patience": None, "compile": args.compile}
    )
    spec = base.model_copy(update={"data": data_spec, "training": training})
    data = load_labelled_data(spec.data)
    tokenizer = load_tokenizer(spec.model)
    test_frame = data.in_scope("test")
    test = encode(tokenizer, test_frame[TEXT], spec.model.max_length, data.label_ids(test_frame))

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
    batches = math.ceil(len(train) / training.batch_size)
    total_steps = training.epochs * math.ceil(batches / training.grad_accum_steps)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(training.warmup_ratio * total_steps), total_steps
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(folder / "hf"),
            per_device_train_batch_size=training.batch_size,
            gradient_accumulation_steps=training.grad_accum_steps,
            num_train_epochs=training.epochs,
            seed=training.seed,
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


def _accuracy(model, data, pad_id, device) -> float:
    predicted = predict(model, data, pad_id=pad_id, device=device).labels
    return float((predicted == np.asarray(data.labels)).mean())


if __name__ == "__main__":
    main()
