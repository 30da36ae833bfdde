"""Deterministic generator of a generative demo task: answer a support ticket from its article.

Each example pairs a customer ticket with the knowledge-base article of its intent and a short
gold reply that resolves the ticket with facts found in the ticket (name, order number, product,
amount, date) and the article (the policy's days, prices, steps) only. Banks live in
`attnops.demo.ticket_reply_banks`.

The labelled hallucination set is built on tickets no split contains: every faithful reply
(label 0) has a minimally altered twin (label 1) of one `KINDS` kind, so a detector's
errors can be read per kind. Some kinds are easy for text overlap (an invented phone number),
others are not (another valid term of the same article, a flipped negation). One kind has no
article in its prompt (`ARTICLE_WITHDRAWN`): the faithful reply is a holding reply and the
twin quotes the policy's terms anyway, so the detector learns what a faithful reply to a
ticket without its article looks like (a knowledge base never covers every ticket).

Example:
    >>> rows = generate_ticket_replies(2, seed=0)
    >>> sorted(rows[0])
    ['article', 'intent', 'reply', 'ticket']
"""

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from attnops.demo import phrases as ph
from attnops.demo.ticket_reply_banks import (
    GREETINGS,
    HOLDING_REPLIES,
    INVENTED_CONTACTS,
    MONTHS,
    OPENERS,
    POLICIES,
    SIGN_OFFS,
    Policy,
)

INTENTS: tuple[str, ...] = tuple(sorted(POLICIES))
KINDS: tuple[str, ...] = (
    "number_swap", "date_swap", "product_swap", "policy_term_swap", "foreign_sentence",
    "negation_flip", "invented_contact", "article_withdrawn",
)  # fmt: skip
ARTICLE_WITHDRAWN = "article_withdrawn"
FAITHFUL = "faithful"
SPLIT_COLUMNS: tuple[str, ...] = ("ticket", "article", "reply", "intent")
LABELLED_COLUMNS: tuple[str, ...] = (
    "ticket",
    "article",
    "reply",
    "label",
    "kind",
    "intent",
    "pair",
)

_SLOT = re.compile(r"\{(\w+)\}")
_FLIP = re.compile(r"\[([^~\]]*)~([^\]]*)\]")
_TOPIC = re.compile(r"^@(!?)(\w+) ")
_DIGITS = re.compile(r"\d+")
_DATE_TERM = re.compile(r"^\d{1,2}(?:st|nd|rd|th)$")
_MAX_TRIES = 200  # draws per labelled pair before giving up on a kind (never reached in practice)


def _pick(rng: np.random.Generator, items: Sequence):
    """Draws one element of a sequence uniformly."""
    return items[int(rng.integers(len(items)))]


def article(intent: str, policies: Mapping[str, Policy] = POLICIES) -> str:
    """The knowledge-base article of `intent` (one of `INTENTS`) in `policies`."""
    policy = policies[intent]
    return policy.article.format_map(policy.terms)


def _entities(rng: np.random.Generator, policy: Policy) -> dict[str, str]:
    """Slot values of one ticket: customer, order and, for variant intents, the variant."""
    ent = {
        "name": _pick(rng, ph.FIRST_NAMES),
        "order": f"#{rng.integers(10_000, 100_000)}",
        "product": _pick(rng, ph.PRODUCTS),
        "amount": f"${rng.integers(15, 400)}.{_pick(rng, ['99', '49', '00', '95'])}",
        "date": f"{_pick(rng, MONTHS)} {rng.integers(1, 29)}",
        "minutes": str(rng.integers(5, 100)),
        "months": str(rng.integers(2, 23)),
    }
    if policy.variants:
        variant = _pick(rng, sorted(policy.variants))
        ent |= {"region": variant, "plan": variant}
        ent["variant_term"] = policy.terms[policy.variants[variant]]
    return ent


def _ticket(rng: np.random.Generator, policy: Policy, ent: dict[str, str]) -> tuple[str, str, set]:
    """A ticket text, its request template and the entity slots it mentions."""
    core = _pick(rng, policy.tickets)
    body = core.format_map(ent)
    if rng.random() < 0.15:  # some customers type in lowercase
        body = body.lower()
    greeting = _pick(rng, GREETINGS)
    sep = _pick(rng, ["\n\n", " "])
    text = (greeting + sep if greeting else "") + body + sep + _pick(rng, SIGN_OFFS)
    return text.format_map({"name": ent["name"]}), core, {"name", *_SLOT.findall(core)}


