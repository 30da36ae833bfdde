"""Continuous batching: greedy decoding of many requests in one running batch, on one thread.

The decode thread loops over step boundaries. At each one, waiting requests that fit (a free
row, the KV budget: `generation_scheduler`) run their prefill, reusing the cached KV states
of their shared prompt prefix (`prefix_cache`), write their first token and join the batch;
then every running sequence advances one token in a single forward pass; a sequence that
wrote an end token or its `max_new_tokens` leaves at once, so a short reply never waits for
a long one. The batch's KV cache is one `DynamicCache`, left-padded to its longest row: a
row joins by padding (the attention mask hides the padding, positions count real tokens
only, as `decode` does) and leaves by dropping its row; columns left holding padding alone
are cut. Greedy: each sequence gets the same tokens as `decode()` of its prompt alone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from attnops.models.generation.decode import eos_ids
from attnops.models.generation.kv_cache import cache_of, with_cache
from attnops.serving.generation_scheduler import KvBudget, Overloaded, Pending, Row, Scheduler
from attnops.serving.prefix_cache import PrefixCache, PrefixCacheView, kv_bytes
from attnops.spec_generation import GenerationServingSpec

logger = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05
"""How often an idle decode thread looks for expired requests and the stop flag."""


class RequestTimeout(Exception):
    """The request ran past `generation.serving.request_timeout_s` (HTTP 504)."""


@dataclass(frozen=True)
class Finished:
    """A request's greedy output (the end token excluded) and what it cost."""

    token_ids: list[int]
    prompt_tokens: int
    ttft_s: float
    """Arrival to first token, queueing included: what the client waited."""
    stopped_at_eos: bool
    prefix_hit: bool


class EventSink(Protocol):
    """Where the decode thread sends one request's events; called on the decode thread."""

    closed: bool
    """Set by the client side when nobody listens any more: the row is dropped."""

    def token(self, token_id: int) -> None: ...
    def finish(self, finished: Finished) -> None: ...
    def fail(self, error: Exception) -> None: ...


@dataclass(eq=False)
class _Running:
    request: Pending
    cached_tokens: int
    last_token: int
    ttft_s: float
    prefix_hit: bool
    tokens: list[int] = field(default_factory=list)


def _states(cache: DynamicCache) -> tuple:
    """Per layer (keys, values) of a cache, the tensors themselves (no copy)."""
    return tuple((layer.keys, layer.values) for layer in cache.layers)


