"""How well does the groundedness score separate grounded outputs from altered ones?

Sources are demo support tickets (some with a sentence or two of another ticket appended).
A grounded output is an extract of 1-2 of the source's own sentences, lightly paraphrased
(greetings dropped, reordered, recased, "I" -> "The customer"). Its altered twin carries one
alteration of one kind: a digit of a number changed, a date swapped, a product / city /
first name swapped for another from the demo banks, a sentence of a different ticket
inserted, or a negation added or removed. Prints ROC-AUC of (1 - score)
overall and per kind, the catch rate of changed numbers at the threshold, and the speed:

    .venv/bin/python benchmarks/groundedness_auc.py                  # 400 pairs, seed 0
    .venv/bin/python benchmarks/groundedness_auc.py --n-pairs 1000 --seed 1
"""

from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from attnops.demo import phrases as ph
from attnops.demo.tickets import generate_tickets
from attnops.models.groundedness import score_groundedness, split_sentences

KINDS = ("number", "date", "name", "insertion", "negation")
_GREETINGS = sorted(
    {g.lower().rstrip(",") for g in ph.GREETINGS_FORMAL + ph.GREETINGS_CASUAL}, key=len
)[::-1]
_CLOSING = re.compile(
    r"^(kind regards|best regards|regards|sincerely|thanks|thank you|thx|ty|cheers|many thanks|"
    r"i look forward|pls help|asap please)\b",
    re.IGNORECASE,
)
_NAME_BANKS = (ph.PRODUCTS, ph.CITIES, ph.FIRST_NAMES)
_NEGATIONS = (
    (r"\b(do|does|did|is|are|was|were|has|have|had|could|would|should)n['’]?t\b", r"\1"),
    (r"\b(?:can['’]?t|cannot)\b", "can"),
    (r"\bwon['’]?t\b", "will"),
    (r"\b(?:not|never) ", ""),
    (r"\b(is|was|are|were|will|can|could|would|should)\b", r"\1 not"),
    (
        r"\b(ordered|paid|bought|received|got|tried|placed|arrived|asked|called|sent|returned)\b",
        r"never \1",
    ),
    (r"\bI (want|need|like|love|know|expect|hope)\b", r"I don't \1"),
)


def _content_sentences(text: str) -> list[str]:
    """The ticket's sentences without greetings, sign-offs and fragments under 3 words."""
    kept = []
    for sentence in split_sentences(text):
        lowered = sentence.lower()
        for greeting in _GREETINGS:
            if lowered.startswith(greeting + " ") or lowered.startswith(greeting + ", "):
                sentence = sentence[len(greeting) :].lstrip(" ,")
                break
        is_greeting = lowered.rstrip(" ,.!") in _GREETINGS
        if len(sentence.split()) >= 3 and not is_greeting and not _CLOSING.match(sentence):
            kept.append(sentence)
    return kept


def _finish(sentence: str) -> str:
    return sentence if sentence[-1] in ".?!" else sentence + "."


def _paraphrase(rng: np.random.Generator, sentences: list[str]) -> str:
    """Light rewording of an extract: reorder, recase, third person."""
    sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    out = []
    for s in sentences:
        if rng.random() < 0.3:
            s = re.sub(r"^I'm\b", "The customer is", s, flags=re.IGNORECASE)
            s = re.sub(r"^I've\b", "The customer has", s, flags=re.IGNORECASE)
            s = re.sub(r"^I\b", "The customer", s, flags=re.IGNORECASE)
            s = re.sub(r"\bmy\b", "their", s)
        s = s.lower() if rng.random() < 0.2 else s[0].upper() + s[1:]
        out.append(_finish(s))
    return " ".join(out)


def _match_case(found: str, replacement: str) -> str:
    return replacement.lower() if found == found.lower() else replacement


def _alter(rng: np.random.Generator, kind: str, output: str, source: str, foreign: str):
    """`output` with one alteration of `kind`, or None when the kind does not apply."""
    if kind == "number":  # one digit of one number changed (possibly to another source number)
        runs = list(re.finditer(r"\d+", output))
        if not runs:
            return None
        run = runs[int(rng.integers(len(runs)))]
        digits = list(run.group())
        k = int(rng.integers(len(digits)))
        digits[k] = str((int(digits[k]) + int(rng.integers(1, 10))) % 10)
        return output[: run.start()] + "".join(digits) + output[run.end() :]
    if kind in ("date", "name"):
        banks = (ph.DATES,) if kind == "date" else _NAME_BANKS
        for bank in banks:
            for value in bank:
                m = re.search(rf"\b{re.escape(value)}\b", output, re.IGNORECASE)
                if m:
                    other = [v for v in bank if v.lower() not in source.lower()]
                    new = _match_case(m.group(), other[int(rng.integers(len(other)))])
                    return output[: m.start()] + new + output[m.end() :]
        return None
    if kind == "insertion":
        sentences = split_sentences(output)
        at = int(rng.integers(len(sentences) + 1))
        new = _match_case(output, _finish(foreign[0].upper() + foreign[1:]))
        return " ".join([*sentences[:at], new, *sentences[at:]])
    applicable = [(p, r) for p, r in _NEGATIONS if re.search(p, output, re.IGNORECASE)]
    if not applicable:
        return None
    pattern, repl = applicable[int(rng.integers(len(applicable)))]
    return re.sub(pattern, repl, output, count=1, flags=re.IGNORECASE)


