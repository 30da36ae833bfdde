"""Requests the server refuses, over real HTTP: empty texts and bad labels get a 422 that
names the index, id or class, and nothing of them reaches the inference log."""

from __future__ import annotations

import os
import sqlite3
import time

import httpx
import pytest

from attnops.demo.tickets import INTENTS
from attnops.flows.cli import main
from attnops.flows.train import train
from attnops.models import aliases
from tests.integration.serving_fixtures import client, running_server, serving_spec

pytestmark = pytest.mark.usefixtures("prefect_server")
NAME = "tiny-tickets"
EMPTY = {
    "empty_string": ("", "empty string"),
    "whitespace": (" \t\n\u00a0 ", "whitespace only"),
    "zero_width": ("\u200b\u200c\u200d\u2060\ufeff", "zero-width characters only"),
    "zero_width_and_spaces": (" \u200b \ufeff ", "zero-width characters only"),
    "control": ("\x00\x07\x1b\x7f", "control or invisible characters only"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_dir, prefect_server):
    """One tiny champion behind a real server for the module; yields (url, inference db, spec)."""
    home = tmp_path_factory.mktemp("bad-requests")
    db = home / "inference.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNOPS_HOME", str(home / ".attnops"))
        mp.setenv("ATTNOPS_INFERENCE_DB", f"sqlite:///{db}")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec_path = serving_spec(demo_dir, home, log_flush_interval_s=0.05)
        version = train(spec_path)
        client().set_registered_model_alias(NAME, aliases.CHAMPION, version.version)
        with running_server(spec_path) as url:
            yield url, db, spec_path


def _logged(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from inference_log").fetchone()[0]


def _labels(db) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select request_id, label from feedback").fetchall())


def _settled(url: str, db) -> int:
    """Rows in the log once the writer has nothing pending."""
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/ready").json()["log_pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return _logged(db)


def _predict(url: str, text: str = "my parcel never arrived") -> str:
    answer = httpx.post(f"{url}/predict", json={"text": text}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


@pytest.mark.parametrize("case", EMPTY)
def test_empty_text_gets_422_and_is_not_logged(server, case):
    url, db, _ = server
    text, why = EMPTY[case]
    before = _settled(url, db)
    answer = httpx.post(f"{url}/predict", json={"text": text}, timeout=60)
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        f"text is empty ({why}; whitespace, zero-width and control characters do not count); "
        "send the text to classify"
    )
    assert _settled(url, db) == before


@pytest.mark.parametrize("case", ["whitespace", "zero_width", "control"])
def test_empty_text_in_a_batch_names_its_index_and_nothing_is_answered(server, case):
    url, db, _ = server
    text, why = EMPTY[case]
    before = _settled(url, db)
    texts = ["where is my order", "refund please", text, "  ", "thanks"]
    answer = httpx.post(f"{url}/predict/batch", json={"texts": texts}, timeout=60)
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        f"texts.2 is empty ({why}); 2 of 5 texts are empty (indexes 2, 3); remove them or "
        "send their text, nothing was answered"
    )
    assert _settled(url, db) == before
    metrics = httpx.get(f"{url}/metrics").text
    assert 'attnops_request_errors_total{reason="empty_text",route="none",status="422"}' in metrics


def test_text_with_one_visible_character_is_answered(server):
    """The boundary: invisible characters around a real character do not make it empty."""
    url, _, _ = server
    _predict(url, "\u200b?\u200b")


def test_feedback_for_unknown_request_ids_is_refused_whole(server):
    url, db, _ = server
    known = _predict(url)
    body = {"labels": {known: INTENTS[0], "no-such-id": INTENTS[0], "another": INTENTS[1]}}
    answer = httpx.post(f"{url}/feedback", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "2 unknown request id(s): no-such-id, another (use the request_id of a /predict "
        "answer); nothing was recorded, fix and resend"
    )
    assert known not in _labels(db)


def test_feedback_with_a_class_the_model_lacks_names_it_and_the_classes(server):
    url, db, _ = server
    known = _predict(url)
    answer = httpx.post(f"{url}/feedback", json={"labels": {known: "refnud_request"}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith(
        f"label(s) the model does not have: 'refnud_request' (for {known}); its classes: "
    )
    assert "refund_request" in detail and "out_of_scope" in detail
    assert known not in _labels(db)


def test_feedback_right_after_the_answer_is_recorded(server):
    """Ids still waiting in the writer's queue count as known, as does the out-of-scope label."""
    url, db, _ = server
    first, second = _predict(url), _predict(url)
    labels = {first: "refund_request", second: "out_of_scope"}
    answer = httpx.post(f"{url}/feedback", json={"labels": labels})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"recorded": 2}
    assert {rid: _labels(db)[rid] for rid in labels} == labels


def test_labels_command_checks_classes_against_the_registered_version(server, tmp_path, capsys):
    """`attnops labels` reads the answering version's classes from its attnops.labels tag."""
    url, db, spec_path = server
    known = _predict(url)
    _settled(url, db)  # the file names a request already in the log
    bad, good = tmp_path / "bad.csv", tmp_path / "good.csv"
    bad.write_text(f"request_id,label\n{known},refund_request\n{known}x,refund_request\n")
    good.write_text(f"request_id,label\n{known},refund_request\n")
    saved = dict(os.environ)
    try:
        assert main(["labels", "--spec", spec_path, "--file", str(bad)]) == 1
        err = capsys.readouterr().err
        assert f"{bad}: 1 unknown request id(s): {known}x" in err
        assert known not in _labels(db)
        bad.write_text(f"request_id,label\n{known},refnud_request\n")
        assert main(["labels", "--spec", spec_path, "--file", str(bad)]) == 1
        err = capsys.readouterr().err
        assert f"label(s) the model does not have: 'refnud_request' (for {known})" in err
        assert "refund_request" in err.split("its classes: ")[1]
        assert known not in _labels(db)
        assert main(["labels", "--spec", spec_path, "--file", str(good)]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert _labels(db)[known] == "refund_request"
