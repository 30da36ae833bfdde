"""Deterministic generator of synthetic customer-support tickets that behave like real data.

Each ticket is composed from parts (greeting, background, core request, entity detail, PII,
closing) drawn from the banks in `attnops.demo.phrases`, then roughed up with typos and casing
noise whose amount depends on the channel. Only the core request carries the intent; order
numbers, products, amounts and background sentences are label-free noise. Each drift scenario
changes one property of the traffic and stays fully labelled.

Example:
    >>> df = generate_tickets(5, seed=0)
    >>> list(df.columns)
    ['ticket_id', 'text', 'intent', 'channel', 'product', 'has_pii', 'scenario']
"""

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from attnops.demo import phrases as ph

OUT_OF_SCOPE: str = "out_of_scope"
INTENTS: tuple[str, ...] = tuple(sorted(ph.CORES))
SCENARIOS: tuple[str, ...] = (
    "normal", "new_product_line", "long_messages", "style_shift", "pii_surge", "label_shift",
)  # fmt: skip
FORMATS: tuple[str, ...] = ("csv", "parquet")
CHANNELS: tuple[str, ...] = ("email", "chat", "app")
COLUMNS: tuple[str, ...] = (
    "ticket_id", "text", "intent", "channel", "product", "has_pii", "scenario",
)  # fmt: skip

# Normal traffic: order tracking is the head, account admin the tail (relative weights).
_NORMAL_WEIGHTS = {
    "track_order": 12, "refund_request": 10, "refund_status": 8, "damaged_item": 8,
    "cancel_order": 8, "wrong_item": 7, "missing_package": 7, "missing_item": 6,
    "change_address": 6, "billing_dispute": 6, "payment_failed": 6, "product_question": 6,
    "password_reset": 5, "warranty_claim": 5, "cancel_subscription": 5, "promo_code": 5,
    "account_locked": 4, "request_invoice": 4, "update_email": 3, "delete_account": 3,
}  # fmt: skip
# label_shift: a bad product batch floods support with damage and refund tickets (~60%).
_LABEL_SHIFT_WEIGHTS = {**dict.fromkeys(INTENTS, 3), "damaged_item": 30, "refund_request": 25}
_LABEL_SHIFT_WEIGHTS["refund_status"] = 20
_NEW_LINE_INTENTS = tuple(sorted(ph.ORDER_INTENTS - {"billing_dispute"} | {"product_question"}))
_PARAPHRASE_ZIPF_S = 0.6  # rank-frequency exponent: a few common phrasings, a long tail
_DISTRACTOR_P = 0.35  # share of background sentences that mention another intent's topic ...
_ECHO_P = 0.4  # ... and, of those, the share that quote another intent's request verbatim
_PII_SHARE = {"normal": 0.05, "pii_surge": 0.75}
_LETTERS = np.array(list(string.ascii_lowercase))
_SHORT_OK = frozenset({"normal", "pii_surge", "label_shift", "style_shift"})
_QUESTION_START = re.compile(
    r"^(how|where|when|what|why|which|is|can|could|does|do|has|did|will|should|any)\s"
)


@dataclass(frozen=True)
class _ChannelStyle:
    """How a channel writes: formality, length and noise (independent of the intent)."""

    share: float
    greeting_p: float
    context_p: float
    detail_p: float
    closing_p: float
    short_p: float
    long_p: float
    typo_rate: float
    lowercase_p: float
    formal: bool


_STYLES = {
    "email": _ChannelStyle(0.35, 0.85, 0.6, 0.6, 0.85, 0.02, 0.18, 0.008, 0.03, True),
    "chat": _ChannelStyle(0.40, 0.35, 0.3, 0.25, 0.25, 0.25, 0.01, 0.04, 0.5, False),
    "app": _ChannelStyle(0.25, 0.3, 0.65, 0.5, 0.35, 0.1, 0.05, 0.02, 0.2, False),
}


def _pick(rng: np.random.Generator, items: Sequence, weights: np.ndarray | None = None):
    """Draws one element of a sequence (optionally with unnormalised weights)."""
    if weights is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _zipf(rng: np.random.Generator, items: Sequence[str]) -> str:
    """Draws with weight 1/rank**s so that the bank's tail phrasings stay rare."""
    return _pick(rng, items, 1.0 / np.arange(1, len(items) + 1) ** _PARAPHRASE_ZIPF_S)


