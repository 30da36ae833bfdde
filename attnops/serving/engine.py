"""The served versions: each one's model, tokenizer and reference, answering batches of texts.

A batch goes through `score_records`, the same function that built the version's
reference profile, so every logged record is comparable with that profile: the same
tokenizer statistics, the same projected embedding, attention entropy on a sampled share.
The entropy does not decide the answer and must not cost a second pass on the request path:
on a CPU it is read off the served pass itself (`attention_capture`: the sampled inputs' query
and key rows; from a bf16 pass on BANKING77 within 0.005 of the fp32 eager pass's, a head's
mean shifted by at most 0.06 of its spread across inputs), and where that is not possible (a
GPU's pass, a layout the capture does not know) the sampled records carry a deferred eager
pass that the inference log's writer runs, off the request path and within its CPU cap
(`log_writer`).

On a CPU the model runs in several single-threaded workers rather than one multi-threaded
one: a forward pass over a few short texts splits poorly across threads, and when another
thread (the event loop, the log writer, a neighbour) takes one of its cores, the others
wait for it at every operator.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from attnops.models import registry
from attnops.models.aliases import CANARY, CHAMPION, resolve
from attnops.models.attention import attention_entropy
from attnops.models.attention_capture import AttentionCapture
from attnops.models.batching import Encoded, encode
from attnops.models.modeling import pick_device
from attnops.models.ood import load_detector
from attnops.models.precision import dtype_label, inference_bf16
from attnops.models.record_columns import TEXT_FEATURES
from attnops.models.records import score_records
from attnops.models.threads import choose_threads, pinned_threads
from attnops.models.versions import REFERENCE_FOLDER, LoadedVersion, load_version
from attnops.monitors.hallucination import UnsupportedAssertionDetector
from attnops.serving.log_schema import LogRecord
from attnops.settings import Settings
from attnops.spec import PipelineSpec

# A typical ticket: the attention capture is checked against the eager pass on it at load.
_PROBE = "Hi, my order 1234 arrived broken; can I get a refund or a replacement?"


@dataclass(frozen=True)
class Answer:
    """The model's answer to one text and what the inference log records about it."""

    label: str
    confidence: float
    unsupported: bool
    features: dict[str, float]
    """The `TEXT_FEATURES` of the input (n_tokens before truncation, truncated, ...)."""
    embedding: np.ndarray
    attention_entropy: np.ndarray | None
    """(layers, heads) mean attention entropy, for the sampled share of inputs only."""
    attention_entropy_later: Callable[[], np.ndarray] | None = None
    """Instead, where it was not read off the served pass: computes it when called (on the
    log writer's thread, not the model's)."""


