"""Per-output quality of generated text against its reference: ROUGE-L, chrF, fact recall.

Pure functions of strings, one score per (output, reference) pair, so the gate can run
paired tests between two versions on the same inputs. All scores lie in [0, 1] (fact
recall is NaN where the reference states no fact).

Example:
    >>> rouge_l(["the cat sat"], ["the cat ran"]).round(3).tolist()
    [0.667]
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache

import numpy as np

from attnops.models.groundedness import fact_support


def rouge_l(outputs: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 (longest common subsequence of words, Porter-stemmed) per output.

    Raises:
        ValueError: When `outputs` and `references` differ in length.
    """
    _check_lengths(outputs, references)
    scorer = _rouge_scorer()
    return np.array(
        [
            scorer.score(r or "", o or "")["rougeL"].fmeasure
            for o, r in zip(outputs, references, strict=True)
        ],
        dtype=np.float64,
    )


def chrf(outputs: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Sentence chrF (sacrebleu: character 6-grams, beta 2) per output, scaled to [0, 1].

    sacrebleu reports chrF on 0-100; it is divided by 100 here so every quality score of a
    generation evaluation shares one scale.

    Raises:
        ValueError: When `outputs` and `references` differ in length.
    """
    from sacrebleu import sentence_chrf

    _check_lengths(outputs, references)
    return np.array(
        [
            sentence_chrf(o or "", [r or ""]).score / 100
            for o, r in zip(outputs, references, strict=True)
        ],
        dtype=np.float64,
    )


def fact_recall(outputs: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Share of each reference's facts (numbers, dates, names) that its output reproduces.

    Facts are found and matched as the groundedness check does (`fact_support`, with the
    output as the source): "$1,200" matches "1200", "two weeks ago" matches "2 weeks ago".
    A reference without facts has no fact recall (NaN): means skip it, so a blank output
    where there was nothing to reproduce neither props the mean up nor drags it down.

    Raises:
        ValueError: When `outputs` and `references` differ in length.
    """
    _check_lengths(outputs, references)
    recall = []
    for output, reference in zip(outputs, references, strict=True):
        facts, missed = fact_support(output or "", reference or "")
        recall.append(1.0 - len(missed) / len(facts) if facts else np.nan)
    return np.array(recall, dtype=np.float64)


def quality_scores(outputs: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """{"rouge_l", "chrf", "fact_recall"}: each metric's per-output scores."""
    return {
        "rouge_l": rouge_l(outputs, references),
        "chrf": chrf(outputs, references),
        "fact_recall": fact_recall(outputs, references),
    }


@cache
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


_WORD_RUN = re.compile(r"[^\W_]+")
# Scripts written without spaces between words (kana, CJK, Thai, Lao, Myanmar, Khmer): a
# character is the unit, as Chinese and Japanese ROUGE is usually scored.
_UNSPACED = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, CJK
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
)
_PIECE = re.compile(f"[{_UNSPACED}]|[^{_UNSPACED}]+")


class _WordTokenizer:
    """rouge_score's tokens for English text (lower case, letters and digits, Porter stems of
    words over 3 letters), and words of every other script too: its default drops everything
    outside a-z and 0-9, so two unrelated Russian sentences sharing a "5" matched fully and an
    identical Japanese answer scored 0. Text is NFKC-normalised first (full-width digits are
    digits)."""

    def __init__(self) -> None:
        from nltk.stem.porter import PorterStemmer

        self._stem = PorterStemmer().stem

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for run in _WORD_RUN.findall(unicodedata.normalize("NFKC", text).lower()):
            if run.isascii():
                tokens.append(self._stem(run) if len(run) > 3 else run)
            else:
                tokens.extend(_PIECE.findall(run))
        return tokens


def _check_lengths(outputs: Sequence[str], references: Sequence[str]) -> None:
    if len(outputs) != len(references):
        raise ValueError(
            f"{len(outputs)} outputs but {len(references)} references; pass one reference "
            "per output"
        )
