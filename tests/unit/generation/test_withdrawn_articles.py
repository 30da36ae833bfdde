"""The demo's withdrawn-articles scenario: what the tickets carry and what the corrections say."""

from __future__ import annotations

import pytest

from attnops.demo.reply_traffic import ReplyTraffic
from attnops.demo.ticket_replies import article
from attnops.demo.withdrawn_articles import (
    WITHDRAWN,
    generate_withdrawn_article_traffic,
    unsupported_numbers,
)


def test_tickets_about_a_withdrawn_policy_arrive_without_its_article():
    rows = generate_withdrawn_article_traffic(200, seed=0)
    assert rows == generate_withdrawn_article_traffic(200, seed=0)  # seeded
    for row in rows:
        assert row["changed"] == (row["intent"] in WITHDRAWN)
        assert row["article"] == ("" if row["changed"] else article(row["intent"]))
    assert 0.25 < sum(r["changed"] for r in rows) / len(rows) < 0.5  # 3 of 8 intents


def test_corrected_replies_state_no_number_the_ticket_lacks_and_stale_ones_do():
    """The correction is grounded in the ticket alone; the old article's reply is not."""
    rows = [r for r in generate_withdrawn_article_traffic(200, seed=1) if r["changed"]]
    for row in rows:
        assert unsupported_numbers(row["reply"], row["ticket"]) == [], row["reply"]
    stale = [r for r in rows if unsupported_numbers(r["stale_reply"], r["ticket"])]
    assert len(stale) == len(rows)


def test_replies_are_read_for_invented_numbers_and_old_terms():
    rows = generate_withdrawn_article_traffic(40, seed=2)
    plan = next(r for r in rows if r["intent"] == "plan_prices")
    shipping = next(r for r in rows if r["intent"] == "shipping_times")
    other = next(r for r in rows if not r["changed"])
    replies = {
        "a": {**plan, "output": "The Pro plan is $120 per month."},  # invented
        "b": {**shipping, "output": "Shipping takes 3 to 5 business days."},  # the old term
        "c": {**plan, "output": plan["reply"]},  # the correction
        "d": {**other, "output": "It costs $1,000."},  # not about a withdrawn policy
    }
    n, invented, old = ReplyTraffic(replies=replies).changed_replies()
    assert (n, invented, old) == (3, [replies["a"]["output"], replies["b"]["output"]], 1)


def test_an_unknown_withdrawn_intent_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="withdrawn names warp_drive; holding replies exist"):
        generate_withdrawn_article_traffic(1, seed=0, withdrawn=("warp_drive",))