def build_pairs(n_pairs: int = 400, *, seed: int = 0) -> pd.DataFrame:
    """Grounded outputs and their altered twins over demo tickets.

    Args:
        n_pairs: Rows in total (half grounded, half altered, kinds balanced).
        seed: Seed of the tickets and of every choice.

    Returns:
        Columns source, output, label (1 = altered), kind ("grounded" or one of `KINDS`) and
        pair (the grounded output and its altered twin share it).
    """
    rng = np.random.default_rng(seed)
    tickets = generate_tickets(4 * n_pairs, seed=seed, scenario="normal").text.tolist()
    content = [_content_sentences(t) for t in tickets]
    counts = dict.fromkeys(KINDS, 0)
    rows = []
    for i, text in enumerate(tickets):
        if len(rows) >= n_pairs or not content[i]:
            continue
        others = [
            s for j in rng.choice(len(tickets), 3, replace=False) if j != i for s in content[j]
        ]
        others = [s for s in others if s.lower() not in text.lower()]
        if len(others) < 2:
            continue
        source = text
        if rng.random() < 0.5:  # a longer source: a later message with other tickets' sentences
            appended = others[: min(int(rng.integers(1, 3)), len(others) - 1)]
            source += "\n\n" + " ".join(_finish(s) for s in appended)
        foreign = others[-1]  # never appended: the inserted sentence is not in the source
        if foreign.lower() in source.lower():
            continue
        for kind in sorted(KINDS, key=lambda k: (counts[k], rng.random())):
            # Prefer extracts that contain what this kind alters.
            pool = [s for s in content[i] if _alter(rng, kind, s, source, foreign)] or content[i]
            first = pool[int(rng.integers(len(pool)))]
            rest = [s for s in content[i] if s != first]
            picked = [first] + (
                [rest[int(rng.integers(len(rest)))]] if rest and rng.random() < 0.5 else []
            )
            grounded = _paraphrase(rng, picked)
            altered = _alter(rng, kind, grounded, source, foreign)
            if altered and altered != grounded:
                counts[kind] += 1
                base = {"source": source, "pair": len(rows) // 2}
                rows.append({**base, "output": grounded, "label": 0, "kind": "grounded"})
                rows.append({**base, "output": altered, "label": 1, "kind": kind})
                break
    return pd.DataFrame(rows[:n_pairs])


def evaluate(pairs: pd.DataFrame, *, threshold: float = 0.5, encoder=None) -> dict[str, float]:
    """Scores the pairs; ROC-AUC of (1 - score) overall and per kind, flag and alarm rates.

    A changed number counts as caught when the output scores below `threshold` and has an
    unsupported number that its grounded twin does not have.
    """
    start = time.perf_counter()
    results = score_groundedness(pairs.source.tolist(), pairs.output.tolist(), encoder=encoder)
    seconds = time.perf_counter() - start
    scores = np.array([r.score for r in results])
    labels = pairs.label.to_numpy()
    metrics = {"roc_auc": roc_auc_score(labels, 1 - scores)}
    grounded = (pairs.kind == "grounded").to_numpy()
    for kind in KINDS:
        this = (pairs.kind == kind).to_numpy()
        if this.any():
            mask = grounded | this
            metrics[f"roc_auc_{kind}"] = roc_auc_score(labels[mask], 1 - scores[mask])
            metrics[f"flag_rate_{kind}"] = float(np.mean(scores[this] < threshold))
    twin = {p: i for i, p in zip(np.flatnonzero(grounded), pairs.pair[grounded], strict=True)}
    numbers = np.flatnonzero((pairs.kind == "number").to_numpy())
    caught = [
        scores[i] < threshold
        and bool(
            set(results[i].unsupported_numbers)
            - set(results[twin[pairs.pair.iat[i]]].unsupported_numbers)
        )
        for i in numbers
    ]
    metrics["number_catch_rate"] = float(np.mean(caught)) if len(numbers) else float("nan")
    metrics["altered_flag_rate"] = float(np.mean(scores[~grounded] < threshold))
    metrics["grounded_false_alarm_rate"] = float(np.mean(scores[grounded] < threshold))
    metrics["ms_per_pair"] = 1000 * seconds / len(pairs)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-pairs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--show-misses", type=int, default=0, help="print the N worst-ranked")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from attnops.models.sentence_encoder import SentenceEncoder

    torch.set_num_threads(args.threads)
    pairs = build_pairs(args.n_pairs, seed=args.seed)
    start = time.perf_counter()
    encoder = SentenceEncoder.cached()
    load_s = time.perf_counter() - start
    score_groundedness(["warm up."], ["warm up."], encoder=encoder)
    metrics = evaluate(pairs, threshold=args.threshold, encoder=encoder)
    print(
        f"pairs: {len(pairs)} (seed {args.seed}); per kind: {pairs.kind.value_counts().to_dict()}"
    )
    print(f"encoder load: {load_s:.1f} s, {args.threads} torch threads")
    for name, value in metrics.items():
        print(f"{name:28s} {value:.3f}")
    if args.show_misses:
        results = score_groundedness(pairs.source.tolist(), pairs.output.tolist(), encoder=encoder)
        pairs = pairs.assign(score=[r.score for r in results], result=results)
        worst = pd.concat(
            [
                pairs[pairs.label == 1].nlargest(args.show_misses, "score"),
                pairs[pairs.label == 0].nsmallest(args.show_misses, "score"),
            ]
        )
        for row in worst.itertuples():
            print(f"\n[{row.kind} {row.score:.3f}] SOURCE: {row.source!r}\nOUTPUT: {row.output!r}")
            print(row.result)


if __name__ == "__main__":
    main()
