"""Did the model fit its training data? The `underfit` diagnosis, with its figures.

A model that scores below a TF-IDF baseline usually has not learnt its own training data:
too few steps, or a learning rate too small for the new head. The sign is accuracy on a
sample of the training split (with the weights that are kept) far below 1: `underfit`.

A budget (epochs / max_steps) that ran out while the model was still learning (the last
evaluation set a new best validation macro-F1 and the mean train loss was still falling) is
a note, not a diagnosis: with the rate annealed to zero the last epoch is usually the best
and its loss falls fastest. The default BANKING77 run ended so (loss -46% in its last epoch)
at train accuracy 0.977 and test accuracy 0.935, far above the TF-IDF baseline.
"""

from __future__ import annotations

import numpy as np

from attnops.models.batching import Encoded
from attnops.models.inference import predict
from attnops.spec import TrainingSpec

FIT_SAMPLE_SIZE = 1000
"""Training examples scored for train accuracy (a seeded sample): ~1 s for MiniLM on a CPU."""
STILL_FALLING = 0.05
"""Mean train loss that fell by more than this share over the last evaluation interval is
still falling."""


def train_accuracy(model, train: Encoded, *, pad_id: int, device, seed: int) -> tuple[float, int]:
    """Accuracy on a seeded sample of at most FIT_SAMPLE_SIZE training examples, and its size."""
    n = min(len(train), FIT_SAMPLE_SIZE)
    rows = np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False))
    sample = Encoded(
        input_ids=[train.input_ids[i] for i in rows],
        labels=[train.labels[i] for i in rows],
        full_lengths=[train.full_lengths[i] for i in rows],
    )
    predicted = predict(model, sample, pad_id=pad_id, device=device).labels
    return float((predicted == np.asarray(sample.labels)).mean()), n


def assess_fit(
    model, train: Encoded, history, cfg: TrainingSpec, *, stopped_by: str, pad_id: int, device
) -> dict[str, object]:
    """Score a sample of the training split with the kept weights and diagnose the fit."""
    accuracy, sample = train_accuracy(model, train, pad_id=pad_id, device=device, seed=cfg.seed)
    return diagnose_fit(
        history,
        train_accuracy=accuracy,
        train_sample=sample,
        stopped_by=stopped_by,
        min_train_accuracy=cfg.underfit_train_accuracy,
    )


def diagnose_fit(
    history: list[dict[str, float]],
    *,
    train_accuracy: float,
    train_sample: int,
    stopped_by: str,
    min_train_accuracy: float,
) -> dict[str, object]:
    """`underfit` or `ok`, the reasons and the figures behind them (JSON-ready).

    Args:
        history: one row per evaluation, with `val_macro_f1` and `train_loss_mean` (the mean
            train loss over the steps since the previous evaluation).
        train_accuracy: accuracy on `train_sample` training examples, final weights.
        stopped_by: "early_stopping", "epochs" or "max_steps".
        min_train_accuracy: below this train accuracy the model is underfit.
    """
    losses = [row["train_loss_mean"] for row in history]
    scores = [row["val_macro_f1"] for row in history]
    loss_drop = (losses[-2] - losses[-1]) / losses[-2] if len(losses) >= 2 and losses[-2] else 0.0
    last_improved = len(scores) >= 2 and scores[-1] > max(scores[:-1])
    reasons = []
    if train_accuracy < min_train_accuracy:
        reasons.append(
            f"train accuracy {train_accuracy:.3f} on {train_sample} training examples is below "
            f"{min_train_accuracy:g}: the model has not learnt its own training data"
        )
    # Early stopping ends a run because validation stopped improving: never still learning.
    still_learning = stopped_by != "early_stopping" and last_improved and loss_drop > STILL_FALLING
    notes = []
    if still_learning:
        notes.append(
            f"the budget ({stopped_by}) ran out while still learning: the last evaluation set "
            f"a new best validation macro-F1 ({scores[-1]:.4f}) and the mean train loss fell "
            f"{100 * loss_drop:.0f}% over the last interval; more epochs may help"
        )
    diagnosis = "underfit" if reasons else "ok"
    advice = (
        "train longer (raise training.epochs) or faster (raise training.head_learning_rate / "
        "learning_rate); see the training curves"
        if reasons
        else ""
    )
    return {
        "diagnosis": diagnosis,
        "reasons": reasons,
        "advice": advice,
        "still_learning": still_learning,
        "notes": notes,
        "train_accuracy": train_accuracy,
        "train_accuracy_examples": train_sample,
        "min_train_accuracy": min_train_accuracy,
        "train_loss_mean_first": losses[0] if losses else float("nan"),
        "train_loss_mean_last": losses[-1] if losses else float("nan"),
        "train_loss_drop_last_interval": loss_drop,
        "val_macro_f1_last": scores[-1] if scores else float("nan"),
        "val_macro_f1_best": max(scores) if scores else float("nan"),
        "stopped_by": stopped_by,
    }


def describe_fit(fit: dict[str, object]) -> str:
    """One line for the log: the diagnosis and its main figures."""
    line = (
        f"fit: {fit['diagnosis']} (train accuracy {fit['train_accuracy']:.3f} on "
        f"{fit['train_accuracy_examples']} examples, mean train loss "
        f"{fit['train_loss_mean_first']:.3f} -> {fit['train_loss_mean_last']:.3f}, "
        f"stopped by {fit['stopped_by']})"
    )
    if fit["reasons"]:
        line += ": " + "; ".join(fit["reasons"]) + ". " + str(fit["advice"])
    return "\n  ".join([line, *fit["notes"]])
