"""What `serve_load.py` measures with: the load client, the forward-pass bound, CPU readers.

The client is a bare HTTP/1.1 keep-alive loop on asyncio streams: the load runs on the
same CPUs as the server, and a heavier client (httpx costs about a millisecond of CPU per
request) would take from both servers what neither spends in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np

# The model's own best: the same texts in the server's micro-batches (what the clients have
# in flight), each cut into length-sorted forward batches. No HTTP, no log, no features:
# forward passes and the softmax only, in the server's precision (`serving.bf16`), in two
# layouts of the same `threads` CPUs: one stream of batches on all of them ("1xN"), or N
# streams (Python threads) of one torch thread each, each with its share of the texts in
# flight ("Nx1"). Runs a segment per line on stdin
# ("SECONDS", half in each layout) and answers one JSON line.
BOUND_WORKER = """
import json, sys, threading, time
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from attnops.models.batching import encode
from attnops.models.inference import predict

folder, threads, texts_file, micro, forward, max_length, bf16 = sys.argv[1:8]
threads, micro, forward = int(threads), int(micro), int(forward)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
texts = json.load(open(texts_file))
cpu = torch.device("cpu")

def chunked(size):
    return [encode(tokenizer, texts[i : i + size], int(max_length))
            for i in range(0, len(texts), size)]

layouts = {f"1x{threads}": (1, threads, chunked(micro)),
           f"{threads}x1": (threads, 1, chunked(-(-micro // threads)))}

def stream(chunks, torch_threads, first, stop, done):
    torch.set_num_threads(torch_threads)
    i = first
    while time.perf_counter() < stop:
        chunk = chunks[i % len(chunks)]
        predict(model, chunk, pad_id=tokenizer.pad_token_id, device=cpu, batch_size=forward,
                bf16_on_cpu=bf16 == "1")
        done.append(len(chunk))
        i += 1

def run(layout, seconds, first=0):
    streams, torch_threads, chunks = layouts[layout]
    done, started, cpu_started = [], time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=stream, args=(chunks, torch_threads, first + 97 * k,
                                                     started + seconds, done))
               for k in range(streams)]
    for w in workers: w.start()
    for w in workers: w.join()
    return {"texts": sum(done), "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu_started}

for layout in layouts:
    run(layout, 1.0)
print("ready", flush=True)
segment = 0
for line in sys.stdin:
    segment += 1
    order = list(layouts) if segment % 2 else list(layouts)[::-1]
    result = {layout: run(layout, float(line) / 2, first=segment * 31) for layout in order}
    print(json.dumps(result), flush=True)
"""


async def closed_loop(
    port: int, texts: list[str], seconds: float, clients: int, start: int = 0
) -> dict:
    """`clients` connections each sending texts back to back for `seconds`.

    Returns the latencies (ms) of 200 answers, the error count and the elapsed time.
    """
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = start + k
        try:
            while time.perf_counter() < stop:
                body = json.dumps({"text": texts[i % len(texts)]}).encode()
                head = (
                    "POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                sent = time.perf_counter()
                writer.write(head.encode() + body)
                status, length = _status_and_length(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                if status == 200:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    errors += 1
                i += clients
        except (OSError, asyncio.IncompleteReadError):
            errors += 1  # the connection broke: this client's in-flight request failed
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"latency_ms": latencies, "errors": errors, "wall_s": time.perf_counter() - started}


def _status_and_length(head: bytes) -> tuple[int, int]:
    lines = head.split(b"\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return int(lines[0].split(b" ", 2)[1]), length


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc; else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_THREAD_CPU = re.compile(r'^attnops_thread_cpu_seconds_total\{thread="([^"]+)"\} (\S+)$', re.M)
_SCALAR = r"^{}(?:\{{[^}}]*\}})? (\S+)$"


def thread_cpu(metrics_text: str) -> dict[str, float]:
    """thread -> CPU seconds from the server's `attnops_thread_cpu_seconds_total`."""
    return {name: float(value) for name, value in _THREAD_CPU.findall(metrics_text)}


def scalar(metrics_text: str, name: str) -> float:
    """The sum over labels of metric `name` in a Prometheus text exposition."""
    return sum(float(v) for v in re.findall(_SCALAR.format(re.escape(name)), metrics_text, re.M))


def percentiles(latency_ms: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms (NaN without answers)."""
    if not latency_ms:
        return float("nan"), float("nan")
    ms = np.asarray(latency_ms)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


class Server:
    """One side's server process on a free loopback port, and how many requests it answered.

    Args:
        command: the server's command line; `{port}` in it is replaced by the port.
        env: its environment.
        threads_metric: True for ours (CPU per thread from its /metrics), False for a
            process read from the outside (/proc).
    """

    def __init__(self, command: list[str], env: dict, *, threads_metric: bool) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads_metric = threads_metric
        self.answered, self.stop_s = 0, float("nan")
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready within {timeout_s:.0f} s")

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far: per thread (ours, from /metrics) or of the whole process."""
        if self.threads_metric:
            return thread_cpu(httpx.get(f"{self.url}/metrics").text)
        return {"process": process_cpu_s(self.process.pid) or float("nan")}

    def batches(self) -> tuple[float, float]:
        """Batches ours has run so far and the texts in them (`attnops_batch_size`)."""
        text = httpx.get(f"{self.url}/metrics").text
        return scalar(text, "attnops_batch_size_count"), scalar(text, "attnops_batch_size_sum")

    def log_pending(self) -> float:
        """Answered requests our inference log has not written yet."""
        return scalar(httpx.get(f"{self.url}/metrics").text, "attnops_inference_log_pending")

    def stop(self) -> None:
        """SIGTERM, a clean stop: ours answers what is queued and writes its whole log."""
        if self.process.poll() is not None:
            return
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.stop_s = time.perf_counter() - started


def logged(db: Path) -> int:
    """Rows in the inference log at `db` (SQLite)."""
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from inference_log").fetchone()[0]
