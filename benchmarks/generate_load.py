"""Our generation server vs a plain FastAPI app calling `model.generate`, same load.

Each side serves the same registered generative version on loopback, one after the other,
each in its own process, under the same closed-loop load: `--concurrency` clients stream
replies to demo tickets (ticket + the knowledge-base article of its intent, so prompts on
one intent share a long prefix) back to back for `--duration` seconds, each asking for
`--max-new-tokens`. The sides:

  attnops serve                 `attnops serve --spec ...`, POST /generate/stream (SSE);
  model.generate (FastAPI)      one `model.generate` per request (greedy, the same chat
                                prompt), streamed with transformers' TextIteratorStreamer;
  attnops serve, prefix off     ours with generation.serving.prefix_cache_mb = 0.

Before its clock starts each side answers one single-token request per article (not
counted): first-call costs are paid and ours starts with the articles' prefixes cached, as
a server that has been up a while. Time to first token is measured at the client (its
first `data:` event). Reported per side: output tokens/s, p50/p99 time to first token, p99
end-to-end latency, errors, and for ours the answered requests missing from the inference
log's `generation_log` table after a clean stop (lost records). Then the ratios and whether
the targets hold (>= 3x the baseline's output tokens/s at equal or better p99 time to first
token, zero errors, zero lost records; prefix caching cuts the median time to first token
by >= 2x):

    .venv/bin/python benchmarks/generate_load.py                  # registers a version first
    .venv/bin/python benchmarks/generate_load.py --home .attnops/demo   # the demo's champion
    .venv/bin/python benchmarks/generate_load.py --tiny --duration 15   # a quick check

Without `--home` a version is registered in a temporary home through the train flow with
one optimizer step (speed depends on the weights' shapes, not on their quality); `--tiny`
registers a random 2-layer Llama instead of SmolLM2 (seconds). Base models are read from
$ATTNOPS_MODEL_CACHE or ./.attnops/base-models, converted there once. The load generator
runs on the same machine as the server, for every side.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,  # SmolLM2's config sets 64 explicitly: it does not follow hidden_size
    "tie_word_embeddings": True,
}
BASELINE_APP = textwrap.dedent(
    """
    import json, sys, threading
    import torch, uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer
    from attnops.models.generation.data import prompt_ids
    from attnops.models.generation.decode import eos_ids
    from attnops.models.modeling import pick_device
    from attnops.models.threads import use_threads
    from attnops.spec import load_spec

    folder, spec, port, dtype = sys.argv[1], load_spec(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    device = pick_device(spec.training.device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model = model.to(device).eval()
    threads = use_threads(spec.training.num_threads, stage="serving")
    eos = sorted(eos_ids(model, tokenizer))
    # One generate at a time: concurrent calls would share the same CPU threads (or GPU
    # stream) and slow each other down; requests wait for the lock instead.
    one_at_a_time = threading.Lock()
    app = FastAPI()

    class Body(BaseModel):
        source: str
        context: str = ""
        max_new_tokens: int

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/generate/stream")
    def generate(body: Body):
        ids = prompt_ids(tokenizer, spec.generation, body.source, body.context)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        done = {}

        def run():
            torch.set_num_threads(threads)  # a new thread starts with torch's default
            try:
                with one_at_a_time, torch.inference_mode():
                    out = model.generate(
                        torch.tensor([ids], device=device),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                        max_new_tokens=body.max_new_tokens,
                        do_sample=False,
                        eos_token_id=eos,
                        pad_token_id=tokenizer.pad_token_id,
                        streamer=streamer,
                    )
                done["output_tokens"] = sum(t not in eos for t in out[0, len(ids):].tolist())
            except Exception as exc:
                done["error"] = repr(exc)
                streamer.end()

        worker = threading.Thread(target=run)
        worker.start()

        def events():
            # The streamer hands over one (possibly empty) text per generated token: one
            # event each, so the first event marks the first token, as on our server.
            for text in streamer:
                yield f"data: {json.dumps({'token': text})}\\n\\n"
            worker.join()
            kind = "error" if "error" in done else "done"
            yield f"event: {kind}\\ndata: {json.dumps(done)}\\n\\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per side")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--home", help="an ATTNOPS_HOME whose registry has a champion")
    parser.add_argument("--spec", default="configs/ticket-replies.yaml")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="asked per request; default: the spec's generation.max_new_tokens "
        "(at most the served version's own limit)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="register a random 2-layer Llama (without --home)"
    )
    args = parser.parse_args()
    from attnops.models.generation.base import model_cache_dir
    from attnops.models.threads import choose_threads
    from attnops.settings import Settings
    from attnops.spec import load_spec

    spec = load_spec(args.spec)
    max_new = args.max_new_tokens or spec.generation.max_new_tokens
    # Both servers get the same torch thread count, chosen once (ATTNOPS_NUM_THREADS, the
    # spec's training.num_threads, else the CPUs free now).
    threads = choose_threads(spec.training.num_threads).threads
    env = {**os.environ, "ATTNOPS_NUM_THREADS": str(threads), "ATTNOPS_ADMIN_TOKEN": "bench"}
    env["ATTNOPS_MODEL_CACHE"] = str(model_cache_dir(Settings.from_env().home).resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.home:
            env["ATTNOPS_HOME"] = str(Path(args.home).resolve())
        else:
            env["ATTNOPS_HOME"] = str(_register(scratch, Path(args.spec), max_new, args.tiny, env))
        on = _serving_spec(Path(args.spec), scratch / "serve.yaml")
        off = _serving_spec(Path(args.spec), scratch / "serve-no-prefix.yaml", prefix_cache_mb=0)
        model_dir, dtype = _export_champion(on, scratch, env)
        bodies = _bodies(max_new)
        header = _header(model_dir, dtype, spec, bodies, threads, args)
        port = _free_port()
        ours = [sys.executable, "-m", "attnops.flows.cli", "serve", "--port", str(port)]
        results = {}
        for name, command in (
            ("attnops serve", [*ours, "--spec", str(on)]),
            ("model.generate (FastAPI)", [sys.executable, "-c", BASELINE_APP, str(model_dir),
                                          str(on), str(port), dtype]),
            ("attnops serve, prefix off", [*ours, "--spec", str(off)]),
        ):  # fmt: skip
            db = scratch / f"inference-{len(results)}.db"
            side_env = {**env, "ATTNOPS_INFERENCE_DB": f"sqlite:///{db}"}
            print(f"measuring {name} ...", flush=True)
            log = scratch / f"server-{len(results)}.log"
            results[name] = _measure(command, side_env, port, bodies, args, log)
            if name.startswith("attnops"):
                results[name]["lost"] = _lost(db, results[name].pop("request_ids"))
    _report(header, results, args)


def _register(scratch: Path, spec_path: Path, max_new: int, tiny: bool, env: dict) -> Path:
    """A champion in a fresh home: the spec's model after one optimizer step on demo data."""
    from attnops.demo.ticket_replies import write_ticket_replies

    data = scratch / "data"
    write_ticket_replies(data, seed=0, n_train=16, n_validation=4, n_test=4, n_labelled=40)
    spec = yaml.safe_load(spec_path.read_text())
    spec["data"] |= {s: str(data / f"{s}.jsonl") for s in ("train", "validation", "test")}
    spec["training"] |= {"max_steps": 1, "epochs": 1, "batch_size": 4, "eval_every_steps": 1}
    spec["evaluation"] = {"probe_size": 4, "latency_samples": 5}
    spec.setdefault("generation", {})
    spec["generation"] |= {
        "max_new_tokens": max_new,
        "hallucination_set": str(data / "hallucination.jsonl"),
        "eval_samples": 2,
        "zero_shot_baseline": False,
    }
    if tiny:
        spec["model"]["config_overrides"] = TINY
        spec["generation"]["lora"] = None  # 2 layers: full fine-tuning is cheaper
    path = scratch / "register.yaml"
    path.write_text(yaml.safe_dump(spec))
    home = scratch / "home"
    code = (
        "from attnops.settings import configure_process_env; configure_process_env()\n"
        "from attnops.flows.train import train\n"
        "from attnops.models import registry\n"
        "from attnops.settings import Settings\n"
        f"v = train({str(path)!r})\n"
        "c = registry.client_for(Settings.from_env())\n"
        "c.set_registered_model_alias(v.name, 'champion', v.version)\n"
    )
    what = "a tiny random Llama" if tiny else spec["model"]["base"]
    print(f"registering {what} to serve (one optimizer step) ...", flush=True)
    done = subprocess.run(
        [sys.executable, "-c", code], env={**env, "ATTNOPS_HOME": str(home)}, capture_output=True
    )
    if done.returncode != 0:
        sys.exit(f"registering failed:\n{done.stderr.decode()[-3000:]}")
    return home


def _serving_spec(spec_path: Path, out: Path, **serving) -> Path:
    spec = yaml.safe_load(spec_path.read_text())
    spec.setdefault("generation", {}).setdefault("serving", {}).update(serving)
    out.write_text(yaml.safe_dump(spec))
    return out


def _export_champion(spec_path: Path, scratch: Path, env: dict) -> tuple[Path, str]:
    """The champion's model + tokenizer as a plain folder for the baseline, and its dtype."""
    code = (
        "import sys, tempfile\n"
        "from pathlib import Path\n"
        "from attnops.settings import Settings\n"
        "from attnops.spec import load_spec\n"
        "from attnops.models import registry\n"
        "from attnops.models.aliases import resolve\n"
        "from attnops.models.versions import load_version\n"
        "client = registry.client_for(Settings.from_env())\n"
        "name = load_spec(sys.argv[1]).name\n"
        "version = resolve(client, name, 'champion')\n"
        "if version is None: sys.exit(f'{name} has no champion in this home')\n"
        "with tempfile.TemporaryDirectory() as tmp:\n"
        "    v = load_version(client, name, str(version.version), Path(tmp))\n"
        "    v.model.save_pretrained(sys.argv[2]); v.tokenizer.save_pretrained(sys.argv[2])\n"
        "print(str(v.model.dtype).removeprefix('torch.'))\n"
    )
    out = scratch / "champion"
    done = subprocess.run(
        [sys.executable, "-c", code, str(spec_path), str(out)], env=env, capture_output=True
    )
    if done.returncode != 0:
        sys.exit(f"exporting the champion failed:\n{done.stderr.decode()[-3000:]}")
    return out, done.stdout.decode().split()[-1]


def _bodies(max_new: int) -> list[dict]:
    from attnops.demo.ticket_replies import generate_ticket_replies

    rows = generate_ticket_replies(500, seed=7)
    return [
        {"source": r["ticket"], "context": r["article"], "max_new_tokens": max_new} for r in rows
    ]


def _header(model_dir: Path, dtype: str, spec, bodies: list[dict], threads: int, args) -> str:
    """What was served and asked: prompt lengths and their shared prefix, in tokens."""
    from transformers import AutoConfig, AutoTokenizer

    from attnops.models.generation.data import prompt_ids
    from attnops.serving.prefix_cache import shared_prefix_len

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    n_prompt, n_shared = [], []
    for body in bodies[:100]:
        ids = prompt_ids(tokenizer, spec.generation, body["source"], body["context"])
        n_prompt.append(len(ids))
        n_shared.append(shared_prefix_len(tokenizer, spec.generation, body["context"], ids))
    limits = spec.generation.serving
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} torch "
        f"thread(s) per server; {config.num_hidden_layers}-layer {config.model_type} "
        f"(hidden {config.hidden_size}) {dtype}\n"
        f"{args.concurrency} clients x {args.duration:g} s per side; prompts "
        f"{min(n_prompt)}-{max(n_prompt)} tokens (shared prefix {np.mean(n_shared):.0f} on "
        f"average), max_new_tokens {bodies[0]['max_new_tokens']}; ours: max_batch_rows "
        f"{limits.max_batch_rows}, prefix_cache_mb {limits.prefix_cache_mb:g}"
    )


