"""Temperature scaling (Guo et al., 2017), folded into the model's last layer.

A briefly fine-tuned classifier is usually mis-calibrated: its confidences say little about
how often it is right, which breaks every confidence threshold downstream (out-of-scope
rejection, label-free performance estimates). One temperature fitted on validation fixes
most of it; dividing the output layer's weights and bias by it makes the registered model
itself calibrated, so any consumer of its logits (MLflow pyfunc, a pipeline) gets it.
"""

from __future__ import annotations

import numpy as np
import torch


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises validation negative log-likelihood.

    `log(probs)` equals the logits up to a per-row constant, which softmax ignores, so the
    fit needs only the probabilities.
    """
    log_probs = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-12))
    target = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_probs / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def fold_temperature(model, temperature: float) -> None:
    """Divide the output layer (the last Linear producing `num_labels` logits) by `temperature`."""
    heads = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels
    ]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no output layer with num_labels outputs found")
    with torch.no_grad():
        heads[-1].weight.div_(temperature)
        if heads[-1].bias is not None:
            heads[-1].bias.div_(temperature)
