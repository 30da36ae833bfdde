"""The generation log on real SQLite files: redacted rows, leaks, articles stored once, nothing
lost in a burst, and reference replies that arrive later (endpoint or file, all or nothing)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from attnops.serving.generation_log_reader import COLUMNS, GenerationLogReader
from attnops.serving.generation_log_store import GenerationLog, GenerationRecord, context_sha256

ARTICLE = "Refunds reach the original payment method within 14 days. Call 0800 555 0100 for help."
FAST = 0.05


def record(i: int, **fields) -> GenerationRecord:
    values = {
        "request_id": f"gen-{i:05d}",
        "ts": 1_700_000_000.0 + i,
        "model_name": "ticket-replies",
        "version": "1",
        "route": "champion",
        "source": f"Where is the refund for order {i}?",
        "context": ARTICLE,
        "output": f"Your refund for order {i} arrives within 14 days.",
        "prompt_tokens": 40 + i,
        "output_tokens": 11,
        "ttft_ms": 12.5,
        "itl_ms": 3.0,
        "latency_ms": 45.0 + i,
        "prompt_ids": [1, 2, 3],
    }
    return GenerationRecord(**(values | fields))


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'logs' / 'inference.db'}"


def test_rows_are_redacted_with_leaks_counted_and_each_article_stored_once(url):
    """The customer's own e-mail echoed back is not a leak; another address is."""
    leaks: list[tuple[str, list[str]]] = []
    own = record(
        0,
        source="Refund to jane.doe@example.com please",
        output="We will write to jane.doe@example.com today.",
    )
    foreign = record(1, output="Write to bob.smith@example.org or call +1 415 555 0123.")
    plain = record(2, context="", output="", output_tokens=0, itl_ms=None, status=504)
    with GenerationLog(
        url, flush_interval_s=FAST, on_leak=lambda v, e: leaks.append((v, e))
    ) as log:
        for r in (own, foreign, plain):
            log.submit(r)
    window = log.window()
    assert list(window.columns) == COLUMNS
    assert window["request_id"].tolist() == ["gen-00000", "gen-00001", "gen-00002"]
    first, second, third = (window.iloc[i] for i in range(3))
    assert first["source"] == "Refund to <EMAIL_ADDRESS> please" and first["has_pii"]
    assert first["pii_entities"] == "EMAIL_ADDRESS" and first["output_pii_leaks"] == ""
    assert "<EMAIL_ADDRESS>" in first["output"] and "example.com" not in first["output"]
    assert second["output_pii_leaks"] == "EMAIL_ADDRESS,PHONE_NUMBER"
    assert leaks == [("1", ["EMAIL_ADDRESS", "PHONE_NUMBER"])]
    assert "<PHONE_NUMBER>" in second["context"] and "0800" not in second["context"]
    assert third["context"] == "" and third["status"] == 504 and pd_isnull(third["itl_ms"])
    assert first["prompt_tokens"] == 40 and first["output_tokens"] == 11
    assert pd_isnull(first["hallucination_score"]) and pd_isnull(first["lookback_ratio"])
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    contexts = db.execute("select sha256, text from generation_context").fetchall()
    assert len(contexts) == 2  # the article (once, for two requests) and the empty one
    assert all(sha == context_sha256(text) for sha, text in contexts)


