"""PII detection and redaction: every entity found, plain numbers left alone, offline."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path

import pytest

from attnops.demo.tickets import generate_tickets
from attnops.monitors import pii
from attnops.monitors.pii import ENTITIES, PiiHit, find_pii, pii_summary, redact

REPO = Path(__file__).resolve().parents[2]

# (entity, sentence, value): the value must be found with exactly this span and type.
CASES = [
    ("EMAIL_ADDRESS", "You can reach me at ines75@webmail.co, thanks.", "ines75@webmail.co"),
    ("PHONE_NUMBER", "Call me on +1 (415) 555-0123 if that's easier.", "+1 (415) 555-0123"),
    ("PHONE_NUMBER", "Text me at 07700 900123.", "07700 900123"),
    ("PHONE_NUMBER", "Reach me on 020 7946 0958 after six.", "020 7946 0958"),
    ("CREDIT_CARD", "The card I used is 4111 1111 1111 1111.", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "paid with 5555-5555-5555-4444 twice", "5555-5555-5555-4444"),
    ("IBAN_CODE", "Refund to GB82 WEST 1234 5698 7654 32 please.", "GB82 WEST 1234 5698 7654 32"),
    ("IP_ADDRESS", "The app says 192.168.1.10 is blocked.", "192.168.1.10"),
    ("IP_ADDRESS", "logged in from 2001:db8::8a2e:370:7334 today", "2001:db8::8a2e:370:7334"),
    ("US_SSN", "For verification: 536-22-8726.", "536-22-8726"),
    # Presidio drops published sample numbers; people do use them, and a log cannot tell.
    ("US_SSN", "My SSN is 078-05-1120.", "078-05-1120"),
    ("US_SSN", "My SSN is 078051120, please update it.", "078051120"),
    ("US_SSN", "social security no. 536228726", "536228726"),
    ("EMAIL_ADDRESS", "my email is name at example dot com", "name at example dot com"),
    (
        "EMAIL_ADDRESS",
        "write to ann.lee (at) mailbox (dot) co (dot) uk",
        "ann.lee (at) mailbox (dot) co (dot) uk",
    ),
    ("EMAIL_ADDRESS", "contact: jo[at]firma.de thanks", "jo[at]firma.de"),
]
# No PII, but digits, dates, amounts and order numbers a naive scanner would flag.
CLEAN = [
    "Where is my order? It was due yesterday.",
    "Order 12345678 arrived on 2024-03-14 but the box was empty.",
    "order #A1234567 placed on 03/14, I paid $143.95 at 10:30.",
    "Delivered 14.03.2024, tracking 1Z999AA10123456784.",
    "hi: can I change my address: 12 High Street, Leeds",
    "",
    # Nine digits without "ssn"/"social" nearby, "at ... dot" in prose, a web address.
    "order number 100234567 never came",
    "my security code is 123456780",
    "I bought it at amazon dot com last week",
    "look at example.com for the terms",
    "my email is ann at example dot notatld",
]


@pytest.mark.parametrize(("entity", "text", "value"), CASES)
def test_each_entity_is_found_and_redacted(entity, text, value):
    """Each entity type is found with its exact span and replaced by its placeholder."""
    start = text.index(value)
    (hits,) = find_pii([text])
    assert [(h.entity, h.start, h.end) for h in hits] == [(entity, start, start + len(value))]
    assert redact([text]) == [text.replace(value, f"<{entity}>")]


def test_luhn_invalid_card_number_is_not_a_card():
    """A 16-digit number that fails the Luhn check is not flagged at all."""
    assert find_pii(["The card I used is 4111 1111 1111 1112."]) == [[]]


def test_clean_texts_pass_through_unchanged():
    """Order numbers, dates, amounts and times are not PII: no hits, text unchanged."""
    assert find_pii(CLEAN) == [[] for _ in CLEAN]
    assert redact(CLEAN) == CLEAN


def test_redaction_leaves_no_digit_of_a_phone_or_card_behind():
    """Nothing of the numbers survives, in any of the demo generator's formats."""
    text = (
        "For verification, my card is 4611-4065-3799-4628 and my phone is +1 (015) 555-1234. "
        "Or call 07700 965893, or card 5646 6451 8645 0491."
    )
    (redacted,) = redact([text])
    assert not re.search(r"\d", redacted), redacted
    assert redacted.count("<PHONE_NUMBER>") == 2 and redacted.count("<CREDIT_CARD>") == 2


def test_overlapping_hits_merge_into_one_span():
    """Overlaps become one hit over their union, named after the best-scoring hit."""
    hits = [PiiHit("PHONE_NUMBER", 5, 15, 0.6), PiiHit("CREDIT_CARD", 0, 12, 1.0)]
    hits.append(PiiHit("US_SSN", 20, 31, 0.5))
    assert pii._resolve(hits) == [PiiHit("CREDIT_CARD", 0, 15, 1.0), hits[2]]


def test_prefilter_skips_only_texts_without_pii():
    """The pre-filter changes speed, not results, and keeps digit-free IPv6 addresses."""
    texts = [text for _, text, _ in CASES] + CLEAN + ["host fe80::ab:cd is down"]
    assert find_pii(texts, prefilter=True) == find_pii(texts, prefilter=False)
    assert find_pii(["host fe80::ab:cd is down"])[0][0].entity == "IP_ADDRESS"
    assert not pii._may_contain_pii("Where is my order #A12? Thanks: Ann")


def test_pii_summary_is_flat_floats():
    """Counts per entity plus share of texts with any hit, all floats for MLflow."""
    texts = [CASES[0][1], CASES[1][1] + " " + CASES[4][1], CLEAN[0], CLEAN[1]]
    summary = pii_summary(texts)
    assert set(summary) == {"pii_texts", "pii_share"} | {f"pii_hits.{e}" for e in ENTITIES}
    assert all(type(v) is float for v in summary.values())
    assert (summary["pii_texts"], summary["pii_share"]) == (2.0, 0.5)
    assert summary["pii_hits.PHONE_NUMBER"] == summary["pii_hits.CREDIT_CARD"] == 1.0
    assert summary["pii_hits.US_SSN"] == 0.0
    assert pii_summary([])["pii_share"] == 0.0


def test_missing_text_raises_with_its_index():
    with pytest.raises(TypeError, match=r"texts\[1\] is float"):
        find_pii(["fine", float("nan")])


def test_engine_builds_and_scans_with_the_network_disabled(monkeypatch):
    """No spaCy model download and no public-suffix-list fetch: not even an attempt."""
    attempts = []

    def deny(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", deny)
    monkeypatch.setattr(socket.socket, "connect", deny)
    pii.build_analyzer.cache_clear()
    try:
        (hits,) = find_pii(["mail ann.lee@mailbox.org or call +1 (415) 555-0123"])
    finally:
        pii.build_analyzer.cache_clear()
    assert {h.entity for h in hits} == {"EMAIL_ADDRESS", "PHONE_NUMBER"}
    assert attempts == []


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("pii_recall", REPO / "benchmarks/pii_recall.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_seeded_recall_and_false_positive_rate():
    """Planted values of every entity are found (exact span); clean demo tickets are not."""
    bench = _load_benchmark()
    recall, missed = bench.planted_recall(bench.planted_texts(100, seed=0))
    assert recall["all"] >= 0.95, missed
    assert set(recall) == {*ENTITIES, "all"}
    tickets = generate_tickets(220, seed=7, scenario="normal")
    clean = tickets.loc[~tickets["has_pii"], "text"].tolist()[:200]
    fpr, flagged = bench.false_positive_rate(clean)
    assert len(clean) == 200 and fpr <= 0.02, flagged
