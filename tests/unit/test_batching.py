"""Micro-batching over several model worker threads."""

from __future__ import annotations

import asyncio
import threading
import time

from attnops.serving.batching import MicroBatcher


def test_two_workers_run_two_batches_at_once_each_with_its_share():
    """Eight waiting texts, two workers, at most 8 in flight: two batches of four, run at the
    same time on two threads, every text answered in its own request."""
    batches: list[tuple[str, list[str]]] = []

    def run(route: str, texts: list[str]) -> list[str]:
        batches.append((threading.current_thread().name, texts))
        time.sleep(0.5)  # a forward pass, without CPU: the overlap shows on a busy machine
        return [text.upper() for text in texts]

    async def serve() -> tuple[list[str], float]:
        batcher = MicroBatcher(run, ("champion",), max_batch_size=8, max_wait_ms=20, workers=2)
        batcher.start()
        started = time.perf_counter()
        answers = await asyncio.gather(*(batcher.submit("champion", f"t{i}") for i in range(8)))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return answers, elapsed

    answers, elapsed_s = asyncio.run(serve())
    assert answers == [f"T{i}" for i in range(8)]
    assert sorted(len(texts) for _, texts in batches) == [4, 4]
    assert len({thread for thread, _ in batches}) == 2
    assert elapsed_s < 0.9  # one after the other would take 1 s


def test_stop_answers_what_is_queued_while_every_worker_is_busy():
    def run(route: str, texts: list[str]) -> list[int]:
        time.sleep(0.05)
        return [len(text) for text in texts]

    async def serve() -> list[int]:
        batcher = MicroBatcher(run, ("champion",), max_batch_size=2, max_wait_ms=1, workers=2)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit("champion", "x" * i)) for i in range(10)]
        await asyncio.sleep(0)  # queued, most behind busy workers
        await batcher.stop()
        return [task.result() for task in pending]

    assert asyncio.run(serve()) == list(range(10))
