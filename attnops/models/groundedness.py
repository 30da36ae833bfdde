"""Is a generated output (summary, reply) grounded in its source?

Offline checks of each output against its own source (pure functions, no Prefect/MLflow):

- facts: every number, date expression and named thing (a capitalised word not opening its
  sentence, camelCase, a token with digits, _, @ or an inner dot) in the output must occur in
  the source after normalisation ("$1,200.00" = "1200", "15 percent" = "15%", "two weeks ago"
  = "2 weeks ago"), a number also near one of the same words as in the source (so a number
  swapped for another one of the source is caught); a negation added to or dropped from the
  closest source sentence counts too;
- meaning: each output sentence must be close to some source sentence (cosine of MiniLM
  sentence embeddings, or the share of its word trigrams found in the source when higher:
  a verbatim extract of a run-on source sentence is supported);
- wording: the share of output word trigrams that never occur in the source.

Example:
    >>> results = score_groundedness(["I paid $40 on March 3."], ["I paid $45 on March 3."])
    >>> results[0].unsupported_numbers
    ('45',)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

import numpy as np

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WORD = re.compile(r"\w+(?:['’.@\-]\w+)*")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
))} | {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000"}  # fmt: skip  # noqa: E501
# "one" is a pronoun as often as a number ("the one I ordered"): counted in sources only.
_OUTPUT_NUMBER_WORDS = re.compile(r"\b(?:" + "|".join(set(_NUMBER_WORDS) - {"one"}) + r")\b")
_ANY_NUMBER_WORD = re.compile(r"\b(?:" + "|".join(_NUMBER_WORDS) + r")\b")
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_WEEKDAY = r"(?:mon|tues|wednes|thurs|fri|satur|sun)day"
# Matched on canonical text (lowercase, number words as digits); longest forms first.
_DATE = re.compile("|".join((
    rf"\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?\b",
    rf"\b\d{{1,2}}(?:st|nd|rd|th)? (?:of )?{_MONTH}\b(?: \d{{4}})?",
    r"\b\d{1,4}[/-]\d{1,2}(?:[/-]\d{2,4})?\b",
    rf"\b(?:last|this|next|past) (?:{_WEEKDAY}|weekend|week|month|year)\b",
    r"\b(?:\d+|a|an) (?:minute|hour|day|week|month|year)s? ago\b",
    rf"\b{_WEEKDAY}\b|\bweekend\b|\b(?:yesterday|today|tonight|tomorrow)\b|\b\d{{1,2}}(?:st|nd|rd|th)\b",
    r"\b(?:january|february|march|april|june|july|august|september|october|november|december)\b",
)))  # fmt: skip
_NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|none|nobody|nowhere|neither|nor|cannot|without"
    r"|(?:do|does|did|is|are|was|were|has|have|had|ca|wo|could|should|would|must|need)n['’]?t)\b"
)
_STOPWORDS = frozenset((
    "a", "an", "the", "my", "your", "their", "his", "her", "our", "its", "it", "this", "that",
    "on", "in", "at", "to", "of", "for", "with", "from", "by", "i", "you", "me", "we", "us",
    "they", "them", "he", "she", "and", "but", "or", "so", "be", "been", "am", "even",
))  # fmt: skip
_FIRST_PERSON = frozenset({"i", "i'm", "i'd", "i've", "i'll", "i’m", "i’d", "i’ve", "i’ll"})
_OPENERS = frozenset("\"'“‘([:")
_SUMMARY_KEYS = ("hallucination_rate", "groundedness_mean", "unsupported_number_rate", "n_outputs")


@dataclass(frozen=True)
class GroundednessResult:
    """How well one output is supported by its source.

    `score` = min over output sentences of their support x (1 - ngram_weight x
    novel_ngram_share) x fact_penalty ** n_unsupported_facts. A sentence's support maps its
    `sentence_similarity` piecewise-linearly onto [0, 1] (similarity_floor -> 0,
    sentence_threshold -> 0.5, 1 -> 1); the unsupported facts are the unsupported numbers, dates
    and names plus the negation mismatches. So with fact_penalty < 0.5 any unsupported fact or
    sentence puts the score below 0.5. An empty output scores 1.
    """

    score: float
    unsupported_numbers: tuple[str, ...]
    unsupported_dates: tuple[str, ...]
    unsupported_names: tuple[str, ...]
    negation_mismatches: tuple[str, ...]
    """Output sentences that add a negation to, or drop one from, their closest source sentence."""
    novel_ngram_share: float
    """Share of the output's word trigrams (within sentences) that never occur in the source."""
    sentence_similarity: tuple[float, ...]
    """Per output sentence: its max cosine similarity to a source sentence, or the share of its
    word trigrams found in the source when that is higher."""
    unsupported_sentences: tuple[str, ...]

    @property
    def n_unsupported_facts(self) -> int:
        facts = (self.unsupported_numbers, self.unsupported_dates, self.unsupported_names)
        return sum(map(len, facts)) + len(self.negation_mismatches)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: breaks after . ! ? (and closing quotes) and at line breaks."""
    pieces = (p.strip() for p in _SENTENCE_BREAK.split(text or ""))
    return [p for p in pieces if re.search(r"\w", p)]


def _canonical(text: str) -> str:
    """Lowercase, number words as digits, no leading zeros, single spaces."""
    text = _ANY_NUMBER_WORD.sub(lambda m: _NUMBER_WORDS[m.group()], text.lower())
    return " ".join(re.sub(r"\b0+(?=\d)", "", text).split())


def _norm_number(raw: str) -> str:
    raw = raw.replace(",", "") if _THOUSANDS.fullmatch(raw) else raw
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return format(Decimal(raw).normalize(), "f")
    return raw  # "2.4.1", "1,2": compared as written


def _number_mentions(text: str, number_words: re.Pattern) -> list[tuple[str, set[str]]]:
    """(value, two content words either side) per number. Values are normalised digits and
    number words; a percentage keeps its "%" ("15 percent" = "15%" != "15"), currency is
    dropped ("$40.00" = "40")."""
    text = number_words.sub(lambda m: _NUMBER_WORDS[m.group()], text.lower())
    text = re.sub(r"(\d)\s*(?:%|per\s?cent\b)", r"\1%", text)
    tokens = [
        _norm_number(t.rstrip("%")) + "%" * t.endswith("%") if t[0].isdigit() else t
        for t in re.findall(r"\d+(?:[.,]\d+)*%?|[^\W\d_]+", text)
        if t not in _STOPWORDS
    ]
    return [
        (t, {*tokens[max(i - 2, 0) : i], *tokens[i + 1 : i + 3]})
        for i, t in enumerate(tokens)
        if t[0].isdigit()
    ]


def _unsupported_numbers(source: str, output: str) -> list[str]:
    """Output numbers that the source lacks, or holds only in other contexts: no token within
    two either side is shared with any source mention ("15 units" vs "40 units, up 15%")."""
    contexts: dict[str, set[str]] = {}
    for value, window in _number_mentions(source, _ANY_NUMBER_WORD):
        contexts.setdefault(value, set()).update(window)
    return [
        value
        for value, window in _number_mentions(output, _OUTPUT_NUMBER_WORDS)
        if value not in contexts or (window and not window & contexts[value])
    ]


def _names(sentence: str) -> list[str]:
    """Capitalised words not opening the sentence, camelCase, words with digits, _, @ or a dot."""
    names = []
    for k, m in enumerate(_WORD.finditer(sentence)):
        word = re.sub(r"['’]s$", "", m.group())
        before = sentence[: m.start()].rstrip()
        opens = k == 0 or (before and before[-1] in _OPENERS)
        if re.fullmatch(r"[\d.,/:\-]+|\d+(?:st|nd|rd|th)", word) or word.lower() in _FIRST_PERSON:
            continue
        if re.search(r"[\d_@]|\w\.\w|[a-z].*[A-Z]|[A-Z]{2}", word) or (
            word[0].isupper() and not opens
        ):
            names.append(word)
    return names


def _trigrams(sentence: str) -> list[tuple[str, ...]]:
    """Word trigrams of the canonical text (numbers normalised, so "$1,200" = "$1200")."""
    words = re.findall(r"\w+", _canonical(_NUMBER.sub(lambda m: _norm_number(m.group()), sentence)))
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def _negation_changed(output: str, source: str) -> bool:
    """True when the output sentence adds a negation or drops one from a phrase it keeps.

    Added: more negation cues than the source sentence. Dropped: the (up to) two content words
    after a source cue ("never *appeared* on my *account*") occur in the output un-negated, and
    negated fewer times than in the source. Words are compared by their first five letters.
    """
    out, src = (
        ["<not>" if _NEGATION.fullmatch(w) else w[:5] for w in re.findall(r"[\w'’]+", t.lower())
         if w not in _STOPWORDS]
        for t in (output, source)
    )  # fmt: skip
    if out.count("<not>") > src.count("<not>"):
        return True
    for i in (i for i, w in enumerate(src) if w == "<not>"):
        phrase = src[i + 1 : i + 3]
        if phrase and "<not>" not in phrase:
            out_negated, out_plain = _occurrences(out, phrase)
            if out_plain and out_negated < _occurrences(src, phrase)[0]:
                return True
    return False


def _occurrences(words: list[str], phrase: list[str]) -> tuple[int, int]:
    """(negated, plain) occurrences of `phrase` in `words`."""
    hits = [j for j in range(len(words) - len(phrase) + 1) if words[j : j + len(phrase)] == phrase]
    negated = sum(j > 0 and words[j - 1] == "<not>" for j in hits)
    return negated, len(hits) - negated


def _check(
    source: str,
    output: str,
    src: list[str],
    out: list[str],
    sims: np.ndarray,
    *,
    threshold: float,
    floor: float,
    fact_penalty: float,
    ngram_weight: float,
) -> GroundednessResult:
    """One example's result; `sims` holds the output x source sentence cosine similarities."""
    canon_source = _canonical(source)
    dates = [m.group() for m in _DATE.finditer(_canonical(output))]
    dates = [d for d in dates if not re.search(rf"(?<!\w){re.escape(d)}(?!\w)", canon_source)]
    known = {w.lower() for w in _WORD.findall(source)}
    known |= {re.sub(r"['’]s$", "", w) for w in known}
    names = [n for s in out for n in _names(s) if n.lower() not in known]
    closest = [src[j] for j in sims.argmax(axis=1)] if src else []
    numbers = _unsupported_numbers(source, output)
    negations = [s for s, c in zip(out, closest, strict=False) if _negation_changed(s, c)]
    source_grams = set(_trigrams(source)) | {g for s in src for g in _trigrams(s)}
    grams = [_trigrams(s) for s in out]
    coverage = np.array([np.mean([g in source_grams for g in gs]) if gs else 0.0 for gs in grams])
    n_grams = sum(map(len, grams))
    novel = float(1.0 - coverage @ [len(g) for g in grams] / n_grams) if n_grams else 0.0
    best = np.maximum(sims.max(axis=1), coverage) if src else coverage
    result = GroundednessResult(
        score=1.0,
        unsupported_numbers=_unique(numbers),
        unsupported_dates=_unique(dates),
        unsupported_names=_unique(names),
        negation_mismatches=tuple(negations),
        novel_ngram_share=novel,
        sentence_similarity=tuple(float(x) for x in best),
        unsupported_sentences=tuple(s for s, x in zip(out, best, strict=True) if x < threshold),
    )
    if not out:
        return result
    # Piecewise-linear support: floor -> 0, threshold -> 0.5, 1 -> 1.
    low = 0.5 * (best - floor) / (threshold - floor)
    high = 0.5 + 0.5 * (best - threshold) / (1.0 - threshold)
    support = np.clip(np.where(best < threshold, low, high), 0.0, 1.0).min()
    score = support * (1.0 - ngram_weight * novel) * fact_penalty**result.n_unsupported_facts
    return replace(result, score=float(np.clip(score, 0.0, 1.0)))


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def score_groundedness(
    sources: Sequence[str],
    outputs: Sequence[str],
    *,
    encoder=None,
    sentence_threshold: float = 0.55,
    similarity_floor: float = 0.2,
    fact_penalty: float = 0.4,
    ngram_weight: float = 0.2,
    batch_size: int = 64,
) -> list[GroundednessResult]:
    """Scores each output against its own source; all sentences are embedded in one call.

    Args:
        sources: Source texts (ticket, document), one per example.
        outputs: Generated texts, aligned with `sources`.
        encoder: Anything with `encode(list[str], batch_size=...)` returning unit-norm rows;
            default the cached packaged MiniLM (`SentenceEncoder.cached()`).
        sentence_threshold: Similarity below which an output sentence is unsupported.
        similarity_floor: Similarity at which a sentence's support reaches 0.
        fact_penalty: Factor applied to the score per unsupported fact.
        ngram_weight: Weight of the novel-trigram share in the score.
        batch_size: Sentences per encoder forward pass.

    Returns:
        One `GroundednessResult` per example, in input order.

    Raises:
        ValueError: When `sources` and `outputs` differ in length.
    """
    if len(sources) != len(outputs):
        raise ValueError(f"{len(sources)} sources but {len(outputs)} outputs; pass one per output")
    if encoder is None:
        from attnops.models.sentence_encoder import SentenceEncoder

        encoder = SentenceEncoder.cached()
    sources, outputs = [s or "" for s in sources], [o or "" for o in outputs]
    source_sents = [split_sentences(s) for s in sources]
    output_sents = [split_sentences(o) for o in outputs]
    unique = sorted({s for group in (*source_sents, *output_sents) for s in group})
    row = {s: i for i, s in enumerate(unique)}
    embeddings = encoder.encode(unique, batch_size=batch_size) if unique else None
    opts = {"threshold": sentence_threshold, "floor": similarity_floor}
    opts |= {"fact_penalty": fact_penalty, "ngram_weight": ngram_weight}
    results = []
    for source, output, src, out in zip(sources, outputs, source_sents, output_sents, strict=True):
        sims = np.zeros((len(out), len(src)), dtype=np.float32)
        if out and src:
            sims = embeddings[[row[s] for s in out]] @ embeddings[[row[s] for s in src]].T
        results.append(_check(source, output, src, out, sims, **opts))
    return results