class GenerationEngine:
    """One model's decode thread, its running batch, waiting queue and prefix cache.

    Args:
        model: a causal LM, on `device`, in eval mode.
        tokenizer: its tokenizer (end tokens).
        limits: the spec's `generation.serving` section.
        device: where the model runs.
        threads: torch threads of the decode thread (`models.threads.use_threads`); None:
            leave torch's setting.
        on_step: called after each decode step with (rows, seconds), e.g. for metrics.
        budget: the KV budget shared with other engines (a canary's); None: this engine
            has `limits.kv_budget_mb` to itself.
        prefix_cache: this engine's view of the prefix cache shared with other engines;
            None: a cache of `limits.prefix_cache_mb` to itself.
    """

    def __init__(
        self,
        model,
        tokenizer,
        limits: GenerationServingSpec,
        *,
        device,
        threads=None,
        on_step=None,
        budget: KvBudget | None = None,
        prefix_cache: PrefixCacheView | None = None,
    ) -> None:
        self.model, self.device, self.threads, self.on_step = model, device, threads, on_step
        self.eos = eos_ids(model, tokenizer)
        config = model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = torch.finfo(model.dtype).bits // 8
        self.bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * element
        self.scheduler = Scheduler(
            budget_tokens=int(limits.kv_budget_mb * 2**20) // self.bytes_per_token,
            max_rows=limits.max_batch_rows,
            max_queue=limits.max_queue,
            shared=budget,
            bytes_per_token=self.bytes_per_token,
        )
        self.prefix_cache = prefix_cache or PrefixCache(limits.prefix_cache_mb).view()
        self.max_rows = limits.max_batch_rows
        self._rows: list[_Running] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="decode", daemon=True)

    @property
    def precision(self) -> str:
        """What the decode passes run in (`generation.serving.bf16`)."""
        return str(self.model.dtype).removeprefix("torch.")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the decode thread; running and waiting requests fail with `Overloaded`."""
        self._stop.set()
        self.scheduler.arrived.set()
        self._thread.join(timeout=timeout_s)
        if self.scheduler.shared is not None:
            self.scheduler.shared.release(self.scheduler)
        self.prefix_cache.clear()

    def submit(self, pending: Pending) -> None:
        """Queue a request (its events go to `pending.sink`).

        Raises:
            Overloaded: the queue is full or the request alone exceeds the KV budget.
        """
        if self._stop.is_set():
            raise Overloaded("the server is shutting down; retry on another replica")
        self.scheduler.submit(pending)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def kv_bytes_in_use(self) -> int:
        """The running batch's KV cache (padding included) plus the cached prefixes."""
        batch = kv_bytes(_states(self._cache)) if self._cache is not None else 0
        return batch + self.prefix_cache.bytes

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while not self._stop.is_set():
                self._expire(time.monotonic())
                running = [
                    Row(r.cached_tokens, r.request.max_new_tokens - len(r.tokens))
                    for r in self._rows
                ]
                for pending in self.scheduler.admit(running):
                    self._guarded(self._start, pending)
                if not self._rows:
                    self.scheduler.arrived.wait(IDLE_WAIT_S)
                    continue
                self._guarded(self._step)
        shutdown = Overloaded("the server is shutting down; retry on another replica")
        for pending in self.scheduler.drain():
            pending.sink.fail(shutdown)
        self._leave({id(r): shutdown for r in self._rows})

    def _guarded(self, work, *args) -> None:
        """Run `work`; a model failure fails the requests it touched, never the thread."""
        try:
            work(*args)
        except Exception as exc:
            logger.exception("decoding failed")
            if args:  # a prefill: only that request
                args[0].sink.fail(exc)
                return
            self._leave({id(r): exc for r in self._rows})

    def _expire(self, now: float) -> None:
        for pending in self.scheduler.expire(now):
            pending.sink.fail(RequestTimeout("the request waited in the queue past its timeout"))
        late = {
            id(r): RequestTimeout("the request ran past its timeout")
            for r in self._rows
            if r.request.deadline <= now
        }
        late |= {id(r): None for r in self._rows if r.request.sink.closed}
        if late:
            self._leave(late)

    def _start(self, pending: Pending) -> None:
        """Prefill one request (prefix from the cache when it can), write its first token."""
        ids, shared = pending.prompt_ids, pending.prefix_len
        cache, done, hit = DynamicCache(config=self.model.config), 0, False
        if shared > 0 and self.prefix_cache.budget_bytes > 0:
            kv = self.prefix_cache.get(ids[:shared])
            if kv is not None:
                cache, hit = DynamicCache(ddp_cache_data=kv, config=self.model.config), True
            else:
                self._forward(ids[:shared], 0, cache)
                # The prefill below grows the cache by concatenation into new tensors, so
                # these stay as they are and can be shared with later requests.
                self.prefix_cache.put(ids[:shared], _states(cache))
            done = shared
        logits = self._forward(ids[done:], done, cache)
        token = int(logits[0, -1].float().argmax())
        row = _Running(pending, len(ids), token, time.perf_counter() - pending.arrived, hit)
        if self._advance(row, token):
            self._join(row, cache)

    def _forward(self, ids: list[int], start: int, cache: DynamicCache) -> torch.Tensor:
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=positions,
            **with_cache(cache),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits

    def _advance(self, row: _Running, token: int) -> bool:
        """Record the token a row just chose; False when the row is done (and told so)."""
        pending = row.request
        if token not in self.eos:
            row.tokens.append(token)
            row.last_token = token
            pending.sink.token(token)
        at_eos = token in self.eos
        if at_eos or len(row.tokens) >= pending.max_new_tokens:
            finished = Finished(
                row.tokens, len(pending.prompt_ids), row.ttft_s, at_eos, row.prefix_hit
            )
            pending.sink.finish(finished)
            return False
        return True

    def _join(self, row: _Running, cache: DynamicCache) -> None:
        """Add a prefilled row to the batch, left-padding whichever side is shorter."""
        length = row.cached_tokens
        ones = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, ones, [row]
            return
        width = max(self._mask.shape[1], length)
        grow, pad = width - self._mask.shape[1], width - length
        for batch, new in zip(self._cache.layers, cache.layers, strict=True):
            batch.keys = torch.cat(
                [F.pad(batch.keys, (0, 0, grow, 0)), F.pad(new.keys, (0, 0, pad, 0))]
            )
            batch.values = torch.cat(
                [F.pad(batch.values, (0, 0, grow, 0)), F.pad(new.values, (0, 0, pad, 0))]
            )
        self._mask = torch.cat([F.pad(self._mask, (grow, 0)), F.pad(ones, (pad, 0))])
        self._rows.append(row)

    def _step(self) -> None:
        """Every running row writes one token; finished rows leave."""
        started = time.perf_counter()
        rows = self._rows
        mask = F.pad(self._mask, (0, 1), value=1)
        out = self.model(
            input_ids=torch.tensor([[r.last_token] for r in rows], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[r.cached_tokens] for r in rows], device=self.device),
            **with_cache(self._cache),
            use_cache=True,
        )
        self._cache, self._mask = cache_of(out), mask
        chosen = out.logits[:, -1].float().argmax(-1).tolist()
        done = {}
        for row, token in zip(rows, chosen, strict=True):
            row.cached_tokens += 1
            if not self._advance(row, token):
                done[id(row)] = None
        if self.on_step is not None:
            self.on_step(len(rows), time.perf_counter() - started)
        if done:
            self._leave(done)

    def _leave(self, leaving: dict[int, Exception | None]) -> None:
        """Drop rows from the batch; those mapped to an error are told it."""
        for row in self._rows:
            error = leaving.get(id(row))
            if error is not None:
                row.request.sink.fail(error)
        keep = [i for i, r in enumerate(self._rows) if id(r) not in leaving]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        first = int((mask.sum(0) > 0).nonzero()[0])  # columns of padding alone are cut
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self._mask = mask[:, first:]