def pd_isnull(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_a_burst_is_written_whole_and_scoring_hears_of_answered_rows_once_stored(url):
    """2,000 records from 4 threads: every one stored after close; the hand-off to the scorer
    sees only answered (status 200) records, each after its row is in the database."""
    handed: list[str] = []
    missing_when_handed: list[str] = []

    def on_written(records):
        stored = reader.request_versions(r.request_id for r in records)
        missing_when_handed.extend(r.request_id for r in records if r.request_id not in stored)
        handed.extend(r.request_id for r in records)

    reader = GenerationLogReader(url)
    log = GenerationLog(url, flush_interval_s=FAST, max_batch=200, on_written=on_written)
    log.start()

    def send(offset: int) -> None:
        for i in range(offset, offset + 500):
            log.submit(record(i, status=200 if i % 10 else 503))

    threads = [threading.Thread(target=send, args=(k * 500,)) for k in range(4)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submit_s = time.perf_counter() - started
    log.close()
    assert (log.submitted, log.written, log.pending) == (2000, 2000, 0)
    assert len(log.window()) == 2000
    assert sorted(handed) == sorted(f"gen-{i:05d}" for i in range(2000) if i % 10)
    assert not missing_when_handed
    assert submit_s < 1.0  # submitting never waits for redaction or the database


def test_known_request_ids_include_records_still_queued(url):
    log = GenerationLog(url, flush_interval_s=30, redact=False).start()
    log.submit(record(7))
    assert log.known_request_ids(["gen-00007", "nope"]) == {"gen-00007"}
    log.close()
    assert log.known_request_ids(["gen-00007"]) == {"gen-00007"}


def test_references_join_redacted_and_replace_earlier_ones(url):
    with GenerationLog(url, flush_interval_s=FAST) as log:
        log.submit(record(0))
        log.submit(record(1))
    reader = GenerationLogReader(url)
    assert reader.record_references({"gen-00000": "First try."}) == 1
    assert reader.record_references({"gen-00000": "Mail ann@example.com, refund in 14 days."})
    window = reader.window()
    assert window["reference"].tolist() == ["Mail <EMAIL_ADDRESS>, refund in 14 days.", None]


def test_references_load_from_csv_with_a_multiline_reply_and_from_jsonl(url, tmp_path):
    with GenerationLog(url, flush_interval_s=FAST, redact=False) as log:
        for i in range(3):
            log.submit(record(i))
    csv_file = tmp_path / "refs.csv"
    csv_file.write_text(
        'request_id,reference\ngen-00000,"Line one,\nline two."\ngen-00001,Refund in 14 days.\n'
    )
    jsonl = tmp_path / "refs.jsonl"
    jsonl.write_text('{"request_id": "gen-00002", "reference": "Ok."}\n\n')
    reader = GenerationLogReader(url, redact=False)
    assert reader.load_references_file(csv_file) == 2
    assert reader.load_references_file(jsonl) == 1
    assert reader.window()["reference"].tolist() == [
        "Line one,\nline two.",
        "Refund in 14 days.",
        "Ok.",
    ]


BAD_FILES = [
    ("refs.csv", "request_id,reply\ngen-00000,x\n", "has no column 'reference'"),
    ("refs.csv", "request_id,reference\ngen-00000,ok\ngen-00001,\n", "line 3: reference is empty"),
    (
        "refs.csv",
        "request_id,reference\ngen-00000,ok\ngen-00000,again\n",
        "already given on line 2",
    ),
    ("refs.csv", "request_id,reference\ngen-00000,ok\nghost,x\n", "line 3: request_id ghost is"),
    ("refs.jsonl", '{"request_id": "gen-00000", "reference": "ok"}\n{"request_id": 3', "line 2"),
    ("refs.jsonl", '{"request_id": "gen-00000", "reference": 5}\n', "reference is a int"),
    ("refs.jsonl", '{"request_id": "gen-00000"}\n', "line 1: reference is missing"),
    ("refs.jsonl", "", "no rows"),
    ("refs.txt", "gen-00000,ok\n", "expected a .csv or .jsonl file"),
]


@pytest.mark.parametrize(("name", "text", "words"), BAD_FILES)
def test_a_bad_references_file_names_file_line_and_field_and_records_nothing(
    url, tmp_path, name, text, words
):
    with GenerationLog(url, flush_interval_s=FAST, redact=False) as log:
        log.submit(record(0))
        log.submit(record(1))
    path = tmp_path / name
    path.write_text(text)
    reader = GenerationLogReader(url, redact=False)
    with pytest.raises(ValueError) as raised:
        reader.load_references_file(path)
    message = str(raised.value)
    assert str(path) in message and words in message, message
    assert "\n" not in message
    assert reader.window()["reference"].isna().all()
