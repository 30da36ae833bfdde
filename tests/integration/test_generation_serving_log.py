"""The generation log of a real server (uvicorn on loopback, real SQLite, a tiny version trained
through the real flow): redacted rows with token counts, detector scores filled in later
without holding up replies, corrected replies by /feedback and `attnops labels`, and no
record lost in a burst that overflows the queue."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from attnops.flows import cli
from attnops.serving.generation_log_reader import GenerationLogReader
from tests.integration.conftest import embedded_home
from tests.integration.generation_fixtures import ARTICLE, trained_generator
from tests.integration.serving_fixtures import running_server
from tests.unit.generation.conftest import model_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_server", "model_cache")
NAME = "tiny-replies-logged"
SUPPORT_LINE = " Questions? Call +1 415 555 0188."


@pytest.fixture(scope="module")
def home(tmp_path_factory, prefect_server, model_cache):  # noqa: F811
    home = tmp_path_factory.mktemp("gen-log")
    with (
        embedded_home(home, ATTNOPS_INFERENCE_DB=f"sqlite:///{home / 'inference.db'}"),
        trained_generator(home, NAME) as spec_path,
    ):
        yield home, spec_path


@pytest.fixture(scope="module")
def server(home):
    _, spec_path = home
    path = spec_path(attention_sample_share=0.5)
    with running_server(path) as url:
        yield url, path


def log() -> GenerationLogReader:
    from attnops.settings import Settings

    return GenerationLogReader(Settings.from_env().inference_db)


def rows_of(ids: list[str]):
    window = log().window()
    return window[window["request_id"].isin(ids)].set_index("request_id").loc[ids]


def wait_for(condition, timeout_s: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} not met in {timeout_s} s"
        time.sleep(0.1)
    return result


async def _send(url: str, bodies: list[dict], concurrency: int = 8) -> list[httpx.Response]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(body):
            async with gate:
                return await http.post("/generate", json=body)

        return await asyncio.gather(*(one(b) for b in bodies))


def test_each_reply_is_logged_redacted_with_its_counts_and_scored_later(server):
    url, _ = server
    bodies = [
        {
            "source": f"I am ann{i}@example.com, where is the refund for order {1000 + i}?",
            "context": ARTICLE + SUPPORT_LINE,
            "max_new_tokens": 8,
        }
        for i in range(20)
    ]
    responses = asyncio.run(_send(url, bodies))
    assert [r.status_code for r in responses] == [200] * 20
    answers = [r.json() for r in responses]
    ids = [a["request_id"] for a in answers]
    wait_for(lambda: len(rows_of_known(ids)) == 20, what="20 logged rows")
    wait_for(lambda: rows_of(ids)["hallucination_score"].notna().all(), what="scores")
    rows = rows_of(ids)
    assert rows["source"].str.contains("<EMAIL_ADDRESS>").all()
    assert not rows["source"].str.contains("example.com").any() and rows["has_pii"].all()
    assert rows["context"].str.contains("<PHONE_NUMBER>").all()
    assert rows["prompt_tokens"].tolist() == [a["prompt_tokens"] for a in answers]
    assert rows["output_tokens"].tolist() == [a["output_tokens"] for a in answers]
    assert rows["output"].tolist() == [a["output"] for a in answers]  # no PII to redact
    assert (rows["ttft_ms"] > 0).all() and (rows["latency_ms"] >= rows["ttft_ms"]).all()
    assert set(rows["route"]) == {"champion"} and set(rows["version"]) == {"1"}
    assert (rows["status"] == 200).all() and (rows["output_pii_leaks"] == "").all()
    assert rows["hallucination_score"].between(0, 1).all()
    assert set(rows["hallucination_flag"]) <= {True, False}
    sampled = rows["lookback_ratio"].notna().sum()
    assert 0 < sampled < 20, sampled  # attention_sample_share 0.5
    assert rows["lookback_ratio"].dropna().between(0, 1).all()
    ready = httpx.get(f"{url}/ready").json()
    assert ready["champion"] == "1" and ready["canary"] is None
    assert ready["detector"] == {"1": True}
    metrics = httpx.get(f"{url}/metrics").text
    scored = re.search(
        r'^attnops_generation_scored_outputs_total\{version="1"\} (\S+)$', metrics, re.M
    )
    assert scored and float(scored.group(1)) >= 20
    for name in ("hallucination_flags", "pii_leaks", "scoring_backlog"):
        assert f"# TYPE attnops_generation_{name}" in metrics, name


def rows_of_known(ids: list[str]):
    window = log().window()
    return window[window["request_id"].isin(ids)]


def test_replies_do_not_wait_for_the_scoring_backlog(server):
    """With the detector dozens of outputs behind, a new request is answered at once."""
    url, _ = server
    bodies = [
        {"source": f"Can I return the shoes from order {i}?", "context": ARTICLE} for i in range(48)
    ]
    assert all(r.status_code == 200 for r in asyncio.run(_send(url, bodies, concurrency=16)))
    backlog = wait_for(
        lambda: httpx.get(f"{url}/ready").json()["scoring_backlog"], what="a backlog"
    )
    started = time.perf_counter()
    quick = httpx.post(
        f"{url}/generate", json={"source": "Hi", "context": ARTICLE, "max_new_tokens": 4}
    )
    quick_s = time.perf_counter() - started
    after = httpx.get(f"{url}/ready").json()["scoring_backlog"]
    assert quick.status_code == 200
    assert after > 0, f"the backlog ({backlog}) cleared before the reply came: {quick_s:.2f} s"
    print(f"reply in {quick_s * 1000:.0f} ms with {backlog} -> {after} outputs waiting for scores")


def test_feedback_records_a_corrected_reply_and_refuses_bad_input_with_a_sentence(server):
    url, _ = server
    answer = httpx.post(f"{url}/generate", json={"source": "Refund?", "max_new_tokens": 4}).json()
    rid = answer["request_id"]
    # The row may still wait in the writer's queue: feedback is accepted all the same.
    good = {"request_id": rid, "reference": "Refunds take 14 days; mail ops@example.com."}
    assert httpx.post(f"{url}/feedback", json=good).json() == {"recorded": 1}
    wait_for(lambda: len(rows_of_known([rid])) == 1, what="the row")
    assert rows_of([rid])["reference"].iloc[0] == "Refunds take 14 days; mail <EMAIL_ADDRESS>."
    cases = [
        ({"request_id": rid}, "reference: Field required"),
        ({"request_id": rid, "reference": " \u200b "}, "reference is empty"),
        ({"request_id": "0" * 32, "reference": "x"}, f"unknown request id {'0' * 32}"),
        ({"request_id": "x" * 65, "reference": "x"}, "request_id: String should have at most"),
        ({"labels": {rid: "x"}}, "request_id: Field required"),
    ]
    for body, words in cases:
        response = httpx.post(f"{url}/feedback", json=body)
        assert response.status_code == 422, (body, response.text)
        assert words in response.json()["detail"], response.text


def test_attnops_labels_records_a_references_file_all_or_nothing(server, tmp_path, capsys):
    url, spec = server
    ids = [
        httpx.post(f"{url}/generate", json={"source": f"Order {i}?", "max_new_tokens": 2}).json()[
            "request_id"
        ]
        for i in range(2)
    ]
    wait_for(lambda: len(rows_of_known(ids)) == 2, what="the rows")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"request_id,reference\n{ids[0]},Fine.\nnot-an-id,Also fine.\n")
    assert cli.main(["labels", "--spec", spec, "--file", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "line 3: request_id not-an-id" in err
    assert rows_of(ids)["reference"].isna().all()
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            f'{{"request_id": "{rid}", "reference": "Reply {k}."}}\n' for k, rid in enumerate(ids)
        )
    )
    assert cli.main(["labels", "--spec", spec, "--file", str(good)]) == 0
    assert "2 reference replies recorded" in capsys.readouterr().out
    assert rows_of(ids)["reference"].tolist() == ["Reply 0.", "Reply 1."]


def test_a_burst_past_the_queue_loses_no_record(home):
    """Answered, refused (503) and abandoned (499) requests all reach the log."""
    _, spec_path = home
    path = spec_path(generation_serving={"max_batch_rows": 2, "max_queue": 4})
    before = len(log().window())

    async def burst(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            async with http.stream(
                "POST", "/generate/stream", json={"source": "Tell me all.", "context": ARTICLE}
            ) as left:
                async for line in left.aiter_lines():
                    if line.startswith("data: "):
                        break  # the client goes away after the first chunk
            bodies = [{"source": f"Refund for {i}?", "max_new_tokens": 16} for i in range(40)]
            return await asyncio.gather(*(http.post("/generate", json=b) for b in bodies))

    with running_server(path) as url:
        responses = asyncio.run(burst(url))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    window = log().window()
    new = window.iloc[before:]
    answered = {r.json()["request_id"] for r in responses if r.status_code == 200}
    assert answered <= set(new["request_id"])
    counts = new["status"].value_counts().to_dict()
    assert counts == {200: len(answered), 503: statuses.count(503), 499: 1}, counts
