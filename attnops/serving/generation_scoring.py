"""Hallucination scores of served outputs, computed off the request path by one worker thread.

Each answered request is logged first (`generation_log_store`); once its row is committed,
its raw texts and prompt ids come here. The worker scores them with the detector the
version was registered with (`evaluation/hallucination_detector.json`: the gate's and the
evaluation's weights and threshold): the output is teacher-forced through the version's
model after its prompt (`teacher_forcing.teacher_forced_batch`, the detector's own fitting
definition) for its token log-probabilities and lookback ratios, the text view compares it
with the message and the article (`detector.detector_features`), and one UPDATE per row
writes `hallucination_score`, `hallucination_flag` and, for the sampled share of requests,
`lookback_ratio` (the mean over layers and heads) together: a row is scored or not, never
half. The worker runs one torch thread at a lower OS priority than the decode threads and
may lag behind traffic; it never drops a job while the process lives (`backlog` says how
far behind it is). `close` finishes what is queued within its timeout; rows it did not
reach stay NULL, which readers see as "not scored".

Its model is a twin of the served one that shares the weights (no second copy in memory)
but computes attention eagerly: the decode thread keeps SDPA, and switching one shared
module between the two while both run would race.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from attnops.models.generation.detector import (
    DETECTOR_JSON,
    HallucinationDetector,
    detector_features,
)
from attnops.models.generation.teacher_forcing import teacher_forced_batch
from attnops.serving.generation_log_store import GenerationRecord

logger = logging.getLogger(__name__)
LOWER_PRIORITY = 10
"""Niceness added to the worker thread: the decode threads get the CPU first."""
RETRY_S = 1.0


@dataclass(frozen=True)
class ScoringModel:
    """What scoring one version's outputs needs; `detector` None: the version has none."""

    version: str
    model: object
    tokenizer: object
    device: object
    detector: HallucinationDetector | None

    @classmethod
    def for_version(
        cls, version: str, model, tokenizer, device, evidence: Path, *, name: str
    ) -> ScoringModel:
        """The eager twin of `model` and the detector stored in `evidence/evaluation/`.

        A version without a readable detector is served with unscored outputs; the warning
        says so once, at load.
        """
        path = evidence / "evaluation" / DETECTOR_JSON
        detector = None
        try:
            detector = HallucinationDetector.from_json(path.read_text())
        except (OSError, ValueError, KeyError) as exc:
            logger.warning(
                "%s v%s has no usable hallucination detector (%s: %s); its outputs are "
                "logged unscored (hallucination_score NULL); retrain it to get one",
                name,
                version,
                path.name,
                exc,
            )
        return cls(version, eager_twin(model), tokenizer, device, detector)


def eager_twin(model):
    """A copy of `model` sharing its parameters (no second copy of the weights), with eager
    attention (attention weights returned) whatever the original computes."""
    twin = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    twin.set_attn_implementation("eager")
    return twin.eval()


def score_outputs(scoring: ScoringModel, records: Sequence[GenerationRecord]) -> list[dict]:
    """The score columns of each record (`request_id` and the three columns).

    Raises:
        ValueError: the version has no detector.
    """
    if scoring.detector is None:
        raise ValueError(f"v{scoring.version} has no hallucination detector")
    outputs = [r.output for r in records]
    signals = teacher_forced_batch(
        scoring.model,
        scoring.tokenizer,
        [list(r.prompt_ids) for r in records],
        outputs,
        scoring.device,
    )
    features = detector_features(
        [r.source for r in records], [r.context for r in records], outputs, signals
    )
    scores = scoring.detector.score(features)
    return [
        {
            "request_id": r.request_id,
            "hallucination_score": float(score),
            "hallucination_flag": bool(score >= scoring.detector.threshold),
            "lookback_ratio": float(s.lookback.mean()) if r.sample_lookback else None,
        }
        for r, s, score in zip(records, signals, scores, strict=True)
    ]