def _fits(template: str, core: str, used: set) -> bool:
    """Whether a reply template answers the ticket request `core` mentioning slots `used`."""
    entity_slots = {"order", "product", "amount", "date", "minutes", "months", "region", "plan"}
    topic = _TOPIC.match(template)
    on_topic = not topic or (topic.group(2) in core.lower()) != bool(topic.group(1))
    return on_topic and set(_SLOT.findall(template)) & entity_slots <= used


def _reply_template(rng: np.random.Generator, policy: Policy, core: str, used: set) -> str:
    """A reply template that fits the ticket, without its topic tag, with an opener."""
    template = _TOPIC.sub("", _pick(rng, [t for t in policy.replies if _fits(t, core, used)]))
    opener = _pick(rng, OPENERS)
    return opener + template if opener else template[0].upper() + template[1:]


def _render(template: str, fill: dict[str, str], *, flipped: bool = False) -> str:
    """Fills a reply template, taking the flipped side of each ``[kept|flipped]`` marker."""
    return _FLIP.sub(lambda m: m.group(2 if flipped else 1), template).format_map(fill)


def _example(
    rng: np.random.Generator, intent: str, policies: Mapping[str, Policy] = POLICIES
) -> dict:
    """One ticket with its article, gold reply template and the values that fill it."""
    policy = policies[intent]
    ent = _entities(rng, policy)
    ticket, core, used = _ticket(rng, policy, ent)
    template = _reply_template(rng, policy, core, used)
    fill = {**policy.terms, **ent}
    return {
        "ticket": ticket,
        "article": article(intent, policies),
        "reply": _render(template, fill),
        "intent": intent,
        "_template": template,
        "_fill": fill,
    }


def holding_reply(rng: np.random.Generator, intent: str, fill: dict[str, str]) -> str:
    """The faithful reply to a ticket of `intent` whose article is missing: only facts from
    the ticket, and which team will answer."""
    opener = _pick(rng, OPENERS)
    template = HOLDING_REPLIES[intent]
    text = opener + template if opener else template[0].upper() + template[1:]
    return text.format_map(fill)


def _quotes_terms(ex: dict) -> bool:
    """Whether `ex`'s reply states a policy term the ticket alone does not hold."""
    terms = POLICIES[ex["intent"]].terms.values()
    return any(_replace_once(ex["reply"], t, t) and t not in ex["ticket"] for t in terms)


def _replace_once(text: str, old: str, new: str) -> str | None:
    """`text` with the first standalone occurrence of `old` replaced, or None if absent."""
    pattern = rf"(?<![\w$#.]){re.escape(old)}(?![\w]|\.\d)"
    out, n = re.subn(pattern, lambda _: new, text, count=1)
    return out if n else None


def _new_number(rng: np.random.Generator, value: str, source: str) -> str:
    """`value` with its first number changed to one that `source` does not contain."""
    match = _DIGITS.search(value)
    n = int(match.group())
    taken = {int(d) for d in _DIGITS.findall(source)}
    options = [n + k for k in (1, 2, 3, 5, 10, 15, 20, n) if n + k not in taken]
    options += [n - k for k in (1, 2) if n - k > 0 and n - k not in taken]
    return value[: match.start()] + str(_pick(rng, options)) + value[match.end() :]


