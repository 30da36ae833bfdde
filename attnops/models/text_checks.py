"""What counts as an empty text, and how much of the evaluation data training has seen.

One definition of "empty" serves both training data checks (`models/data.py`) and the
server's request validation (`serving/validation.py`): a text is empty when nothing is left
after removing whitespace, zero-width characters and control/format characters. Such a text
carries nothing for the tokenizer to read except special tokens, so a model answering it
answers noise.

Leakage: an evaluation row whose text also appears in training (exactly, or after
`near_duplicate_key`) inflates the test scores the gate decides on. `leakage_counts` counts
them per pair of splits with one hash set per split (linear time: about 1 s for 140k rows
on a 2-core CPU).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Zero-width space / non-joiner / joiner, word joiner, byte-order mark: invisible, and
# str.isspace() is False for all of them, so strip() keeps them.
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
# Unicode categories that draw nothing: Cc control (\x00-\x1f, \x7f-\x9f), Cf format
# (the zero-width characters above, soft hyphen, bidi marks), Cs lone surrogates.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_NOT_WORD = re.compile(r"[\W_]+")


def visible_text(text: str) -> str:
    """`text` without whitespace at either end and without invisible characters anywhere."""
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)
    return kept.strip()


def is_empty_text(value: object) -> bool:
    """True for a non-string or a string with no visible character (see the module doc)."""
    if not isinstance(value, str):
        return True
    if value.isprintable():  # the common case: no control, format or non-space separator
        return not value.strip()
    return not visible_text(value)


def describe_empty(value: object) -> str:
    """Why `value` counts as empty, in words a user recognises ('whitespace only', ...)."""
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if value == "":
        return "empty string"
    if not value.strip():
        return "whitespace only"
    if all(ch in ZERO_WIDTH or ch.isspace() for ch in value):
        return "zero-width characters only"
    return "control or invisible characters only"


def near_duplicate_key(text: str) -> str:
    """The form two texts share when they differ only in case, width forms, whitespace,
    punctuation or invisible characters (NFKC, casefold, runs of non-word characters
    collapsed to one space). A text of punctuation or emoji only is its own key, stripped:
    "😂😂" repeats "😂😂 ", while "?" and "!!" are different texts."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", folded).strip() or text.strip()


@dataclass(frozen=True)
class Leakage:
    """Rows of `later` whose text also appears in `earlier` (exactly, and near-duplicates).

    `near` includes `exact`. `examples` are up to 3 texts of `later` that leak, for the
    error message only: `as_dict` (the evidence stored with the run) keeps counts, not texts,
    since texts may hold PII and models/ cannot redact (that is monitors/pii.py).
    """

    earlier: str
    later: str
    later_rows: int
    exact: int
    near: int
    examples: tuple[str, ...] = field(default=())

    @property
    def near_share(self) -> float:
        """Share of `later`'s rows that are near-duplicates of an `earlier` text."""
        return self.near / self.later_rows if self.later_rows else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "splits": f"{self.later} in {self.earlier}",
            "rows": self.later_rows,
            "exact_duplicates": self.exact,
            "near_duplicates": self.near,
            "near_share": round(self.near_share, 6),
        }


def leakage_counts(
    texts: Mapping[str, Sequence[str]],
    pairs: Iterable[tuple[str, str]] = (
        ("train", "validation"),
        ("train", "test"),
        ("validation", "test"),
    ),
) -> list[Leakage]:
    """Count, for each (earlier, later) pair, the `later` rows whose text is in `earlier`.

    Args:
        texts: split name -> its texts.
        pairs: which splits to compare; the share is of the second one's rows.
    """
    exact_sets = {name: set(values) for name, values in texts.items()}
    keys = {name: [near_duplicate_key(t) for t in values] for name, values in texts.items()}
    key_sets = {name: set(values) for name, values in keys.items()}
    out = []
    for earlier, later in pairs:
        leaking = [
            text
            for text, key in zip(texts[later], keys[later], strict=True)
            if key in key_sets[earlier]
        ]
        exact = sum(text in exact_sets[earlier] for text in leaking)
        out.append(
            Leakage(earlier, later, len(texts[later]), exact, len(leaking), tuple(leaking[:3]))
        )
    return out


def label_name(value: object) -> str:
    """The class name a label value stands for: 1, 1.0 and "1 " are "1"; True is "True".

    Labels read from CSV, JSON or Parquet, and labels sent as JSON to `/feedback`, must name
    the same class whatever type they arrived as.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()
