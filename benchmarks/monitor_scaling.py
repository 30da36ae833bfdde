"""How does a monitoring pass scale with the window; what does Evidently's embedding drift cost?

Times `ReferenceProfile.assess` (drift checks, label-free accuracy estimate, unsupported
assertions) on synthetic logged records of 10k-100k rows against a 600-row reference, best of
2 runs per size, and reports how cost grows against size (1.0 = linear). Then compares the
embedding check alone (`DriftDetector(reference[["embedding"]]).detect(window[["embedding"]])`,
construction included) with Evidently's default `EmbeddingsDrift` (a domain classifier plus
the t-SNE of its plot) on the same embeddings, one run in a child process with a time limit:

    .venv/bin/python benchmarks/monitor_scaling.py
    .venv/bin/python benchmarks/monitor_scaling.py --sizes 10000 50000 --skip-evidently

Records are built from demo tickets: text features derived from the text, prediction = intent
(out of scope -> a random in-scope label), beta confidence, 32-d gaussian embeddings around a
per-intent mean, attention entropy on 20% of rows. Building them is not timed.
"""

from __future__ import annotations

import os

os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse
import multiprocessing as mp
import platform
import shlex
import sys
import time
from importlib.metadata import version

import numpy as np
import pandas as pd

from attnops.demo.tickets import INTENTS, OUT_OF_SCOPE, generate_tickets
from attnops.monitors.drift import DriftDetector
from attnops.monitors.reference import ReferenceProfile
from attnops.spec import MonitoringSpec

EMBEDDING_DIM = 32
ENTROPY_COLUMNS = [f"l{layer}h{head}" for layer in range(6) for head in range(12)]
ATTENTION_SHARE = 0.2
MAX_LENGTH = 128
GENERATE_BUDGET_S = 20.0  # above this estimated time, sample windows from a smaller pool
POOL_SIZE = 20_000
EVIDENTLY_TIMEOUT_S = 300
EVIDENTLY_LARGE_IF_UNDER_S = 60.0  # run Evidently above the first size only if it was faster


