"""One generation request in flight, from routing to its log record and its reply summary."""

from __future__ import annotations

import time
from dataclasses import dataclass

from attnops.serving.generation_log_store import GenerationRecord
from attnops.serving.generation_scheduler import Pending
from attnops.serving.generation_stream import ReplyStream
from attnops.serving.generation_versions import ServedGenerator


@dataclass(eq=False)
class Call:
    """A routed request holding its version (`ServedGenerator.in_flight`) until finished."""

    request_id: str
    route: str
    slot: ServedGenerator
    source: str
    context: str
    pending: Pending
    arrived: float
    """perf_counter() when the request arrived (before reading its body)."""
    sample_lookback: bool
    finished: bool = False

    @property
    def stream(self) -> ReplyStream:
        return self.pending.sink

    def record(self, model_name: str, status: int) -> GenerationRecord:
        """What the log keeps of this request; `status` 200 once its reply is complete.

        A failed request keeps what it wrote before failing, and as `ttft_ms` the wait for
        its first token, or for its failure when none came.
        """
        stream, done = self.stream, self.stream.result
        latency_ms = (time.perf_counter() - self.arrived) * 1000
        first, last, n = stream.first_token_at, stream.last_token_at, stream.n_tokens
        if done is not None:
            ttft_ms = done.ttft_s * 1000
        elif first is not None:
            ttft_ms = (first - self.pending.arrived) * 1000
        else:
            ttft_ms = latency_ms
        return GenerationRecord(
            request_id=self.request_id,
            ts=time.time(),
            model_name=model_name,
            version=self.slot.version,
            route=self.route,
            source=self.source,
            context=self.context,
            output=stream.text,
            prompt_tokens=len(self.pending.prompt_ids),
            output_tokens=len(done.token_ids) if done is not None else n,
            ttft_ms=ttft_ms,
            itl_ms=(last - first) / (n - 1) * 1000 if n >= 2 else None,
            latency_ms=latency_ms,
            status=status,
            stopped_at_eos=bool(done is not None and done.stopped_at_eos),
            prefix_hit=done.prefix_hit if done is not None and stream.prefix_len else None,
            prompt_ids=self.pending.prompt_ids,
            sample_lookback=self.sample_lookback,
        )


def reply_summary(call: Call) -> dict:
    """The answer to a completed request (the JSON of /generate, the stream's last event)."""
    done = call.stream.result
    return {
        "output": call.stream.text,
        "version": call.slot.version,
        "route": call.route,
        "request_id": call.request_id,
        "prompt_tokens": done.prompt_tokens,
        "output_tokens": len(done.token_ids),
        "ttft_ms": done.ttft_s * 1000,
        "stopped_at_eos": done.stopped_at_eos,
    }
