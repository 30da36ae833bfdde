"""The model card of a generative version: what it is, how it compares with its untuned
base, how often it hallucinates and how well that is detected, and what it costs to serve."""

from __future__ import annotations

from attnops.models.evaluate import Evaluation
from attnops.models.generation.altered_twins import NAME as TWINS_NAME
from attnops.models.generation.data import GenerationData
from attnops.spec import PipelineSpec

_SHOWN = (
    "test_rouge_l", "baseline_rouge_l", "test_chrf", "baseline_chrf", "test_fact_recall",
    "baseline_fact_recall", "test_hallucination_rate", "baseline_hallucination_rate",
    "detector_auc_combined", "detector_auc_text", "detector_auc_attention",
    "detector_auc_logprob", "determinism_rate", "prompt_tokens_p50", "output_tokens_p50",
    "output_tokens_p95", "ttft_ms_p50", "ttft_ms_p95", "inter_token_ms_p50",
    "inter_token_ms_p95", "output_tokens_per_s_batch1", "output_tokens_per_s_batch8",
    "cost_per_1k_requests_usd", "model_size_mb", "attention_input_blind_heads",
)  # fmt: skip


def generation_card(
    spec: PipelineSpec, data: GenerationData, evaluation: Evaluation, tags: dict[str, str]
) -> str:
    """Markdown for the MLflow UI (the version's description and `model_card.md`)."""
    m, report = evaluation.metrics, evaluation.report
    gen = spec.generation
    how = (
        f"LoRA (r {gen.lora.r}, alpha {gen.lora.alpha:g}) merged into the weights"
        if gen.lora
        else "full fine-tuning"
    )
    if spec.model.warm_start:
        how += ", warm-started from earlier fine-tuned weights"
    counts = ", ".join(f"{name} {len(frame)}" for name, frame in data.splits.items())
    lines = [
        f"# {spec.name}",
        "",
        f"`{spec.model.base}` fine-tuned ({how}) to write `{spec.data.target_column}` from "
        f"`{spec.data.source_column}`"
        + (f" grounded in `{spec.data.context_column}`" if spec.data.context_column else "")
        + f"; greedy decoding, at most {gen.max_new_tokens} new tokens. Rows: {counts}.",
        "",
        f"## Results ({int(m['n_eval_inputs'])} test inputs; baseline = the untuned base model)",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {key} | {m[key]:.4g} |" for key in _SHOWN if key in m),
        "",
        "## Hallucination detector",
        "",
        "Fitted on this version's own signals (text groundedness against the input, lookback "
        "ratios of every head, token log-probabilities) over the labelled set "
        f"`{report.get('detector', {}).get('labelled_set', gen.hallucination_set)}`, "
        f"threshold at {gen.detector_max_false_positive_rate:.0%} "
        "false positives on its fitting part; ROC AUC measured on the held-out part.",
    ]
    if report.get("detector", {}).get("labelled_set") == TWINS_NAME:
        lines += [
            "",
            "**No labelled set was given**, so these ROC AUCs are on altered twins, which are "
            "easier to catch than real hallucinations. On the demo's labelled set, a detector "
            "fitted on twins scored 0.93, where the twins gave it 1.00 (README). Add reviewed "
            "outputs of this model as `generation.hallucination_set`.",
        ]
    per_kind = report.get("detector", {}).get("per_kind", {})
    if per_kind:
        lines += ["", "| kind | combined | text | attention | log-prob |", "| --- | --- | --- | --- | --- |"]  # fmt: skip  # noqa: E501
        lines += [
            f"| {kind} | {a['combined']:.3f} | {a['text']:.3f} | {a['attention']:.3f} | "
            f"{a['logprob']:.3f} |"
            for kind, a in per_kind.items()
        ]
    if m.get("prompts_cut_share", 0) > 0:
        lines += [
            "",
            f"**Prompts cut**: {m['prompts_cut_share']:.0%} of the test prompts exceed "
            f"generation.max_prompt_tokens {gen.max_prompt_tokens}; their context (then source) "
            "lost its end before the model read it, in training as here (the run card counts "
            "the train split). Raise max_prompt_tokens if the answers depend on it.",
        ]
    fit = report.get("fit") or {}
    if fit.get("not_learning"):
        lines += ["", f"**Not learning**: {fit['note']}."]
    if fit.get("still_learning"):
        lines += ["", f"**Underfit**: {fit.get('note', 'loss still falling at the end')}."]
    lines += [
        "",
        "## Provenance",
        "",
        f"- data sha256: `{data.data_sha256}`",
        f"- tokenizer sha256: `{tags['attnops.tokenizer_sha256']}`",
        f"- git: `{tags['attnops.git_sha']}`",
    ]
    return "\n".join(lines) + "\n"
