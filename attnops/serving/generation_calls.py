"""One generation request: its body, its time in flight (routing to log record), its reply;
and the body of a corrected reply (`/feedback`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, Field

from attnops.models.text_checks import is_empty_text
from attnops.serving.generation_log_store import GenerationRecord
from attnops.serving.generation_scheduler import Pending
from attnops.serving.generation_stream import ReplyStream
from attnops.serving.generation_versions import ServedGenerator
from attnops.serving.validation import ClientError


class GenerateRequest(BaseModel):
    source: str
    """The customer's message (what the reply answers)."""
    context: str = ""
    """Grounding text placed before it (the knowledge-base article); shared contexts are cached."""
    max_new_tokens: int | None = Field(None, ge=1)
    """At most the version's own max_new_tokens (its generation config); default: that."""
    key: str | None = None
    """Sticky-routing key (user, session, ticket): the same key always gets the same version."""


class ReferenceFeedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    reference: str
    """The reply the request should have had (used by `retrain`)."""


def check_reference(body: ReferenceFeedback, known: set[str]) -> None:
    """Refuse an empty reference or a request id the log does not know (written or queued).

    Raises:
        ClientError: 422 `bad_feedback`, naming the field or the id; nothing is recorded.
    """
    if is_empty_text(body.reference):
        raise ClientError(
            422, "bad_feedback", "reference is empty; send the reply the request should have had"
        )
    if body.request_id not in known:
        raise ClientError(
            422,
            "bad_feedback",
            f"unknown request id {body.request_id} (use the request_id of a /generate "
            "answer); nothing was recorded, fix and resend",
        )


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
