"""How well does the hallucination detector separate faithful replies from altered twins?

Each labelled reply (faithful, or its minimally altered twin) is teacher-forced through the
model after its chat prompt (ticket + article), giving its token log-probabilities and
lookback ratios without decoding; the text view scores it against ticket + article. The set
is split by `detector_fit_share` with whole tickets on one side (a reply and its twin never
straddle the split); the detector is fitted on one part and measured on the other. Prints
ROC AUC of each view alone (text, attention, logprob) and combined, overall and per kind,
plus the held-out false positive rate and recall at the threshold:

    nice .venv/bin/python benchmarks/hallucination_auc.py                # SmolLM2 base, zero-shot
    nice .venv/bin/python benchmarks/hallucination_auc.py path/to/labelled.jsonl --limit 100
    nice .venv/bin/python benchmarks/hallucination_auc.py --base path/to/merged-model

The default set, data/ticket-replies/hallucination.jsonl, is written by
`attnops.demo.ticket_replies.write_ticket_replies` when missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnops.demo.ticket_replies import write_ticket_replies
from attnops.models.generation.base import load_base_model, model_cache_dir
from attnops.models.generation.data import prompt_ids
from attnops.models.generation.decode import teacher_forced
from attnops.models.generation.detector import DETECTORS, HallucinationDetector, detector_features
from attnops.models.generation.detector_report import auc_report, split_fit_holdout
from attnops.settings import Settings
from attnops.spec import ModelSpec
from attnops.spec_generation import SMOLLM2_BASE, GenerationSpec

DEFAULT_SET = Path("data/ticket-replies/hallucination.jsonl")
COLUMNS = {"source": "ticket", "context": "article", "output": "reply"}


def _load(path: Path, limit: int | None, seed: int) -> pd.DataFrame:
    if not path.exists() and path == DEFAULT_SET:
        print(f"{path} missing: writing the ticket-replies demo data into {path.parent}")
        write_ticket_replies(path.parent)
    frame = pd.read_json(path, lines=True)
    missing = [c for c in (*COLUMNS.values(), "label") if c not in frame.columns]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}; it has {list(frame.columns)}")
    frame["context"] = frame[COLUMNS["context"]].fillna("").astype(str)
    if limit:  # whole tickets, so twins stay together
        tickets = frame[COLUMNS["source"]].drop_duplicates().sample(frac=1.0, random_state=seed)
        frame = frame[frame[COLUMNS["source"]].isin(set(tickets[: limit // 2]))]
    return frame.reset_index(drop=True)


def _table(report: dict) -> str:
    rows = {"overall": report["overall"], **report["per_kind"]}
    lines = [f"{'':<20}" + "".join(f"{d:>11}" for d in DETECTORS)]
    lines += [f"{k:<20}" + "".join(f"{v[d]:>11.3f}" for d in DETECTORS) for k, v in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labelled", nargs="?", type=Path, default=DEFAULT_SET)
    parser.add_argument("--base", default=SMOLLM2_BASE, help="model.base: sentinel, id or folder")
    parser.add_argument("--limit", type=int, help="labelled rows used (whole tickets)")
    parser.add_argument("--seed", type=int, default=0, help="split (and --limit) seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = GenerationSpec()
    frame = _load(args.labelled, args.limit, args.seed)

    start = time.perf_counter()
    model, tokenizer = load_base_model(ModelSpec(base=args.base), model_cache_dir(
        Settings.from_env().home))  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    print(f"model {args.base} loaded in {time.perf_counter() - start:.1f} s on {device}")

    start = time.perf_counter()
    source = frame[COLUMNS["source"]].astype(str).tolist()
    context = frame["context"].tolist()
    output = frame[COLUMNS["output"]].astype(str).tolist()
    signals = [
        teacher_forced(model, tokenizer, prompt_ids(tokenizer, gen, s, c), o, device)
        for s, c, o in zip(source, context, output, strict=True)
    ]
    forced_s = time.perf_counter() - start
    features = detector_features(source, context, output, signals)
    print(f"{len(frame)} outputs: teacher-forced in {forced_s:.1f} s, "
          f"features in {time.perf_counter() - start - forced_s:.1f} s")  # fmt: skip

    labels = frame["label"].to_numpy(int)
    fit, held = split_fit_holdout(source, gen.detector_fit_share, seed=args.seed)
    detector = HallucinationDetector(gen.detector_max_false_positive_rate)
    detector.fit(features.subset(fit), labels[fit], groups=np.asarray(source, dtype=object)[fit],
                 source=f"{args.labelled} (fitting part)")  # fmt: skip
    kinds = frame["kind"].astype(str).to_numpy() if "kind" in frame else None
    report = auc_report(detector, features.subset(held), labels[held],
                        None if kinds is None else kinds[held],
                        source=f"{args.labelled} (held-out part)")  # fmt: skip
    counts = f"{report['n_faithful']} faithful, {report['n_hallucinated']} hallucinated"
    print(f"fit on {len(fit)}, measured on {len(held)} ({counts})")
    print("ROC AUC (held out)\n" + _table(report))
    print(f"at threshold {detector.threshold:.3f}: false positive rate "
          f"{report['false_positive_rate']:.3f}, recall {report['recall']:.3f}")  # fmt: skip
    weights = detector.parts["combined"].coef
    print("combiner weights (standardised): " + ", ".join(
        f"{n}={w:+.2f}" for n, w in zip(detector.feature_names, weights, strict=True)))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
