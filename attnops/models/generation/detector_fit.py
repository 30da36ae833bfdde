"""Fit a version's hallucination detector on the spec's labelled outputs.

Each labelled output (faithful, or a minimally altered twin) is teacher-forced through the
version's own model after its chat prompt, giving the token log-probabilities and lookback
ratios the model would have had writing it; the text view scores it against its input. The
set is split by `detector_fit_share` with whole inputs on one side (a reply and its twin
never straddle the split): the detector is fitted on one part and measured on the other, so
the ROC AUCs in the evidence are held out. The attention view is model-specific, which is
why every version fits its own detector and is registered with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from attnops.models.generation.data import CONTEXT, SOURCE, TARGET, prompt_ids, read_pairs
from attnops.models.generation.detector import (
    MIN_PER_CLASS,
    HallucinationDetector,
    detector_features,
)
from attnops.models.generation.detector_report import auc_report, split_fit_holdout
from attnops.models.generation.teacher_forcing import teacher_forced_batch
from attnops.models.text_files import DataError
from attnops.spec import PipelineSpec

LABEL, KIND = "label", "kind"


def load_labelled_outputs(spec: PipelineSpec, spec_path: str) -> pd.DataFrame:
    """The spec's `generation.hallucination_set` (which must be set): source, context,
    target (the output), `label` (1 = hallucinated, 0 = faithful) and `kind` ("" when the
    file has none).

    Raises:
        DataError: the file is missing, a label is not 0/1, or the detector's fitting or
            held-out part would lack either label (checked here, before training).
    """
    path = str(spec.generation.hallucination_set)
    if not Path(path).is_file():
        raise DataError(
            f"generation.hallucination_set {path} not found (cwd {Path.cwd()}); fix the path "
            f"in {spec_path}, or leave it out to fit the detector on altered twins of the "
            "validation targets (weaker; see the README)"
        )
    frame = read_pairs(
        spec.data, path, "hallucination_set", spec_path, extra=(LABEL,), optional=(KIND,)
    )
    labels = pd.to_numeric(frame[LABEL], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        raise DataError(
            f"{path}: column 'label' must be 0 (faithful) or 1 (hallucinated); "
            f"{int(bad.sum())} row(s) are not (first: {frame[LABEL][bad].iloc[0]!r})"
        )
    frame[LABEL] = labels.astype(int)
    _check_parts(frame, spec, path)
    return frame


def _check_parts(labelled: pd.DataFrame, spec: PipelineSpec, path: str) -> None:
    """Before training: the fitting and the held-out part (split as `fit_detector` splits)
    each hold `MIN_PER_CLASS` faithful and hallucinated outputs, or a DataError saying how
    many each has."""
    share, seed = spec.generation.detector_fit_share, spec.training.seed
    labels = labelled[LABEL].to_numpy(int)
    fit, held = split_fit_holdout(_inputs(labelled), share, seed)
    counts = {"fit": np.bincount(labels[fit], minlength=2)}
    counts["held out"] = np.bincount(labels[held], minlength=2)
    if min(c.min() for c in counts.values()) >= MIN_PER_CLASS:
        return
    listed = "; ".join(f"{k}: {c[0]} faithful, {c[1]} hallucinated" for k, c in counts.items())
    raise DataError(
        f"{path}: split by whole inputs at generation.detector_fit_share {share:g}, the "
        f"hallucination detector's parts hold {listed}; each needs at least {MIN_PER_CLASS} of "
        "both labels (label 0 and label 1 rows of at least "
        f"{2 * MIN_PER_CLASS} different inputs each): label more outputs"
    )


def fit_detector(
    model, tokenizer, spec: PipelineSpec, labelled: pd.DataFrame, *, device, name: str
) -> tuple[HallucinationDetector, dict]:
    """The detector fitted on part of `labelled` and its held-out report (`auc_report`).

    Args:
        model: the version's causal LM (its signals are what the detector reads).
        labelled: `load_labelled_outputs`, or `altered_twins.altered_twins`.
        name: the labelled set, for messages and the report.
    """
    gen = spec.generation
    features = labelled_features(model, tokenizer, spec, labelled, device=device)
    labels = labelled[LABEL].to_numpy(int)
    groups = _inputs(labelled)
    fit, held = split_fit_holdout(groups, gen.detector_fit_share, seed=spec.training.seed)
    detector = HallucinationDetector(gen.detector_max_false_positive_rate)
    detector.fit(features.subset(fit), labels[fit], groups=groups[fit], source=f"{name} (fit)")
    kinds = labelled[KIND].astype(str).to_numpy()
    report = auc_report(
        detector, features.subset(held), labels[held], kinds[held], source=f"{name} (held out)"
    )
    return detector, {**report, "labelled_set": name, "n_fit": len(fit), "n_held_out": len(held)}


def labelled_features(model, tokenizer, spec: PipelineSpec, labelled: pd.DataFrame, *, device):
    """The detector's features of each labelled output: `model`'s teacher-forced signals
    after the output's chat prompt, and the text view against its input."""
    sources, contexts = labelled[SOURCE].tolist(), labelled[CONTEXT].tolist()
    outputs = labelled[TARGET].tolist()
    prompts = [
        prompt_ids(tokenizer, spec.generation, s, c) for s, c in zip(sources, contexts, strict=True)
    ]
    signals = teacher_forced_batch(model, tokenizer, prompts, outputs, device)
    return detector_features(sources, contexts, outputs, signals)


def _inputs(labelled: pd.DataFrame) -> np.ndarray:
    """One group per input: an output and its twin stay on one side of a split."""
    pairs = zip(labelled[SOURCE], labelled[CONTEXT], strict=True)
    return np.asarray([f"{s}\n{c}" for s, c in pairs], object)


def held_out_part(labelled: pd.DataFrame, spec: PipelineSpec) -> np.ndarray:
    """The rows `fit_detector` measures on (not fitted on), for the same spec."""
    fit_share, seed = spec.generation.detector_fit_share, spec.training.seed
    return split_fit_holdout(_inputs(labelled), fit_share, seed=seed)[1]