class ModelSlot:
    """A loaded, verified version ready to serve (see `attnops.models.versions.load_version`).

    Args:
        loaded: the version, its tokenizer already checked against its hash tag.
        device: where the model runs.
        attention_share: share of inputs whose attention entropy is computed.
        unsupported_distance_quantile: the spec's monitoring setting, as in the monitors.
        forward_batch_size: inputs per forward pass (`serving.forward_batch_size`).
        bf16: bf16 autocast on a CPU with native bf16 (`serving.bf16`; always on CUDA).
        workers: threads that may run batches at the same time.
    """

    def __init__(
        self,
        loaded: LoadedVersion,
        *,
        device: torch.device,
        attention_share: float,
        unsupported_distance_quantile: float,
        forward_batch_size: int,
        bf16: bool = False,
        workers: int = 1,
    ) -> None:
        summary, self.projection = loaded.profile_summary()
        self.name, self.version = loaded.name, loaded.version
        self.tokenizer_sha256 = loaded.tokenizer_sha256
        self.label_names = loaded.label_names
        self.max_length = int(summary["max_length"])
        self.model = loaded.model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        # Each worker runs its own copy of the modules and tokenizer, sharing the weights:
        # forward hooks (`predict`'s, the attention capture's) and a fast tokenizer's
        # truncation setting live on the object, and two threads using one would see each
        # other's. The deferred entropy pass gets a copy with eager attention (the served
        # ones keep SDPA) for the same reason.
        probe = encode(self.tokenizer, [_PROBE], self.max_length).input_ids[0]
        self._views: queue.SimpleQueue = queue.SimpleQueue()
        self.bf16 = bf16
        for _ in range(workers):
            model = self._shared_copy()
            capture = (
                AttentionCapture.attach(model, probe, self.tokenizer.pad_token_id)
                if device.type == "cpu"  # a GPU's pass is not measured against the reference
                else None
            )
            self._views.put((model, copy.deepcopy(self.tokenizer), capture))
        self._eager = self._shared_copy()
        self._eager.set_attn_implementation("eager")
        self._calls_lock = threading.Lock()
        self.device = device
        self.attention_share = attention_share
        self.forward_batch_size = forward_batch_size
        # The version's own out-of-scope score, as its evaluation measured it.
        self.out_of_scope = load_detector(loaded.folder / REFERENCE_FOLDER)
        self.unsupported = UnsupportedAssertionDetector.from_summary(
            loaded.reference_records(), summary, unsupported_distance_quantile
        )
        self._calls = 0

    def _shared_copy(self):
        """A copy of the model's modules that shares its parameters and buffers."""
        weights = chain(self.model.parameters(), self.model.buffers())
        return copy.deepcopy(self.model, memo={id(t): t for t in weights})

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text including special tokens, before truncation."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]

    def answer(self, texts: list[str]) -> list[Answer]:
        """Run one batch; results in the order of `texts` (any thread, several at once)."""
        with self._calls_lock:
            self._calls += 1
            seed = self._calls  # a different sample each batch
        model, tokenizer, capture = self._views.get()
        try:
            # The same seeded draw `score_records` makes for the reference profile's share.
            sampled = np.random.default_rng(seed).random(len(texts)) < self.attention_share
            chosen = np.flatnonzero(sampled).tolist()
            sampled_ids = (
                encode(tokenizer, [texts[i] for i in chosen], self.max_length).input_ids
                if chosen
                else []
            )
            if capture is not None:
                capture.expect(sampled_ids)
            records = score_records(
                model,
                tokenizer,
                texts,
                label_names=self.label_names,
                max_length=self.max_length,
                projection=self.projection,
                device=self.device,
                batch_size=self.forward_batch_size,
                out_of_scope=self.out_of_scope,
                bf16_on_cpu=self.bf16,
            )
            read_off = capture.entropies() if capture is not None else {}
        finally:
            self._views.put((model, tokenizer, capture))
        unsupported = self.unsupported.flags(records)
        entropy, entropy_later = dict.fromkeys(range(len(texts))), dict.fromkeys(range(len(texts)))
        for k, (i, ids) in enumerate(zip(chosen, sampled_ids, strict=True)):
            if k in read_off:
                entropy[i] = read_off[k]
            else:
                entropy_later[i] = partial(self.attention_entropy, ids)
        return [
            Answer(
                label=row.prediction,
                confidence=float(row.confidence),
                unsupported=bool(unsupported[i]),
                features={k: getattr(row, k) for k in TEXT_FEATURES},
                embedding=row.embedding,
                attention_entropy=entropy[i],
                attention_entropy_later=entropy_later[i],
            )
            for i, row in enumerate(records.itertuples(index=False))
        ]

    def attention_entropy(self, input_ids: list[int]) -> np.ndarray:
        """(layers, heads) mean attention entropy of one tokenized input, on one torch thread
        of the calling thread (the log writer's), beside the served passes."""
        one = Encoded([input_ids], None, [len(input_ids)])
        with pinned_threads(1):
            values = attention_entropy(
                self._eager, one, pad_id=self.tokenizer.pad_token_id, device=self.device
            )
        return values[0].astype(np.float32)

    def log_record(
        self, request_id: str, route: str, text: str, latency_ms: float, a: Answer | None
    ) -> LogRecord:
        """The log record of one request; `a` None for a request the model failed (status 500)."""
        if a is None:
            answered = {
                "prediction": "",
                # No answer, no confidence: 0, not NaN (SQLite stores NaN as NULL, which the
                # NOT NULL column refuses); every reader leaves status != 200 out.
                "confidence": 0.0,
                "n_tokens": 0,
                "truncated": False,
                "text_chars": len(text),
                "unk_rate": 0.0,
                "tokens_per_word": 0.0,
                "non_letter_share": 0.0,
                "unsupported": False,
                "embedding": np.zeros(0, dtype=np.float32),
                "status": 500,
            }
        else:
            f = a.features
            answered = {
                "prediction": a.label,
                "confidence": a.confidence,
                "n_tokens": int(f["n_tokens"]),
                "truncated": bool(f["truncated"]),
                "text_chars": int(f["text_chars"]),
                "unk_rate": float(f["unk_rate"]),
                "tokens_per_word": float(f["tokens_per_word"]),
                "non_letter_share": float(f["non_letter_share"]),
                "unsupported": a.unsupported,
                "embedding": a.embedding,
                "attention_entropy": a.attention_entropy,
                "attention_entropy_later": a.attention_entropy_later,
            }
        return LogRecord(
            request_id=request_id,
            ts=time.time(),
            model_name=self.name,
            version=self.version,
            route=route,
            text=text,
            latency_ms=latency_ms,
            **answered,
        )


