"""The inference log on real SQLite files: nothing lost, nothing raw, labels joined later."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from attnops.serving.log_store import InferenceLog, LogRecord

REPO = Path(__file__).resolve().parents[2]
FAST = 0.05  # flush_interval_s for the tests


def make_record(i: int, **fields) -> LogRecord:
    """A plausible record; `i` varies every field so a mix-up shows."""
    values = {
        "request_id": f"req-{i:05d}",
        "ts": 1_700_000_000.0 + i,
        "model_name": "support-intent",
        "version": "1",
        "route": "champion",
        "text": f"where is my order number {i}?",
        "prediction": ("track_order", "refund")[i % 2],
        "confidence": 0.5 + (i % 50) / 100,
        "latency_ms": 3.25 + i,
        "n_tokens": 10 + i,
        "truncated": i % 3 == 0,
        "text_chars": 27 + i,
        "unk_rate": i / 1000,
        "tokens_per_word": 1.25,
        "non_letter_share": 0.125,
        "unsupported": i % 5 == 0,
        "embedding": np.arange(8, dtype=np.float32) + i,
    }
    values.update(fields)
    return LogRecord(**values)


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "logs" / "inference.db"  # parent folder does not exist yet


def test_records_come_back_intact_newest_limited_and_filtered(db):
    """Every field survives the round trip; filters and `limit` keep the newest, oldest first."""
    entropy = np.array([[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]], dtype=np.float32)
    records = [make_record(i) for i in range(10)]
    records[7] = make_record(7, attention_entropy=entropy, route="canary", status=503)
    records[8] = make_record(8, version="2", route="canary")
    with InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, redact=False) as log:
        for record in reversed(records):  # submission order must not matter
            log.submit(record)
    frame = log.window(version="1")
    assert frame["request_id"].tolist() == [f"req-{i:05d}" for i in range(10) if i != 8]
    version_1 = [r for r in records if r.version == "1"]
    for (_, row), record in zip(frame.iterrows(), version_1, strict=True):
        for name in ("ts", "model_name", "version", "route", "text", "prediction", "confidence",
                     "latency_ms", "n_tokens", "truncated", "text_chars", "unk_rate",
                     "tokens_per_word", "non_letter_share", "unsupported", "status"):  # fmt: skip
            assert row[name] == getattr(record, name), name
        np.testing.assert_array_equal(row["embedding"], record.embedding)
        assert row["embedding"].dtype == np.float32
        assert row["label"] is None
    entropy_names = [c for c in frame.columns if re.fullmatch(r"l\d+h\d+", c)]
    assert entropy_names == ["l0h0", "l0h1", "l0h2", "l1h0", "l1h1", "l1h2"]
    sampled = frame.set_index("request_id").loc["req-00007"]
    assert sampled["attention_shape"] == "2x3"
    np.testing.assert_array_equal(sampled[["l0h0", "l0h2", "l1h2"]].astype(float), [0.5, 2.5, 5.5])
    assert frame.drop(index=frame.index[frame["request_id"] == "req-00007"])["l0h0"].isna().all()

    assert log.window(limit=3)["request_id"].tolist() == ["req-00007", "req-00008", "req-00009"]
    assert log.window(route="canary")["request_id"].tolist() == ["req-00007", "req-00008"]
    assert log.window(version="1", since_ts=records[6].ts)["request_id"].tolist() == [
        "req-00006", "req-00007", "req-00009",
    ]  # fmt: skip
    assert log.counts() == {"requests": 10, "errors": 1, "labelled": 0}
    assert log.counts(version="2") == {"requests": 1, "errors": 0, "labelled": 0}


def test_empty_window_has_the_columns_and_no_rows(db):
    """Monitors can read a log with no traffic yet without special-casing it."""
    log = InferenceLog(f"sqlite:///{db}", redact=False)
    frame = log.window(version="1")
    assert len(frame) == 0
    assert {"request_id", "ts", "text", "prediction", "confidence", "label", "embedding"} <= set(
        frame.columns
    )
    assert log.counts() == {"requests": 0, "errors": 0, "labelled": 0}


def test_pii_is_redacted_before_it_reaches_the_database(db):
    """Emails and phone numbers become placeholders; the raw values are in no database file."""
    email, phone = "ann.lee@example.com", "+1 (415) 555-0123"
    text = f"I'm {email}, call {phone} about order 12"
    found = []
    log = InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, on_pii=found.append).start()
    log.submit(make_record(0, text=text))
    log.submit(make_record(1))
    # The first batch waits for presidio to load (seconds, many more on a busy machine).
    wait_until(lambda: log.written == 2, timeout_s=60)
    row, clean = log.window().itertuples()
    assert row.text == "I'm <EMAIL_ADDRESS>, call <PHONE_NUMBER> about order 12"
    assert (row.has_pii, row.pii_entities) == (True, "EMAIL_ADDRESS,PHONE_NUMBER")
    assert (clean.text, clean.has_pii, clean.pii_entities) == (make_record(1).text, False, "")
    assert sorted(found) == ["EMAIL_ADDRESS", "PHONE_NUMBER"]  # the server's PII metric

    def stored_bytes() -> bytes:
        files = [db, db.with_name(db.name + "-wal")]
        return b"".join(path.read_bytes() for path in files if path.exists())

    assert make_record(1).text.encode() in stored_bytes()  # the check can see stored text
    for secret in (email, phone, "555-0123", "example.com"):
        assert secret.encode() not in stored_bytes()
    log.close()
    for secret in (email, phone, "555-0123", "example.com"):
        assert secret.encode() not in stored_bytes()


def test_submit_never_waits_for_a_locked_database(db):
    """With another process holding the write lock, 1000 submits take < 0.1 s; none are lost."""
    log = InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, max_batch=100, redact=False)
    log.start()
    blocker = sqlite3.connect(db, isolation_level=None)
    assert blocker.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        time.sleep(2 * FAST)  # let the writer reach the lock
        records = [make_record(i) for i in range(1000)]
        started = time.perf_counter()
        for record in records:
            log.submit(record)
        elapsed = time.perf_counter() - started
        time.sleep(0.3)
        assert log.written == 0
        assert log.pending == 1000
        assert log.window(limit=5).empty  # WAL: reading works while the writer is blocked
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert elapsed < 0.1
    log.close()
    assert (log.written, log.pending) == (1000, 0)
    assert log.counts()["requests"] == 1000


def test_failed_write_keeps_the_batch_and_retries(db, caplog):
    """A write that fails (table gone) is retried each interval and lands once it can."""
    url = f"sqlite:///{db}"
    log = InferenceLog(url, flush_interval_s=FAST, redact=False).start()
    with sqlite3.connect(db) as other:
        other.execute("DROP TABLE inference_log")
    with caplog.at_level(logging.WARNING, logger="attnops.serving.log_store"):
        log.submit(make_record(0))
        wait_until(lambda: log.write_errors >= 2)
    assert "cannot write 1 records" in caplog.text
    assert "no such table" in caplog.text
    assert log.pending == 1
    InferenceLog(url)  # opening the log again recreates the schema
    wait_until(lambda: log.written == 1)
    log.submit(make_record(1))
    log.close()
    assert log.window()["request_id"].tolist() == ["req-00000", "req-00001"]


def test_close_writes_everything_submitted_without_waiting_the_interval(db):
    """Shutdown flushes at once, even with a long interval; later submits are refused."""
    log = InferenceLog(f"sqlite:///{db}", flush_interval_s=30, redact=False).start()
    for i in range(50):
        log.submit(make_record(i))
    started = time.perf_counter()
    log.close()
    assert time.perf_counter() - started < 2
    assert log.counts()["requests"] == 50
    with pytest.raises(RuntimeError, match="closed"):
        log.submit(make_record(50))


def test_max_batch_wakes_the_writer_early(db):
    """A burst of `max_batch` records is written without waiting for the interval."""
    log = InferenceLog(f"sqlite:///{db}", flush_interval_s=30, max_batch=20, redact=False)
    log.start()
    time.sleep(0.1)  # past the writer's first (empty) flush
    for i in range(20):
        log.submit(make_record(i))
    wait_until(lambda: log.written == 20, timeout_s=3)
    log.close()


def test_a_record_the_database_would_refuse_is_refused_at_submit(db):
    """NaN is stored as NULL in SQLite; in a NOT NULL column its batch would retry forever."""
    with pytest.raises(ValueError, match="confidence must be a finite number"):
        make_record(0, confidence=float("nan"), status=500)
    with InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, redact=False) as log:
        log.submit(make_record(0, prediction="", confidence=0.0, status=500))  # a failed request
        log.submit(make_record(1))
    assert log.window()["status"].tolist() == [500, 200]


def test_a_resubmitted_request_id_is_stored_once_and_does_not_stall_the_writer(db):
    """A duplicate request id is skipped; the records around it are written."""
    with InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, redact=False) as log:
        log.submit(make_record(0))
        wait_until(lambda: log.written == 1)
        log.submit(make_record(0, prediction="refund"))
        log.submit(make_record(1))
    assert log.window()["prediction"].tolist() == ["track_order", "refund"]
    assert log.pending == 0


CHILD = """
import os, sys, time
import numpy as np
from attnops.serving.log_store import InferenceLog, LogRecord

