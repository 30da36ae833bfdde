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
input) gets an added sentence, one holding a word or number its input does not (a sentence
that restates the input is no hallucination); a row no sentence fits is left out. These are
generic stand-ins, found by overlap with the input more easily than real hallucinations are:
reviewed outputs of your own model, in `generation.hallucination_set`, teach the detector
better, and the evidence names which set it learnt from.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import numpy as np
import pandas as pd

from attnops.models.generation.data import CONTEXT, SOURCE, TARGET
from attnops.models.generation.detector import MIN_PER_CLASS
from attnops.models.generation.detector_fit import KIND, LABEL
from attnops.models.generation.detector_report import split_fit_holdout
from attnops.models.text_files import DataError

NAME = "altered twins of validation targets (no generation.hallucination_set)"
MAX_INPUTS = 200
"""Validation inputs sampled: every output is one teacher-forced pass at evaluation."""
_KINDS = ("number_swap", "word_swap", "added_sentence")
_NUMBER = re.compile(r"\d+")
_MAX_DIGITS = 18
"""Longer digit runs (IDs, hashes) are not swapped or compared as numbers."""
_WORD = re.compile(r"[^\W\d_]{4,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def altered_twins(
    validation: pd.DataFrame, *, seed: int, fit_share: float, split: str = "validation"
) -> pd.DataFrame:
    """Source, context, target (the output), `label` and `kind` for up to `MAX_INPUTS` inputs
    of `validation`: one target of each input and its altered twin. `split` names the
    validation split in errors (its file, or the train file it was set aside from).

    Raises:
        DataError: too few distinct inputs for the detector's fitting part and its held-out
            part (`fit_share` of the inputs and the rest, split as the detector's fit does)
            to hold `MIN_PER_CLASS` of each label.
    """
    rows = validation.drop_duplicates([SOURCE, CONTEXT]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    rows = rows.iloc[np.sort(rng.permutation(len(rows))[:MAX_INPUTS])].reset_index(drop=True)
    targets = _Targets(rows[TARGET].tolist())
    out = []
    for i, row in enumerate(rows.itertuples(index=False)):
        source, context, target = getattr(row, SOURCE), getattr(row, CONTEXT), getattr(row, TARGET)
        altered = _twin(rng, _KINDS[i % len(_KINDS)], i, f"{source}\n{context}", targets)
        if altered is not None:
            out += [
                {SOURCE: source, CONTEXT: context, TARGET: target, LABEL: 0, KIND: ""},
                {SOURCE: source, CONTEXT: context, TARGET: altered[1], LABEL: 1, KIND: altered[0]},
            ]
    n_inputs = len(out) // 2
    if n_inputs < 2 or min(map(len, split_fit_holdout(range(n_inputs), fit_share))) < MIN_PER_CLASS:
        unaltered = len(rows) - n_inputs
        why = (
            f"; {unaltered} of its {len(rows)} targets could not be altered (no number, no "
            "word of 4+ letters from the input, and no other target's sentence says something "
            "the input does not, as with one-word answers): give a labelled set in "
            "generation.hallucination_set"
            if unaltered
            else ": give a larger validation split (data.validation, or a larger "
            "data.validation_share), or a labelled set in generation.hallucination_set"
        )
        raise DataError(
            f"{split} has {n_inputs} distinct inputs with an altered twin; split by "
            f"generation.detector_fit_share {fit_share:g}, the hallucination detector needs at "
            f"least {MIN_PER_CLASS} on each side to learn from without "
            f"generation.hallucination_set{why}"
        )
    return pd.DataFrame(out)


class _Targets:
    """The sampled targets with their words and sentences, split once for every twin."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.words = [_WORD.findall(t) for t in texts]
        self.sentences = [[s for s in _SENTENCE.split(t.strip()) if s] for t in texts]
        # In how many targets each word (any case) occurs.
        self.frequency = Counter(w.lower() for words in self.words for w in set(words))
        # Every sentence with its words (any case) and numbers, for what an input lacks.
        self.claims = [
            (s, {w.lower() for w in _WORD.findall(s)}, _numbers(s))
            for ss in self.sentences
            for s in ss
        ]


def _twin(
    rng: np.random.Generator, kind: str, i: int, given: str, targets: _Targets
) -> tuple[str, str] | None:
    """(kind, twin): `kind`'s alteration of target `i`, or an added sentence when it does not
    fit; None when no other target has a sentence `given` does not back."""
    target = targets.texts[i]
    numbers = [m for m in _NUMBER.finditer(target) if len(m.group()) <= _MAX_DIGITS]
    if kind == "number_swap" and numbers:
        match = numbers[rng.integers(len(numbers))]
        new = int(match.group()) + int(rng.integers(1, 10))
        known = _numbers(given)  # as values: a "５" in the input backs a "5"
        while new in known:
            new += 10
        written = _digits_like(new, match.group())
        return kind, target[: match.start()] + written + target[match.end() :]
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
    words, values = {w.lower() for w in _WORD.findall(given)}, _numbers(given)
    # A target's own sentences are in it, so they drop out here.
    sentences = [
        s
        for s, claimed_words, claimed_numbers in targets.claims
        if s not in target and (claimed_words - words or claimed_numbers - values)
    ]
    if not sentences:
        return None
    return "added_sentence", f"{target.rstrip()} {sentences[rng.integers(len(sentences))]}"


def _numbers(text: str) -> set[int]:
    return {int(n) for n in _NUMBER.findall(text) if len(n) <= _MAX_DIGITS}


def _digits_like(value: int, original: str) -> str:
    """`value` written in the digits of `original` (ASCII, full-width, Arabic-Indic, ...)."""
    zero = ord(original[0]) - unicodedata.digit(original[0])
    return "".join(chr(zero + int(d)) for d in str(value))
