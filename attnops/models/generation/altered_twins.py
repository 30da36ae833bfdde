"""A labelled set for the hallucination detector made from the data's own targets, for a spec
without `generation.hallucination_set`.

Each sampled validation row gives two outputs for its input: its gold target (faithful, label
0) and a minimally altered twin (hallucinated, label 1) of one kind:

- `number_swap`: a number of the target replaced by one its input does not hold;
- `word_swap`: a word the target takes from its input replaced by a word of another row's
  target that the input does not hold;
- `added_sentence`: a sentence of another row's target appended, a claim the input does not
  back.

Rows take the kinds in turn; a row the kind does not fit (no number, no word shared with its
input) gets an added sentence. These are generic stand-ins, found by overlap with the input
more easily than real hallucinations are: reviewed outputs of your own model, in
`generation.hallucination_set`, teach the detector better, and the evidence names which set
it learnt from.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from attnops.models.generation.data import CONTEXT, SOURCE, TARGET
from attnops.models.generation.detector_fit import KIND, LABEL
from attnops.models.text_files import DataError

NAME = "altered twins of validation targets (no generation.hallucination_set)"
MAX_INPUTS = 200
"""Validation rows sampled: every output is one teacher-forced pass at evaluation."""
MIN_INPUTS = 10
_KINDS = ("number_swap", "word_swap", "added_sentence")
_NUMBER = re.compile(r"\d+")
_WORD = re.compile(r"[^\W\d_]{4,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def altered_twins(validation: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Source, context, target (the output), `label` and `kind` for up to `MAX_INPUTS` rows of
    `validation`: each row's target and its altered twin.

    Raises:
        DataError: fewer than `MIN_INPUTS` validation rows with distinct targets.
    """
    rows = validation.drop_duplicates(TARGET).reset_index(drop=True)
    if len(rows) < MIN_INPUTS:
        raise DataError(
            f"validation has {len(rows)} distinct targets; the hallucination detector needs "
            f"at least {MIN_INPUTS} to learn from when generation.hallucination_set is not "
            "set: give a larger validation split, or a labelled set in "
            "generation.hallucination_set"
        )
    rng = np.random.default_rng(seed)
    rows = rows.iloc[np.sort(rng.permutation(len(rows))[:MAX_INPUTS])].reset_index(drop=True)
    targets = rows[TARGET].tolist()
    out = []
    for i, row in enumerate(rows.itertuples(index=False)):
        source, context, target = getattr(row, SOURCE), getattr(row, CONTEXT), getattr(row, TARGET)
        others = targets[:i] + targets[i + 1 :]
        kind, twin = _twin(rng, _KINDS[i % len(_KINDS)], target, f"{source}\n{context}", others)
        out += [
            {SOURCE: source, CONTEXT: context, TARGET: target, LABEL: 0, KIND: ""},
            {SOURCE: source, CONTEXT: context, TARGET: twin, LABEL: 1, KIND: kind},
        ]
    return pd.DataFrame(out)


def _twin(
    rng: np.random.Generator, kind: str, target: str, given: str, others: list[str]
) -> tuple[str, str]:
    """(kind, twin): `kind`'s alteration of `target`, or an added sentence when it does not fit."""
    if kind == "number_swap" and (numbers := list(_NUMBER.finditer(target))):
        match = numbers[rng.integers(len(numbers))]
        new = int(match.group()) + int(rng.integers(1, 10))
        while str(new) in given:
            new += 10
        return kind, target[: match.start()] + str(new) + target[match.end() :]
    if kind == "word_swap":
        # The rarest words across targets: a product or a place, not "within".
        frequency = Counter(w.lower() for t in others for w in set(_WORD.findall(t)))
        known = {w.lower() for w in _WORD.findall(given)}
        shared = [m for m in _WORD.finditer(target) if m.group().lower() in known]
        known |= {w.lower() for w in _WORD.findall(target)}
        foreign = sorted({w for t in others for w in _WORD.findall(t) if w.lower() not in known})
        if shared and foreign:
            rarity = min(frequency[m.group().lower()] for m in shared)
            rarest = [m for m in shared if frequency[m.group().lower()] == rarity]
            match = rarest[rng.integers(len(rarest))]
            foreign.sort(key=lambda w: frequency[w.lower()])
            new = foreign[rng.integers(min(10, len(foreign)))]
            return kind, target[: match.start()] + new + target[match.end() :]
    sentences = [s for t in others for s in _SENTENCE.split(t.strip()) if s and s not in target]
    added = _pick(rng, sentences) if sentences else _pick(rng, others)
    return "added_sentence", f"{target.rstrip()} {added}"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[rng.integers(len(options))]
