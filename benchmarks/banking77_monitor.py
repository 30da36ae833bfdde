"""BANKING77 served and monitored in windows: which windows alarm, and are the alarms material?

Loads a registered version (model, tokenizer, reference profile) the way the server does,
answers BANKING77 queries with the server's own `ModelSlot`, turns each answer into the row
the inference log stores (`record_row`: PII found and redacted) and each window into the
frame the monitor flow reads (`records_frame`), and judges every window against the
version's reference profile with `ReferenceProfile.assess`, as `attnops monitor` does:

- 10 windows (default) drawn, seeded and without replacement, from the test queries of the
  intents the model was trained on: new traffic of the trained intents, which should not
  alarm;
- 20 windows drawn from the queries of the intents held out of training (validation and
  test, plus the original BANKING77 train rows of those intents; with replacement when there
  are fewer than a window's worth): a domain the model never saw, which should alarm.

It prints each window's verdict (alarm, severity, the checks that alarmed, those that were
significant but below their effect-size floor, the label-free accuracy estimate next to the
true accuracy) and both alarm rates:

    ATTNOPS_HOME=/work/b77/demo/home .venv/bin/python benchmarks/banking77_monitor.py \\
        --spec /work/b77/demo/spec.yaml --version challenger

What it does not include: HTTP, micro-batching across requests and the database round trip
of the inference log (each unique query is answered once, in batches of
`serving.max_batch_size`, and reused when a window draws it again); the champion alias
(any version or alias can be judged). The trained intents' test queries are the reference
profile's own records (the profile is the test split, held-out intents included as
`out_of_scope`), so those windows differ from the reference by what traffic of only
trained intents differs by (no unknown-intent share), and a query's nearest in-scope
reference input is itself, so it is never an unsupported assertion. `--split-half` judges
against a profile built from a seeded half of the reference's records instead, and draws
the trained-intent windows from the other half: queries the profile has not seen.
The registry is read from a copy of its database; nothing under ATTNOPS_HOME is written.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from attnops.models import aliases, versions
from attnops.models.modeling import pick_device
from attnops.models.versions import REFERENCE_FOLDER
from attnops.monitors import pii
from attnops.monitors.reference import ReferenceProfile, WindowAssessment
from attnops.serving.engine import ModelSlot
from attnops.serving.log_schema import record_row, records_frame
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"


def query_pools(spec: PipelineSpec, source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trained intents' test queries, held-out intents' queries), columns text and intent."""
    data = spec.data
    text, label, oos = data.text_column, data.label_column, data.out_of_scope_label
    test = pd.read_csv(data.test)
    trained = test[test[label] != oos][[text, label]]
    held_file = Path(data.test).parent / "held_out_intents.txt"
    if not held_file.is_file():
        raise SystemExit(f"{held_file} not found: write the splits with banking77_splits.py")
    held = set(held_file.read_text().split())
    original = pd.read_csv(source / "train.csv").rename(columns={"category": label})
    unseen = pd.concat(
        [
            pd.read_csv(data.validation).query(f"{label} == @oos")[[text]],
            test[test[label] == oos][[text]],
            original[original[label].isin(held)][[text]],
        ]
    ).drop_duplicates(text)
    unseen[label] = oos
    return trained.reset_index(drop=True), unseen.reset_index(drop=True)


def answer_rows(slot: ModelSlot, texts: list[str], batch: int) -> list[dict]:
    """The inference-log row of each text as the server writes it (redacted, has_pii)."""
    answers = []
    for start in range(0, len(texts), batch):
        answers += slot.answer(texts[start : start + batch])
    hits = pii.find_pii(texts)
    redacted = pii.redact(texts, hits)
    rows = []
    for i, (text, answer) in enumerate(zip(texts, answers, strict=True)):
        record = slot.log_record(f"q{i}", aliases.CHAMPION, text, 0.0, answer)
        row = record_row(record, redacted[i], hits[i])
        rows.append(row | {"label": None})  # no feedback: as the monitor reads the log
    return rows


def judge(
    profile: ReferenceProfile,
    rows: dict[str, dict],
    pool: pd.DataFrame,
    *,
    windows: int,
    size: int,
    rng: np.random.Generator,
    label: str,
) -> list[tuple[WindowAssessment, float]]:
    """Assess `windows` windows drawn from `pool`: (assessment, true accuracy) each."""
    results = []
    replace = len(pool) < size
    for _ in range(windows):
        drawn = pool.iloc[rng.choice(len(pool), size, replace=replace)]
        frame = records_frame([rows[t] for t in drawn.iloc[:, 0]])
        accuracy = float((frame["prediction"].to_numpy() == drawn[label].to_numpy()).mean())
        results.append((profile.assess(frame), accuracy))
    return results