def build_records(tickets: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Record frame of the shape `attnops.models.records` logs, for the given tickets."""
    text = tickets["text"].astype(str)
    n = len(text)
    words = text.str.count(r"\w+").to_numpy()
    chars = text.str.len().to_numpy()
    visible = chars - text.str.count(r"\s").to_numpy()
    letters = text.str.count(r"[^\W\d_]").to_numpy()
    non_ascii = text.str.count(r"[^\x00-\x7f]").to_numpy()
    n_tokens = np.ceil(words * 1.3).astype(int) + 2  # ~1.3 word pieces per word, [CLS] [SEP]
    in_scope = (tickets["intent"] != OUT_OF_SCOPE).to_numpy()
    prediction = tickets["intent"].to_numpy(dtype=object).copy()
    prediction[~in_scope] = rng.choice(INTENTS, size=int((~in_scope).sum()))
    confidence = np.where(in_scope, rng.beta(9, 1.5, n), rng.beta(4, 3, n))
    intent_codes = {label: i for i, label in enumerate((*INTENTS, OUT_OF_SCOPE))}
    means = np.random.default_rng(1234).normal(0, 1.5, (len(intent_codes), EMBEDDING_DIM))
    codes = tickets["intent"].map(intent_codes).to_numpy()
    embedding = (means[codes] + rng.normal(0, 1, (n, EMBEDDING_DIM))).astype(np.float32)
    entropy = np.full((n, len(ENTROPY_COLUMNS)), np.nan)
    sampled = rng.random(n) < ATTENTION_SHARE
    head_base = np.random.default_rng(4321).uniform(1.0, 4.0, len(ENTROPY_COLUMNS))
    entropy[sampled] = head_base + rng.normal(0, 0.3, (int(sampled.sum()), len(ENTROPY_COLUMNS)))
    records = pd.DataFrame(
        {
            "text": text.to_numpy(),
            "text_chars": chars,
            "n_tokens": n_tokens,
            "truncated": n_tokens > MAX_LENGTH,
            "unk_rate": non_ascii / np.maximum(n_tokens - 2, 1),
            "tokens_per_word": (n_tokens - 2) / np.maximum(words, 1),
            "non_letter_share": 1.0 - letters / np.maximum(visible, 1),
            "prediction": prediction,
            "confidence": confidence,
            "embedding": list(embedding),
            "has_pii": tickets["has_pii"].to_numpy(dtype=bool),
        }
    )
    return pd.concat([records, pd.DataFrame(entropy, columns=ENTROPY_COLUMNS)], axis=1)


def best_of(runs: int, fn) -> tuple[float, object]:
    """Fastest wall time of `runs` calls of `fn`, and the last result."""
    best, result = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def embedding_columns(records: pd.DataFrame) -> pd.DataFrame:
    """The 32-d `embedding` vectors as one float column each, as Evidently takes them."""
    matrix = np.stack(records["embedding"].to_numpy())
    return pd.DataFrame(matrix, columns=[f"emb_{i}" for i in range(matrix.shape[1])])


def _evidently_worker(reference: pd.DataFrame, current: pd.DataFrame, queue) -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    start = time.perf_counter()  # the import (~5 s) is not counted
    definition = DataDefinition(embeddings={"emb": list(current.columns)})
    cur, ref = (Dataset.from_pandas(f, data_definition=definition) for f in (current, reference))
    snapshot = Report([EmbeddingsDrift(embeddings_name="emb")]).run(cur, ref)
    queue.put((time.perf_counter() - start, snapshot.dict()["metrics"][0]["value"]))


def time_evidently(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float | None, str]:
    """Seconds of one Evidently EmbeddingsDrift report in a child process, or None on timeout."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_evidently_worker, args=(reference, current, queue))
    child.start()
    child.join(timeout=EVIDENTLY_TIMEOUT_S)
    if child.is_alive():
        child.terminate()
        child.join()
        return None, f"timed out after {EVIDENTLY_TIMEOUT_S} s"
    if queue.empty():
        return None, f"failed (exit code {child.exitcode})"
    seconds, score = queue.get()
    return seconds, f"ROC-AUC {score:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--reference", type=int, default=600, help="reference records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-evidently", action="store_true")
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {platform.platform()}, python {platform.python_version()}, "
        f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (1 min); "
        f"numpy {np.__version__}, pandas {pd.__version__}, evidently {version('evidently')}"
    )

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    build_records(generate_tickets(2000, seed=args.seed + 1, out_of_scope_share=0.1), rng)
    estimate_s = (time.perf_counter() - start) / 2000 * max(sizes)
    pool_size = max(sizes) if estimate_s <= GENERATE_BUDGET_S else POOL_SIZE
    start = time.perf_counter()
    pool = build_records(generate_tickets(pool_size, seed=args.seed, out_of_scope_share=0.1), rng)
    note = "" if pool_size == max(sizes) else " (windows sampled from it with replacement)"
    print(
        f"data: {pool_size:,}-ticket pool built in {time.perf_counter() - start:.1f} s{note}; "
        f"{max(sizes):,} records estimated at {estimate_s:.0f} s (pool if over "
        f"{GENERATE_BUDGET_S:.0f} s); building is not timed"
    )
    tickets = generate_tickets(args.reference, seed=args.seed + 10_000, out_of_scope_share=0.1)
    reference = build_records(tickets, rng).assign(label=tickets["intent"].to_numpy())
    summary = {"out_of_scope_threshold": 0.87, "out_of_scope_label": OUT_OF_SCOPE}
    windows = {
        n: pool.iloc[rng.choice(len(pool), n, replace=n > len(pool))].reset_index(drop=True)
        for n in sizes
    }

    spec = MonitoringSpec()
    build_s, profile = best_of(1, lambda: ReferenceProfile(reference, summary, spec))
    print(f"ReferenceProfile construction ({args.reference} reference records): {build_s:.2f} s")
    print(f"\nassess(window), best of 2 (window_size in spec {spec.window_size}, not used here)")
    print(f"{'records':>9} {'seconds':>8} {'records/s':>10} {'s per 10k':>9} {'growth':>7}")
    timings = {}
    for n in sizes:
        timings[n], assessment = best_of(2, lambda n=n: profile.assess(windows[n]))
        growth = (timings[n] / timings[sizes[0]]) / (n / sizes[0])
        print(
            f"{n:>9,} {timings[n]:>8.2f} {n / timings[n]:>10,.0f} "
            f"{timings[n] / n * 10_000:>9.2f} {growth:>7.2f}"
        )
    largest = windows[sizes[-1]]
    parts = {
        "drift.detect": lambda: profile.drift.detect(largest),
        "estimator.estimate": lambda: profile.estimator.estimate(largest["confidence"].to_numpy()),
        "unsupported.assess": lambda: profile.unsupported.assess(largest),
    }
    split = ", ".join(f"{name} {best_of(1, fn)[0]:.2f} s" for name, fn in parts.items())
    print(f"parts at {sizes[-1]:,}: {split}; alarm={assessment.alarm}")

    print("\nembedding drift alone: ours (MMD^2, calibrated) vs Evidently EmbeddingsDrift default")
    print(f"{'records':>9} {'ours s':>8} {'evidently s':>12} {'ratio':>7}  evidently result")
    reference_columns = embedding_columns(reference)
    first_evidently_s = None
    for n in sizes:
        ours_s, result = best_of(
            2, lambda n=n: DriftDetector(reference[["embedding"]]).detect(windows[n][["embedding"]])
        )
        ours = f"{n:>9,} {ours_s:>8.2f}"
        if args.skip_evidently:
            print(f"{ours} {'skipped':>12} {'':>7}  --skip-evidently")
            continue
        if n != sizes[0] and (first_evidently_s or np.inf) >= EVIDENTLY_LARGE_IF_UNDER_S:
            print(
                f"{ours} {'skipped':>12} {'':>7}  {sizes[0]:,} took "
                f"{first_evidently_s or float('nan'):.1f} s (runs larger only under "
                f"{EVIDENTLY_LARGE_IF_UNDER_S:.0f} s)"
            )
            continue
        theirs_s, verdict = time_evidently(reference_columns, embedding_columns(windows[n]))
        first_evidently_s = theirs_s if n == sizes[0] else first_evidently_s
        ratio = f"{theirs_s / ours_s:>6.0f}x" if theirs_s else f"{'-':>7}"
        shown = f"{theirs_s:>12.2f}" if theirs_s else f"{'-':>12}"
        print(f"{ours} {shown} {ratio}  {verdict}; ours drifted={result.drifted}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