def groundedness_summary(
    results: Sequence[GroundednessResult], threshold: float = 0.5
) -> dict[str, float]:
    """Flat metrics for MLflow over a batch of results.

    Args:
        results: Output of `score_groundedness`.
        threshold: Score below which an output counts as a hallucination.

    Returns:
        hallucination_rate (share of scores below `threshold`), groundedness_mean,
        unsupported_number_rate (share of outputs with an unsupported number) and n_outputs;
        all 0.0 for an empty batch.
    """
    if not results:
        return dict.fromkeys(_SUMMARY_KEYS, 0.0)
    scores = np.array([r.score for r in results])
    return {
        "hallucination_rate": float(np.mean(scores < threshold)),
        "groundedness_mean": float(scores.mean()),
        "unsupported_number_rate": float(np.mean([bool(r.unsupported_numbers) for r in results])),
        "n_outputs": float(len(results)),
    }


def groundedness_descriptor(
    source_column: str, output_column: str, alias: str = "groundedness", **score_options
):
    """An Evidently 0.7 descriptor adding each row's groundedness score as a numeric column.

    Args:
        source_column: Column with the source texts.
        output_column: Column with the generated texts.
        alias: Name of the added column.
        **score_options: Passed on to `score_groundedness` (encoder, sentence_threshold, ...).

    Returns:
        An `evidently.descriptors.CustomDescriptor`, for `Dataset.from_pandas(...,
        descriptors=[...])` or `dataset.add_descriptors([...])`.
    """
    import pandas as pd
    from evidently.core.datasets import DatasetColumn
    from evidently.descriptors import CustomDescriptor

    def groundedness_score(dataset) -> DatasetColumn:
        frame = dataset.as_dataframe()
        missing = [c for c in (source_column, output_column) if c not in frame.columns]
        if missing:
            raise ValueError(
                f"groundedness descriptor needs column(s) {missing}; the dataset has "
                f"{list(frame.columns)}"
            )
        texts = [frame[c].fillna("").astype(str).tolist() for c in (source_column, output_column)]
        results = score_groundedness(*texts, **score_options)
        scores = pd.Series([r.score for r in results], index=frame.index, dtype=float)
        return DatasetColumn(type="num", data=scores)

    return CustomDescriptor(groundedness_score, alias=alias)