def _measure(command: list[str], env: dict, port: int, bodies: list[dict], args, log: Path):
    """One side: start the server (its output to `log`), load it, stop it cleanly."""
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, server, log)
        result = asyncio.run(_load(port, bodies, args.duration, args.concurrency))
        result["prefix_hits"] = _prefix_hit_rate(port)
    finally:
        server.send_signal(signal.SIGTERM)  # a clean stop: ours drains its log
        try:
            server.wait(timeout=300)
        except subprocess.TimeoutExpired:
            server.kill()
            print("  not stopped within 300 s: killed (its log may be incomplete)")
    return result


def _wait_ready(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server not ready within 300 s")


async def _load(port: int, bodies: list[dict], duration: float, concurrency: int) -> dict:
    answered, errors = [], collections.Counter()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=httpx.Timeout(600, connect=10),
        limits=httpx.Limits(max_connections=concurrency),
    ) as client:
        # Not counted: one single-token request per article, so the first-call costs are
        # paid and every side starts as a server that has been up a while (articles cached).
        articles = {body["context"]: {**body, "max_new_tokens": 1} for body in bodies}
        warm = [await _stream(client, body) for body in articles.values()]
        started = time.perf_counter()
        stop = started + duration

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop:
                reply, error = await _stream(client, bodies[i % len(bodies)])
                if error is None:
                    answered.append(reply)
                else:
                    errors[error] += 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ttft = np.asarray([r["ttft_s"] for r in answered]) * 1000
    e2e = np.asarray([r["e2e_s"] for r in answered]) * 1000
    return {
        "tok_s": sum(r["output_tokens"] for r in answered) / elapsed,
        "req_s": len(answered) / elapsed,
        "ttft_p50": _percentile(ttft, 50),
        "ttft_p99": _percentile(ttft, 99),
        "e2e_p99": _percentile(e2e, 99),
        "errors": sum(errors.values()),
        "first_error": errors.most_common(1)[0][0] if errors else None,
        "request_ids": [r.get("request_id") for r in [*answered, *(w for w, _ in warm if w)]],
    }


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


