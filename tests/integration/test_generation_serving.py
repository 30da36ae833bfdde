"""The generation service over real HTTP (uvicorn on loopback) serving a tiny version trained
and registered through the real flow: answers equal greedy `decode()`, streaming, continuous
batching, prefix caching, limits and metrics."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
import torch

from attnops.models.generation.data import prompt_ids
from attnops.models.generation.decode import decode
from attnops.models.precision import decoding_weights, native_bf16
from attnops.models.versions import load_version
from attnops.spec import load_spec
from tests.integration.conftest import embedded_home
from tests.integration.generation_fixtures import ARTICLE, trained_generator
from tests.integration.serving_fixtures import client, running_server
from tests.unit.generation.conftest import model_cache  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_server", "model_cache")
NAME = "tiny-replies-served"
CAP = 160  # the version's max_new_tokens: long enough that a long reply outlasts a short one


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server, model_cache):  # noqa: F811
    """One tiny trained version, the champion; yields a function writing a spec for it."""
    home = tmp_path_factory.mktemp("gen-serving")
    with embedded_home(home), trained_generator(home, NAME, max_new_tokens=CAP) as spec_path:
        yield spec_path


@pytest.fixture(scope="module")
def server(served):
    with running_server(served()) as url:
        yield url


def _metric(text: str, name: str) -> float:
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in values)


def test_generate_answers_with_the_greedy_output_of_decode(served, server, tmp_path):
    """The reply equals `decode()` of the same prompt with the registered version's weights."""
    body = {"source": "Where is my refund for order 1234?", "context": ARTICLE}
    got = httpx.post(f"{server}/generate", json=body, timeout=60)
    assert got.status_code == 200, got.text
    answer = got.json()
    spec = load_spec(served())
    loaded = load_version(client(), NAME, answer["version"], tmp_path)
    ids = prompt_ids(loaded.tokenizer, spec.generation, body["source"], body["context"])
    (expected,) = decode(
        loaded.model.eval(),
        loaded.tokenizer,
        [ids],
        max_new_tokens=CAP,
        device="cpu",
        signals=False,
    )
    assert answer["output"] == expected.text
    assert answer["output_tokens"] == len(expected.token_ids)
    assert answer["prompt_tokens"] == len(ids) and answer["ttft_ms"] > 0


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_with_bf16_the_reply_is_decode_of_a_bf16_copy(served, tmp_path, capsys):
    """`generation.serving.bf16`: the server says it decodes in bf16 and answers what
    `decode()` writes with a bf16 copy of the registered weights."""
    body = {"source": "Where is my refund for order 1234?", "context": ARTICLE}
    path = served(generation_serving={"bf16": True})
    with running_server(path) as url:
        got = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert got.status_code == 200, got.text
    assert "decoding in bfloat16" in capsys.readouterr().out
    answer = got.json()
    loaded = load_version(client(), NAME, answer["version"], tmp_path)
    ids = prompt_ids(loaded.tokenizer, load_spec(path).generation, body["source"], ARTICLE)
    copy16 = decoding_weights(loaded.model.eval(), torch.device("cpu"), True)
    (expected,) = decode(
        copy16, loaded.tokenizer, [ids], max_new_tokens=CAP, device="cpu", signals=False
    )
    assert answer["output"] == expected.text


