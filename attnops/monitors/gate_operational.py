"""Gate checks beyond quality: what serving the candidate costs and what it risks.

Latency and size against budgets and against the champion, unsupported assertions on
out-of-scope inputs, attention health and the tokenizer. Each returns a `GateCheck`.
"""

from __future__ import annotations

import numpy as np

from attnops.monitors.attention_health import attention_health
from attnops.monitors.checks import GateCheck, VersionEvidence
from attnops.monitors.significance import mcnemar_exact
from attnops.spec import GateSpec


def performance_checks(candidate: dict, champion: dict | None, gate: GateSpec) -> list[GateCheck]:
    """Latency percentiles and model size against the budgets and against the champion."""
    champ_ms = None if champion is None else np.asarray(champion["latency_ms"], dtype=float)
    checks = [
        percentile_latency_check(candidate, champ_ms, q, limit, gate)
        for q, limit in ((95, gate.max_latency_ms_p95), (99, gate.max_latency_ms_p99))
    ]
    size = float(candidate["model_size_mb"])
    over = size > gate.max_model_size_mb
    problems = [f"{size:.1f} MB over the budget {gate.max_model_size_mb:g}"] if over else []
    reason = f"{size:.1f} MB (budget {gate.max_model_size_mb:g}"
    values = {"candidate": size}
    if champion is not None:
        champ = float(champion["model_size_mb"])
        ratio = size / max(champ, 1e-9)
        values |= {"champion": champ, "ratio": ratio}
        limit = 1 + gate.max_model_size_increase
        versus = f"x{ratio:.2f} the champion's {champ:.1f} MB (max x{limit:g})"
        reason += f"; {versus}"
        if ratio > limit:
            problems.append(versus)
    reason = "; ".join(problems) if problems else reason + ")"
    checks.append(GateCheck.of("model_size_mb", not problems, reason, **values))
    return checks


def percentile_latency_check(
    candidate: dict, champ_ms: np.ndarray | None, q: int, limit: float, gate: GateSpec
) -> GateCheck:
    """The q-th percentile of the model's own cost per request, against the budget and the
    champion's, with the load it was measured under.

    The budget is judged on each request's own cost (its thread's CPU time, see
    `time_side_by_side`), which a busy neighbour can only inflate: a measurement taken on a
    busy machine may pass, but may not fail: over a limit it is inconclusive (not passed,
    to be re-run on a quieter machine). Against the champion, latency is compared on the
    paired per-request samples (timed turn by turn on the same inputs): a candidate is
    slower only when the lower confidence bound of its percentile ratio exceeds the limit,
    so a few-millisecond model is not blocked by one scheduler hiccup in its tail.
    """
    cand_ms = np.asarray(candidate["latency_ms"], dtype=float)
    value = float(np.percentile(cand_ms, q))
    problems = [f"{value:.1f} ms over the budget {limit:g}"] if value > limit else []
    reason = f"{value:.1f} ms (budget {limit:g}"
    values: dict[str, object] = {"candidate": value}
    if champ_ms is not None:
        champ = float(np.percentile(champ_ms, q))
        ratio, low = _percentile_ratio(cand_ms, champ_ms, q, gate.confidence)
        values |= {"champion": champ, "ratio": ratio, "ratio_lower_bound": low}
        versus = (
            f"x{ratio:.2f} the champion's {champ:.1f} ms ({gate.confidence:.0%} lower "
            f"bound x{low:.2f}, max x{1 + gate.max_latency_increase:g})"
        )
        reason += f"; {versus}"
        if low > 1 + gate.max_latency_increase:
            problems.append(versus)
    # Evidence from before the load was recorded holds latency only: judged as measured.
    load = candidate.get("load") or {}
    if "wall_latency_ms" in candidate:
        values["wall_ms"] = float(np.percentile(candidate["wall_latency_ms"], q))
    values |= {"load": load}
    busy = ""
    if load and not load["quiet"]:
        busy = (
            f"machine busy: the timed requests held their CPU {load['cpu_share']:.0%} of their "
            f"wall time (quiet: >= {load['quiet_cpu_share']:.0%}) over {load['attempts']} "
            f"attempt(s), load average {load['loadavg_1m']:.1f} on {load['cpus']} CPU(s), "
            f"p{q} wall {values['wall_ms']:.1f} ms"
        )
    name = f"latency_ms_p{q}"
    if problems and busy:
        reason = (
            f"inconclusive, {busy}; {'; '.join(problems)} may be the neighbours' doing: "
            "re-run the gate when the machine is quieter"
        )
        return GateCheck.of(name, False, reason, verdict="inconclusive", **values)
    reason = "; ".join(problems) if problems else reason + ")" + (f"; {busy}" if busy else "")
    verdict = "failed" if problems else "passed"
    return GateCheck.of(name, not problems, reason, verdict=verdict, **values)