log = InferenceLog(sys.argv[1], flush_interval_s={interval}, redact=False).start()
with open(sys.argv[2], "w") as stamps:
    started = time.time()
    i = 0
    while time.time() - started < 1.5:
        log.submit(LogRecord(
            request_id=f"req-{{i}}", ts=time.time(), model_name="m", version="1",
            route="champion", text="hello", prediction="a", confidence=0.9, latency_ms=1.0,
            n_tokens=3, truncated=False, text_chars=5, unk_rate=0.0, tokens_per_word=1.0,
            non_letter_share=0.0, unsupported=False, embedding=np.zeros(4, np.float32),
        ))
        stamps.write(f"req-{{i}} {{time.time()}}\\n")
        stamps.flush()
        i += 1
        time.sleep(0.005)
    stamps.write(f"exit {{time.time()}}\\n")
    stamps.flush()
os._exit(1)
"""


def test_records_survive_an_abrupt_exit(db, tmp_path):
    """A process killed without close() loses at most the last flush interval of records."""
    stamps = tmp_path / "stamps.txt"
    script = textwrap.dedent(CHILD.format(interval=FAST))
    child = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{db}", str(stamps)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 1, child.stderr
    *submits, (_, exit_ts) = [line.split() for line in stamps.read_text().splitlines()]
    must_have = {rid for rid, ts in submits if float(ts) < float(exit_ts) - FAST - 0.3}
    assert len(must_have) > 50  # the child ran long enough for the check to mean something
    stored = set(InferenceLog(f"sqlite:///{db}", redact=False).window(limit=100_000)["request_id"])
    assert must_have <= stored
    assert stored <= {rid for rid, _ in submits}


def test_labels_join_whenever_they_arrive(db):
    """Feedback recorded before or after its record is written joins it when reading."""
    with InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, redact=False) as log:
        assert log.record_labels({"req-00000": "refund"}) == 1  # before the record exists
        for i in range(4):
            log.submit(make_record(i))
        wait_until(lambda: log.written == 4)
        labelled_at = time.time()
        log.record_labels({"req-00002": "track_order", "req-00000": "cancel_order"})  # replaces
    frame = log.window()
    assert frame["label"].tolist() == ["cancel_order", None, "track_order", None]
    assert log.window(labelled_only=True)["request_id"].tolist() == ["req-00000", "req-00002"]
    assert log.counts() == {"requests": 4, "errors": 0, "labelled": 2}
    assert log.counts(since_ts=make_record(1).ts)["labelled"] == 1
    recent = log.labelled_since(labelled_at)
    assert recent[["request_id", "label"]].values.tolist() == [
        ["req-00000", "cancel_order"], ["req-00002", "track_order"],
    ]  # fmt: skip
    assert recent["text"].tolist() == [make_record(0).text, make_record(2).text]
    assert log.labelled_since(time.time() + 1).empty


def test_labels_load_from_csv_and_jsonl(db, tmp_path):
    """Both file formats record labels; ids that look numeric stay ids."""
    log = InferenceLog(f"sqlite:///{db}", redact=False)
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label,note\nreq-00000,refund,x\n007,track_order,y\n")
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps({"request_id": "req-00001", "label": "cancel_order"}) + "\n")
    with InferenceLog(f"sqlite:///{db}", flush_interval_s=FAST, redact=False) as writer:
        for rid in ("req-00000", "req-00001", "007"):
            writer.submit(make_record(0, request_id=rid))
    # A file names requests already answered: their records must be in the log.
    assert log.load_labels_file(csv) == 2
    assert log.load_labels_file(jsonl) == 1
    assert dict(log.window()[["request_id", "label"]].values.tolist()) == {
        "req-00000": "refund", "req-00001": "cancel_order", "007": "track_order",
    }  # fmt: skip


def test_labels_file_with_wrong_columns_names_the_file_and_its_columns(db, tmp_path):
    """The error says which file, what is missing and which columns it does have."""
    path = tmp_path / "feedback.csv"
    path.write_text("id,intent\nreq-1,refund\n")
    log = InferenceLog(f"sqlite:///{db}", redact=False)
    with pytest.raises(ValueError) as error:
        log.load_labels_file(path)
    message = str(error.value)
    assert str(path) in message
    assert "'request_id', 'label'" in message
    assert "columns: id, intent" in message


def test_in_memory_sqlite_is_refused_with_a_file_suggestion():
    """Each thread would see its own empty in-memory database: say so, and what to use."""
    with pytest.raises(ValueError, match=r"sqlite:///\.attnops/inference\.db"):
        InferenceLog("sqlite://")
