"""The release gate: may this candidate version go to canary?

Both versions are judged on the same evidence gathered in the same gate run: predictions
on the same test split, latency measured on the same machine moments apart. With a
champion, quality is a paired test (a candidate is neither accepted nor rejected on noise);
without one, absolute limits apply. Every check returns its numbers and a sentence a
reviewer can act on; the decision passes only when every check does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from attnops.models.metrics import classification_metrics, expected_calibration_error
from attnops.monitors.attention_health import attention_health
from attnops.monitors.significance import compare_paired, mcnemar_exact
from attnops.spec import GateSpec


@dataclass(frozen=True)
class VersionEvidence:
    """What the gate knows about one version.

    Attributes:
        predictions: one row per test input (in and out of scope): `label`, `prediction`,
            `confidence`, `unsupported` (bool: confident and far from the reference) and a
            column per slice (e.g. `length`, `channel`).
        performance: measured in this gate run: `latency_ms` (batch-1 milliseconds per
            request, timed in turn with the other version on the same inputs, so paired
            by position) and `model_size_mb`.
        attention: the `attention` section of the version's evaluation.json.
        pii_findings: "artifact: ENTITY" for each PII hit in the version's text artifacts.
    """

    version: str
    predictions: pd.DataFrame
    performance: dict[str, object]
    attention: dict[str, object]
    tokenizer_sha256: str
    label_names: tuple[str, ...]
    pii_findings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    reason: str
    values: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, passed: bool, reason: str, **values) -> GateCheck:
        """A check with plain-Python values (numpy scalars converted), ready for JSON."""
        clean = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}
        return cls(name=name, passed=bool(passed), reason=reason, values=clean)


def checks_table(checks: Sequence[GateCheck]) -> str:
    """Markdown table of checks, for the terminal, the version description and CI."""
    lines = ["| check | result | reason |", "|---|---|---|"]
    for c in checks:
        lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.reason} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class GateDecision:
    candidate: str
    champion: str | None
    checks: list[GateCheck]
    verdict: str
    """Quality vs champion: better, worse, no_difference, not_comparable or no_champion."""

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed_checks(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def reasons(self) -> str:
        """One line for the version tag: the failed checks' reasons, or that all passed."""
        failed = self.failed_checks
        if not failed:
            return f"all {len(self.checks)} checks passed; quality vs champion: {self.verdict}"
        return " | ".join(f"{c.name}: {c.reason}" for c in failed)

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "candidate": self.candidate,
            "champion": self.champion,
            "verdict": self.verdict,
            "reasons": self.reasons(),
            "checks": [asdict(c) for c in self.checks],
        }

    def table(self) -> str:
        return checks_table(self.checks)


def decide(
    candidate: VersionEvidence,
    champion: VersionEvidence | None,
    gate: GateSpec,
    *,
    label_names: Sequence[str],
    slice_columns: Sequence[str],
    ece_bins: int = 15,
) -> GateDecision:
    """Run every gate check on the candidate (against the champion when there is one)."""
    names = list(label_names)
    cand_in = _in_scope(candidate.predictions, names)
    y_true = _codes(cand_in["label"], names)
    y_cand = _codes(cand_in["prediction"], names)
    quality = classification_metrics(y_true, y_cand, names)
    checks = [
        GateCheck.of(
            "quality_floor",
            quality["macro_f1"] >= gate.min_macro_f1,
            f"macro-F1 {quality['macro_f1']:.4f} (floor {gate.min_macro_f1})",
            macro_f1=quality["macro_f1"],
            accuracy=quality["accuracy"],
        )
    ]
    verdict = "no_champion"
    if champion is not None:
        champ_in = _in_scope(champion.predictions, names)
        if not champ_in["label"].equals(cand_in["label"]):
            raise ValueError(
                f"v{candidate.version} and v{champion.version} were not scored on the same "
                "test inputs; a paired comparison needs both on the same split"
            )
        y_champ = _codes(champ_in["prediction"], names)
        added = sorted(set(candidate.label_names) - set(champion.label_names))
        removed = sorted(set(champion.label_names) - set(candidate.label_names))
        if added or removed:
            # Different label sets have no common macro-F1: a person must decide.
            verdict = "not_comparable"
            checks.append(
                GateCheck.of(
                    "quality_vs_champion",
                    False,
                    f"label set changed (added: {', '.join(added) or 'none'}; removed: "
                    f"{', '.join(removed) or 'none'}); a paired test needs one label set, "
                    "so the change needs a human decision",
                    added=added,
                    removed=removed,
                )
            )
        else:
            comparison = compare_paired(
                y_true,
                y_cand,
                y_champ,
                n_classes=len(names),
                margin=gate.non_inferiority_margin,
                confidence=gate.confidence,
            )
            verdict = comparison.verdict
            reason = f"{comparison.verdict.replace('_', ' ')}: {comparison.reason()}"
            if verdict == "no_difference" and not comparison.non_inferior:
                reason = (
                    f"inconclusive, not shown to be within {comparison.margin} of the champion: "
                    f"{comparison.reason()}; the test split is too small for this margin "
                    "(enlarge it, or widen gate.non_inferiority_margin)"
                )
            checks.append(
                GateCheck.of(
                    "quality_vs_champion",
                    comparison.non_inferior,
                    reason,
                    **asdict(comparison),
                )
            )
            checks.append(_slices(cand_in, champ_in, y_true, y_cand, y_champ, slice_columns, gate))
    ece, _ = expected_calibration_error(
        cand_in["confidence"].to_numpy(), y_cand == y_true, ece_bins
    )
    checks.append(
        GateCheck.of(
            "calibration", ece <= gate.max_ece, f"ECE {ece:.4f} (max {gate.max_ece})", ece=ece
        )
    )
    checks += _performance(candidate.performance, champion and champion.performance, gate)
    checks.append(_unsupported(candidate, champion, names, gate))
    checks.append(_attention(candidate, champion, gate))
    checks.append(
        GateCheck.of(
            "pii",
            not (gate.fail_on_pii and candidate.pii_findings),
            "PII in " + ", ".join(candidate.pii_findings)
            if candidate.pii_findings
            else "no PII in the model card, input example or reference profile",
            findings=candidate.pii_findings,
        )
    )
    checks.append(_tokenizer(candidate, champion, gate))
    return GateDecision(
        candidate=candidate.version,
        champion=champion.version if champion else None,
        checks=checks,
        verdict=verdict,
    )


