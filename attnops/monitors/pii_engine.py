"""The presidio engine behind `attnops.monitors.pii`: recognizers, patterns, NLP engine.

Kept apart from `pii` because presidio imports spaCy and transformers (seconds on a small
machine): the inference log reader, the monitor and `attnops rollback` import `pii` for its
names and cheap checks, and only the code that scans texts loads this module.
"""

from __future__ import annotations

import re

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


def build_analyzer() -> AnalyzerEngine:
    """A new presidio engine for `ENTITIES` (~0.3 s); `pii.build_analyzer` caches it."""
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
