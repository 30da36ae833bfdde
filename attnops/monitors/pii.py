"""Find and redact PII in ticket texts, offline, with presidio-analyzer pattern recognizers.

Entities: email addresses, phone numbers, Luhn-valid credit cards, IBANs (checksum-validated),
IPv4/IPv6 addresses and US SSNs. Nothing is downloaded: the NLP engine is a blank spaCy English
tokenizer (no trained model, no NER), and the email recognizer's domain check uses tldextract's
bundled public-suffix snapshot (presidio's own check would try to fetch the list from the web).

Presidio costs about a millisecond per short text once warm, so `find_pii` first skips texts
that cannot hold any of these entities (see `_may_contain_pii`).

Example:
    >>> redact(["mail me at ann@example.com"])
    ['mail me at <EMAIL_ADDRESS>']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpArtifacts, SlimSpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

ENTITIES: tuple[str, ...] = (
    "CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER", "US_SSN",
)  # fmt: skip

# Every entity above needs an '@' (email), two ':' (any IPv6, even one without digits such as
# "fe::ab") or at least 4 digits (the shortest, an IPv4 like 1.2.3.4; phones, cards, IBANs and
# SSNs have 7+). `(?:\d\D*){4}` cannot backtrack: \d and \D never match the same character.
_MAYBE_PII = re.compile(r"@|:[^:]*:|(?:\d\D*){4}")

# Phone-shaped numbers that libphonenumber rejects as unassigned (Ofcom's 07700 900xxx drama
# range, NANP area codes starting with 0 or 1) but that a reader still takes for a phone number.
_PHONE_SHAPES = [
    Pattern("NANP (area code)", r"(?<![\w+])(?:\+1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b", 0.5),
    Pattern("NANP +1", r"(?<![\w+])\+1[ .-]?\d{3}[ .-]\d{3}[ .-]\d{4}\b", 0.5),
    Pattern("UK mobile", r"(?<![\w+])(?:\+44 ?7\d{3}|07\d{3}) ?\d{6}\b", 0.5),
]
# Presidio's card pattern with 5\d{3} for its 5[0-5]\d{2}: Maestro numbers (IINs 50, 56-58) are
# cards too, and it already takes any 6\d{3}. Only Luhn-valid matches count, as before.
_CARD = Pattern(
    "Card (Luhn-checked)",
    r"\b(?!1\d{12}(?!\d))((4\d{3})|(5\d{3})|(6\d{3})|(1\d{3})|(3\d{3}))[- ]?(\d{3,4})[- ]?(\d{3,4})"
    r"[- ]?(\d{3,5})\b",
    0.3,
)


@dataclass(frozen=True)
class PiiHit:
    """One detected entity: `text[start:end]` is the value, `score` presidio's confidence."""

    entity: str
    start: int
    end: int
    score: float


class _OfflineEmailRecognizer(EmailRecognizer):
    """EmailRecognizer whose domain check never touches the network."""

    def __init__(self, extract: tldextract.TLDExtract) -> None:
        super().__init__()
        self._extract = extract

    def validate_result(self, pattern_text: str) -> bool:
        return self._extract(pattern_text).fqdn != ""


class _PhoneRecognizer(PhoneRecognizer):
    """libphonenumber-validated numbers, scored 0.6 instead of presidio's 0.4.

    At 0.4 a valid "+1 (415) 555-0123" falls below a 0.5 threshold unless a context word such as
    "phone" is near; a number that fits a numbering plan deserves more.
    """

    SCORE = 0.6


class _BlankEnglishEngine(SlimSpacyNlpEngine):
    """Tokenizer-only NLP engine over `spacy.blank("en")`: no model to load or download.

    A blank pipeline has no lemmatizer, so lower-cased tokens stand in for lemmas; presidio's
    context words ("phone", "card", "ssn", ...) then still raise scores.
    """

    def __init__(self) -> None:
        super().__init__(auto_download=False)

    def load(self) -> None:
        self.nlp = {"en": spacy.blank("en")}

    def _doc_to_nlp_artifact(self, doc, language: str) -> NlpArtifacts:
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[token.idx for token in doc],
            lemmas=[token.lower_ for token in doc],
            nlp_engine=self,
            language=language,
            scores=[],
        )