def _luhn_card(rng: np.random.Generator) -> str:
    """A 16-digit card-like number with a valid Luhn check digit."""
    digits = [int(_pick(rng, "45"))] + [int(d) for d in rng.integers(0, 10, 14)]
    total = sum(d if i % 2 else (2 * d - 9 if 2 * d > 9 else 2 * d) for i, d in enumerate(digits))
    number = "".join(map(str, digits)) + str((10 - total % 10) % 10)
    sep = _pick(rng, ["", " ", "-"])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def _entities(rng: np.random.Generator, products: tuple[str, ...]) -> dict[str, str]:
    """Label-free slot values shared by all intents (order number, product, amount, ...)."""
    product = _pick(rng, products)
    first, last = _pick(rng, ph.FIRST_NAMES), _pick(rng, ph.LAST_NAMES)
    digits = "".join(str(d) for d in rng.integers(0, 10, 10))
    local = _pick(rng, [f"{first}.{last}", f"{first[0]}{last}", f"{first}{digits[:2]}"])
    return {
        "product": product,
        "thing": _pick(rng, [*ph.THINGS, f"the {product}", f"my {product}"]),
        "order": f"{_pick(rng, ['#', '#', ''])}{_pick(rng, 'ABCKX')}{digits[:7]}",
        "amount": f"${rng.integers(5, 400)}.{_pick(rng, ['99', '00', '49', '95'])}",
        "date": _pick(rng, ph.DATES),
        "name": first,
        "city": _pick(rng, ph.CITIES),
        "email": f"{local.lower()}@{_pick(rng, ph.EMAIL_DOMAINS)}",
        "phone": _pick(rng, [f"+1 ({digits[:3]}) 555-{digits[3:7]}", f"07700 9{digits[:5]}"]),
        "card": _luhn_card(rng),
        "nl": "\n",
    }


def _sentence(text: str) -> str:
    """Capitalises a phrase and ends it with '?' or '.' unless it already has punctuation."""
    if text[-1] in ".?!":
        return text[0].upper() + text[1:]
    return text[0].upper() + text[1:] + ("?" if _QUESTION_START.match(text.lower()) else ".")


def _core(rng: np.random.Generator, intent: str, scenario: str, short: bool) -> str:
    """The request itself: a paraphrase of `intent` (or an out-of-scope message)."""
    if intent == OUT_OF_SCOPE:
        if rng.random() < 0.15:  # keyboard mash
            lengths = rng.integers(3, 9, size=int(rng.integers(1, 5)))
            return " ".join("".join(rng.choice(_LETTERS, k)) for k in lengths)
        return _pick(rng, ph.OUT_OF_SCOPE_TEXTS)
    new_line_p = 1.0 if intent == "product_question" else 0.5
    if scenario == "new_product_line" and intent in ph.NEW_LINE_CORES and rng.random() < new_line_p:
        return _pick(rng, ph.NEW_LINE_CORES[intent])
    return _pick(rng, ph.SHORT_CORES[intent]) if short else _zipf(rng, ph.CORES[intent])


def _backgrounds(rng: np.random.Generator, intent: str, k: int) -> list[str]:
    """`k` distinct background sentences, none of which contradicts `intent`."""
    pool = list(ph.CONTEXT_ANY) + (list(ph.CONTEXT_ORDER) if intent in ph.ORDER_INTENTS else [])
    distractors = [s for s, bad in ph.DISTRACTORS.items() if intent not in bad]
    chosen: list[str] = []
    echoed = False  # at most one quoted past request per ticket
    while len(chosen) < k:
        use_distractor = intent != OUT_OF_SCOPE and rng.random() < _DISTRACTOR_P
        sentence = _pick(rng, distractors if use_distractor else pool)
        if use_distractor and not echoed and rng.random() < _ECHO_P:
            other = _pick(rng, [i for i in INTENTS if i != intent])
            sentence = _pick(rng, ph.ECHO_FRAMES).replace("{x}", _zipf(rng, ph.CORES[other]))
            echoed = True
        if sentence not in chosen:
            chosen.append(sentence)
    return chosen


def _typo(rng: np.random.Generator, word: str) -> str:
    """Swaps, drops or doubles one character of a word."""
    i = int(rng.integers(1, len(word) - 1))
    op = rng.integers(3)
    if op == 0:
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    return word[:i] + word[i + 1 :] if op == 1 else word[:i] + word[i] + word[i:]


def _roughen(rng: np.random.Generator, text: str, style: _ChannelStyle) -> str:
    """Typos at `style.typo_rate` per word, plus casing and punctuation habits of the channel."""
    words = text.split(" ")
    for k, word in enumerate(words):
        if len(word) > 3 and word.isalpha() and rng.random() < style.typo_rate:
            words[k] = _typo(rng, word)
    text = " ".join(words)
    if rng.random() < style.lowercase_p:
        text = text.lower()
    if not style.formal and rng.random() < 0.3:
        text = text.replace("'", "").rstrip(".")
    if rng.random() < 0.01:
        text = text.upper()
    return text


