"""Dynamic micro-batching: concurrent requests for one route share a forward pass.

A batch starts with the first waiting request and takes whatever else arrives within
`max_wait_ms`, up to its share of `max_batch_size`; while the workers are busy, new requests
queue up and form the next batches. The model runs on `workers` threads (each batch on one
of them), so the event loop keeps accepting requests. With several workers each batch takes
at most `max_batch_size / workers` texts: a closed loop of clients then splits into groups
that keep every worker busy, instead of one batch that all of them wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_STOP = object()


class MicroBatcher:
    """Queues texts per route and runs them through `run(route, texts)` in batches.

    Args:
        run: called on the worker thread with a route and its batch of texts; returns
            one result per text, in order.
        routes: the route names requests may use.
        max_batch_size: texts in flight at most, over all workers.
        max_wait_ms: how long a batch waits for more requests after its first.
        workers: threads running batches at the same time (each with its own batch).
        on_batch: called with the route and size of every batch started.
    """

    def __init__(
        self,
        run: Callable[[str, list[str]], list[Any]],
        routes: tuple[str, ...],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        workers: int = 1,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self._run = run
        self._routes = routes
        self._max_batch = max(1, -(-max_batch_size // workers))
        self._max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._threads = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._queues: dict[str, asyncio.Queue] = {}
        self._workers: list[asyncio.Task] = []
        self._running: set[asyncio.Task] = set()
        self._free: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Start one batch-forming task per route on the running event loop."""
        self._free = asyncio.Semaphore(self._threads)  # worker threads not running a batch
        for route in self._routes:
            self._queues[route] = asyncio.Queue()
            self._workers.append(asyncio.create_task(self._work(route), name=f"batch-{route}"))

    async def submit(self, route: str, text: str) -> Any:
        """The result for `text`, computed in a batch with other waiting texts."""
        future = asyncio.get_running_loop().create_future()
        await self._queues[route].put((text, future))
        return await future

    async def stop(self) -> None:
        """Answer everything already queued, then stop the workers and the thread."""
        for queue in self._queues.values():
            await queue.put(_STOP)
        await asyncio.gather(*self._workers)
        await asyncio.gather(*self._running)
        self._executor.shutdown(wait=True)

    async def _work(self, route: str) -> None:
        queue = self._queues[route]
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is _STOP:
                return
            deadline = loop.time() + self._max_wait_s
            await self._free.acquire()  # texts arriving meanwhile join this batch
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    timeout = deadline - loop.time()
                    item = (
                        queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            task = asyncio.create_task(self._answer(route, batch, loop))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(self, route: str, batch: list, loop: asyncio.AbstractEventLoop) -> None:
        texts = [text for text, _ in batch]
        if self._on_batch:
            self._on_batch(route, len(texts))
        try:
            results = await loop.run_in_executor(self._executor, self._run, route, texts)
        except Exception as exc:  # every waiting request gets the error, the worker goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._free.release()
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