def _in_scope(predictions: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    return predictions[predictions["label"].isin(names)].reset_index(drop=True)


def _codes(values: pd.Series, names: list[str]) -> np.ndarray:
    return pd.Categorical(values, categories=names).codes.astype(np.int64)


def _slices(cand_in, champ_in, y_true, y_cand, y_champ, slice_columns, gate: GateSpec):
    """Block a significant accuracy drop larger than the limit on any slice large enough.

    Significance is judged at (1 - confidence) / number of slices tested (Bonferroni), so
    testing many slices does not make one of them fail by chance.
    """
    tested = []
    for column in slice_columns:
        if column in cand_in:
            values = cand_in[column].astype(str).to_numpy()
            for value in sorted(set(values)):
                if (values == value).sum() >= gate.min_slice_size:
                    tested.append((column, value, values == value))
    alpha = (1.0 - gate.confidence) / max(len(tested), 1)
    worst: dict[str, object] = {}
    regressions = []
    for column, value, mask in tested:
        acc_cand = float((y_cand[mask] == y_true[mask]).mean())
        acc_champ = float((y_champ[mask] == y_true[mask]).mean())
        p = mcnemar_exact(y_true[mask], y_cand[mask], y_champ[mask])
        drop = acc_champ - acc_cand
        row = {"slice": f"{column}={value}", "n": int(mask.sum()), "drop": drop, "p": p}
        if not worst or drop > worst["drop"]:
            worst = row
        if drop >= gate.max_slice_drop and p < alpha:
            regressions.append(
                f"{column}={value}: accuracy {acc_cand:.3f} vs {acc_champ:.3f} "
                f"(-{drop:.3f}, McNemar p={p:.3g}, n={int(mask.sum())})"
            )
    if regressions:
        reason = "significant regression on " + "; ".join(regressions)
    elif worst:
        reason = (
            f"no slice significantly worse by >= {gate.max_slice_drop}; largest drop "
            f"{worst['drop']:+.3f} on {worst['slice']} (p={worst['p']:.3g})"
        )
    else:
        reason = f"no slice with >= {gate.min_slice_size} inputs"
    return GateCheck.of("slices", not regressions, reason, worst=worst, regressions=regressions)


def _performance(candidate: dict, champion: dict | None, gate: GateSpec) -> list[GateCheck]:
    """Latency percentiles and model size against the budgets and against the champion.

    Latency is compared on the paired per-request samples (measured turn by turn on the
    same inputs): a candidate is slower only when the lower confidence bound of its
    percentile ratio exceeds the limit, so a few-millisecond model is not blocked by one
    scheduler hiccup in its tail.
    """
    checks = []
    cand_ms = np.asarray(candidate["latency_ms"], dtype=float)
    champ_ms = None if champion is None else np.asarray(champion["latency_ms"], dtype=float)
    for q, limit in ((95, gate.max_latency_ms_p95), (99, gate.max_latency_ms_p99)):
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
        reason = "; ".join(problems) if problems else reason + ")"
        checks.append(GateCheck.of(f"latency_ms_p{q}", not problems, reason, **values))
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


def _unsupported(candidate, champion, names, gate: GateSpec) -> GateCheck:
    """Absolute limit, and vs the champion an increase that is also significant: both
    versions flag the same out-of-scope inputs or not, so McNemar's test pairs them."""

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
    reason = f"{value:.1%} of {n} out-of-scope inputs confidently labelled far from the reference"
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


def _attention(candidate, champion, gate: GateSpec) -> GateCheck:
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


def _tokenizer(candidate, champion, gate: GateSpec) -> GateCheck:
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
