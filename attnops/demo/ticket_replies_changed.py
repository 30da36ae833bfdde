"""The changed-knowledge scenario of the ticket-reply demo: some policies' numbers change.

The knowledge base is updated (a shorter refund window, new plan prices, new shipping
times) and live tickets now arrive with the new article. A model fine-tuned on the old
articles keeps answering with the numbers it learnt: its replies cite terms that the new
article no longer holds, which is what the live hallucination monitor has to catch. The
correct replies under the new numbers are the corrections `retrain` fine-tunes on.

Example:
    >>> rows = generate_changed_knowledge_traffic(2, seed=0)
    >>> sorted(rows[0])
    ['article', 'changed', 'intent', 'reply', 'stale_reply', 'ticket']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from attnops.demo.ticket_replies import INTENTS, _example, _pick, _render
from attnops.demo.ticket_reply_banks import POLICIES, Policy

CHANGED_TERMS: dict[str, dict[str, str]] = {
    "refund_policy": {"window": "14 days", "payout": "10 business days"},
    "plan_prices": {"basic": "$12", "plus": "$24", "pro": "$49"},
    "shipping_times": {
        "us": "4 to 6 business days",
        "canada": "8 to 12 business days",
        "europe": "12 to 16 business days",
    },
}
"""The demo's knowledge-base update: intent -> term -> new value. No old value's number
occurs in its new article, so a reply that keeps an old term states an unsupported number.
Three of the eight intents change: about 3 in 8 tickets ask about a changed policy."""
TRAFFIC_COLUMNS: tuple[str, ...] = (
    "ticket",
    "article",
    "reply",
    "intent",
    "stale_reply",
    "changed",
)


def changed_knowledge(
    changes: Mapping[str, Mapping[str, str]] = CHANGED_TERMS,
) -> dict[str, Policy]:
    """The knowledge base with `changes` applied (new terms, so new article texts).

    Args:
        changes: intent -> term name -> new value, e.g. {"plan_prices": {"basic": "$12"}}.

    Raises:
        ValueError: an intent or term name the knowledge base does not have.
    """
    updated = dict(POLICIES)
    for intent, terms in changes.items():
        if intent not in POLICIES:
            raise ValueError(
                f"changed knowledge names intent {intent!r}; known: {', '.join(INTENTS)}"
            )
        unknown = sorted(set(terms) - set(POLICIES[intent].terms))
        if unknown:
            raise ValueError(
                f"changed knowledge names term(s) {', '.join(unknown)} of {intent}; its terms "
                f"are {', '.join(sorted(POLICIES[intent].terms))}"
            )
        policy = POLICIES[intent]
        updated[intent] = dataclasses.replace(policy, terms={**policy.terms, **terms})
    return updated


def generate_changed_knowledge_traffic(
    n: int,
    *,
    seed: int,
    changes: Mapping[str, Mapping[str, str]] = CHANGED_TERMS,
    exclude: set[str] | None = None,
) -> list[dict]:
    """Tickets answered from the updated knowledge base, with the stale model's replies.

    Intents are drawn uniformly, as in `generate_ticket_replies`; the same arguments give
    identical rows.

    Args:
        n: Number of tickets (>= 0).
        seed: Non-negative seed of the only random generator used.
        changes: The knowledge-base update (`changed_knowledge`).
        exclude: Ticket texts not to produce again (updated with the new tickets).

    Returns:
        Rows with the keys `TRAFFIC_COLUMNS`: the ticket, its new article, `reply` (correct
        under the new terms: the correction to train on), `stale_reply` (the same reply with
        the old terms: what a model trained on the old articles writes) and `changed` (the
        two differ).
    """
    new = changed_knowledge(changes)
    rng = np.random.default_rng(seed)
    seen = exclude if exclude is not None else set()
    rows = []
    while len(rows) < n:
        intent = _pick(rng, INTENTS)
        ex = _example(rng, intent, new)
        if ex["ticket"] in seen:
            continue
        seen.add(ex["ticket"])
        old, fill = POLICIES[intent], ex["_fill"]
        stale = {**fill, **old.terms}
        if old.variants:  # the variant the ticket asks about ("region" = "plan"), old term
            stale["variant_term"] = old.terms[old.variants[fill["region"]]]
        stale_reply = _render(ex["_template"], stale)
        rows.append(
            {
                "ticket": ex["ticket"],
                "article": ex["article"],
                "reply": ex["reply"],
                "intent": intent,
                "stale_reply": stale_reply,
                "changed": stale_reply != ex["reply"],
            }
        )
    return rows