class GenerationScorer:
    """The worker thread and its queue of answered records waiting for a score.

    Args:
        store: writes a batch of score updates in one transaction (`GenerationLog.record_scores`).
        batch_size: outputs teacher-forced together.
        on_scored: called with (version, flagged) per scored output (metrics).
    """

    def __init__(
        self,
        store: Callable[[list[dict]], None],
        *,
        batch_size: int = 8,
        on_scored: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.store, self.batch_size, self.on_scored = store, batch_size, on_scored
        self._models: dict[str, ScoringModel] = {}
        self._served: set[str] = set()
        self._queue: deque[GenerationRecord] = deque()
        self._wake = threading.Event()
        self._deadline: float | None = None  # set by close: finish by then
        self._thread = threading.Thread(target=self._run, name="generation-scoring", daemon=True)
        self._scoring = 0  # outputs of the batch being scored (off the queue, not stored yet)
        self.scored = 0
        self.unscorable = 0
        """Outputs of versions without a detector: left unscored."""

    @property
    def backlog(self) -> int:
        """Outputs waiting for a score, those of the batch being scored included."""
        return len(self._queue) + self._scoring

    def serve(self, models: Sequence[ScoringModel]) -> None:
        """The versions served now; a version no longer served is dropped once its queued
        outputs are scored."""
        for scoring in models:
            self._models.setdefault(scoring.version, scoring)
        self._served = {m.version for m in models}

    def has_detector(self, version: str) -> bool:
        scoring = self._models.get(version)
        return scoring is not None and scoring.detector is not None

    def submit(self, records: Sequence[GenerationRecord]) -> None:
        """Queue answered records whose rows are stored; returns at once."""
        self._queue.extend(records)
        self._wake.set()

    def start(self) -> GenerationScorer:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Score what is queued, for at most `timeout_s`; the rest stays NULL."""
        if not self._thread.is_alive():
            return
        self._deadline = time.monotonic() + timeout_s
        self._wake.set()
        self._thread.join(timeout_s + 30)  # a batch in progress finishes (never half-written)
        if self._queue:
            logger.warning(
                "generation scoring: %d outputs left unscored at shutdown after %.0f s "
                "(hallucination_score NULL): the scorer was behind the traffic",
                len(self._queue),
                timeout_s,
            )

    def _run(self) -> None:
        torch.set_num_threads(1)  # this thread's count: the decode threads keep theirs
        with contextlib.suppress(AttributeError, OSError):  # not Linux: same priority
            tid = threading.get_native_id()  # Linux: a thread's own niceness
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + LOWER_PRIORITY))
        while True:
            if self._deadline is not None and (
                not self._queue or time.monotonic() > self._deadline
            ):
                return
            if not self._queue:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._scoring = min(self.batch_size, len(self._queue))  # before the queue shrinks
            batch = [self._queue.popleft() for _ in range(self._scoring)]
            try:
                self._score(batch)
            except Exception:  # a bad batch must not stop the worker: its rows stay NULL
                logger.exception("generation scoring: a batch failed; its rows stay unscored")
            finally:
                self._scoring = 0
            self._retire()

    def _score(self, batch: list[GenerationRecord]) -> None:
        by_version: dict[str, list[GenerationRecord]] = {}
        for record in batch:
            by_version.setdefault(record.version, []).append(record)
        updates, flags = [], []
        for version, records in by_version.items():
            scoring = self._models.get(version)
            if scoring is None or scoring.detector is None:
                self.unscorable += len(records)
                continue
            with torch.inference_mode():
                scored = score_outputs(scoring, records)
            updates += scored
            flags += [(version, u["hallucination_flag"]) for u in scored]
        if not updates:
            return
        while True:  # the database may be locked for a while: keep the scores, retry
            try:
                self.store(updates)
                break
            except Exception as exc:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    raise
                logger.warning("generation scoring: storing scores failed (%s); retrying", exc)
                time.sleep(RETRY_S)
        self.scored += len(updates)
        if self.on_scored is not None:
            for version, flagged in flags:
                self.on_scored(version, flagged)

    def _retire(self) -> None:
        waiting = {r.version for r in list(self._queue)}
        for version in list(self._models):
            if version not in self._served and version not in waiting:
                del self._models[version]