def _texting(rng: np.random.Generator, text: str) -> str:
    """style_shift: angry all-caps texting with abbreviations, emojis and no punctuation."""
    lowered = re.sub(r"[^\w\s'#$@.-]|\.(?=\s|$)", " ", text.lower())
    words = [ph.TEXTING_ABBREVIATIONS.get(w, w).replace("'", "") for w in lowered.split()]
    opener = [_pick(rng, ph.TEXTING_OPENERS)] if rng.random() < 0.5 else []
    shout = "?" * int(rng.integers(2, 5)) if "?" in text else "!!!"
    text = " ".join([*opener, *words]) + shout
    if rng.random() < 0.6:
        text += " " + _pick(rng, ph.TEXTING_CLOSERS)
    text = text.upper() if rng.random() < 0.9 else text
    return text + " " + "".join(rng.choice(ph.EMOJIS, int(rng.integers(1, 4))))


def _ramble(rng: np.random.Generator, request: str) -> str:
    """long_messages: wraps the request in rambling paragraphs (150-300 words in total)."""
    target_words = int(rng.integers(170, 280))
    n_words = len(request.split())
    before: list[str] = []
    after: list[str] = []
    for k in rng.permutation(len(ph.RAMBLE)):
        sentence = ph.RAMBLE[k]
        if n_words >= target_words or n_words + len(sentence.split()) > 290:
            continue
        (before if len(before) <= len(after) else after).append(sentence)
        n_words += len(sentence.split())
    half = len(before) // 2
    paragraphs = [" ".join(before[:half]), " ".join(before[half:]), request, " ".join(after)]
    return "\n\n".join(p for p in paragraphs if p)


def _compose(
    rng: np.random.Generator, intent: str, channel: str, scenario: str
) -> tuple[str, str, bool]:
    """Builds one ticket; returns (text, product, has_pii)."""
    style = _STYLES[channel]
    new_line = scenario == "new_product_line"
    ent = _entities(rng, ph.NEW_PRODUCTS if new_line else ph.PRODUCTS)
    short = scenario in _SHORT_OK and rng.random() < style.short_p
    long = not short and rng.random() < style.long_p
    n_background = 3 if long else rng.binomial(2 if style.formal else 1, style.context_p)
    n_background = 0 if short else n_background
    parts = _backgrounds(rng, intent, n_background)
    if new_line:
        parts.append(_pick(rng, ph.NEW_LINE_CONTEXT))
    core = _core(rng, intent, scenario, short)
    parts.append(core if short and rng.random() < 0.7 else _sentence(core))
    if intent in ph.ORDER_INTENTS and (long or (not short and rng.random() < style.detail_p)):
        parts.append(_pick(rng, [s for s in ph.CONTEXT_ORDER if s not in parts]))
    has_pii = intent != OUT_OF_SCOPE and rng.random() < _PII_SHARE.get(scenario, 0.05)
    if has_pii:
        parts.append(_sentence(_pick(rng, ph.PII_SENTENCES)))
    body = " ".join(parts)
    if new_line and "{product}" not in body and ent["product"] not in body:
        body += " This is about my {product}."
    body = body.format_map(ent)
    product = ent["product"] if ent["product"] in body else ""
    if scenario == "long_messages":
        body = _ramble(rng, body)
    if scenario == "style_shift" and rng.random() < 0.8:
        return _texting(rng, body), product, has_pii
    if scenario == "style_shift":
        opener, closer = _pick(rng, ph.LEGALESE_OPENERS), _pick(rng, ph.LEGALESE_CLOSERS)
        text = f"Dear Sir or Madam,\n\n{opener} {body} {closer}\n\nYours faithfully,\n{ent['name']}"
        return text, product, has_pii
    sep = "\n\n" if style.formal else " "
    if long or scenario == "long_messages" or rng.random() < style.greeting_p:
        body = _pick(rng, ph.GREETINGS_FORMAL if style.formal else ph.GREETINGS_CASUAL) + sep + body
    if long or scenario == "long_messages" or rng.random() < style.closing_p:
        closing = _pick(rng, ph.CLOSINGS_FORMAL if style.formal else ph.CLOSINGS_CASUAL)
        body += sep + closing.format_map(ent)
    return _roughen(rng, body, style), product, has_pii


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raises ValueError naming the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(allowed)}")


