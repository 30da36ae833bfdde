"""The withdrawn-articles scenario of the ticket-reply demo: three policies under revision.

The refund, shipping-time and plan-price policies are being revised, and their knowledge-base
articles are withdrawn until the new terms are published: tickets about them reach the model
with no article. A model fine-tuned to quote the article's numbers has nothing to quote and
writes numbers anyway; the support team corrects those replies with holding replies that
restate the customer's request and say which team will answer (no term, no number).

Why not "the numbers change and the model keeps the old ones" (`ticket_replies_changed`):
the demo's v1 does not keep them. Measured on its registered version (2026-11-30, 40
tickets per scenario), 14 of 15 replies to tickets with a changed article quote the new
terms and none the old, and its detector flags 5% of that traffic against 7.5% of normal
traffic: the monitor rightly stays quiet. Articles whose numbers moved elsewhere ("shown at
checkout") or are spelled out get numbers invented in 0-40% of replies per policy, too few
for a window of 50 to alarm. With no article v1 never writes the old terms either (it did not
memorise them): it makes numbers up ("the Pro plan is $120 per month"), and the detector
flags two thirds of those replies (10 of 10 on plan prices, 6 of 10 on shipping, 4 of 10 on
refunds).

A detector fitted only on replies to prompts with an article flagged even the holding
replies (scores 0.69-0.97, flag threshold 0.07: its attention and log-probability views
saw an unfamiliar prompt). The labelled set therefore holds tickets without their article
too (`ticket_replies.ARTICLE_WITHDRAWN`, on all eight intents): a holding reply is faithful
there, the article's terms are not.

Example:
    >>> rows = generate_withdrawn_article_traffic(2, seed=0)
    >>> sorted(rows[0])
    ['article', 'changed', 'intent', 'reply', 'stale_reply', 'ticket']
"""

from __future__ import annotations

import re

import numpy as np

from attnops.demo.ticket_replies import INTENTS, _example, _pick, holding_reply
from attnops.demo.ticket_reply_banks import HOLDING_REPLIES

WITHDRAWN: tuple[str, ...] = ("plan_prices", "refund_policy", "shipping_times")
"""Intents whose article is withdrawn: about 3 in 8 tickets ask about one of them."""
TRAFFIC_COLUMNS = ("ticket", "article", "reply", "intent", "stale_reply", "changed")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


def generate_withdrawn_article_traffic(
    n: int,
    *,
    seed: int,
    withdrawn: tuple[str, ...] = WITHDRAWN,
    exclude: set[str] | None = None,
) -> list[dict]:
    """Tickets after the articles of `withdrawn` were taken out of the knowledge base.

    Intents are drawn uniformly, as in `generate_ticket_replies`; the same arguments give
    identical rows.

    Args:
        n: Number of tickets (>= 0).
        seed: Non-negative seed of the only random generator used.
        withdrawn: Intents whose tickets arrive with no article.
        exclude: Ticket texts not to produce again (updated with the new tickets).

    Returns:
        Rows with the keys `TRAFFIC_COLUMNS`: the ticket, its `article` ("" when withdrawn),
        `reply` (the correct reply: a holding reply when withdrawn, the gold one otherwise),
        `stale_reply` (the reply the old article gave, with its numbers) and `changed`.

    Raises:
        ValueError: an intent in `withdrawn` the demo does not have.
    """
    unknown = sorted(set(withdrawn) - set(HOLDING_REPLIES))
    if unknown:
        raise ValueError(
            f"withdrawn names {', '.join(unknown)}; holding replies exist for "
            f"{', '.join(sorted(HOLDING_REPLIES))}"
        )
    rng = np.random.default_rng(seed)
    seen = exclude if exclude is not None else set()
    rows = []
    while len(rows) < n:
        intent = _pick(rng, INTENTS)
        ex = _example(rng, intent)
        if ex["ticket"] in seen:
            continue
        seen.add(ex["ticket"])
        changed = intent in withdrawn
        rows.append(
            {
                "ticket": ex["ticket"],
                "article": "" if changed else ex["article"],
                "reply": holding_reply(rng, intent, ex["_fill"]) if changed else ex["reply"],
                "intent": intent,
                "stale_reply": ex["reply"],
                "changed": changed,
            }
        )
    return rows


def unsupported_numbers(reply: str, source: str) -> list[str]:
    """Numbers in `reply` that `source` (the ticket and its article) does not hold."""
    given = set(_NUMBER.findall(source))
    return [number for number in _NUMBER.findall(reply) if number not in given]