def _percentile_ratio(
    candidate_ms: np.ndarray, champion_ms: np.ndarray, q: int, confidence: float
) -> tuple[float, float]:
    """Point ratio of the q-th latency percentiles and its one-sided lower confidence bound,
    from a paired bootstrap over requests (both versions timed on the same inputs)."""
    rng = np.random.default_rng(0)
    n = min(len(candidate_ms), len(champion_ms))
    idx = rng.integers(0, n, size=(2000, n))
    ratios = np.percentile(candidate_ms[:n][idx], q, axis=1) / np.maximum(
        np.percentile(champion_ms[:n][idx], q, axis=1), 1e-9
    )
    point = float(np.percentile(candidate_ms, q) / max(np.percentile(champion_ms, q), 1e-9))
    return point, float(np.quantile(ratios, 1 - confidence))


def unsupported_check(
    candidate: VersionEvidence,
    champion: VersionEvidence | None,
    names: list[str],
    gate: GateSpec,
) -> GateCheck:
    """Out-of-scope test inputs each version labels unflagged (`unsupported`, from the
    version's own out-of-scope score): an absolute limit, and vs the champion an increase
    that is also significant: both versions see the same inputs, so McNemar's test pairs them."""

    def flags(evidence: VersionEvidence) -> np.ndarray:
        rows = evidence.predictions[~evidence.predictions["label"].isin(names)]
        return rows["unsupported"].to_numpy(dtype=bool)

    cand_flags = flags(candidate)
    value, n = (float(cand_flags.mean()) if len(cand_flags) else 0.0), len(cand_flags)
    if n == 0:
        return GateCheck.of(
            "unsupported_assertions", True, "no out-of-scope inputs in the test split"
        )
    problems = []
    if value > gate.max_unsupported_assertion_rate:
        problems.append(f"{value:.1%} of {n} out-of-scope inputs asserted (max "
                        f"{gate.max_unsupported_assertion_rate:.0%})")  # fmt: skip
    champ_value = p_value = None
    if champion is not None:
        champ_flags = flags(champion)
        champ_value = float(champ_flags.mean())
        # "Right" = not flagged: McNemar on the inputs only one of the two flags.
        p_value = mcnemar_exact(np.zeros(n, bool), cand_flags, champ_flags)
        increase = value - champ_value
        if increase > gate.max_unsupported_assertion_increase and p_value < 1 - gate.confidence:
            problems.append(f"{value:.1%} vs champion {champ_value:.1%} (max +"
                            f"{gate.max_unsupported_assertion_increase:.0%}, McNemar "
                            f"p={p_value:.3g})")  # fmt: skip
    reason = f"{value:.1%} of {n} out-of-scope inputs labelled without an out-of-scope flag"
    if champ_value is not None:
        reason += f" (champion {champ_value:.1%}, McNemar p={p_value:.3g})"
    return GateCheck.of(
        "unsupported_assertions",
        not problems,
        "; ".join(problems) or reason,
        rate=value,
        champion_rate=champ_value,
        p_value=p_value,
        n=n,
    )


def attention_check(
    candidate: VersionEvidence, champion: VersionEvidence | None, gate: GateSpec
) -> GateCheck:
    health = attention_health(
        candidate.attention,
        dead_head_importance=gate.dead_head_importance,
        champion=champion.attention if champion else None,
    )
    problems = []
    collapsed = health.collapsed_heads
    if len(collapsed) > gate.max_collapsed_heads:
        heads = ", ".join(f"layer {layer} head {head}" for layer, head in collapsed)
        problems.append(f"{len(collapsed)} head(s) collapsed by fine-tuning ({heads})")
    if champion is not None:
        before = attention_health(
            champion.attention, dead_head_importance=gate.dead_head_importance
        )
        added = len(health.dead_heads) - len(before.dead_heads)
        if added > gate.max_dead_heads_increase:
            problems.append(f"{added} more dead heads than the champion")
    reason = f"{len(collapsed)} collapsed, {len(health.dead_heads)} dead heads" + (
        f"; largest entropy change vs champion {health.entropy_change['max_abs']:.3f}"
        f" (layer {health.entropy_change['layer']} head {health.entropy_change['head']})"
        if health.entropy_change
        else ""
    )
    return GateCheck.of("attention_health", not problems, "; ".join(problems) or reason,
                  **health.to_dict())  # fmt: skip


def tokenizer_check(
    candidate: VersionEvidence, champion: VersionEvidence | None, gate: GateSpec
) -> GateCheck:
    if champion is None:
        return GateCheck.of("tokenizer", True, "no champion to compare with",
                      sha256=candidate.tokenizer_sha256)  # fmt: skip
    same = candidate.tokenizer_sha256 == champion.tokenizer_sha256
    if same:
        reason = "same tokenizer as the champion"
    elif gate.allow_tokenizer_change:
        reason = "tokenizer changed; allowed by gate.allow_tokenizer_change"
    else:
        reason = (
            f"tokenizer changed ({champion.tokenizer_sha256[:12]} -> "
            f"{candidate.tokenizer_sha256[:12]}); set gate.allow_tokenizer_change: true "
            "if the change is intended (clients and caches must change with it)"
        )
    return GateCheck.of(
        "tokenizer",
        same or gate.allow_tokenizer_change,
        reason,
        candidate=candidate.tokenizer_sha256,
        champion=champion.tokenizer_sha256,
    )
