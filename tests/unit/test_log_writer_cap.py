"""The inference log's writer within its CPU share: it lags behind a burst, never drops a record."""

from __future__ import annotations

import sqlite3
import time
from functools import partial

import numpy as np

from attnops.serving.log_store import InferenceLog
from tests.unit.test_log_store import make_record, wait_until

ENTROPY = np.full((2, 3), 0.5, dtype=np.float32)


def costly_entropy(cpu_ms: float) -> np.ndarray:
    """A deferred score that takes `cpu_ms` of the calling thread's CPU, like the real pass."""
    until = time.thread_time() + cpu_ms / 1000
    while time.thread_time() < until:
        pass
    return ENTROPY


def stored(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select request_id, attention_entropy from inference_log").fetchall()


def test_a_capped_writer_stays_within_its_share_lags_and_writes_every_record(tmp_path):
    """120 records x 5 ms of deferred work is 0.6 s of CPU: at a fifth of a core the writer
    needs 3 s or more, holds back rather than exceed its share, and loses nothing."""
    db = tmp_path / "inference.db"
    seen = []
    log = InferenceLog(
        f"sqlite:///{db}",
        flush_interval_s=0.05,
        redact=False,
        max_cpu_share=0.2,
        on_entropy=lambda version, entropy: seen.append(version),
    ).start()
    time.sleep(0.2)  # past the writer's start
    cpu_before, started = time.process_time(), time.monotonic()
    for i in range(120):
        log.submit(make_record(i, attention_entropy_later=partial(costly_entropy, 5.0)))
    time.sleep(1.0)
    assert log.pending > 0, "the writer should still be behind the burst"
    wait_until(lambda: log.pending == 0, timeout_s=60)
    # The writer is the only busy thread of this process (this one sleeps and polls).
    cpu_share = (time.process_time() - cpu_before) / (time.monotonic() - started)
    log.close()
    assert cpu_share <= 0.2 * 1.25
    assert log.paused_s > 1.0
    rows = stored(db)
    assert sorted(r[0] for r in rows) == [f"req-{i:05d}" for i in range(120)]
    assert all(np.frombuffer(r[1], dtype=np.float32).tolist() == [0.5] * 6 for r in rows)
    assert seen == ["1"] * 120  # the metric saw every computed entropy once


def test_close_drains_at_full_speed(tmp_path):
    """At 2% of a core the backlog would take 10 s; a clean stop does not wait for the cap."""
    db = tmp_path / "inference.db"
    log = InferenceLog(f"sqlite:///{db}", flush_interval_s=0.05, redact=False, max_cpu_share=0.02)
    log.start()
    for i in range(40):
        log.submit(make_record(i, attention_entropy_later=partial(costly_entropy, 5.0)))
    started = time.monotonic()
    log.close()
    assert time.monotonic() - started < 5
    assert len(stored(db)) == 40 and log.pending == 0


def test_a_failing_deferred_score_stores_the_record_without_it(tmp_path, caplog):
    db = tmp_path / "inference.db"

    def broken() -> np.ndarray:
        raise RuntimeError("no attention today")

    with InferenceLog(f"sqlite:///{db}", flush_interval_s=0.05, redact=False) as log:
        log.submit(make_record(0, attention_entropy_later=broken))
        log.submit(make_record(1, attention_entropy_later=partial(costly_entropy, 0.1)))
    rows = dict(stored(db))
    assert rows["req-00000"] is None and rows["req-00001"] is not None
    assert "attention entropy of req-00000 failed" in caplog.text
