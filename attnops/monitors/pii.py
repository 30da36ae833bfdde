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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

ENTITIES: tuple[str, ...] = (
    "CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER", "US_SSN",
)  # fmt: skip

# Every entity above needs an '@' or a bracketed "at" (email), two ':' (any IPv6, even one
# without digits such as "fe::ab") or at least 4 digits (the shortest, an IPv4 like 1.2.3.4;
# phones, cards, IBANs and SSNs have 7+); a spelled-out email has the words "at" and "dot".
# `(?:\d\D*){4}` cannot backtrack: \d and \D never match the same character.
_MAYBE_PII = re.compile(r"@|:[^:]*:|(?:\d\D*){4}|[\[({<]\s*at\s*[\])}>]", re.IGNORECASE)
_WORD_AT, _WORD_DOT = re.compile(r"\bat\b", re.I), re.compile(r"\bdot\b", re.I)


@dataclass(frozen=True)
class PiiHit:
    """One detected entity: `text[start:end]` is the value, `score` presidio's confidence."""

    entity: str
    start: int
    end: int
    score: float


@cache
def build_analyzer() -> AnalyzerEngine:
    """The presidio engine for `ENTITIES`, built once per process (~0.3 s) and cached.

    Presidio (and the spaCy and transformers it imports) loads here, at the first scan, not
    when this module is imported. Call `build_analyzer.cache_clear()` to force a rebuild
    (tests do, to prove it is offline).
    """
    from attnops.monitors.pii_engine import build_analyzer as build

    return build()


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