@cache
def build_analyzer() -> AnalyzerEngine:
    """The presidio engine for `ENTITIES`, built once per process (~0.3 s) and cached.

    Call `build_analyzer.cache_clear()` to force a rebuild (tests do, to prove it is offline).
    """
    # No suffix-list URLs and no cache dir: tldextract uses its bundled snapshot, fetches nothing
    # and writes nothing under ~/.cache.
    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        _OfflineEmailRecognizer(extract),
        _PhoneRecognizer(supported_regions=("US", "GB")),
        PatternRecognizer("PHONE_NUMBER", name="PhoneShapeRecognizer", patterns=_PHONE_SHAPES),
        CreditCardRecognizer(patterns=[_CARD]),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry, nlp_engine=_BlankEnglishEngine(), supported_languages=["en"]
    )


def _may_contain_pii(text: str) -> bool:
    """False only when `text` cannot hold any entity in `ENTITIES` (cheap regex pre-filter)."""
    return _MAYBE_PII.search(text) is not None


def _resolve(hits: list[PiiHit]) -> list[PiiHit]:
    """Merges each cluster of overlapping hits into one hit over the cluster's whole extent.

    It takes the entity and score of the highest-scoring (then longest) member; spanning the
    union means redaction never leaves part of a number behind.
    """
    clusters: list[list[PiiHit]] = []
    for hit in sorted(hits, key=lambda h: h.start):
        if clusters and hit.start < max(h.end for h in clusters[-1]):
            clusters[-1].append(hit)
        else:
            clusters.append([hit])
    resolved = []
    for cluster in clusters:
        best = max(cluster, key=lambda h: (h.score, h.end - h.start))
        end = max(h.end for h in cluster)
        resolved.append(PiiHit(best.entity, cluster[0].start, end, best.score))
    return resolved


def find_pii(
    texts: Sequence[str], *, min_score: float = 0.5, prefilter: bool = True
) -> list[list[PiiHit]]:
    """Detects `ENTITIES` in each text.

    Args:
        texts: The texts to scan.
        min_score: Hits scoring below this are dropped (presidio scores: 1.0 for checksum- or
            domain-validated emails, cards and IBANs, 0.6 for IPs and valid phone numbers, 0.5
            for phone-shaped numbers and dashed SSNs; context words add 0.35).
        prefilter: Skip texts that cannot contain any entity (same results, much faster).

    Returns:
        Per text, non-overlapping hits sorted by position (overlaps merged as in `redact`).

    Raises:
        TypeError: If a text is not a string (e.g. a missing value from a data frame).
    """
    analyzer = build_analyzer()
    results: list[list[PiiHit]] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{i}] is {type(text).__name__}, expected str; fill missing texts first"
            )
        if prefilter and not _may_contain_pii(text):
            results.append([])
            continue
        found = analyzer.analyze(text=text, language="en", entities=list(ENTITIES))
        hits = [
            PiiHit(r.entity_type, r.start, r.end, float(r.score))
            for r in found
            if r.score >= min_score
        ]
        results.append(_resolve(hits))
    return results


def redact(texts: Sequence[str], hits: list[list[PiiHit]] | None = None) -> list[str]:
    """Replaces every hit of `find_pii` by its entity name, e.g. `<PHONE_NUMBER>`.

    Overlapping hits are replaced once, as one placeholder over their whole extent, named after
    the highest-scoring of them. Pass `hits` from an earlier `find_pii(texts)` to skip a
    second scan.
    """
    redacted = []
    for text, found in zip(texts, find_pii(texts) if hits is None else hits, strict=True):
        for hit in reversed(found):  # right to left keeps earlier offsets valid
            text = f"{text[: hit.start]}<{hit.entity}>{text[hit.end :]}"
        redacted.append(text)
    return redacted


def pii_summary(texts: Sequence[str], *, min_score: float = 0.5) -> dict[str, float]:
    """Flat PII metrics for a window of texts, ready for `mlflow.log_metrics`.

    Returns:
        `pii_texts` (texts with at least one hit), `pii_share` (their share; 0.0 when `texts` is
        empty) and `pii_hits.<ENTITY>` (hit count) for every entity in `ENTITIES`.
    """
    hits_per_text = find_pii(texts, min_score=min_score)
    n_pii = sum(bool(hits) for hits in hits_per_text)
    summary = {"pii_texts": float(n_pii), "pii_share": n_pii / len(texts) if len(texts) else 0.0}
    for entity in ENTITIES:
        count = sum(hit.entity == entity for hits in hits_per_text for hit in hits)
        summary[f"pii_hits.{entity}"] = float(count)
    return summary