async def _stream(client: httpx.AsyncClient, body: dict) -> tuple[dict | None, str | None]:
    """One streamed reply: (timings, output_tokens, request_id) or (None, why it failed)."""
    sent, first, event = time.perf_counter(), None, "message"
    try:
        async with client.stream("POST", "/generate/stream", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode()[:200]
                return None, f"HTTP {response.status_code}: {text}"
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    first = first or time.perf_counter()
                    data = json.loads(line.removeprefix("data: "))
                    if event == "error":
                        return None, f"error event: {data}"[:200]
                    if event == "done":
                        end = time.perf_counter()
                        reply = {"ttft_s": first - sent, "e2e_s": end - sent}
                        reply |= {k: data.get(k) for k in ("output_tokens", "request_id")}
                        return reply, None
                elif not line:
                    event = "message"  # a blank line ends an event
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:200]
    return None, "the stream ended without its summary"


def _prefix_hit_rate(port: int) -> float | None:
    """Prefix-cache hits over lookups since start (ours' /metrics); None elsewhere."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    counts = collections.Counter()
    for labels, value in re.findall(
        r"^attnops_generation_prefix_lookups_total\{([^}]*)\} (\S+)$", text, re.M
    ):
        counts['outcome="hit"' in labels] += float(value)
    total = counts[True] + counts[False]
    return counts[True] / total if total else None


def _lost(db: Path, request_ids: list[str | None]) -> int | None:
    """Answered requests missing from `generation_log`; None when the server wrote no rows."""
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        try:
            logged = {row[0] for row in conn.execute("select request_id from generation_log")}
        except sqlite3.OperationalError:  # no such table
            return None
    return len(set(request_ids) - logged) if logged else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(header: str, results: dict[str, dict], args) -> None:
    print(f"\n{header}")
    print(f"{'':<28}{'tok/s':>8}{'req/s':>7}{'TTFT p50':>10}{'TTFT p99':>10}{'e2e p99':>10}"
          f"{'errors':>8}{'lost':>6}{'prefix hits':>13}")  # fmt: skip
    for name, r in results.items():
        lost = "-" if name.startswith("model") else "n/a" if r["lost"] is None else r["lost"]
        hits = "-" if r["prefix_hits"] is None else f"{r['prefix_hits']:.0%}"
        print(f"{name:<28}{r['tok_s']:>8.1f}{r['req_s']:>7.2f}{r['ttft_p50']:>10.0f}"
              f"{r['ttft_p99']:>10.0f}{r['e2e_p99']:>10.0f}{r['errors']:>8}{lost!s:>6}"
              f"{hits:>13}")  # fmt: skip
        if r["first_error"]:
            print(f"  most common error: {r['first_error']}")
    print("(ms; TTFT = send to the first server-sent event, at the client)")
    ours, base, off = results.values()
    ratio, ttft = ours["tok_s"] / base["tok_s"], ours["ttft_p99"] / base["ttft_p99"]
    print(f"output tokens/s x{ratio:.2f}, TTFT p99 x{ttft:.2f} (ours / baseline)")
    clean = all(r["errors"] == 0 and r["lost"] in (0, None) for r in (ours, off))
    met = ratio >= 3 and ttft <= 1 and clean
    lost_note = ""
    if ours["lost"] is None or off["lost"] is None:
        lost_note = "; log: not written by this server, lost records not measured"
    verdict = "met" if met else "NOT met"
    print(f"targets (>= 3x output tokens/s, TTFT p99 <= baseline, ours 0 errors, 0 lost): "
          f"{verdict}{lost_note}")  # fmt: skip
    cut50, cut99 = off["ttft_p50"] / ours["ttft_p50"], off["ttft_p99"] / ours["ttft_p99"]
    print(f"prefix caching cuts TTFT p50 x{cut50:.2f}, p99 x{cut99:.2f} (off / on)")
    print(f"target (prefix caching cuts TTFT p50 >= 2x): {'met' if cut50 >= 2 else 'NOT met'}")
    print("command: " + shlex.join([sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
