"""Tokenisation once, then length-grouped batches with dynamic padding.

Padding every batch to `max_length` wastes most of the compute on short support tickets;
grouping inputs of similar length and padding each batch only to its longest member
keeps nearly every token a real one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Encoded:
    """Token ids of a split (truncated to the spec's `max_length`) and their labels."""

    input_ids: list[list[int]]
    labels: list[int] | None
    full_lengths: list[int]
    """Token counts before truncation, to report how much input is cut off."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64)

    @property
    def truncated(self) -> np.ndarray:
        return np.asarray(self.full_lengths) > self.lengths


def encode(
    tokenizer, texts: Sequence[str], max_length: int, labels: Sequence[int] | None = None
) -> Encoded:
    """Tokenise `texts` without padding; keep the untruncated length of each."""
    texts = list(texts)
    if not texts:  # e.g. no out-of-scope test rows; a fast tokenizer fails on an empty batch
        return Encoded(input_ids=[], labels=[] if labels is not None else None, full_lengths=[])
    ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    full_lengths = [len(seq) for seq in ids]
    long = [i for i, n in enumerate(full_lengths) if n > max_length]
    if long:
        # Re-encode only the long ones, so the tokenizer places its own end tokens.
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)
        for i, seq in zip(long, cut["input_ids"], strict=True):
            ids[i] = seq
    return Encoded(
        input_ids=ids,
        labels=list(labels) if labels is not None else None,
        full_lengths=full_lengths,
    )


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, *, seed: int, group_factor: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of indices whose members have similar lengths.

    Indices are shuffled, cut into mega-batches of `group_factor * batch_size`, sorted by
    length inside each, then cut into batches whose order is shuffled again. The result
    is a pure function of `seed`, so a resumed run sees the same batches.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    mega = group_factor * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


CUDA_WIDTH_MULTIPLE = 32


def sequential_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches sorted by length for inference; callers restore the original order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padded_width(longest: int, cuda: bool) -> int:
    """The width a batch whose longest input has `longest` tokens is padded to.

    On CUDA, a multiple of CUDA_WIDTH_MULTIPLE: every new batch shape costs a one-time
    kernel set-up there (measured on an H200: a MiniLM epoch of length-grouped batches,
    about 50 distinct widths, took 25.9 s, the next two epochs together under 1 s), so few
    widths matter more than the padded compute. On a CPU, shapes cost nothing: the longest.
    """
    return -(-longest // CUDA_WIDTH_MULTIPLE) * CUDA_WIDTH_MULTIPLE if cuda else longest


def collate(
    data: Encoded, indices: np.ndarray, pad_id: int, *, cuda: bool = False
) -> dict[str, torch.Tensor]:
    """Pad the selected inputs to the longest of them; `cuda`: to `padded_width` of it, in
    pinned memory (for asynchronous copies)."""
    seqs = [data.input_ids[i] for i in indices]
    width = padded_width(max(len(s) for s in seqs), cuda)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if data.labels is not None:
        batch["labels"] = torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
    if cuda:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def iterate(
    data: Encoded, batches: list[np.ndarray], pad_id: int, device: torch.device
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield (indices, batch on `device`); pinned memory and async copies on CUDA."""
    cuda = device.type == "cuda"
    for indices in batches:
        batch = collate(data, indices, pad_id, cuda=cuda)
        yield indices, {k: v.to(device, non_blocking=cuda) for k, v in batch.items()}