def report(name: str, results: list[tuple[WindowAssessment, float]]) -> int:
    print(f"\n{name}")
    for k, (a, accuracy) in enumerate(results):
        e = a.estimate
        print(
            f"  window {k:2d}: {'ALARM' if a.alarm else 'ok   '} severity {a.severity:4s} "
            f"accuracy est {e.accuracy:.3f} [{e.accuracy_low:.3f}, {e.accuracy_high:.3f}] "
            f"true {accuracy:.3f} | alarmed: {', '.join(a.drift.drifted_checks) or '-'} | "
            f"significant, not material: {', '.join(a.drift.immaterial_checks) or '-'}"
        )
    return sum(a.alarm for a, _ in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--version", default="challenger", help="version number or alias")
    parser.add_argument("--source", type=Path, default=SOURCE, help="original BANKING77 folder")
    parser.add_argument("--trained-windows", type=int, default=10)
    parser.add_argument("--held-out-windows", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-half", action="store_true", help="see the module docstring")
    parser.add_argument(
        "--answers",
        type=Path,
        help="pickle of the version's log rows: written after answering, read instead of "
        "answering when it exists (judge other monitoring settings without the model pass)",
    )
    args = parser.parse_args()
    spec = load_spec(str(args.spec))
    settings = Settings.from_env()
    database = settings.home / "mlflow.db"
    if not settings.tracking_uri.startswith("sqlite:") or not database.is_file():
        raise SystemExit(f"{database} not found: set ATTNOPS_HOME to the registry's home")
    size = spec.monitoring.window_size
    trained, unseen = query_pools(spec, args.source)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        shutil.copy(database, scratch / "mlflow.db")  # MLflow may migrate or lock it
        uri = f"sqlite:///{scratch / 'mlflow.db'}"
        import mlflow

        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        mv = aliases.resolve(client, spec.name, args.version)
        if mv is None:
            raise SystemExit(f"model '{spec.name}' has no alias '{args.version}'")
        loaded = versions.load_version(client, spec.name, str(mv.version), scratch)
        slot = ModelSlot(
            loaded,
            device=pick_device(spec.training.device),
            attention_share=spec.serving.attention_sample_share,
            unsupported_distance_quantile=spec.monitoring.unsupported_distance_quantile,
            forward_batch_size=spec.serving.forward_batch_size,
            bf16=spec.serving.bf16,
        )
        texts = list(dict.fromkeys([*trained.iloc[:, 0], *unseen.iloc[:, 0]]))
        if args.answers and args.answers.is_file():
            rows = pd.read_pickle(args.answers)
            print(f"{spec.name} v{mv.version}: {len(rows)} answers read from {args.answers}")
        else:
            started = time.perf_counter()
            with torch.inference_mode():
                answered = answer_rows(slot, texts, spec.serving.max_batch_size)
            rows = dict(zip(texts, answered, strict=True))
            print(
                f"{spec.name} v{mv.version}: answered {len(texts)} unique queries in "
                f"{time.perf_counter() - started:.0f} s on {slot.device}"
            )
            if args.answers:
                pd.to_pickle(rows, args.answers)
        folder = loaded.folder / REFERENCE_FOLDER
        if args.split_half:
            records = pd.read_parquet(folder / "reference_profile.parquet")
            half = np.random.default_rng(args.seed).random(len(records)) < 0.5
            summary = ReferenceProfile.load(folder, spec.monitoring).summary
            profile = ReferenceProfile(records[half], summary, spec.monitoring)
            trained = trained[~trained.iloc[:, 0].isin(set(records["text"][half]))]
            print(f"split half: profile of {half.sum()} records, {len(trained)} unseen queries")
        else:
            profile = ReferenceProfile.load(folder, spec.monitoring)
    label = spec.data.label_column
    rng = np.random.default_rng(args.seed)
    kw = {"size": size, "rng": rng, "label": label}
    in_scope = judge(profile, rows, trained, windows=args.trained_windows, **kw)
    held_out = judge(profile, rows, unseen, windows=args.held_out_windows, **kw)
    print(f"windows of {size}")
    n_in = report(f"trained intents' test queries ({len(trained)})", in_scope)
    n_out = report(f"held-out intents' queries ({len(unseen)})", held_out)
    print(
        f"\ntrained intents: {n_in}/{len(in_scope)} windows alarmed (target at most 1 in 10)"
        f"\nheld-out intents: {n_out}/{len(held_out)} windows alarmed (target at least 19 in 20)"
    )


if __name__ == "__main__":
    main()
