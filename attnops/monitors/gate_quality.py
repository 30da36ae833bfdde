"""Gate checks on the candidate's answers: are they good enough, and better than what we have?

Against a floor, the champion (paired test, per slice, per class it no longer serves), the
TF-IDF baseline (the same paired test) and calibration. Each returns a `GateCheck` with its
numbers and a reason a reviewer can act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from attnops.models.metrics import classification_metrics, expected_calibration_error
from attnops.monitors.checks import GateCheck, VersionEvidence
from attnops.monitors.significance import compare_paired, mcnemar_exact
from attnops.spec import GateSpec


@dataclass(frozen=True)
class Answers:
    """The candidate's in-scope test rows and their class codes, shared by the checks."""

    rows: pd.DataFrame
    names: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray

    @classmethod
    def of(cls, predictions: pd.DataFrame, names: Sequence[str]) -> Answers:
        names = list(names)
        rows = in_scope(predictions, names)
        return cls(rows, names, codes(rows["label"], names), codes(rows["prediction"], names))

    def paired_codes(self, other: pd.DataFrame, whose: str) -> np.ndarray:
        """Another model's predictions on the same rows, as codes; refuses other inputs."""
        other_in = in_scope(other, self.names)
        if not other_in["label"].equals(self.rows["label"]):
            raise ValueError(
                f"{whose} was not scored on the same test inputs as the candidate; a paired "
                "comparison needs both on the same split"
            )
        return codes(other_in["prediction"], self.names)


