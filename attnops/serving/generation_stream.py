"""The served generative version, and one request's reply as an async stream of text.

`load_generator` loads a version through `load_version` (weights and tokenizer hashes
checked) with the decoding settings it was registered with. `Reply.pending` turns a request
into prompt token ids (the chat prompt evaluation used), refusing what cannot be answered
with a sentence naming the field. `ReplyStream` receives the decode thread's events on the
event loop and yields the reply as text chunks whose concatenation is the decoded output.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from attnops.models.aliases import CHAMPION
from attnops.models.generation.data import prompt_ids, render_prompt_text
from attnops.models.modeling import pick_device
from attnops.models.text_checks import describe_empty, is_empty_text
from attnops.models.threads import use_threads
from attnops.models.versions import load_version
from attnops.serving.generation_engine import Finished, RequestTimeout
from attnops.serving.generation_scheduler import Overloaded, Pending
from attnops.serving.prefix_cache import shared_prefix_len
from attnops.serving.validation import ClientError
from attnops.spec import PipelineSpec
from attnops.spec_generation import GenerationSpec

_PARTIAL = "\ufffd"  # a chunk ending inside a multi-byte character waits for the next token


class ReplyStream:
    """One request's events, from the decode thread to the event loop (an `EventSink`)."""

    def __init__(self, tokenizer, prefix_len: int, timeout_s: float, route: str) -> None:
        self.tokenizer, self.prefix_len, self.timeout_s = tokenizer, prefix_len, timeout_s
        self.route = route
        self.first_token_at: float | None = None
        """perf_counter() of the first and the latest token, stamped on the decode thread."""
        self.last_token_at: float | None = None
        self.n_tokens = 0
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.result: Finished | None = None
        self.failure: Exception | None = None
        self.text = ""

    # decode thread
    def _put(self, event: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def token(self, token_id: int) -> None:
        self.last_token_at = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = self.last_token_at
        self.n_tokens += 1
        self._put(("token", token_id))

    def finish(self, finished: Finished) -> None:
        self._put(("finish", finished))

    def fail(self, error: Exception) -> None:
        self._put(("fail", error))

    # event loop
    async def chunks(self):
        """Text chunks as tokens arrive; after the last one `result` or `failure` is set."""
        tokens: list[int] = []
        sent = ""
        while True:
            try:
                kind, value = await asyncio.wait_for(self.queue.get(), self.timeout_s + 5)
            except TimeoutError:
                self.failure = RequestTimeout("no answer from the decode thread")
                return
            if kind == "fail":
                self.failure = value
                return
            if kind == "finish":
                self.result = value
                self.text = self.tokenizer.decode(value.token_ids, skip_special_tokens=True)
                if self.text.startswith(sent) and len(self.text) > len(sent):
                    yield self.text[len(sent) :]
                return
            tokens.append(value)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            self.text = text  # so far: what a request that fails later had written
            if text.startswith(sent) and not text.endswith(_PARTIAL) and len(text) > len(sent):
                yield text[len(sent) :]
                sent = text

    def raise_failure(self) -> None:
        """Turn a failed request into the client error that says why."""
        error = self.failure
        if error is None:
            return
        if isinstance(error, RequestTimeout):
            raise ClientError(
                504,
                "timeout",
                f"{error}: the reply took longer than "
                f"generation.serving.request_timeout_s ({self.timeout_s} s); "
                "ask for fewer max_new_tokens or retry later",
                self.route,
            )
        if isinstance(error, Overloaded):
            raise ClientError(503, "overloaded", str(error), self.route)
        raise ClientError(500, "model_error", f"the model failed: {error}", self.route)


@dataclass
class Reply:
    """The served version: model, tokenizer, decoding limits."""

    version: str
    model: object
    tokenizer: object
    device: object
    threads: int
    generation: GenerationSpec
    max_new_tokens: int
    """The version's own limit (its generation config): the cap and the default."""

    def pending(
        self,
        source: str,
        context: str,
        max_new_tokens: int | None,
        *,
        timeout_s: float,
        route: str = CHAMPION,
    ) -> Pending:
        """A request ready for the engine (call on the event loop: its stream lives there).

        Raises:
            ClientError: 422 for an empty source or max_new_tokens above the cap, 413 for a
                prompt longer than generation.max_prompt_tokens.
        """
        if is_empty_text(source):
            raise ClientError(
                422,
                "empty_text",
                f"source is empty ({describe_empty(source)}); "
                "send the customer's message to reply to",
            )
        wanted = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if wanted > self.max_new_tokens:
            raise ClientError(
                422,
                "too_many_tokens",
                f"max_new_tokens {wanted} is above this "
                f"version's limit of {self.max_new_tokens} (its generation "
                "config); ask for at most that many",
            )
        spec, tokenizer = self.generation, self.tokenizer
        full = render_prompt_text(tokenizer, spec.instruction, source, context)
        n_full = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        if n_full > spec.max_prompt_tokens:
            longest = "context" if len(context) > len(source) else "source"
            raise ClientError(
                413,
                "too_long",
                f"the prompt is {n_full} tokens, more than "
                f"generation.max_prompt_tokens {spec.max_prompt_tokens}; shorten "
                f"{longest} ({len(source)} characters of source, {len(context)} "
                "of context)",
            )
        ids = prompt_ids(tokenizer, spec, source, context)
        shared = shared_prefix_len(tokenizer, spec, context, ids)
        stream = ReplyStream(tokenizer, shared, timeout_s, route)
        return Pending(ids, shared, wanted, time.monotonic() + timeout_s, stream)


def load_generator(client, spec: PipelineSpec, version: str, scratch: Path) -> tuple[Reply, Path]:
    """Version `version` of `spec.name`, verified, on the spec's device (blocking), and the
    folder of its evidence (evaluation/, reference_profile/).

    Raises:
        ValueError: its weights or tokenizer do not match their hashes, or it was registered
            to sample (the server decodes greedily, as evaluation and the gate did).
    """
    loaded = load_version(client, spec.name, version, scratch)
    device = pick_device(spec.training.device)
    threads = use_threads(spec.training.num_threads, stage="serving")
    model = loaded.model.to(device).eval()
    config = model.generation_config
    if getattr(config, "do_sample", False):
        raise ValueError(
            f"{spec.name} v{version} was registered to sample (do_sample); "
            "the server decodes greedily, as the gate judged it"
        )
    cap = getattr(config, "max_new_tokens", None) or spec.generation.max_new_tokens
    reply = Reply(str(version), model, loaded.tokenizer, device, threads, spec.generation, cap)
    return reply, loaded.folder
