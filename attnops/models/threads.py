"""How many CPU threads torch may use: one decision for training, evaluation, gate and serving.

torch's default (one intra-op thread per core) assumes the machine is ours. When another
process keeps a core busy, every operator's threads wait at a barrier for the one that lost
its core for a whole scheduler time slice: on 2 cores with one busy neighbour, a 20 ms
forward pass took over 500 ms and training slowed several-fold. Taking only the CPUs that no
other process is using when a stage starts makes a busy neighbour slow attnops in
proportion instead. `ATTNOPS_NUM_THREADS` (this machine) overrides `training.num_threads`
(the spec), which overrides that choice.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_VAR = "ATTNOPS_NUM_THREADS"
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen for a stage, and what it was chosen from."""

    threads: int
    cpus: int
    """CPUs this process may use (affinity mask, cgroup quota)."""
    busy_cpus: float | None
    """CPUs' worth of other processes' work measured at the choice (None: not measured)."""
    source: str

    def describe(self) -> str:
        busy = "" if self.busy_cpus is None else f", {self.busy_cpus:.1f} busy with other work"
        return f"{self.threads} torch thread(s) of {self.cpus} CPU(s){busy} ({self.source})"


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota.

    A container limited to 2 CPUs on a 64-core host sees 64 cores; 64 threads under a
    2-CPU quota spend most of each period throttled.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(int(quota) / int(period))))


def busy_cpus(interval_s: float = 0.25) -> float | None:
    """CPUs' worth of work other processes did on this process's CPUs over `interval_s`.

    From the kernel's per-CPU counters (/proc/stat), less this process's own CPU time;
    time stolen by a hypervisor counts as busy. Work at a lower priority than this
    process's (the kernel's "nice" time, when this process is not niced itself) yields the
    CPU to it and does not count: a `nice -n 19` batch job beside a training run would
    otherwise halve the training's threads. None where /proc/stat does not exist.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    count_nice = hasattr(os, "getpriority") and os.getpriority(os.PRIO_PROCESS, 0) > 0
    jiffies = functools.partial(_cpu_jiffies, allowed, count_nice=count_nice)
    before, own_before = jiffies(), time.process_time()
    if before is None:
        return None
    time.sleep(interval_s)
    after, own_after = jiffies(), time.process_time()
    busy, total = (a - b for a, b in zip(after, before, strict=True))
    if total <= 0:
        return None
    cpus = len(allowed) if allowed else os.cpu_count() or 1
    others = busy / total * cpus - (own_after - own_before) / interval_s
    return max(0.0, others)


def _cpu_jiffies(
    allowed: set[int] | None, *, count_nice: bool, stat: Path = Path("/proc/stat")
) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over the allowed CPUs since boot; niced work is
    busy only with `count_nice`."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(v) for v in fields[:8]]
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4] - (0 if count_nice else ticks[1])
    return busy, total


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """ATTNOPS_NUM_THREADS, else `requested` (the spec's training.num_threads), else the CPUs
    no other process is using now (at least one).

    Under torchrun the CPUs are shared out among the node's processes instead of measured:
    the neighbours a measurement would see are the job's own ranks.

    Raises:
        ValueError: ATTNOPS_NUM_THREADS is not a positive integer.
    """
    cpus = available_cpus()
    value = os.environ.get(ENV_VAR)
    if value:
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(
                f"{ENV_VAR}={value!r} is not a positive integer; set it to the number of "
                f"torch threads (this process may use {cpus} CPUs) or unset it"
            )
        return ThreadChoice(int(value), cpus, None, ENV_VAR)
    if requested:
        return ThreadChoice(requested, cpus, None, "training.num_threads")
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if ranks > 1:
        return ThreadChoice(max(1, cpus // ranks), cpus, None, f"shared by {ranks} ranks")
    busy = busy_cpus()
    free = cpus if busy is None else cpus - round(busy)
    return ThreadChoice(max(1, min(cpus, free)), cpus, busy, "CPUs free now")


def use_threads(requested: int | None = None, *, stage: str) -> int:
    """Choose the thread count (`choose_threads`), give it to torch, print it; return it.

    Call it in the thread that runs the stage's torch work, before that work: a thread
    that has run a torch operator keeps its own count until it sets one itself.
    """
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    print(f"{stage}: {choice.describe()}")
    return choice.threads


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block on exactly `threads` torch threads (in this thread), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
