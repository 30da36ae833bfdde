"""Our inference service vs a plain `transformers` pipeline behind FastAPI, vs the model alone.

Both servers serve the same registered MiniLM version on loopback, each in its own process,
under the same closed-loop load: `--concurrency` clients send demo tickets back to back. A
third process runs only the model's forward passes over the same texts, batched as well as
the server could batch them (micro-batches of what the clients have in flight, length-sorted
into forward batches): the bound that batching allows. All three use `--threads` torch threads.

The three run in interleaved segments (`--rounds`, the order rotated each round), all in one
run, so a neighbour's load on a shared machine falls on each alike; only ratios within a run
are compared. After each of our segments the benchmark waits for our inference log to catch
up (so its lag never runs in another side's segment) and says by how much it lagged.

Reported: throughput, p50/p99 latency, errors, for ours the answered requests missing from
the inference log after a clean stop (lost records); ours / bound and ours / pipeline; and
where the CPU went, per answer: our threads (from the server's own
`attnops_thread_cpu_seconds_total`), the pipeline process, each side's load client and the
bound's forward passes. Targets: >= 0.9x the bound and >= 2.3x the pipeline's throughput at
equal or better p99, zero errors, zero lost records:

    nice .venv/bin/python benchmarks/serve_load.py --duration 30   # registers a version first
    .venv/bin/python benchmarks/serve_load.py --home .attnops/demo  # serve the demo's champion

Without `--home` a version is registered in a temporary home from a 1-step fine-tune of
the packaged MiniLM (weights are what matters for speed, not accuracy). The load client
runs on the same machine as the servers (see `serve_load_probes`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from subprocess import PIPE

import torch
import yaml
from serve_load_probes import BOUND_WORKER, Server, closed_loop, logged, percentiles

from attnops.models.precision import dtype_label
from attnops.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
BASELINE_APP = textwrap.dedent(
    """
    import sys
    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    torch.set_num_threads(int(sys.argv[3]))
    dtype = getattr(torch, sys.argv[4])
    classify = pipeline("text-classification", model=sys.argv[1], device=-1, dtype=dtype)
    app = FastAPI()

    class Body(BaseModel):
        text: str

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/predict")
    def predict(body: Body):
        return classify(body.text, truncation=True, max_length=128)[0]

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per side")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved segments per side")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, all")
    parser.add_argument("--home", help="an ATTNOPS_HOME whose registry has a champion")
    parser.add_argument("--spec", default="configs/support-tickets.yaml")
    parser.add_argument(
        "--baseline-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the pipeline's weights: its default, or bf16 (the fair match for our bf16 pass)",
    )
    args = parser.parse_args()
    texts = _texts()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        home = Path(args.home).resolve() if args.home else _register(scratch)
        spec_path = _serving_spec(Path(args.spec), scratch)
        model_dir = _export_champion(home, spec_path, scratch)
        env = {**os.environ, "ATTNOPS_HOME": str(home), "ATTNOPS_ADMIN_TOKEN": "bench"}
        env["ATTNOPS_INFERENCE_DB"] = f"sqlite:///{scratch / 'inference.db'}"
        env["ATTNOPS_NUM_THREADS"] = str(args.threads)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("MLFLOW_TRACKING_URI", None)
        spec = load_spec(spec_path)
        micro = min(spec.serving.max_batch_size, args.concurrency)
        forward = spec.serving.forward_batch_size
        (scratch / "texts.json").write_text(json.dumps(texts))
        ours = [sys.executable, "-m", "attnops.flows.cli", "serve", "--spec", str(spec_path)]
        base = [sys.executable, "-c", BASELINE_APP, str(model_dir), "{port}", str(args.threads),
                args.baseline_dtype]  # fmt: skip
        bound = [sys.executable, "-c", BOUND_WORKER, str(model_dir), str(args.threads),
                 str(scratch / "texts.json"), str(micro), str(forward),
                 str(spec.model.max_length), str(int(spec.serving.bf16))]  # fmt: skip
        sides = {
            "ours": Server([*ours, "--port", "{port}"], env, threads_metric=True),
            "base": Server(base, env, threads_metric=False),
        }
        worker = subprocess.Popen(bound, env=env, stdin=PIPE, stdout=PIPE, text=True)
        try:
            results = _interleaved(sides, worker, texts, args)
        finally:
            worker.kill()
            for server in sides.values():
                server.stop()
        results["ours"]["lost"] = sides["ours"].answered - logged(scratch / "inference.db")
        results["precision"] = dtype_label(torch.device("cpu"), spec.serving.bf16)
        results["ours"]["stop_s"] = sides["ours"].stop_s
    _report(results, args, micro, forward)


