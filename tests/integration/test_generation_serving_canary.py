"""Champion and canary of a generative model behind one real server (uvicorn on loopback, real
MLflow registry, real SQLite log): sticky routing by key, reload under load, a tampered
tokenizer refused, the route and version of every request in the log."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from attnops.models import aliases
from attnops.serving.generation_log_reader import GenerationLogReader
from attnops.settings import Settings
from tests.integration.conftest import embedded_home
from tests.integration.generation_fixtures import ARTICLE, register_again, trained_generator
from tests.integration.serving_fixtures import ADMIN_TOKEN, client, reload, running_server
from tests.unit.generation.conftest import model_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_server", "model_cache")
NAME = "tiny-replies-canary"


@pytest.fixture(scope="module")
def versions(tmp_path_factory, prefect_server, model_cache):  # noqa: F811
    """v1 trained through the flow, v2 the same artifacts registered again."""
    home = tmp_path_factory.mktemp("gen-canary")
    with (
        embedded_home(home, ATTNOPS_ADMIN_TOKEN=ADMIN_TOKEN),
        trained_generator(home, NAME) as spec_path,
    ):
        assert register_again(NAME, "1") == "2"
        yield spec_path


@pytest.fixture
def spec_for(versions, tmp_path, monkeypatch):
    """Champion v1, no canary, a fresh log for this test."""
    monkeypatch.setenv("ATTNOPS_INFERENCE_DB", f"sqlite:///{tmp_path / 'inference.db'}")
    aliases.remove_canary(client(), NAME)
    client().set_registered_model_alias(NAME, aliases.CHAMPION, "1")
    return versions


def window():
    return GenerationLogReader(Settings.from_env().inference_db).window()


async def _send(url: str, bodies: list[dict], concurrency: int = 16) -> list[httpx.Response]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(body):
            async with gate:
                return await http.post("/generate", json=body)

        return await asyncio.gather(*(one(b) for b in bodies))


def test_canary_gets_its_share_of_keys_and_each_key_sticks_to_one_version(spec_for):
    client().set_registered_model_alias(NAME, aliases.CANARY, "2")
    keys = [f"customer-{i}" for i in range(120)]
    bodies = [{"source": "Where is my refund?", "key": k, "max_new_tokens": 2} for k in keys * 2]
    with running_server(spec_for(canary_share=0.3)) as url:
        ready = httpx.get(f"{url}/ready").json()
        responses = asyncio.run(_send(url, bodies))
    assert ready["champion"] == "1" and ready["canary"] == "2"
    assert ready["detector"] == {"1": True, "2": True}
    assert all(r.status_code == 200 for r in responses)
    answers = [r.json() for r in responses]
    seen: dict[str, set] = {}
    for body, answer in zip(bodies, answers, strict=True):
        assert answer["version"] == ("2" if answer["route"] == "canary" else "1")
        seen.setdefault(body["key"], set()).add(answer["route"])
    assert all(len(routes) == 1 for routes in seen.values()), "a key changed version"
    share = sum("canary" in routes for routes in seen.values()) / len(seen)
    # 120 keys at p=0.3: the standard deviation is 0.042; 3 of them either side.
    assert 0.3 - 0.13 < share < 0.3 + 0.13, share
    logged = window().set_index("request_id")
    for answer in answers:
        row = logged.loc[answer["request_id"]]
        assert (row["route"], row["version"]) == (answer["route"], answer["version"])


def test_reload_under_load_answers_every_request_and_logs_each_on_its_version(spec_for):
    """Promote v2 while 8 clients keep sending: no request fails, none is missing from the
    log, early answers come from v1 and late ones from v2."""
    results: list[httpx.Response] = []
    bodies = [
        {"source": f"Is order {i} refundable?", "context": ARTICLE, "max_new_tokens": 4}
        for i in range(120)
    ]
    with running_server(spec_for()) as url:
        assert reload(url, token="wrong").status_code == 401
        traffic = threading.Thread(
            target=lambda: results.extend(asyncio.run(_send(url, bodies, concurrency=8)))
        )
        traffic.start()
        while len(window()) < 20:  # mid-traffic: answers are being logged
            time.sleep(0.05)
        client().set_registered_model_alias(NAME, aliases.CHAMPION, "2")
        answer = reload(url)
        traffic.join()
        ready = httpx.get(f"{url}/ready").json()
        # v1's engine stops once its last request is done: one decode thread is left.
        deadline = time.monotonic() + 30
        while sum(t.name == "decode" for t in threading.enumerate()) > 1:
            assert time.monotonic() < deadline, "the retired version's engine still runs"
            time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"champion": "2", "canary": None}
    assert ready["champion"] == "2"
    assert [r.status_code for r in results] == [200] * len(bodies)
    versions = [r.json()["version"] for r in results]
    assert versions[0] == "1" and versions[-1] == "2", "the reload happened mid-traffic"
    logged = window().set_index("request_id")
    assert len(logged) == len(bodies)
    for r in results:
        assert logged.loc[r.json()["request_id"], "version"] == r.json()["version"]


def test_a_version_with_a_tampered_tokenizer_is_refused_with_a_sentence(spec_for):
    c = client()
    real = c.get_model_version(NAME, "2").tags["attnops.tokenizer_sha256"]
    c.set_model_version_tag(NAME, "2", "attnops.tokenizer_sha256", "0" * 64)
    try:
        with running_server(spec_for()) as url:
            c.set_registered_model_alias(NAME, aliases.CANARY, "2")
            refused = reload(url)
            assert refused.status_code == 409
            assert "tokenizer hash" in refused.json()["detail"]
            assert "refusing to use this version" in refused.json()["detail"]
            assert httpx.get(f"{url}/ready").json()["canary"] is None
            body = {"source": "Refund?", "key": "a", "max_new_tokens": 2}
            assert httpx.post(f"{url}/generate", json=body).json()["version"] == "1"
            metrics = httpx.get(f"{url}/metrics").text
            assert 'attnops_reloads_total{outcome="refused"} 1.0' in metrics
    finally:
        c.set_model_version_tag(NAME, "2", "attnops.tokenizer_sha256", real)
