"""Batched forward passes over an encoded split, in the split's original order."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from attnops.models.batching import Encoded, iterate, sequential_batches
from attnops.models.precision import bf16_autocast, inference_bf16


@dataclass(frozen=True)
class Predictions:
    """Class probabilities per input and, when asked for, mean-pooled final hidden states."""

    probs: np.ndarray
    embeddings: np.ndarray | None = None
    logits: np.ndarray | None = None
    """Pre-softmax outputs: out-of-scope scores such as energy need what softmax discards."""
    features: np.ndarray | None = None
    """What the output layer reads (BERT: the pooled [CLS]), with the embeddings: the
    representation the classes were fitted in, where out-of-scope inputs stand out most."""

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


@torch.inference_mode()
def predict(
    model,
    data: Encoded,
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
    with_embeddings: bool = False,
    bf16_on_cpu: bool = False,
) -> Predictions:
    """Run the classifier over `data`; batches are length-sorted, results are not.

    Embeddings are the mask-weighted mean of the last hidden layer: the model's own view
    of the input, which later drift checks compare without a second model. With them come
    the output layer's inputs (`features`, captured by a hook).

    The matmuls run in bf16 on CUDA, and on a CPU with native bf16 when `bf16_on_cpu` (the
    server's `serving.bf16`); elsewhere in fp32.
    """
    was_training = model.training
    if was_training:  # eval() walks every module: not on each served batch
        model.eval()
    logits = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    embeddings = features = None
    head_input: list[torch.Tensor] = []
    hook = (
        output_layer(model).register_forward_pre_hook(lambda _, args: head_input.append(args[0]))
        if with_embeddings
        else None
    )
    autocast = bf16_autocast(device, inference_bf16(device, bf16_on_cpu))
    try:
        for indices, batch in iterate(
            data, sequential_batches(data.lengths, batch_size), pad_id, device
        ):
            batch.pop("labels", None)
            with autocast:
                out = model(**batch, output_hidden_states=with_embeddings)
            logits[indices] = out.logits.float().cpu().numpy()
            if with_embeddings:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1)
                head = head_input.pop().float()
                if embeddings is None:
                    embeddings = np.zeros((len(data), pooled.shape[1]), dtype=np.float32)
                    features = np.zeros((len(data), head.shape[1]), dtype=np.float32)
                embeddings[indices] = pooled.cpu().numpy()
                features[indices] = head.cpu().numpy()
    finally:
        if hook is not None:
            hook.remove()
    if was_training:
        model.train()
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    return Predictions(probs=probs, embeddings=embeddings, logits=logits, features=features)


def output_layer(model) -> torch.nn.Linear:
    """The last Linear producing `num_labels` outputs: the classifier's output layer.

    Found once per model: the search walks every module, too slow for each served batch.
    """
    if model not in _OUTPUT_LAYERS:
        heads = [
            m
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels
        ]
        if not heads:
            raise ValueError(
                f"{type(model).__name__}: no output layer with num_labels outputs found"
            )
        _OUTPUT_LAYERS[model] = heads[-1]
    return _OUTPUT_LAYERS[model]


_OUTPUT_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
