"""The inference service against a real registry, over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from attnops.flows.train import train
from attnops.models import aliases
from attnops.models.precision import native_bf16
from attnops.models.versions import load_version
from attnops.serving.engine import ModelSlot
from attnops.settings import Settings
from attnops.spec import load_spec
from tests.integration.serving_fixtures import (
    ADMIN_TOKEN,
    client,
    reload,
    running_server,
    serving_spec,
)

pytestmark = pytest.mark.usefixtures("prefect_server")
NAME = "tiny-tickets"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir, prefect_server):
    """Two tiny versions of one model, v1 the champion; the env stays set for the module."""
    home = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNOPS_HOME", str(home / ".attnops"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("ATTNOPS_ADMIN_TOKEN", ADMIN_TOKEN)
        spec_path = serving_spec(demo_dir, home)
        train(spec_path)
        train(spec_path)
        client().set_registered_model_alias(NAME, aliases.CHAMPION, "1")
        yield home


@pytest.fixture
def spec_for(trained, demo_dir, tmp_path, monkeypatch):
    """A spec with its own port and a fresh inference log for this test."""
    monkeypatch.setenv("ATTNOPS_INFERENCE_DB", f"sqlite:///{tmp_path / 'inference.db'}")
    aliases.remove_canary(client(), NAME)
    client().set_registered_model_alias(NAME, aliases.CHAMPION, "1")

    def make(**serving) -> str:
        return serving_spec(demo_dir, tmp_path, **serving)

    return make


async def _predict_many(
    url: str, bodies: list[dict], concurrency: int = 16
) -> list[httpx.Response]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def one(body):
            async with gate:
                return await http.post("/predict", json=body)

        return await asyncio.gather(*(one(b) for b in bodies))


def test_canary_gets_its_share_of_keys_and_each_key_sticks_to_one_version(spec_for):
    client().set_registered_model_alias(NAME, aliases.CANARY, "2")
    with running_server(spec_for(canary_share=0.3)) as url:
        keys = [f"customer-{i}" for i in range(300)]
        bodies = [{"text": "my parcel never arrived", "key": k} for k in keys * 2]
        responses = asyncio.run(_predict_many(url, bodies))
    assert all(r.status_code == 200 for r in responses)
    seen: dict[str, set] = {}
    for body, response in zip(bodies, responses, strict=True):
        answer = response.json()
        assert answer["version"] == ("2" if answer["route"] == "canary" else "1")
        seen.setdefault(body["key"], set()).add(answer["route"])
    assert all(len(routes) == 1 for routes in seen.values()), "a key changed version"
    share = sum("canary" in routes for routes in seen.values()) / len(seen)
    # 300 keys at p=0.3: the standard deviation is 0.026; 3 of them either side.
    assert 0.3 - 0.08 < share < 0.3 + 0.08, share


def test_a_version_with_a_tampered_tokenizer_is_never_served(spec_for):
    c = client()
    real = c.get_model_version(NAME, "2").tags["attnops.tokenizer_sha256"]
    c.set_model_version_tag(NAME, "2", "attnops.tokenizer_sha256", "0" * 64)
    try:
        with running_server(spec_for()) as url:
            c.set_registered_model_alias(NAME, aliases.CANARY, "2")
            refused = reload(url)
            assert refused.status_code == 409
            assert "tokenizer hash" in refused.json()["detail"]
            assert httpx.get(f"{url}/ready").json()["canary"] is None
            answer = httpx.post(f"{url}/predict", json={"text": "refund please", "key": "a"})
            assert answer.json()["version"] == "1"
    finally:
        c.set_model_version_tag(NAME, "2", "attnops.tokenizer_sha256", real)


def test_input_limits_get_clear_client_errors(spec_for):
    long_text = "where is my order " * 40  # ~160 tokens, model.max_length is 48
    with running_server(spec_for(max_request_bytes=2048, max_batch_inputs=4)) as url:
        too_big = httpx.post(f"{url}/predict", json={"text": "x" * 3000})
        assert too_big.status_code == 413
        assert "limit is 2048 (serving.max_request_bytes)" in too_big.json()["detail"]
        too_many = httpx.post(f"{url}/predict/batch", json={"texts": ["hi"] * 5})
        assert too_many.status_code == 422 and "limit is 4" in too_many.json()["detail"]
        empty = httpx.post(f"{url}/predict", json={"text": ""})
        assert empty.status_code == 422 and "text" in empty.json()["detail"]
        not_json = httpx.post(f"{url}/predict", content=b"{nope")
        assert not_json.status_code == 422
        cut = httpx.post(f"{url}/predict", json={"text": long_text}).json()
        assert cut["truncated"] is True and cut["n_tokens"] > 48
        batch = httpx.post(f"{url}/predict/batch", json={"texts": ["refund", "late parcel"]})
        assert [r["label"] for r in batch.json()["results"]]
    with running_server(spec_for(over_length="reject")) as url:
        rejected = httpx.post(f"{url}/predict", json={"text": long_text})
        assert rejected.status_code == 422
        assert "tokens; the model takes 48" in rejected.json()["detail"]
        metrics = httpx.get(f"{url}/metrics").text
        expected = (
            'attnops_request_errors_total{reason="too_long",route="champion",status="422"} 1.0'
        )
        assert expected in metrics


def test_reload_after_a_promotion_drops_no_request(spec_for):
    with running_server(spec_for()) as url:
        assert reload(url, token="wrong").status_code == 401
        # Another model's release whose spec points at this port: refused, nothing reloaded.
        other = reload(url, model="tiny-sentiment")
        assert other.status_code == 409
        assert "serves model 'tiny-tickets', not 'tiny-sentiment'" in other.json()["detail"]
        results: list[httpx.Response] = []

        async def traffic_while_promoting():
            task = asyncio.create_task(
                asyncio.to_thread(
                    lambda: results.extend(
                        asyncio.run(
                            _predict_many(
                                url,
                                [{"text": f"refund for order {i}"} for i in range(400)],
                                concurrency=8,
                            )
                        )
                    )
                )
            )
            await asyncio.sleep(0.3)
            client().set_registered_model_alias(NAME, aliases.CHAMPION, "2")
            answer = await asyncio.to_thread(reload, url)
            await task
            return answer

        answer = asyncio.run(traffic_while_promoting())
    assert answer.status_code == 200 and answer.json()["champion"] == "2"
    assert [r.status_code for r in results] == [200] * 400
    versions = [r.json()["version"] for r in results]
    assert versions[0] == "1" and versions[-1] == "2", "the reload happened mid-traffic"


def test_every_answer_is_logged_redacted_and_survives_a_stop(spec_for, tmp_path):
    texts = [f"refund to jane.doe{i}@example.com or call +1 415 555 {i:04d}" for i in range(40)]
    with running_server(spec_for(attention_sample_share=0.5)) as url:
        responses = asyncio.run(_predict_many(url, [{"text": t} for t in texts]))
        ids = [r.json()["request_id"] for r in responses]
        feedback = httpx.post(f"{url}/feedback", json={"labels": {ids[0]: "refund_request"}})
        assert feedback.json() == {"recorded": 1}
        metrics = httpx.get(f"{url}/metrics").text
    # The server stopped: every answered request is in the log, none with its PII.
    db = sqlite3.connect(tmp_path / "inference.db")
    rows = db.execute(
        "select request_id, text, has_pii, route, version from inference_log"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all("@example.com" not in r[1] and "<EMAIL_ADDRESS>" in r[1] for r in rows)
    assert all(r[2] == 1 and r[3] == "champion" and r[4] == "1" for r in rows)
    sampled = db.execute("select count(*) from inference_log where attention_entropy is not null")
    assert 0 < sampled.fetchone()[0] < 40
    assert 'attnops_requests_total{route="champion",version="1"} 40.0' in metrics

    from attnops.serving.log_store import InferenceLog

    window = InferenceLog(Settings.from_env().inference_db).window(limit=100)
    assert len(window) == 40 and window["label"].notna().sum() == 1
    assert {"embedding", "unk_rate", "l0h0"} <= set(window.columns)


def test_two_model_workers_give_every_text_the_answer_it_gets_alone(spec_for, monkeypatch, capsys):
    """With two CPU threads the server runs two batches at once, one per worker thread, each
    with its own copy of the modules and tokenizer (the output-layer hook, the truncation
    setting): every repeat of a text gets the answer it gets alone, a long one included."""
    monkeypatch.setenv("ATTNOPS_NUM_THREADS", "2")
    texts = [f"order {i} arrived broken, I want my money back" if i % 2 else
             f"how do I change the email on account {i}?" for i in range(7)]  # fmt: skip
    texts.append("my parcel never came and " * 20)  # over max_length: truncated
    with running_server(spec_for(max_batch_size=8)) as url:
        alone = {t: httpx.post(f"{url}/predict", json={"text": t}).json() for t in texts}
        responses = asyncio.run(_predict_many(url, [{"text": t} for t in texts * 8], 32))
        metrics = httpx.get(f"{url}/metrics").text
    assert "serving: 2 model worker(s) of 1 torch thread" in capsys.readouterr().out
    model_cpu_s = re.search(r'attnops_thread_cpu_seconds_total\{thread="model"\} (\S+)', metrics)
    assert float(model_cpu_s.group(1)) > 0
    assert [r.status_code for r in responses] == [200] * 64
    for text, response in zip(texts * 8, responses, strict=True):
        got, expected = response.json(), alone[text]
        assert got["label"] == expected["label"]
        assert got["confidence"] == pytest.approx(expected["confidence"], abs=1e-4)
    db = sqlite3.connect(Settings.from_env().inference_db.removeprefix("sqlite:///"))
    flags = db.execute("select text, count(distinct unsupported) from inference_log group by text")
    assert all(n == 1 for _, n in flags.fetchall())


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_in_bf16_the_server_flags_out_of_scope_inputs_as_its_evaluation_did(
    trained, demo_dir, tmp_path
):
    """`serving.bf16` (the default) serves in bf16: the version's reference profile and
    out-of-scope threshold were made in bf16 too. Made in fp32, they once flagged every
    served answer of a small model as out of scope and alarmed the monitor."""
    loaded = load_version(client(), NAME, "1", tmp_path)
    spec = load_spec(serving_spec(demo_dir, tmp_path))
    slot = ModelSlot(
        loaded,
        device=torch.device("cpu"),
        attention_share=0.0,
        unsupported_distance_quantile=spec.monitoring.unsupported_distance_quantile,
        forward_batch_size=spec.serving.forward_batch_size,
        bf16=True,
    )
    test = pd.read_csv(demo_dir / "test.csv")
    in_scope = test["intent"] != "out_of_scope"
    served = np.mean([a.unsupported for a in slot.answer(test["text"][in_scope].tolist())])
    reference = loaded.reference_records()
    evaluated = slot.unsupported.flags(reference[in_scope.to_numpy()]).mean()
    assert abs(served - evaluated) <= 0.05, (served, evaluated)