def generate_tickets(
    n: int, *, seed: int, scenario: str = "normal", out_of_scope_share: float = 0.0
) -> pd.DataFrame:
    """Generates `n` labelled support tickets; the same arguments give an identical frame.

    Args:
        n: Number of tickets (>= 0).
        seed: Non-negative seed of the only random generator used.
        scenario: One of `SCENARIOS`; "normal" is the training distribution.
        out_of_scope_share: Fraction of rows (rounded to a count) labelled `OUT_OF_SCOPE`.

    Returns:
        Columns `COLUMNS`: ticket_id (unique, "<scenario>-<seed>-<row>"), text, intent (one of
        `INTENTS` or `OUT_OF_SCOPE`), channel ("email" | "chat" | "app"), product (the product
        the ticket names, or ""; the text may spell it with a typo or in another case), has_pii
        (bool: the text holds an email, phone or card number) and scenario.

    Raises:
        ValueError: On an unknown scenario, a negative `n` or a share outside [0, 1].
    """
    _check_choice("scenario", scenario, SCENARIOS)
    if n < 0 or not 0.0 <= out_of_scope_share <= 1.0:
        raise ValueError(
            f"need n >= 0 and 0 <= out_of_scope_share <= 1, got {n}, {out_of_scope_share}"
        )
    rng = np.random.default_rng(seed)
    pool = _NEW_LINE_INTENTS if scenario == "new_product_line" else INTENTS
    weights = _LABEL_SHIFT_WEIGHTS if scenario == "label_shift" else _NORMAL_WEIGHTS
    p = np.array([weights[i] for i in pool], dtype=float)
    intents = np.array(pool, dtype=object)[rng.choice(len(pool), size=n, p=p / p.sum())]
    intents[rng.choice(n, size=round(n * out_of_scope_share), replace=False)] = OUT_OF_SCOPE
    shares = [_STYLES[c].share for c in CHANNELS]
    channels = np.array(CHANNELS, dtype=object)[rng.choice(len(CHANNELS), size=n, p=shares)]
    rows = [_compose(rng, str(i), str(c), scenario) for i, c in zip(intents, channels, strict=True)]
    columns = {
        "ticket_id": [f"{scenario}-{seed}-{k:06d}" for k in range(n)],
        "text": [text for text, _, _ in rows],
        "intent": list(intents),
        "channel": list(channels),
        "product": [product for _, product, _ in rows],
        "has_pii": [has_pii for _, _, has_pii in rows],
        "scenario": [scenario] * n,
    }
    # Explicit dtypes so that an empty frame has the same schema as a full one.
    return pd.DataFrame(
        {k: np.array(v, dtype=bool if k == "has_pii" else object) for k, v in columns.items()}
    )


def _write(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    """Writes a frame as csv (UTF-8, no index) or parquet."""
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def write_demo_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 1200,
    n_validation: int = 300,
    n_test: int = 600,
    out_of_scope_share: float = 0.1,
    fmt: str = "csv",
) -> dict[str, Path]:
    """Writes the demo train/validation/test splits of the normal scenario.

    Train has no out-of-scope rows; validation and test have `out_of_scope_share` of them. Each
    split is generated from its own seed derived from `seed`, so ticket ids never collide. Read
    csv back with `pd.read_csv(path, keep_default_na=False)` to keep empty products as "".

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Non-negative master seed.
        n_train: Rows in the train split.
        n_validation: Rows in the validation split.
        n_test: Rows in the test split.
        out_of_scope_share: Out-of-scope fraction of validation and test.
        fmt: "csv" or "parquet".

    Returns:
        {"train": path, "validation": path, "test": path}, files named f"{split}.{fmt}".

    Raises:
        ValueError: On an unknown `fmt`.
    """
    _check_choice("fmt", fmt, FORMATS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": (n_train, 0.0), "validation": (n_validation, out_of_scope_share)}
    splits["test"] = (n_test, out_of_scope_share)
    paths = {}
    for k, (split, (n, share)) in enumerate(splits.items()):
        split_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        df = generate_tickets(n, seed=split_seed, out_of_scope_share=share)
        paths[split] = _write(df, out_dir / f"{split}.{fmt}", fmt)
    return paths


def write_scenario(
    out_dir: Path, scenario: str, *, n: int, seed: int, fmt: str = "parquet"
) -> Path:
    """Writes one labelled window of `scenario` (no out-of-scope rows) for drift checks.

    Args:
        out_dir: Folder to write into (created if missing).
        scenario: One of `SCENARIOS`.
        n: Rows in the window.
        seed: Non-negative seed.
        fmt: "csv" or "parquet".

    Returns:
        The path written, `out_dir / f"{scenario}.{fmt}"`.

    Raises:
        ValueError: On an unknown scenario or `fmt`.
    """
    _check_choice("scenario", scenario, SCENARIOS)
    _check_choice("fmt", fmt, FORMATS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = generate_tickets(n, seed=seed, scenario=scenario)
    return _write(df, out_dir / f"{scenario}.{fmt}", fmt)