def test_stream_sends_tokens_whose_concatenation_is_the_reply(server):
    body = {"source": "Can I return shoes I bought 3 weeks ago?", "context": ARTICLE}
    whole = httpx.post(f"{server}/generate", json=body, timeout=60).json()
    chunks, summary = [], None
    with httpx.stream("POST", f"{server}/generate/stream", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "done":
                    summary = data
                else:
                    chunks.append(data["token"])
    assert len(chunks) > 1
    assert "".join(chunks) == whole["output"] == summary["output"]
    assert summary["output_tokens"] == whole["output_tokens"]


async def _race(url: str) -> tuple[list[str], list[float]]:
    """A long streamed reply, and a short request sent once the long one has started."""
    order: list[str] = []
    long_token_times: list[float] = []
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def long() -> None:
            body = {"source": "Tell me everything about refunds.", "context": ARTICLE}
            async with http.stream("POST", "/generate/stream", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        long_token_times.append(loop.time())
                        started.set()
            order.append("long")

        async def short() -> float:
            await started.wait()
            body = {"source": "Hi", "context": ARTICLE, "max_new_tokens": 2}
            response = await http.post("/generate", json=body)
            assert response.status_code == 200, response.text
            order.append("short")
            return loop.time()

        _, short_done = await asyncio.gather(long(), short())
    return order, [t for t in long_token_times if t > short_done]


def test_a_short_request_joins_the_running_batch_and_leaves_first(server):
    """Continuous batching: the short reply is not held back until the long one ends."""
    order, long_tokens_after_short = asyncio.run(_race(server))
    assert order == ["short", "long"]
    assert long_tokens_after_short  # the long reply kept streaming after the short one left


def test_a_second_request_with_the_same_article_hits_the_prefix_cache(server):
    before = httpx.get(f"{server}/metrics").text
    article = ARTICLE + " Gift cards never expire."  # an article no other test sent
    for source in ("Do gift cards expire?", "My gift card from 2019, is it still valid?"):
        body = {"source": source, "context": article, "max_new_tokens": 4}
        assert httpx.post(f"{server}/generate", json=body, timeout=60).status_code == 200
    after = httpx.get(f"{server}/metrics").text
    hits = 'attnops_generation_prefix_lookups_total{outcome="hit"}'
    misses = 'attnops_generation_prefix_lookups_total{outcome="miss"}'
    assert _metric(after, hits) - _metric(before, hits) == 1
    assert _metric(after, misses) - _metric(before, misses) == 1
    assert _metric(after, "attnops_generation_prefix_cache_hit_rate") > 0


def test_bad_inputs_get_a_sentence_naming_the_field(server):
    cases = [
        ({"source": "  \u200b", "context": ARTICLE}, 422, "source is empty"),
        ({"source": "hi", "max_new_tokens": CAP + 1}, 422, "max_new_tokens"),
        ({"source": "hi", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"context": ARTICLE}, 422, "source"),
        ({"source": "hi", "context": "refund policy " * 100}, 413, "shorten context"),
    ]
    for body, status, words in cases:
        response = httpx.post(f"{server}/generate", json=body, timeout=60)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["detail"], response.text
    streamed = httpx.post(f"{server}/generate/stream", json={"source": ""}, timeout=60)
    assert streamed.status_code == 422


def test_metrics_expose_the_generation_series(server):
    httpx.post(f"{server}/generate", json={"source": "hello", "max_new_tokens": 3}, timeout=60)
    text = httpx.get(f"{server}/metrics").text
    for name in (
        "attnops_generation_ttft_seconds_count",
        "attnops_generation_inter_token_seconds_count",
        "attnops_generation_prompt_tokens_count",
        "attnops_generation_output_tokens_count",
        "attnops_generation_queue_length",
        "attnops_generation_batch_occupancy",
        "attnops_generation_prefix_cache_hit_rate",
        "attnops_generation_kv_cache_bytes",
        "attnops_generation_cost_per_1k_requests_usd",
    ):
        assert re.search(rf"^{name}(\{{[^}}]*\}})? ", text, re.M), name
    assert _metric(text, "attnops_generation_kv_cache_bytes") > 0  # the cached prefixes
    assert _metric(text, "attnops_generation_cost_per_1k_requests_usd") > 0


def test_a_flood_beyond_the_kv_budget_gets_503_with_a_sentence_and_the_rest_answers(served):
    """One row fits the budget and one request may wait: the rest are refused, not lost."""
    # tiny Llama: 256 bytes per token
    path = served(generation_serving={"kv_budget_mb": 0.1, "max_queue": 1})

    async def flood(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            body = {"source": "Where is my refund?", "context": ARTICLE}
            return await asyncio.gather(*(http.post("/generate", json=body) for _ in range(6)))

    with running_server(path) as url:
        responses = asyncio.run(flood(url))
        assert httpx.get(f"{url}/health").status_code == 200
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2
    refused = next(r for r in responses if r.status_code == 503)
    assert "generation.serving.max_queue" in refused.json()["detail"]
