"""How well does the hallucination detector separate faithful replies from altered twins?

Each labelled reply (faithful, or its minimally altered twin) is teacher-forced through the
model after its chat prompt (ticket + article), giving its token log-probabilities and
lookback ratios without decoding; the text view scores it against ticket + article. The set
is split by `detector_fit_share` with whole tickets on one side (a reply and its twin never
straddle the split); the detector is fitted on one part and measured on the other. Prints
ROC AUC of each view alone (text, attention, logprob) and combined, overall and per kind,
plus the held-out false positive rate and recall at the threshold:

    nice .venv/bin/python benchmarks/hallucination_auc.py               # the demo spec's base
    nice .venv/bin/python benchmarks/hallucination_auc.py --spec configs/mine.yaml --limit 100
    nice .venv/bin/python benchmarks/hallucination_auc.py --base path/to/merged-model

The labelled set is the spec's `generation.hallucination_set`, split and fitted exactly as
`attnops train` does (`detector_fit.fit_detector`); the demo spec's set is written by its
seeded generator when missing.

With --twins the detector is also fitted as for a spec without a labelled set: on altered
twins of the validation targets (`altered_twins`). It is then measured on the same held-out
part of the labelled set, next to the detector fitted on the labelled set:

    nice .venv/bin/python benchmarks/hallucination_auc.py --twins
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attnops.demo.ticket_replies import write_missing_ticket_replies
from attnops.models.generation.altered_twins import NAME as TWINS_NAME
from attnops.models.generation.altered_twins import altered_twins
from attnops.models.generation.base import load_base_model, model_cache_dir
from attnops.models.generation.data import load_generation_data
from attnops.models.generation.detector import DETECTORS
from attnops.models.generation.detector_fit import (
    KIND,
    LABEL,
    fit_detector,
    held_out_part,
    labelled_features,
    load_labelled_outputs,
)
from attnops.models.generation.detector_report import auc_report
from attnops.settings import Settings
from attnops.spec import load_spec

DEFAULT_SPEC = "configs/ticket-replies.yaml"


def _table(report: dict) -> str:
    rows = {"overall": report["overall"], **report["per_kind"]}
    lines = [f"{'':<20}" + "".join(f"{d:>11}" for d in DETECTORS)]
    lines += [f"{k:<20}" + "".join(f"{v[d]:>11.3f}" for d in DETECTORS) for k, v in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--spec", default=DEFAULT_SPEC, help="its labelled set and detector settings"
    )
    parser.add_argument("--base", help="model.base instead of the spec's: sentinel, id or folder")
    parser.add_argument("--limit", type=int, help="labelled rows used (whole inputs)")
    parser.add_argument("--seed", type=int, help="split (and --limit) seed; default the spec's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--twins", action="store_true", help="also fit on altered twins of validation targets"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    if args.base:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"base": args.base})})
    if args.seed is not None:
        spec = spec.model_copy(
            update={"training": spec.training.model_copy(update={"seed": args.seed})}
        )
    if spec.data.generator == "ticket-replies":
        files = [*spec.data.split_files, spec.generation.hallucination_set]
        write_missing_ticket_replies([Path(f) for f in files], spec.training.seed)
    labelled = load_labelled_outputs(spec, args.spec)
    if args.limit:  # whole inputs, so a reply and its twin stay together
        inputs = labelled["source"].drop_duplicates().sample(frac=1.0, random_state=0)
        labelled = labelled[labelled["source"].isin(set(inputs[: args.limit // 2]))]
        labelled = labelled.reset_index(drop=True)

    start = time.perf_counter()
    model, tokenizer = load_base_model(spec.model, model_cache_dir(Settings.from_env().home))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    print(f"model {spec.model.base} loaded in {time.perf_counter() - start:.1f} s on {device}")

    start = time.perf_counter()
    name = str(spec.generation.hallucination_set)
    detector, report = fit_detector(model, tokenizer, spec, labelled, device=device, name=name)
    print(
        f"{len(labelled)} labelled outputs: signals and fit in {time.perf_counter() - start:.1f} s"
    )
    counts = f"{report['n_faithful']} faithful, {report['n_hallucinated']} hallucinated"
    print(f"fit on {report['n_fit']}, measured on {report['n_held_out']} ({counts})")
    print("ROC AUC (held out)\n" + _table(report))
    print(
        f"at threshold {detector.threshold:.3f}: false positive rate "
        f"{report['false_positive_rate']:.3f}, recall {report['recall']:.3f}"
    )
    weights = detector.parts["combined"].coef
    named = zip(detector.feature_names, weights, strict=True)
    print("combiner weights (standardised): " + ", ".join(f"{n}={w:+.2f}" for n, w in named))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.twins:
        _fitted_on_twins(model, tokenizer, spec, labelled, device, args.spec)


def _fitted_on_twins(model, tokenizer, spec, labelled, device, spec_path: str) -> None:
    """The detector a spec without a labelled set gets, on the labelled set's held-out part."""
    start = time.perf_counter()
    validation = load_generation_data(spec.data, spec_path).splits["validation"]
    twins = altered_twins(
        validation, seed=spec.training.seed, fit_share=spec.generation.detector_fit_share
    )
    detector, report = fit_detector(model, tokenizer, spec, twins, device=device, name=TWINS_NAME)
    held = labelled.iloc[held_out_part(labelled, spec)].reset_index(drop=True)
    features = labelled_features(model, tokenizer, spec, held, device=device)
    on_labelled = auc_report(
        detector,
        features,
        held[LABEL].to_numpy(int),
        held[KIND].astype(str).to_numpy(),
        source="labelled set (held out)",
    )
    print(
        f"\nfitted on {len(twins)} altered twins of validation targets instead "
        f"({time.perf_counter() - start:.1f} s); ROC AUC on held-out twins:\n" + _table(report)
    )
    print("the same detector on the labelled set's held-out part:\n" + _table(on_labelled))
    print(
        f"at its threshold: false positive rate {on_labelled['false_positive_rate']:.3f}, "
        f"recall {on_labelled['recall']:.3f}"
    )


if __name__ == "__main__":
    main()
