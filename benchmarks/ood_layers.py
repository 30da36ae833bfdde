"""Out-of-scope scores from every layer of a registered version: whether combining them
(Lee et al., 2018) beats Mahalanobis on the output layer's input, and whether the gain
holds for intents the combination was not fitted on.

Mahalanobis distance (`attnops.models.ood_scorers.Mahalanobis`, fitted on the version's
training inputs) is computed on each layer's mean-pooled hidden states, on each layer's
[CLS] state and on the output layer's input. The combination is a logistic regression on
those scores, fitted on the validation split's in-scope vs out-of-scope rows (regularisation
chosen by 5-fold out-of-fold recall on validation, threshold from the out-of-fold in-scope
scores); test figures are the verdict. Validation and test out-of-scope rows come from the
same held-out intents, so with `--source` (the BANKING77 files the splits were made from,
to recover each out-of-scope row's intent) the combination is also fitted on half of them
and tested on the other half, over `--repeats` seeded halvings. Nothing is written:

    .venv/bin/python benchmarks/ood_layers.py --spec data/banking77/spec-demo-recipe.yaml \\
        --version challenger --source ../shared/data/banking77
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ood_scores import registered_version
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from attnops.models.batching import encode, iterate, sequential_batches
from attnops.models.data import LABEL, TEXT
from attnops.models.inference import output_layer
from attnops.models.ood import separation, threshold_at
from attnops.models.ood_scorers import Mahalanobis
from attnops.spec import load_spec

OUTPUT_INPUT = "output layer input"
C_GRID = (0.01, 0.1, 1.0, 10.0)


@torch.inference_mode()
def layer_features(model, tokenizer, texts: list[str], max_length: int, device) -> dict:
    """Per input: mean-pooled hidden states and [CLS] state of every layer (embeddings as
    layer 0) and the output layer's input, each (rows, width) float32."""
    encoded = encode(tokenizer, texts, max_length)
    head_input: list[torch.Tensor] = []
    hook = output_layer(model).register_forward_pre_hook(lambda _, a: head_input.append(a[0]))
    parts: dict[str, np.ndarray] = {}
    try:
        for indices, batch in iterate(
            encoded, sequential_batches(encoded.lengths, 64), tokenizer.pad_token_id, device
        ):
            batch.pop("labels", None)
            out = model(**batch, output_hidden_states=True)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            views = {OUTPUT_INPUT: head_input.pop()}
            for layer, hidden in enumerate(out.hidden_states):
                views[f"mean-pooled layer {layer}"] = (hidden * mask).sum(1) / mask.sum(1)
                if layer > 0:  # layer 0's [CLS] is the same vector for every input
                    views[f"[CLS] layer {layer}"] = hidden[:, 0]
            for name, values in views.items():
                if name not in parts:
                    parts[name] = np.zeros((len(texts), values.shape[1]), dtype=np.float32)
                parts[name][indices] = values.float().cpu().numpy()
    finally:
        hook.remove()
    return parts


def combine(val: np.ndarray, out_val: np.ndarray, test: np.ndarray, rate: float, seed: int):
    """Fit the logistic combination of score columns on validation; return its test scores,
    threshold, out-of-fold validation figures and the chosen C."""
    mean, std = val[~out_val].mean(axis=0), val[~out_val].std(axis=0)
    val, test = (val - mean) / std, (test - mean) / std
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    best = None
    for c in C_GRID:
        oof = np.zeros(len(val))
        for fit, held in folds.split(val, out_val):
            model = LogisticRegression(C=c, max_iter=5000).fit(val[fit], out_val[fit])
            oof[held] = model.decision_function(val[held])
        threshold = threshold_at(oof[~out_val], rate)
        figures = separation(oof, ~out_val, threshold)
        if best is None or figures["recall"] > best[2]["recall"]:
            best = (c, threshold, figures)
    c, threshold, figures = best
    model = LogisticRegression(C=c, max_iter=5000).fit(val, out_val)
    return model.decision_function(test), threshold, figures, c


