"""Classification under concurrent load without the server's stack: batching vs one at a time.

`serve_load.py` measures `attnops serve` over HTTP, with its log, monitors and registry; a
bare GPU box has none of those (`gpu_check.sh`). This measures the part that decides what
batching buys on a device, side by side in one run, with N closed-loop clients in one process:

  pipeline   the transformers text-classification pipeline, one text per call, called from
             a pool of N threads (as FastAPI runs a sync handler);
  ours       the server's micro-batcher (`serving.batching.MicroBatcher`) over the server's
             forward pass (`models.inference.predict`, length-sorted forward batches, bf16
             where `serving.bf16` serves it), with the spec's batching settings;
  bound      `predict` alone over pre-tokenised micro-batches of the same size, back to back.

The model is the packaged MiniLM with a new 77-class head (speed only). Ratios are printed:

    python benchmarks/classify_engine_load.py --seconds 10                 # this CPU
    python benchmarks/classify_engine_load.py --device cuda --forward-batch-size 32
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from transformers import pipeline

from attnops.models.batching import encode
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier, load_tokenizer
from attnops.models.precision import dtype_label, inference_bf16
from attnops.serving.batching import MicroBatcher
from attnops.spec import ModelSpec, ServingSpec

LABELS = tuple(f"intent_{i}" for i in range(77))
MAX_LENGTH = ModelSpec().max_length  # the server truncates at the spec's model.max_length


def _texts(n: int) -> list[str]:
    from attnops.demo.tickets import generate_tickets

    return generate_tickets(n, seed=7, out_of_scope_share=0.05)["text"].tolist()


def _pipeline_side(classify, texts, clients: int, seconds: float) -> dict:
    latencies, stop = [], time.perf_counter() + seconds
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            classify(texts[i % len(texts)], truncation=True, max_length=MAX_LENGTH)
            with lock:
                latencies.append((time.perf_counter() - sent) * 1000)
            i += clients

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return _summary(latencies, time.perf_counter() - started)


def _ours_side(model, tokenizer, texts, clients, seconds, serving: ServingSpec, device) -> dict:
    def run(_route: str, batch: list[str]) -> list[int]:
        encoded = encode(tokenizer, batch, MAX_LENGTH)
        return predict(
            model, encoded, pad_id=tokenizer.pad_token_id, device=device,
            batch_size=serving.forward_batch_size, bf16_on_cpu=serving.bf16,
        ).labels.tolist()  # fmt: skip

    async def load() -> dict:
        batcher = MicroBatcher(
            run, ("champion",), max_batch_size=serving.max_batch_size,
            max_wait_ms=serving.max_batch_wait_ms, workers=1,
        )  # fmt: skip
        batcher.start()
        latencies, stop = [], time.perf_counter() + seconds

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                await batcher.submit("champion", texts[i % len(texts)])
                latencies.append((time.perf_counter() - sent) * 1000)
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - started
        await batcher.stop()
        return _summary(latencies, wall)

    return asyncio.run(load())


def _bound_side(model, tokenizer, texts, seconds, serving: ServingSpec, device) -> dict:
    size = serving.max_batch_size
    starts = range(0, len(texts), size)
    chunks = [encode(tokenizer, texts[i : i + size], MAX_LENGTH) for i in starts]
    done, stop, i = 0, time.perf_counter() + seconds, 0
    started = time.perf_counter()
    while time.perf_counter() < stop:
        chunk = chunks[i % len(chunks)]
        predict(
            model, chunk, pad_id=tokenizer.pad_token_id, device=device,
            batch_size=serving.forward_batch_size, bf16_on_cpu=serving.bf16,
        )  # fmt: skip
        done, i = done + len(chunk), i + 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"req_s": done / (time.perf_counter() - started), "p50": None, "p99": None}


def _summary(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies)
    return {
        "req_s": len(ms) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="per side")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--forward-batch-size", type=int, help="serving.forward_batch_size (default: the spec's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    serving = ServingSpec()
    if args.forward_batch_size:
        serving = serving.model_copy(update={"forward_batch_size": args.forward_batch_size})
    spec = ModelSpec()
    tokenizer = load_tokenizer(spec)
    torch.manual_seed(0)
    model = build_classifier(spec, LABELS).to(device).eval()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
    texts = _texts(512)
    precision = dtype_label(device, inference_bf16(device, serving.bf16))
    print(
        f"MiniLM, 77 classes, on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"
        f" ({args.threads} torch threads); {args.clients} clients, {args.seconds:g} s per side; "
        f"ours: {precision}, micro-batches of {serving.max_batch_size} within "
        f"{serving.max_batch_wait_ms:g} ms, forward batches of {serving.forward_batch_size}; "
        "pipeline: fp32, one text per call"
    )
    warm = min(2.0, args.seconds / 4)
    _pipeline_side(classify, texts, args.clients, warm)
    _ours_side(model, tokenizer, texts, args.clients, warm, serving, device)
    rows = {
        "pipeline": _pipeline_side(classify, texts, args.clients, args.seconds),
        "ours": _ours_side(model, tokenizer, texts, args.clients, args.seconds, serving, device),
        "bound": _bound_side(model, tokenizer, texts, args.seconds, serving, device),
    }
    print(f"{'':10s}{'req/s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}")
    for name, row in rows.items():
        p50 = f"{row['p50']:9.1f}{row['p99']:9.1f}" if row["p50"] is not None else ""
        print(f"{name:10s}{row['req_s']:9.1f}{p50}")
    ours, base, bound = rows["ours"]["req_s"], rows["pipeline"]["req_s"], rows["bound"]["req_s"]
    print(f"ours / pipeline: {ours / base:.2f}x; ours / bound: {ours / bound:.2f}x")


if __name__ == "__main__":
    main()
