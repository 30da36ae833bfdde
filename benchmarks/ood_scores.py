"""Out-of-scope scores of a registered version, side by side: AUROC and recall at the
spec's in-scope rejection rate, on validation (where the choice is made) and on test.

Every score of `attnops.models.ood` is fitted on the version's own training embeddings
and thresholded on in-scope validation inputs, as `attnops train` does, whatever the
version was registered with; nothing is written to the registry:

    ATTNOPS_HOME=/work/b77/demo/home .venv/bin/python benchmarks/ood_scores.py \\
        --spec /work/b77/demo/spec.yaml --version challenger
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attnops.models import registry
from attnops.models.aliases import resolve
from attnops.models.batching import encode
from attnops.models.data import LABEL, TEXT, LabelledData, load_labelled_data
from attnops.models.inference import predict
from attnops.models.modeling import pick_device
from attnops.models.ood import fit_detector, separation
from attnops.models.versions import LoadedVersion, load_version
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec


def registered_version(
    spec: PipelineSpec, spec_path: str, version: str
) -> tuple[LoadedVersion, LabelledData, torch.device]:
    """The spec's registered `version` (number or alias), its data and where to run it."""
    client = registry.client_for(Settings.from_env())
    mv = resolve(client, spec.name, version)
    if mv is None:
        raise SystemExit(f"model '{spec.name}' has no alias '{version}'")
    data = load_labelled_data(spec.data, spec_path)
    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_version(client, spec.name, str(mv.version), Path(scratch))
    return loaded, data, pick_device(spec.training.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the version's spec (data, evaluation)")
    parser.add_argument("--version", default="challenger", help="number or alias")
    parser.add_argument("--knn-k", type=int, help="override evaluation.out_of_scope_knn_k")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    evaluation = spec.evaluation
    if args.knn_k:
        evaluation = evaluation.model_copy(update={"out_of_scope_knn_k": args.knn_k})
    started = time.perf_counter()
    loaded, data, device = registered_version(spec, args.spec, args.version)
    model, tokenizer = loaded.model.to(device).eval(), loaded.tokenizer
    if loaded.label_names != data.label_names:
        raise SystemExit(
            f"{spec.name} v{loaded.version} was trained on other classes than {args.spec}"
        )

    def run(frame):
        encoded = encode(tokenizer, frame[TEXT].tolist(), spec.model.max_length)
        return predict(
            model, encoded, pad_id=tokenizer.pad_token_id, device=device, with_embeddings=True
        )

    train = data.splits["train"]
    if len(train) > evaluation.out_of_scope_fit_rows:
        train = train.sample(n=evaluation.out_of_scope_fit_rows, random_state=spec.training.seed)
    fitted = run(train)
    val_frame, test_frame = data.splits["validation"], data.splits["test"]
    val, test = run(val_frame), run(test_frame)
    val_in_scope = val_frame[LABEL].isin(data.label_names).to_numpy()
    test_in_scope = test_frame[LABEL].isin(data.label_names).to_numpy()
    detector = fit_detector(
        fitted.features,
        np.asarray(data.label_ids(train)),
        validation_logits=val.logits,
        validation_features=val.features,
        validation_in_scope=val_in_scope,
        spec=evaluation,
    )
    test_scores = detector.scores(test.logits, test.features)
    rate = evaluation.in_scope_rejection_rate
    print(
        f"{spec.name} v{loaded.version}: {len(train)} training inputs fitted; validation "
        f"{val_in_scope.sum()} in-scope / {(~val_in_scope).sum()} out-of-scope; test "
        f"{test_in_scope.sum()} / {(~test_in_scope).sum()}; knn k={evaluation.out_of_scope_knn_k}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(
        f"| score | val AUROC | val recall @{rate:.0%} | test AUROC | test recall @{rate:.0%} "
        "| test in-scope rejected |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in test_scores.items():
        v = detector.validation[name]
        t = separation(values, test_in_scope, detector.thresholds[name])
        mark = " (chosen)" if name == detector.chosen else ""
        print(
            f"| {name}{mark} | {v['auroc']:.3f} | {v['recall']:.3f} | {t['auroc']:.3f} | "
            f"{t['recall']:.3f} | {t['in_scope_rejection']:.3f} |"
        )
    print(f"chosen: {detector.chosen}: {detector.reason}")


if __name__ == "__main__":
    main()
