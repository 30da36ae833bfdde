"""The model card: a markdown summary a reviewer reads in the MLflow UI."""

from __future__ import annotations

from attnops.models.data import LabelledData
from attnops.models.evaluate import Evaluation
from attnops.spec import PipelineSpec


def model_card(
    spec: PipelineSpec, data: LabelledData, evaluation: Evaluation, tags: dict[str, str]
) -> str:
    """Markdown: what the model is, how it scores against the baseline, where it is weak."""
    m = evaluation.metrics
    report = evaluation.report
    warm = " (warm-started from earlier fine-tuned weights)" if spec.model.warm_start else ""
    lines = [
        f"# {spec.name}",
        "",
        f"Fine-tuned `{spec.model.base}`{warm} for `{spec.task}` over {len(data.label_names)} "
        f"classes (max {spec.model.max_length} tokens).",
        "",
        "## Results (test split)",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    shown = (
        "test_macro_f1", "test_accuracy", "baseline_macro_f1", "macro_f1_gain_over_baseline",
        "test_ece", "unsupported_assertion_rate", "out_of_scope_recall", "out_of_scope_auroc",
        "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "throughput_per_s", "model_size_mb",
        "tokens_per_input_p95", "truncation_rate", "attention_collapsed_heads",
    )  # fmt: skip
    lines += [f"| {key} | {m[key]:.4g} |" for key in shown if key in m]
    if m.get("unknown_only_share", 0) > 0:
        lines += [
            "",
            f"**Unreadable inputs**: {m['unknown_only_share']:.1%} of the test texts are "
            "nothing but unknown tokens to this tokenizer (emoji, a script outside its "
            "vocabulary): the model sees them all as the same input. Map them to words, or "
            "choose a base model whose vocabulary covers them.",
        ]
    lines += _fit_section(report.get("fit"))
    worst = sorted(report["slices"], key=lambda row: row["macro_f1"])[:5]
    lines += [
        "",
        "## Weakest slices",
        "",
        "| slice | value | n | macro-F1 |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['slice']} | {r['value']} | {r['n']} | {r['macro_f1']:.3f} |" for r in worst]
    weakest = sorted(report["per_class"].items(), key=lambda item: item[1]["f1"])[:5]
    lines += ["", "## Weakest classes", "", "| class | F1 | support |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s['f1']:.3f} | {s['support']} |" for name, s in weakest]
    lines += _out_of_scope_lines(report["out_of_scope"])
    attention = report["attention"]
    lines += [
        "",
        "## Attention health",
        "",
        f"Mean normalised head entropy {m['attention_entropy_mean']:.3f} (min "
        f"{m['attention_entropy_min']:.3f}) on {attention['probe_size']} probe inputs; "
        f"heads collapsed by fine-tuning (layer, head): {attention['collapsed_heads'] or 'none'}.",
        "",
        "## Provenance",
        "",
        f"- data sha256: `{data.data_sha256}`",
        f"- tokenizer sha256: `{tags['attnops.tokenizer_sha256']}`",
        f"- git: `{tags['attnops.git_sha']}`",
        "",
        "## Intended use and limits",
        "",
        "Routes inputs to the classes above. Answers flagged `unsupported` (out-of-scope score "
        f"`{report['out_of_scope']['score']}` above {report['out_of_scope']['threshold']:.4g}) "
        "should be treated as 'no class'. Quality outside the training distribution is "
        "unknown; watch drift monitors.",
    ]
    return "\n".join(lines) + "\n"


def _out_of_scope_lines(section: dict) -> list[str]:
    """Each out-of-scope score on validation (where chosen) and test, and why the one chosen."""
    rate = section["in_scope_rejection_rate"]
    lines = [
        "",
        "## Out-of-scope detection",
        "",
        f"Flags inputs by `{section['score']}`: {section['reason']}.",
        "",
        f"| score | validation AUROC | validation recall @{rate:.0%} | test AUROC | "
        f"test recall @{rate:.0%} | test in-scope rejected |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    nan = {"auroc": float("nan"), "recall": float("nan"), "in_scope_rejection": float("nan")}
    for name, val in section["validation"].items():
        test = section["test"].get(name, nan)
        lines.append(
            f"| {name} | {val['auroc']:.3f} | {val['recall']:.3f} | {test['auroc']:.3f} | "
            f"{test['recall']:.3f} | {test['in_scope_rejection']:.3f} |"
        )
    return lines


def _fit_section(fit: dict | None) -> list[str]:
    """How well the model fit its training data; an `underfit` verdict leads with its reasons."""
    if not fit:
        return []
    lines = [
        "",
        "## Training fit",
        "",
        f"**{fit['diagnosis']}**: train accuracy {fit['train_accuracy']:.3f} on "
        f"{fit['train_accuracy_examples']} training examples (underfit below "
        f"{fit['min_train_accuracy']:g}); mean train loss {fit['train_loss_mean_first']:.3f} "
        f"at the first evaluation, {fit['train_loss_mean_last']:.3f} at the last; stopped by "
        f"{fit['stopped_by']}; best validation macro-F1 {fit['val_macro_f1_best']:.4f}.",
    ]
    if fit["reasons"]:
        lines += ["", *(f"- {reason}" for reason in fit["reasons"]), "", f"Fix: {fit['advice']}."]
    if fit["notes"]:
        lines += ["", *(f"- Note: {note}" for note in fit["notes"])]
    return lines
