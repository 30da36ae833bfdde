"""Find and redact PII in ticket texts, offline, with presidio-analyzer pattern recognizers.

Entities: email addresses (also spelled out, "ann at example dot com"), phone numbers,
Luhn-valid credit cards, IBANs (checksum-validated), IPv4/IPv6 addresses and US SSNs (also
as 9 bare digits next to "SSN" or "social"). Nothing is downloaded: the NLP engine is a blank
spaCy English tokenizer (no trained model, no NER), and the email recognizers' domain checks
use tldextract's bundled public-suffix snapshot (presidio's own would fetch the list from the
web).

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

# Every entity above needs an '@' or a bracketed "at" (email), two ':' (any IPv6, even one
# without digits such as "fe::ab") or at least 4 digits (the shortest, an IPv4 like 1.2.3.4;
# phones, cards, IBANs and SSNs have 7+); a spelled-out email has the words "at" and "dot".
# `(?:\d\D*){4}` cannot backtrack: \d and \D never match the same character.
_MAYBE_PII = re.compile(r"@|:[^:]*:|(?:\d\D*){4}|[\[({<]\s*at\s*[\])}>]", re.IGNORECASE)
_WORD_AT, _WORD_DOT = re.compile(r"\bat\b", re.I), re.compile(r"\bdot\b", re.I)

# Spelled-out emails: "ann.lee at example dot com", "ann (at) example (dot) co (dot) uk",
# "ann[at]example.com". A bracketed at is deliberate obfuscation (0.6); plain words "at" and
# "dot" also occur in prose ("bought it at amazon dot com"), so that form scores 0.3 and counts
# only next to a context word such as "email" (+0.35). The domain must end in a real suffix.
_LOCAL = r"(?<![\w.+%-])[a-z0-9][a-z0-9._%+-]*"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_AT_BRACKET = r"\s*[\[({<]\s*at\s*[\])}>]\s*"
_DOT_SPELLED = r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"
_DOT_ANY = rf"(?:{_DOT_SPELLED}|\.)"
_SPELLED_EMAILS = [
    Pattern(
        "email, bracketed at",
        rf"{_LOCAL}{_AT_BRACKET}{_LABEL}(?:{_DOT_ANY}{_LABEL})*{_DOT_ANY}[a-z]{{2,24}}\b",
        0.6,
    ),
    Pattern(
        "email, words at and dot",
        rf"{_LOCAL}\s+at\s+{_LABEL}(?:{_DOT_ANY}{_LABEL})*{_DOT_SPELLED}[a-z]{{2,24}}\b",
        0.3,
    ),
]
_EMAIL_CONTEXT = ["email", "mail", "contact", "reach", "write", "inbox", "address"]

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


class _SpelledEmailRecognizer(PatternRecognizer):
    """Emails written out to dodge scrapers; the domain's suffix is checked offline."""

    def __init__(self, extract: tldextract.TLDExtract) -> None:
        super().__init__(
            "EMAIL_ADDRESS",
            name="SpelledEmailRecognizer",
            patterns=_SPELLED_EMAILS,
            context=_EMAIL_CONTEXT,
        )
        self._extract = extract

    def invalidate_result(self, pattern_text: str) -> bool:
        domain = re.split(r"\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+", pattern_text, flags=re.I)[-1]
        domain = re.sub(_DOT_SPELLED, ".", domain, flags=re.I)
        return self._extract(domain).fqdn == ""


class _SsnRecognizer(UsSsnRecognizer):
    """Presidio's SSN check without its list of published sample numbers.

    Presidio drops 078-05-1120, 123-45-6789 and 987-65-4320 as placeholders; 078-05-1120 was
    printed on a wallet insert and then used as their own by thousands of people, and a reader
    of a log cannot tell a sample from a real number either, so they are redacted too.
    Structural checks stay: mixed separators, all one digit, zero groups, area 000 or 666.
    """

    def invalidate_result(self, pattern_text: str) -> bool:
        if len({c for c in pattern_text if c in ".- "}) > 1:  # 536-22 8726: not one number
            return True
        digits = "".join(c for c in pattern_text if c.isdigit())
        never_issued = digits[:3] in ("000", "666") or digits[3:5] == "00" or digits[5:] == "0000"
        return never_issued or len(set(digits)) == 1


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
        _SsnRecognizer(),
        # Nine bare digits are an SSN only next to "ssn"/"social" (0.2 + 0.35 context): without
        # it they are order or account numbers. Not "security", as in "security code".
        _SsnRecognizer(
            patterns=[Pattern("SSN, 9 digits (needs context)", r"\b\d{9}\b", 0.2)],
            context=["ssn", "ssns", "social"],
            name="UnseparatedSsnRecognizer",
        ),
        _SpelledEmailRecognizer(extract),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry, nlp_engine=_BlankEnglishEngine(), supported_languages=["en"]
    )


def _may_contain_pii(text: str) -> bool:
    """False only when `text` cannot hold any entity in `ENTITIES` (cheap regex pre-filter)."""
    if _MAYBE_PII.search(text) is not None:
        return True
    return _WORD_AT.search(text) is not None and _WORD_DOT.search(text) is not None


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