def original_intents(frame: pd.DataFrame, source: pd.DataFrame, out_label: str) -> np.ndarray:
    """Each row's intent, out-of-scope rows' read back from the source file by text."""
    by_text = dict(zip(source["text"], source["category"], strict=True))
    labels = frame[LABEL].to_numpy()
    unknown = set(frame[TEXT][labels == out_label]) - set(by_text)
    if unknown:
        raise SystemExit(
            f"{len(unknown)} out-of-scope texts are not in the --source files (e.g. "
            f"{next(iter(unknown))!r}): pass the folder the splits were written from"
        )
    return np.array(
        [by_text[t] if y == out_label else y for t, y in zip(frame[TEXT], labels, strict=True)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--version", default="challenger", help="number or alias")
    parser.add_argument("--source", type=Path, help="BANKING77 folder (train.csv, test.csv)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    rate, seed = spec.evaluation.in_scope_rejection_rate, spec.training.seed
    started = time.perf_counter()
    loaded, data, device = registered_version(spec, args.spec, args.version)
    model = loaded.model.to(device).eval()
    frames = {s: data.splits[s] for s in ("train", "validation", "test")}
    views = {
        s: layer_features(model, loaded.tokenizer, f[TEXT].tolist(), spec.model.max_length, device)
        for s, f in frames.items()
    }
    labels = np.asarray(data.label_ids(frames["train"]))
    out_val = ~frames["validation"][LABEL].isin(data.label_names).to_numpy()
    out_test = ~frames["test"][LABEL].isin(data.label_names).to_numpy()
    scores = {}
    for name in views["train"]:
        fitted = Mahalanobis.fit(views["train"][name], labels)
        scores[name] = tuple(fitted.score(None, views[s][name]) for s in ("validation", "test"))
    print(
        f"{spec.name} v{loaded.version}: validation {(~out_val).sum()} in-scope / {out_val.sum()} "
        f"out-of-scope, test {(~out_test).sum()} / {out_test.sum()}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(
        f"| Mahalanobis on | val AUROC | val recall @{rate:.0%} | test AUROC | test recall "
        f"@{rate:.0%} | test in-scope rejected |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (val, test) in scores.items():
        threshold = threshold_at(val[~out_val], rate)
        v, t = separation(val, ~out_val, threshold), separation(test, ~out_test, threshold)
        print(
            f"| {name} | {v['auroc']:.3f} | {v['recall']:.3f} | {t['auroc']:.3f} | "
            f"{t['recall']:.3f} | {t['in_scope_rejection']:.3f} |"
        )
    sets = {
        "mean-pooled layers + output layer input": [
            n for n in scores if n.startswith("mean-pooled") or n == OUTPUT_INPUT
        ],
        "every layer view + output layer input": list(scores),
    }
    for label, names in sets.items():
        val = np.column_stack([scores[n][0] for n in names])
        test = np.column_stack([scores[n][1] for n in names])
        test_scores, threshold, v, c = combine(val, out_val, test, rate, seed)
        t = separation(test_scores, ~out_test, threshold)
        print(
            f"| combined: {label} (C={c}, val out-of-fold) | {v['auroc']:.3f} | "
            f"{v['recall']:.3f} | {t['auroc']:.3f} | {t['recall']:.3f} | "
            f"{t['in_scope_rejection']:.3f} |"
        )
    if args.source is not None:
        held_out_check(args, spec, frames, scores, sets, out_val, out_test)


def held_out_check(args, spec, frames, scores, sets, out_val, out_test) -> None:
    """Fit the combination on half the held-out intents, test on the other half."""
    rate, out_label = spec.evaluation.in_scope_rejection_rate, spec.data.out_of_scope_label
    val_intent = original_intents(
        frames["validation"], pd.read_csv(args.source / "train.csv"), out_label
    )
    test_intent = original_intents(frames["test"], pd.read_csv(args.source / "test.csv"), out_label)
    held = np.unique(val_intent[out_val])
    rng = np.random.default_rng(spec.training.seed)
    recalls: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        fitted_on = rng.choice(held, len(held) // 2, replace=False)
        val_rows = ~out_val | np.isin(val_intent, fitted_on)
        test_rows = ~out_test | (out_test & ~np.isin(test_intent, fitted_on))
        val_in, test_in = ~out_val[val_rows], ~out_test[test_rows]
        mahalanobis_val, mahalanobis_test = scores[OUTPUT_INPUT]
        threshold = threshold_at(mahalanobis_val[~out_val], rate)
        t = separation(mahalanobis_test[test_rows], test_in, threshold)
        recalls.setdefault(f"Mahalanobis on the {OUTPUT_INPUT}", []).append(t["recall"])
        for label, names in sets.items():
            val = np.column_stack([scores[n][0][val_rows] for n in names])
            test = np.column_stack([scores[n][1][test_rows] for n in names])
            test_scores, threshold, _, _ = combine(val, ~val_in, test, rate, spec.training.seed)
            t = separation(test_scores, test_in, threshold)
            recalls.setdefault(f"combined: {label}", []).append(t["recall"])
    print(
        f"\nfitted on {len(held) // 2} held-out intents, tested on the other "
        f"{len(held) - len(held) // 2} ({args.repeats} seeded halvings): test recall @{rate:.0%}"
    )
    print("| score | mean | min | max |")
    print("| --- | --- | --- | --- |")
    for name, values in recalls.items():
        print(f"| {name} | {np.mean(values):.3f} | {np.min(values):.3f} | {np.max(values):.3f} |")


if __name__ == "__main__":
    main()