def _alter(rng: np.random.Generator, ex: dict, kind: str) -> str | None:
    """The minimally altered twin of `ex`'s reply, or None when `kind` does not apply."""
    reply, fill, source = ex["reply"], ex["_fill"], ex["ticket"] + "\n" + ex["article"]
    policy = POLICIES[ex["intent"]]
    present = {k: v for k, v in fill.items() if _replace_once(reply, v, v) is not None}
    if kind == "number_swap":
        slots = [k for k, v in present.items() if _DIGITS.search(v) and not _DATE_TERM.match(v)]
        slots = [k for k in slots if k not in ("order", "date")]
        return _swap_slot(rng, reply, present, slots, lambda v: _new_number(rng, v, source))
    if kind == "date_swap":
        slots = [k for k, v in present.items() if k == "date" or _DATE_TERM.match(v)]
        return _swap_slot(rng, reply, present, slots, lambda v: _new_date(rng, v, source))
    if kind == "product_swap":
        others = [p for p in ph.PRODUCTS if p.split()[0].lower() not in source.lower()]
        return _swap_slot(rng, reply, present, ["product"], lambda _: _pick(rng, others))
    if kind == "policy_term_swap":
        # Variant terms (a region's shipping time) are in the groups under their own names.
        groups = [g for g in policy.swap_groups if any(t in present for t in g)]
        if not groups:
            return None
        group = _pick(rng, groups)
        value = fill[_pick(rng, [t for t in group if t in present])]
        others = [fill[t] for t in group if fill[t] != value]
        return _replace_once(reply, value, _pick(rng, others))
    if kind == "negation_flip":
        flipped = _render(ex["_template"], fill, flipped=True)
        return flipped if flipped != reply else None
    if kind == "foreign_sentence":
        other = _pick(rng, [i for i in INTENTS if i != ex["intent"]])
        sentence = _pick(rng, re.split(r"(?<=\.)\s+", article(other)))
        return _insert_sentence(rng, reply, sentence)
    if kind == "invented_contact":
        if "order" in present and rng.random() < 0.4:
            return _swap_slot(rng, reply, present, ["order"], lambda v: _new_order(rng, source))
        contact = _pick(rng, INVENTED_CONTACTS).format(case=rng.integers(100, 1000))
        return _insert_sentence(rng, reply, contact)
    raise ValueError(f"unknown kind {kind!r}; expected one of: {', '.join(KINDS)}")


def _swap_slot(rng, reply: str, present: dict, slots: list[str], new_value) -> str | None:
    """Replaces the value of one of `slots` found in the reply by `new_value(old)`."""
    slots = [k for k in slots if k in present]
    if not slots:
        return None
    old = present[_pick(rng, slots)]
    return _replace_once(reply, old, new_value(old))


def _new_date(rng: np.random.Generator, value: str, source: str) -> str:
    """Another date of the same form ("March 3" or "1st") that `source` does not contain."""
    while True:
        if _DATE_TERM.match(value):
            new = _pick(rng, ("2nd", "5th", "10th", "12th", "15th", "20th", "25th", "28th"))
        else:
            new = f"{_pick(rng, MONTHS)} {rng.integers(1, 29)}"
        if new != value and new not in source:
            return new


def _new_order(rng: np.random.Generator, source: str) -> str:
    """An order number that `source` does not contain."""
    while True:
        order = f"#{rng.integers(10_000, 100_000)}"
        if order not in source:
            return order


def _insert_sentence(rng: np.random.Generator, reply: str, sentence: str) -> str:
    """Adds `sentence` after the first sentence of `reply` or at its end."""
    sentences = re.split(r"(?<=\.)\s+", reply)
    at = int(rng.integers(1, len(sentences) + 1))
    return " ".join([*sentences[:at], sentence, *sentences[at:]])


def _public(ex: dict) -> dict:
    return {k: ex[k] for k in SPLIT_COLUMNS}


