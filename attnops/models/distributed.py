"""Data-parallel plumbing for the training loop: who am I, my share of a batch, talking to rank 0.

Everything here is a no-op in a plain single process, so the loop reads the same with and
without torchrun. Under torchrun (DDP) every rank builds the same global, length-grouped
batches from the same seed and takes a strided share of each; rank 0 alone evaluates,
checkpoints and logs, and tells the others what it decided.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from attnops.models.modeling import pick_device


@dataclass(frozen=True)
class World:
    """This process's rank among `size` training processes (0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates, checkpoints and returns the model."""
        return self.rank == 0


def in_process_group() -> bool:
    """Whether this process is one rank of a torch.distributed job (e.g. started by torchrun)."""
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """The process group this process belongs to, if any."""
    if in_process_group():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def resolve_backend(backend: str, device: str) -> str:
    """`auto`: nccl when training runs on CUDA, gloo on CPU."""
    if backend != "auto":
        return backend
    return "nccl" if pick_device(device).type == "cuda" else "gloo"


@contextmanager
def process_group(
    backend: str = "auto", device: str = "auto", timeout_s: float = 1800.0
) -> Iterator[World]:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    Each process of a node drives the GPU of its LOCAL_RANK. `timeout_s` bounds how long a
    rank waits in a collective, e.g. while rank 0 evaluates or writes a checkpoint.
    """
    backend = resolve_backend(backend, device)
    if pick_device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def rank_device(setting: str) -> torch.device:
    """The spec's device for this process: under DDP on CUDA, the GPU of its local rank."""
    device = pick_device(setting)
    if device.type == "cuda" and world().size > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(indices: np.ndarray, world: World) -> tuple[np.ndarray, float]:
    """This rank's share of a global micro-batch and the weight of its mean loss.

    Strided (rank, rank + N, ...): a length-grouped batch is sorted by length, so every
    rank gets a similar share of long and short inputs. DDP averages gradients over the N
    ranks; weighting each rank's mean loss by N x (its examples / the batch's) makes that
    average the gradient of the whole batch's mean loss, as one process would compute it,
    even when the batch does not divide evenly. A rank left with nothing (a batch smaller
    than N) still runs one example at weight 0, because every rank must join the all-reduce.
    """
    mine = indices[world.rank :: world.size]
    if len(mine) == 0:
        return indices[:1], 0.0
    return mine, len(mine) * world.size / len(indices)


def broadcast_from_main(obj, world: World):
    """Rank 0's `obj` on every rank (any picklable object); the others wait for it.

    Tensors inside must be on the CPU: they are unpickled onto the device they came from.
    """
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The average of `value` over all ranks (for logging; gloo has no AVG reduction)."""
    if world.size == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world.size