def _interleaved(sides: dict[str, Server], bound: subprocess.Popen, texts, args) -> dict:
    """Segments of each side in turn, the order rotated every round: a neighbour's load
    that comes and goes on a shared machine falls on all three alike."""
    for server in sides.values():
        server.wait_ready()
        # Warm-up, not counted (ours logs it: it counts as answered).
        warm = asyncio.run(closed_loop(server.port, texts, 2.0, args.concurrency))
        server.answered += len(warm["latency_ms"])
    if bound.stdout.readline().strip() != "ready":
        raise RuntimeError("the forward-pass bound worker failed to start")
    _caught_up(sides["ours"])
    seconds = args.duration / args.rounds
    out = {side: {"latency_ms": [], "errors": 0, "wall_s": 0.0, "cpu": {}, "client_cpu_s": 0.0}
           for side in sides}  # fmt: skip
    out["bound"] = {}
    out["ours"] |= {"pending": 0.0, "catch_up_s": 0.0, "batches": 0.0, "batched_texts": 0.0}
    order = ["bound", *sides]
    for r in range(args.rounds):
        for side in order[r % 3 :] + order[: r % 3]:
            if side == "bound":
                bound.stdin.write(f"{seconds}\n")
                bound.stdin.flush()
                for layout, got in json.loads(bound.stdout.readline()).items():
                    total = out["bound"].setdefault(layout, dict.fromkeys(got, 0.0))
                    for key, value in got.items():
                        total[key] += value
                continue
            server, got = sides[side], out[side]
            cpu_before, client_before = server.cpu_s(), time.process_time()
            batches_before = server.batches() if side == "ours" else (0.0, 0.0)
            first = r * args.concurrency * 1000  # each round starts elsewhere in the texts
            segment = asyncio.run(
                closed_loop(server.port, texts, seconds, args.concurrency, start=first)
            )
            got["client_cpu_s"] += time.process_time() - client_before
            for name, value in server.cpu_s().items():
                got["cpu"][name] = got["cpu"].get(name, 0.0) + value - cpu_before.get(name, 0.0)
            got["latency_ms"] += segment["latency_ms"]
            got["errors"] += segment["errors"]
            got["wall_s"] += segment["wall_s"]
            server.answered += len(segment["latency_ms"])
            if side == "ours":  # its log catches up before the next segment, not during it
                batches, texts_in = server.batches()
                got["batches"] += batches - batches_before[0]
                got["batched_texts"] += texts_in - batches_before[1]
                got["pending"] = max(got["pending"], server.log_pending())
                got["catch_up_s"] = max(got["catch_up_s"], _caught_up(server))
    return out


def _caught_up(server: Server) -> float:
    """Wait until our inference log has written every answered request; seconds waited."""
    started = time.perf_counter()
    while server.log_pending() > 0:
        time.sleep(0.1)
    return time.perf_counter() - started


def _texts() -> list[str]:
    from attnops.demo.tickets import generate_tickets

    return generate_tickets(2000, seed=7, out_of_scope_share=0.05)["text"].tolist()