def fact_support(source: str, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The facts of `text` and those of them that `source` does not support.

    Facts are numbers, date expressions and names, found and compared as `score_groundedness`
    does (a number also needs one of its neighbouring words near it in the source). Read the
    other way round it gives fact recall: with a reference as `text` and a generated output as
    `source`, the facts returned second are those the output fails to reproduce.

    Returns:
        (unique facts of `text`, the unsupported ones), each as "number:15", "date:march 3" or
        "name:acme".
    """
    known = {w.lower() for w in _WORD.findall(source)}
    known |= {re.sub(r"['’]s$", "", w) for w in known}
    canon_source = _canonical(source)
    unsupported_numbers = set(_unsupported_numbers(source, text))
    facts = [
        *(("number", v) for v, _ in _number_mentions(text, _OUTPUT_NUMBER_WORDS)),
        *(("date", m.group()) for m in _DATE.finditer(_canonical(text))),
        *(("name", n.lower()) for s in split_sentences(text) for n in _names(s)),
    ]
    facts = [(k, v) for k, v in facts if k != "name" or not _DATE.fullmatch(v)]  # "March": a date
    missing = [
        (kind, value)
        for kind, value in facts
        if (kind == "number" and value in unsupported_numbers)
        or (kind == "date" and not re.search(rf"(?<!\w){re.escape(value)}(?!\w)", canon_source))
        or (kind == "name" and value not in known)
    ]
    return _unique(f"{k}:{v}" for k, v in facts), _unique(f"{k}:{v}" for k, v in missing)