def generate_ticket_replies(n: int, *, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """Generates `n` examples (intents uniform); the same arguments give identical rows.

    Args:
        n: Number of examples (>= 0).
        seed: Non-negative seed of the only random generator used.
        exclude: Ticket texts not to produce again (updated with the new tickets).

    Returns:
        Rows with the keys `SPLIT_COLUMNS`, each ticket distinct from the others and `exclude`.
    """
    rng = np.random.default_rng(seed)
    seen = exclude if exclude is not None else set()
    rows = []
    while len(rows) < n:
        ex = _example(rng, _pick(rng, INTENTS))
        if ex["ticket"] not in seen:
            seen.add(ex["ticket"])
            rows.append(_public(ex))
    return rows


def generate_hallucination_set(n_pairs: int, *, seed: int, exclude: set[str]) -> list[dict]:
    """Faithful replies and their altered twins on tickets outside `exclude`.

    Pair k gets the twin kind `KINDS[k % len(KINDS)]`; tickets are drawn until that kind
    applies (a date swap needs a date in the reply, a negation flip a flippable clause).

    Args:
        n_pairs: Faithful/altered pairs (2 * n_pairs rows).
        seed: Non-negative seed.
        exclude: Ticket texts that must not recur (updated with the new tickets).

    Returns:
        Rows with the keys `LABELLED_COLUMNS`: label 0 (kind "faithful") then label 1 (the
        twin's kind) per pair; `pair` numbers the pair.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for pair in range(n_pairs):
        kind = KINDS[pair % len(KINDS)]
        for _ in range(_MAX_TRIES):
            ex = _example(rng, _pick(rng, INTENTS))
            if ex["ticket"] in exclude:
                continue
            if kind == ARTICLE_WITHDRAWN:
                # The gold reply, written from the article, is the twin: without the article
                # its terms are made up. The faithful reply holds.
                faithful, twin = holding_reply(rng, ex["intent"], ex["_fill"]), ex["reply"]
                ex = {**ex, "article": ""} if _quotes_terms(ex) else None
            else:
                faithful, twin = ex["reply"], _alter(rng, ex, kind)
            if ex is not None and twin is not None and twin != faithful:
                break
        else:
            raise RuntimeError(f"no ticket admits a {kind} twin after {_MAX_TRIES} draws")
        exclude.add(ex["ticket"])
        base = {**_public(ex), "pair": pair}
        rows += [
            {**base, "reply": faithful, "label": 0, "kind": FAITHFUL},
            {**base, "reply": twin, "label": 1, "kind": kind},
        ]
    return [{k: r[k] for k in LABELLED_COLUMNS} for r in rows]


def _write_jsonl(rows: list[dict], path: Path) -> Path:
    """Writes rows as UTF-8 JSON lines atomically: a temp file in the same folder, renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_ticket_replies(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 400,
    n_validation: int = 60,
    n_test: int = 80,
    n_labelled: int = 400,
) -> dict[str, Path]:
    """Writes the train/validation/test splits and the labelled hallucination set.

    No ticket occurs twice across the four files. Each file is written to a temp file and
    renamed, so a reader never sees a half-written file.

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Non-negative master seed; each file draws from its own seed derived from it.
        n_train: Examples in train.jsonl.
        n_validation: Examples in validation.jsonl.
        n_test: Examples in test.jsonl.
        n_labelled: Rows of hallucination.jsonl (even: half faithful, half altered).

    Returns:
        {"train", "validation", "test", "hallucination"} -> path of f"{name}.jsonl".

    Raises:
        ValueError: On a negative size or an odd `n_labelled`.
    """
    sizes = {"n_train": n_train, "n_validation": n_validation, "n_test": n_test}
    sizes["n_labelled"] = n_labelled
    bad = {k: v for k, v in sizes.items() if v < 0}
    if bad or n_labelled % 2:
        raise ValueError(
            f"sizes must be >= 0 and n_labelled even (faithful/altered pairs), got {sizes}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).generate_state(4)
    seen: set[str] = set()
    splits = {"train": n_train, "validation": n_validation, "test": n_test}
    files = {
        name: generate_ticket_replies(n, seed=int(s), exclude=seen)
        for (name, n), s in zip(splits.items(), seeds[:3], strict=True)
    }
    files["hallucination"] = generate_hallucination_set(
        n_labelled // 2, seed=int(seeds[3]), exclude=seen
    )
    return {name: _write_jsonl(rows, out_dir / f"{name}.jsonl") for name, rows in files.items()}


def write_missing_ticket_replies(paths: list[Path], seed: int) -> list[Path]:
    """Write the demo data into the folder of `paths` when any of them is missing.

    Returns:
        The files written (none when all were there).

    Raises:
        ValueError: a path is not one the generator writes (it names the file and the layout).
    """
    if all(path.is_file() for path in paths):
        return []
    written = write_ticket_replies(paths[0].parent, seed=seed)
    unknown = [path for path in paths if path not in written.values()]
    if unknown:
        raise ValueError(
            f"{unknown[0]} is not a file the ticket-replies generator writes; it writes "
            f"{', '.join(sorted(p.name for p in written.values()))} into one folder"
        )
    return list(written.values())