def _register(scratch: Path) -> Path:
    """A champion in a fresh home: the packaged MiniLM after one optimizer step."""
    from attnops.demo.tickets import write_demo_dataset

    data = scratch / "data"
    write_demo_dataset(data, seed=0, n_train=400, n_validation=200, n_test=200)
    spec = yaml.safe_load((REPO / "configs" / "support-tickets.yaml").read_text())
    spec["data"] |= {s: str(data / f"{s}.csv") for s in ("train", "validation", "test")}
    spec["data"]["min_examples_per_class"] = 1  # 400 demo tickets leave some classes thin
    spec["training"] |= {"max_steps": 1, "epochs": 1}
    spec["evaluation"] = {"baseline": False, "latency_samples": 5, "probe_size": 8}
    spec["monitoring"] = {"bootstrap_resamples": 200}
    path = scratch / "register.yaml"
    path.write_text(yaml.safe_dump(spec))
    home = scratch / "home"
    env = {**os.environ, "ATTNOPS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = (
        "from attnops.settings import configure_process_env; configure_process_env()\n"
        "from attnops.flows.train import train\n"
        "from attnops.models import registry\n"
        "from attnops.settings import Settings\n"
        f"v = train({str(path)!r})\n"
        "c = registry.client_for(Settings.from_env())\n"
        "c.set_registered_model_alias(v.name, 'champion', v.version)\n"
    )
    print("registering a MiniLM version to serve (one optimizer step) ...", flush=True)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return home


def _serving_spec(spec_path: Path, scratch: Path) -> Path:
    spec = yaml.safe_load(spec_path.read_text())
    spec.setdefault("serving", {})
    out = scratch / "serve.yaml"
    out.write_text(yaml.safe_dump(spec))
    return out


def _export_champion(home: Path, spec_path: Path, scratch: Path) -> Path:
    """The champion's model + tokenizer as a plain folder for the baseline pipeline."""
    code = (
        "import sys, mlflow\n"
        "from attnops.settings import Settings\n"
        "from attnops.spec import load_spec\n"
        "from attnops.models import registry\n"
        "registry.client_for(Settings.from_env())\n"
        "name = load_spec(sys.argv[1]).name\n"
        "c = mlflow.transformers.load_model(f'models:/{name}@champion', return_type='components')\n"
        "c['model'].save_pretrained(sys.argv[2]); c['tokenizer'].save_pretrained(sys.argv[2])\n"
    )
    out = scratch / "champion"
    env = {**os.environ, "ATTNOPS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(
        [sys.executable, "-c", code, str(spec_path), str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    return out


def _report(results: dict, args, micro: int, forward: int) -> None:
    ours, base = results["ours"], results["base"]
    for r in (ours, base):
        r["throughput"] = len(r["latency_ms"]) / r["wall_s"]
        r["p50"], r["p99"] = percentiles(r["latency_ms"])
    for layout in results["bound"].values():
        layout["throughput"] = layout["texts"] / layout["wall_s"]
    # The bound is the better layout: ours is never measured against the weaker one.
    bound = max(results["bound"].values(), key=lambda layout: layout["throughput"])
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} torch threads; {args.concurrency} clients, {args.duration:g} s per side "
          f"in {args.rounds} interleaved rounds; ours {results['precision']}, pipeline "
          f"{args.baseline_dtype}")  # fmt: skip
    print(f"{'':<36}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'lost':>6}")
    for name, r in (("attnops serve", ours), ("transformers pipeline", base)):
        print(f"{name:<36}{r['throughput']:>8.1f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
              f"{r['errors']:>8}{r.get('lost', '-')!s:>6}")  # fmt: skip
    for name, layout in results["bound"].items():
        print(f"{f'forward passes alone, {name} threads':<36}{layout['throughput']:>8.1f}")
    print(f"  ({micro} texts in flight, length-sorted forward batches of {forward})")
    to_bound = ours["throughput"] / bound["throughput"]
    to_base = ours["throughput"] / base["throughput"]
    p99 = ours["p99"] / base["p99"]
    base_to_bound = base["throughput"] / bound["throughput"]
    print(f"ours / bound (the better layout) x{to_bound:.2f}; ours / pipeline x{to_base:.2f}, "
          f"p99 x{p99:.2f}; pipeline / bound x{base_to_bound:.2f}")  # fmt: skip
    print(f"inference log: at most {ours.get('pending', 0):.0f} records behind at the end of a "
          f"segment, caught up within {ours.get('catch_up_s', 0):.1f} s; "
          f"clean stop {ours['stop_s']:.1f} s")  # fmt: skip
    _breakdown(results, args.threads, micro)
    met = (to_bound >= 0.9 and to_base >= 2.3 and p99 <= 1 and ours["errors"] == 0
           and ours["lost"] == 0)  # fmt: skip
    verdict = "met" if met else "NOT met"
    print(
        f"targets (>= 0.9x bound, >= 2.3x pipeline, p99 <= pipeline, 0 errors, 0 lost): {verdict}"
    )
    print("command: " + shlex.join([sys.executable, *sys.argv]))


