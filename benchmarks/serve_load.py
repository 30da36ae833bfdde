"""Our inference service vs a plain `transformers` pipeline behind FastAPI, same load.

Both serve the same registered MiniLM version on loopback, one after the other, each in
its own process, under the same closed-loop load: `--concurrency` clients send demo
tickets back to back for `--duration` seconds. Reported per side: throughput, p50/p99
latency, errors, and for ours the answered requests missing from the inference log after
a clean stop (lost records). Then the ratios and whether the targets hold (>= 3x the
baseline's throughput at equal or better p99, zero errors, zero lost records):

    .venv/bin/python benchmarks/serve_load.py                # registers a version first
    .venv/bin/python benchmarks/serve_load.py --home .attnops/demo   # serve the demo's champion

Without `--home` a version is registered in a temporary home from a 1-step fine-tune of
the packaged MiniLM (weights are what matters for speed, not accuracy). The load
generator runs on the same machine as the server, for both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
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
BASELINE_APP = textwrap.dedent(
    """
    import sys
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    classify = pipeline("text-classification", model=sys.argv[1], device=-1)
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
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--home", help="an ATTNOPS_HOME whose registry has a champion")
    parser.add_argument("--spec", default="configs/support-tickets.yaml")
    args = parser.parse_args()
    texts = _texts()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        home = Path(args.home).resolve() if args.home else _register(scratch)
        spec_path = _serving_spec(Path(args.spec), scratch)
        model_dir = _export_champion(home, spec_path, scratch)
        env = {**os.environ, "ATTNOPS_HOME": str(home), "ATTNOPS_ADMIN_TOKEN": "bench"}
        env["ATTNOPS_INFERENCE_DB"] = f"sqlite:///{scratch / 'inference.db'}"
        env.pop("MLFLOW_TRACKING_URI", None)
        port = _free_port()
        ours = [sys.executable, "-m", "attnops.flows.cli", "serve", "--spec", str(spec_path)]
        result_ours = _measure(
            [*ours, "--port", str(port)], env, port, texts, args.duration, args.concurrency
        )
        answered = result_ours["ok"] + result_ours["warmup"]  # warm-up requests are logged too
        result_ours["lost"] = answered - _logged(scratch / "inference.db")
        baseline = [sys.executable, "-c", BASELINE_APP, str(model_dir), str(port)]
        result_base = _measure(baseline, env, port, texts, args.duration, args.concurrency)
    _report(result_ours, result_base, args)


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


def _measure(command, env, port, texts, duration, concurrency) -> dict:
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_ready(port, server)
        result = asyncio.run(_load(port, texts, duration, concurrency))
    finally:
        server.send_signal(signal.SIGTERM)  # a clean stop: ours flushes its log
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return result


def _wait_ready(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server not ready within 240 s")


async def _load(port: int, texts: list[str], duration: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,
        limits=httpx.Limits(max_connections=concurrency),
    ) as client:
        for text in texts[:concurrency]:  # warm-up, not counted
            await client.post("/predict", json={"text": text})
        started = time.perf_counter()
        stop = started + duration

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                try:
                    response = await client.post("/predict", json={"text": texts[i % len(texts)]})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies)
    return {
        "ok": len(ms),
        "errors": errors,
        "throughput": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "warmup": concurrency,
    }


def _logged(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from inference_log").fetchone()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(ours: dict, base: dict, args) -> None:
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.concurrency} clients x {args.duration:g} s per side")  # fmt: skip
    print(f"{'':<28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'lost':>6}")
    for name, r in (("attnops serve", ours), ("transformers pipeline", base)):
        lost = r.get("lost", "-")
        print(f"{name:<28}{r['throughput']:>8.1f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
              f"{r['errors']:>8}{lost!s:>6}")  # fmt: skip
    ratio = ours["throughput"] / base["throughput"]
    p99 = ours["p99"] / base["p99"]
    print(f"throughput x{ratio:.2f}, p99 x{p99:.2f} (ours / baseline)")
    met = ratio >= 3 and p99 <= 1 and ours["errors"] == 0 and ours["lost"] == 0
    verdict = "met" if met else "NOT met"
    print(f"targets (>= 3x throughput, p99 <= baseline, 0 errors, 0 lost): {verdict}")
    print("command: " + shlex.join([sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