class ServedVersions:
    """The slots being served, swapped whole on reload."""

    def __init__(self, spec: PipelineSpec, settings: Settings, scratch: Path) -> None:
        self.spec, self.settings, self.scratch = spec, settings, scratch
        self.slots: dict[str, ModelSlot] = {}
        self.device = pick_device(spec.training.device)
        self._blas_limits = None
        self._blas_lock = threading.Lock()
        choice = choose_threads(spec.training.num_threads)
        precision = dtype_label(self.device, inference_bf16(self.device, spec.serving.bf16))
        if self.device.type == "cpu":
            self.workers, self._threads_per_worker = choice.threads, 1
            print(
                f"serving: {self.workers} model worker(s) of 1 torch thread, {precision} "
                f"({choice.describe()})"
            )
        else:
            self.workers, self._threads_per_worker = 1, choice.threads
            print(f"serving: 1 model worker on {self.device}, {precision} ({choice.describe()})")
        self._worker = threading.local()

    def load(self) -> dict[str, str | None]:
        """Read the `champion` and `canary` aliases and load what changed (blocking).

        Raises:
            LookupError: there is no champion to serve.
            ValueError: a version's tokenizer does not match its tag (nothing is swapped).
        """
        client = registry.client_for(self.settings)
        name = self.spec.name
        fresh: dict[str, ModelSlot] = {}
        for route in (CHAMPION, CANARY):
            mv = resolve(client, name, route)
            if mv is None:
                if route == CHAMPION:
                    raise LookupError(
                        f"model '{name}' has no champion; promote a version first "
                        "(attnops release, or the demo)"
                    )
                continue
            current = self.slots.get(route)
            if current is not None and current.version == str(mv.version):
                fresh[route] = current
                continue
            same = next((s for s in self.slots.values() if s.version == str(mv.version)), None)
            fresh[route] = same or self._load_slot(client, str(mv.version))
        self.slots = fresh  # one assignment: a request sees the old set or the new one
        return {route: (s.version if s else None) for route, s in self.routes().items()}

    def close(self) -> None:
        """Give numpy's BLAS its thread count back (the server is stopping)."""
        if self._blas_limits is not None:
            self._blas_limits.restore_original_limits()

    def _one_blas_thread(self) -> None:
        """numpy's BLAS starts a thread per core for the scores' small products (e.g. the
        Mahalanobis out-of-scope score) and spins them between calls: 5 ms of CPU per input
        for nothing, on the cores the model workers need. One BLAS thread, process-wide,
        from the first batch until `close` (a test may serve in-process)."""
        with self._blas_lock:
            if self._blas_limits is None:
                self._blas_limits = threadpool_limits(limits=1, user_api="blas")

    def routes(self) -> dict[str, ModelSlot | None]:
        return {CHAMPION: self.slots.get(CHAMPION), CANARY: self.slots.get(CANARY)}

    def run(self, route: str, texts: list[str]) -> list[tuple[ModelSlot, Answer]]:
        """On a model worker thread: the route's slot (the champion if the canary just left)."""
        if not getattr(self._worker, "threads_set", False):  # a thread keeps its own count
            torch.set_num_threads(self._threads_per_worker)
            self._worker.threads_set = True
            self._one_blas_thread()
        slots = self.slots
        slot = slots.get(route) or slots[CHAMPION]
        return [(slot, answer) for answer in slot.answer(texts)]

    def _load_slot(self, client, version: str) -> ModelSlot:
        loaded = load_version(client, self.spec.name, version, self.scratch)
        return ModelSlot(
            loaded,
            device=self.device,
            attention_share=self.spec.serving.attention_sample_share,
            unsupported_distance_quantile=self.spec.monitoring.unsupported_distance_quantile,
            forward_batch_size=self.spec.serving.forward_batch_size,
            bf16=self.spec.serving.bf16,
            workers=self.workers,
        )