def _breakdown(results: dict, threads: int, micro: int) -> None:
    """CPU milliseconds per answered request, by where they were spent."""
    ours, base = results["ours"], results["base"]
    per = lambda seconds, r: 1000 * seconds / max(len(r["latency_ms"]), 1)  # noqa: E731
    cpus = os.cpu_count()
    print(f"\nCPU ms per answer ({cpus} CPUs give {1000 * cpus} ms per s; native = torch workers)")
    for name, layout in results["bound"].items():
        print(f"  forward passes alone, {name}: {1000 * layout['cpu_s'] / layout['texts']:.1f}")
    total = sum(ours["cpu"].values())
    parts = sorted(ours["cpu"].items(), key=lambda kv: -kv[1])
    shares = ", ".join(f"{name} {per(s, ours):.1f}" for name, s in parts if per(s, ours) >= 0.05)
    print(f"  ours: {per(total, ours):.1f} = {shares}; "
          f"its load client {per(ours['client_cpu_s'], ours):.1f}")  # fmt: skip
    print(f"  pipeline: {per(base['cpu']['process'], base):.1f} (process); its load client "
          f"{per(base['client_cpu_s'], base):.1f}")  # fmt: skip
    # On a shared machine each side gets the CPU its neighbours leave it; per CPU-second the
    # comparison does not depend on that share (it does assume each could fill the cores).
    bound_ms = min(1000 * b["cpu_s"] / b["texts"] for b in results["bound"].values())
    ours_ms, base_ms = per(total, ours), per(base["cpu"]["process"], base)
    print(f"  answers per CPU-second: ours / bound x{bound_ms / ours_ms:.2f}, "
          f"ours / pipeline x{base_ms / ours_ms:.2f}")  # fmt: skip
    _model_workers(results, threads, micro)


def _model_workers(results: dict, threads: int, micro: int) -> None:
    """How ours' model workers differ from the bound's streams: the share of the wall time
    they run (on a CPU, one torch thread each), the texts per batch, CPU per answer."""
    ours = results["ours"]
    model_s = ours["cpu"].get("model", 0.0)
    if not model_s or not ours["batches"]:
        return  # a GPU's workers, or no model thread reported
    answered = max(len(ours["latency_ms"]), 1)
    print(f"  model workers: busy {model_s / (ours['wall_s'] * threads):.0%} of the wall time, "
          f"{ours['batched_texts'] / ours['batches']:.1f} texts per batch, "
          f"{1000 * model_s / answered:.1f} ms per answer")  # fmt: skip
    for name, layout in results["bound"].items():
        print(f"  bound {name}: busy {layout['cpu_s'] / (layout['wall_s'] * threads):.0%}, "
              f"{-(-micro // int(name.split('x')[0])):.0f} texts per batch, "
              f"{1000 * layout['cpu_s'] / layout['texts']:.1f} ms per answer")  # fmt: skip


if __name__ == "__main__":
    main()
