"""benchmarks/generate_load.py's baseline app over real HTTP: it streams one event per
generated token of the greedy reply `decode()` writes for the same chat prompt, so the
benchmark times the same work on both sides."""

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from transformers import AutoModelForCausalLM

from attnops.models.generation.data import prompt_ids
from attnops.models.generation.decode import decode
from attnops.spec import load_spec
from tests.unit.generation.conftest import model_cache, tiny_llama, tokenizer  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
BODY = {
    "source": "Where is my refund for order 1234?",
    "context": "Refunds: once a return reaches our warehouse the refund is paid to the original "
    "payment method within 14 days.",
    "max_new_tokens": 12,
}


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "generate_load", REPO / "benchmarks/generate_load.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    data = {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "validation", "test")}
    spec = {
        "name": "bench-replies",
        "task": "generation",
        "model": {"base": "smollm2-135m-instruct"},
        "data": {**data, "source_column": "ticket", "target_column": "reply"},
        "training": {"num_threads": 1},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_baseline_streams_each_token_of_the_greedy_reply(tmp_path, tiny_llama, tokenizer):  # noqa: F811
    bench = _benchmark()
    folder = tmp_path / "model"
    tiny_llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    spec_path = _spec(tmp_path)
    port, log = bench._free_port(), tmp_path / "baseline.log"
    command = [sys.executable, "-c", bench.BASELINE_APP, str(folder), str(spec_path), str(port)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ATTNOPS_NUM_THREADS": "1"}
    with log.open("wb") as out:
        server = subprocess.Popen([*command, "float32"], env=env, stdout=out, stderr=out)
    try:
        bench._wait_ready(port, server, log)
        url = f"http://127.0.0.1:{port}/generate/stream"
        with httpx.stream("POST", url, json=BODY, timeout=60) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        events = [json.loads(line.removeprefix("data: ")) for line in lines]

        async def timed():
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                return await bench._stream(client, BODY)

        reply, error = asyncio.run(timed())
    finally:
        server.terminate()
        server.wait(timeout=30)

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = prompt_ids(
        tokenizer, load_spec(str(spec_path)).generation, BODY["source"], BODY["context"]
    )
    (expected,) = decode(model, tokenizer, [ids], max_new_tokens=12, device="cpu", signals=False)
    *tokens, summary = events
    assert "".join(t["token"] for t in tokens) == expected.text
    assert summary["output_tokens"] == len(expected.token_ids) > 1
    assert len(tokens) >= len(expected.token_ids)  # one event per token: TTFT is the first
    assert error is None and reply["output_tokens"] == len(expected.token_ids)
    assert 0 < reply["ttft_s"] < reply["e2e_s"]