def in_scope(predictions: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    return predictions[predictions["label"].isin(names)].reset_index(drop=True)


def codes(values: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Class indices in `names` order; -1 for a value outside them."""
    return pd.Categorical(values, categories=names).codes.astype(np.int64)


def quality_floor_check(answers: Answers, gate: GateSpec) -> GateCheck:
    quality = classification_metrics(answers.y_true, answers.y_pred, answers.names)
    return GateCheck.of(
        "quality_floor",
        quality["macro_f1"] >= gate.min_macro_f1,
        f"macro-F1 {quality['macro_f1']:.4f} (floor {gate.min_macro_f1})",
        macro_f1=quality["macro_f1"],
        accuracy=quality["accuracy"],
    )


def calibration_check(answers: Answers, gate: GateSpec, ece_bins: int) -> GateCheck:
    confidence = answers.rows["confidence"].to_numpy()
    ece, _ = expected_calibration_error(confidence, answers.y_pred == answers.y_true, ece_bins)
    return GateCheck.of(
        "calibration", ece <= gate.max_ece, f"ECE {ece:.4f} (max {gate.max_ece})", ece=ece
    )


def champion_checks(
    answers: Answers,
    candidate: VersionEvidence,
    champion: VersionEvidence,
    slice_columns: Sequence[str],
    gate: GateSpec,
) -> tuple[str, list[GateCheck]]:
    """The quality verdict vs the champion and its checks: the paired test and the slices."""
    y_champ = answers.paired_codes(champion.predictions, f"v{champion.version}")
    added = sorted(set(candidate.label_names) - set(champion.label_names))
    removed = sorted(set(champion.label_names) - set(candidate.label_names))
    if added or removed:
        # Different label sets have no common macro-F1: a person must decide.
        return "not_comparable", [
            GateCheck.of(
                "quality_vs_champion",
                False,
                # Removed classes are named, with what they were worth, by `lost_classes`.
                f"label set changed (added: {', '.join(added) or 'none'}; removed: "
                f"{len(removed)}, see lost_classes); a paired test needs one label set, so "
                "the change needs a human decision",
                added=added,
                removed=removed,
            )
        ]
    comparison = compare_paired(
        answers.y_true,
        answers.y_pred,
        y_champ,
        n_classes=len(answers.names),
        margin=gate.non_inferiority_margin,
        confidence=gate.confidence,
    )
    reason = f"{comparison.verdict.replace('_', ' ')}: {comparison.reason()}"
    if comparison.verdict == "no_difference" and not comparison.non_inferior:
        reason = (
            f"inconclusive, not shown to be within {comparison.margin} of the champion: "
            f"{comparison.reason()}; the test split is too small for this margin "
            "(enlarge it, or widen gate.non_inferiority_margin)"
        )
    checks = [
        GateCheck.of("quality_vs_champion", comparison.non_inferior, reason, **asdict(comparison)),
        _slices(answers, y_champ, slice_columns, gate),
    ]
    return comparison.verdict, checks


def lost_classes_check(candidate: VersionEvidence, champion: VersionEvidence) -> GateCheck:
    """Block a candidate that cannot predict classes the champion serves, naming each with
    the champion's accuracy on it, judged on the champion's own test data (the candidate's
    test split has no inputs of classes it was not trained on)."""
    lost = sorted(set(champion.label_names) - set(candidate.label_names))
    if not lost:
        served = f"serves all {len(champion.label_names)} of the champion's classes"
        return GateCheck.of("lost_classes", True, served)
    champ_rows = champion.champion_test_predictions
    cand_rows = candidate.champion_test_predictions
    if champ_rows is None or cand_rows is None:
        return GateCheck.of(
            "lost_classes",
            False,
            f"cannot predict {len(lost)} of the champion's {len(champion.label_names)} classes: "
            f"{', '.join(lost)} (not scored on the champion's test data, so their accuracy "
            "is unknown); dropping classes needs a human decision",
            lost=lost,
        )
    if not champ_rows["label"].equals(cand_rows["label"]):
        raise ValueError(
            f"v{candidate.version} and v{champion.version} were not scored on the same "
            "champion test inputs"
        )
    per_class: dict[str, dict[str, object]] = {}
    for name in lost:
        mask = (champ_rows["label"] == name).to_numpy()
        answered = cand_rows.loc[mask, "prediction"].value_counts().head(3)
        per_class[name] = {
            "n": int(mask.sum()),
            "champion_accuracy": float((champ_rows.loc[mask, "prediction"] == name).mean())
            if mask.any()
            else None,
            "candidate_answers": {str(k): int(v) for k, v in answered.items()},
        }
    served = champ_rows["label"].isin(champion.label_names).to_numpy()
    accuracy = {
        side: float((rows.loc[served, "prediction"] == rows.loc[served, "label"]).mean())
        for side, rows in (("candidate", cand_rows), ("champion", champ_rows))
    }
    described = ", ".join(
        f"{name} (champion accuracy {row['champion_accuracy']:.3f}, n={row['n']})"
        if row["n"]
        else f"{name} (no test inputs)"
        for name, row in per_class.items()
    )
    return GateCheck.of(
        "lost_classes",
        False,
        f"cannot predict {len(lost)} of the champion's {len(champion.label_names)} classes: "
        f"{described}; candidate accuracy {accuracy['candidate']:.3f} vs champion "
        f"{accuracy['champion']:.3f} on all {int(served.sum())} of the champion's test "
        "inputs; dropping classes needs a human decision",
        lost=per_class,
        accuracy_on_champion_test=accuracy,
        n=int(served.sum()),
    )


def baseline_check(answers: Answers, baseline: pd.DataFrame, gate: GateSpec) -> GateCheck:
    """The candidate must beat the TF-IDF baseline by `min_baseline_margin` macro-F1: the
    lower end of the paired-bootstrap CI (same inputs, same resamples) must lie above it."""
    margin = gate.min_baseline_margin
    y_base = answers.paired_codes(baseline, "the TF-IDF baseline")
    if (y_base < 0).any():
        raise ValueError("the TF-IDF baseline predicted classes outside the candidate's labels")
    comparison = compare_paired(
        answers.y_true,
        answers.y_pred,
        y_base,
        n_classes=len(answers.names),
        confidence=gate.confidence,
    )
    passed = comparison.ci_low > margin
    scores = (
        f"macro-F1 {comparison.candidate_macro_f1:.4f} vs TF-IDF baseline "
        f"{comparison.champion_macro_f1:.4f}: difference {comparison.difference:+.4f}, "
        f"{comparison.confidence:.0%} paired-bootstrap CI [{comparison.ci_low:+.4f}, "
        f"{comparison.ci_high:+.4f}] on {comparison.n} inputs, McNemar "
        f"p={comparison.mcnemar_p_value:.3g}"
    )
    if passed:
        reason = f"beats the baseline by more than {margin:g}: {scores}"
    elif comparison.verdict == "worse":
        reason = f"loses to the TF-IDF baseline: {scores}"
    else:
        # A CI too wide to clear the margin is fixed by more test data; a gap not above the
        # margin is not.
        hint = (
            "a bigger test split narrows the CI"
            if comparison.difference > margin
            else "the difference itself is not above the margin"
        )
        reason = (
            f"not shown to beat the TF-IDF baseline by more than {margin:g}: {scores}; "
            f"{hint} (or lower gate.min_baseline_margin)"
        )
    return GateCheck.of(
        "quality_vs_baseline",
        passed,
        reason,
        candidate_macro_f1=comparison.candidate_macro_f1,
        baseline_macro_f1=comparison.champion_macro_f1,
        difference=comparison.difference,
        ci_low=comparison.ci_low,
        ci_high=comparison.ci_high,
        mcnemar_p_value=comparison.mcnemar_p_value,
        min_margin=margin,
        n=comparison.n,
    )


def _slices(
    answers: Answers, y_champ: np.ndarray, slice_columns: Sequence[str], gate: GateSpec
) -> GateCheck:
    """Block a significant accuracy drop larger than the limit on any slice large enough.

    Significance is judged at (1 - confidence) / number of slices tested (Bonferroni), so
    testing many slices does not make one of them fail by chance.
    """
    y_true, y_cand, rows = answers.y_true, answers.y_pred, answers.rows
    tested = []
    for column in slice_columns:
        if column in rows:
            values = rows[column].astype(str).to_numpy()
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
