"""Can this box run a DDP group over NCCL? Two ranks average a tensor with NCCL all-reduce.

With one GPU both ranks share it (NCCL may refuse that); with two or more each takes its own.
Prints what NCCL did, so the closing note can say what was and was not exercised:

    python benchmarks/nccl_probe.py
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, store: str, results) -> None:
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        value = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(value)
        torch.cuda.synchronize()
        results[rank] = value[0].item() / world
    except Exception as exc:  # what NCCL said is the probe's result
        results[rank] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        dist.destroy_process_group()


def main() -> None:
    world, gpus = 2, torch.cuda.device_count()
    store = os.path.join(tempfile.mkdtemp(), "store")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(world, store, results), nprocs=world, start_method="spawn")
        outcome = dict(results)
    print(f"NCCL {torch.cuda.nccl.version()}, {gpus} GPU(s), {world} ranks: {outcome}")
    expected = (1 + world) / 2
    ok = all(v == expected for v in outcome.values())
    print("all-reduce mean " + ("correct" if ok else f"NOT {expected}: see above"))


if __name__ == "__main__":
    main()
