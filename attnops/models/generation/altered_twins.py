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
    targets = _Targets(rows[TARGET].tolist())
    out = []
    for i, row in enumerate(rows.itertuples(index=False)):
        source, context, target = getattr(row, SOURCE), getattr(row, CONTEXT), getattr(row, TARGET)
        kind, twin = _twin(rng, _KINDS[i % len(_KINDS)], i, f"{source}\n{context}", targets)
        out += [
            {SOURCE: source, CONTEXT: context, TARGET: target, LABEL: 0, KIND: ""},
            {SOURCE: source, CONTEXT: context, TARGET: twin, LABEL: 1, KIND: kind},
        ]
    return pd.DataFrame(out)


class _Targets:
    """The sampled targets with their words and sentences, split once for every twin."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.words = [_WORD.findall(t) for t in texts]
        self.sentences = [[s for s in _SENTENCE.split(t.strip()) if s] for t in texts]
        # In how many targets each word (any case) occurs.
        self.frequency = Counter(w.lower() for words in self.words for w in set(words))

    def others(self, i: int) -> list[str]:
        return self.texts[:i] + self.texts[i + 1 :]


def _twin(
    rng: np.random.Generator, kind: str, i: int, given: str, targets: _Targets
) -> tuple[str, str]:
    """(kind, twin): `kind`'s alteration of target `i`, or an added sentence when it does not
    fit. What is added or swapped in comes from the other targets."""
    target = targets.texts[i]
    if kind == "number_swap" and (numbers := list(_NUMBER.finditer(target))):
        match = numbers[rng.integers(len(numbers))]
        new = int(match.group()) + int(rng.integers(1, 10))
        while str(new) in given:
            new += 10
        return kind, target[: match.start()] + str(new) + target[match.end() :]
    if kind == "word_swap":
        # The rarest words across the other targets: a product or a place, not "within".
        frequency = targets.frequency - Counter(w.lower() for w in set(targets.words[i]))
        known = {w.lower() for w in _WORD.findall(given)}
        shared = [m for m in _WORD.finditer(target) if m.group().lower() in known]
        known |= {w.lower() for w in targets.words[i]}
        foreign = sorted({w for words in targets.words for w in words if w.lower() not in known})
        if shared and foreign:
            rarity = min(frequency[m.group().lower()] for m in shared)
            rarest = [m for m in shared if frequency[m.group().lower()] == rarity]
            match = rarest[rng.integers(len(rarest))]
            foreign.sort(key=lambda w: frequency[w.lower()])
            new = foreign[rng.integers(min(10, len(foreign)))]
            return kind, target[: match.start()] + new + target[match.end() :]
    # A target's own sentences are in it, so they drop out here.
    sentences = [s for ss in targets.sentences for s in ss if s not in target]
    added = _pick(rng, sentences) if sentences else _pick(rng, targets.others(i))
    return "added_sentence", f"{target.rstrip()} {added}"


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[rng.integers(len(options))]
