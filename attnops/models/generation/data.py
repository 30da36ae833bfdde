"""Generation data: (source, context, target) splits, prompts, and training examples.

The splits are read with the classification data readers (CSV, JSONL, Parquet, Hugging
Face), so file errors read the same; the columns are renamed to `source`, `context` and
`target`. A prompt is the tokenizer's chat template over the spec's instruction (system) and
the context and source (user); an example is that prompt followed by the target, with the
loss on the target alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from attnops.models.data import (
    SPLITS,
    check_leakage,
    describe_columns,
    fingerprint,
    read_splits,
    read_table,
    require_columns,
    row_numbers,
    split_source,
)
from attnops.models.text_checks import Leakage, describe_empty, is_empty_text
from attnops.models.text_files import DataError
from attnops.spec import DataSpec
from attnops.spec_generation import GenerationSpec

SOURCE, CONTEXT, TARGET = "source", "context", "target"
IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt and padding): torch's cross_entropy default."""


@dataclass(frozen=True)
class GenerationData:
    """The three splits with columns source, context ("" without a context column), target
    and the spec's slice columns."""

    splits: dict[str, pd.DataFrame]
    data_sha256: str
    """Fingerprint of the splits' content as used (independent of file format)."""
    paths: dict[str, str]
    leakage: tuple[Leakage, ...] = ()
    """Inputs (context and source) shared across splits: a test input seen in training
    scores the memory of its target, not the model."""


def load_generation_data(spec: DataSpec, spec_path: str = "the spec") -> GenerationData:
    """Read and check the train/validation/test splits of a `task: generation` spec.

    Args:
        spec: the spec's `data` section (source_column, target_column, context_column).
        spec_path: shown in error messages so the user knows which file to edit.

    Raises:
        DataError: a file or column is missing, a file is malformed, a split is empty,
            rows have an empty source or target (named by line or row number), or more than
            `data.max_leakage_share` of a split's inputs (context and source) also appear in
            an earlier split.
    """
    # The prompt holds context and source: grounded data often repeats one instruction as
    # the source over many articles.
    splits = read_splits(
        spec, lambda split: _read_split(spec, split, spec_path), key=(CONTEXT, SOURCE)
    )
    joined = "".join(f"{name}:{fingerprint(splits[name])};" for name in SPLITS)
    inputs = {
        name: [f"{c}\n{s}" for c, s in zip(frame[CONTEXT], frame[SOURCE], strict=True)]
        for name, frame in splits.items()
    }
    return GenerationData(
        splits=splits,
        data_sha256=hashlib.sha256(joined.encode()).hexdigest(),
        paths={name: split_source(spec, name) for name in SPLITS},
        leakage=check_leakage(spec, inputs, spec_path),
    )


def _read_split(spec: DataSpec, split: str, spec_path: str) -> pd.DataFrame:
    return read_pairs(spec, getattr(spec, split), split, spec_path)


def read_pairs(
    spec: DataSpec,
    source: str,
    split: str,
    spec_path: str,
    extra: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> pd.DataFrame:
    """One file of (source, context, target) rows, checked as a split is, plus the columns
    in `extra` as they are (e.g. a labelled set's `label`) and those in `optional` ("" when
    the file has none).

    Args:
        spec: the data section: format and column names.
        source: the file (or HF dataset) to read.
        split: what the file is, for messages ("train", "hallucination set", ...).
        spec_path: the spec to name in messages.
    """
    raw, lines = read_table(source, spec.format, split, spec_path)
    if raw.empty:
        raise DataError(f"{source} ({split} split) has no rows")
    wanted = {"data.source_column": spec.source_column, "data.target_column": spec.target_column}
    if spec.context_column:
        wanted["data.context_column"] = spec.context_column
    wanted |= {f"data.slice_columns ({col})": col for col in spec.slice_columns}
    require_columns(raw, wanted, source, spec_path)
    required = {"data.source_column": spec.source_column, "data.target_column": spec.target_column}
    for field, column in required.items():
        empty = raw[column].map(is_empty_text)
        if empty.any():
            first = describe_empty(raw[column][empty].iloc[0])
            raise DataError(
                f"{source}: {int(empty.sum())} row(s) with empty or non-text '{column}' "
                f"({field}; {row_numbers(empty, lines)}; first: {first}); remove or fill them"
            )
    context = raw[spec.context_column] if spec.context_column else pd.Series([""] * len(raw))
    frame = pd.DataFrame(
        {
            SOURCE: raw[spec.source_column].astype(str).to_numpy(),
            # A row without grounding text is allowed: its prompt holds the source alone.
            CONTEXT: context.fillna("").astype(str).to_numpy(),
            TARGET: raw[spec.target_column].astype(str).to_numpy(),
        }
    )
    for column in spec.slice_columns:
        frame[column] = raw[column].fillna("").astype(str).to_numpy()
    for column in extra:
        if column not in raw.columns:
            raise DataError(
                f"column '{column}' not found in {source} (columns: {describe_columns(raw)})"
            )
        frame[column] = raw[column].to_numpy()
    for column in optional:
        frame[column] = raw[column].fillna("").astype(str).to_numpy() if column in raw else ""
    return frame


def render_prompt_text(tokenizer, instruction: str, source: str, context: str) -> str:
    """The chat prompt as text (see `prompt_ids`), before tokenisation and any cut."""
    user = f"Article:\n{context}\n\nMessage:\n{source}" if context.strip() else source
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _render(tokenizer, instruction: str, source: str, context: str) -> list[int]:
    text = render_prompt_text(tokenizer, instruction, source, context)
    # The template writes the special tokens itself; the tokenizer must not add more.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, spec: GenerationSpec, source: str, context: str = "") -> list[int]:
    """Token ids of the chat prompt, cut to `spec.max_prompt_tokens`.

    The user message is "Article:\\n{context}\\n\\nMessage:\\n{source}" (the source alone when
    the context is empty), after the system instruction, ending with the assistant's turn
    header. A prompt that is too long loses the end of its context first, then the end of
    its source: the message says what is asked, the article is only support.

    Raises:
        ValueError: the instruction and template alone exceed max_prompt_tokens.
    """
    ids = _render(tokenizer, spec.instruction, source, context)
    if len(ids) <= spec.max_prompt_tokens:
        return ids
    parts = {"context": context, "source": source}
    pieces = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in parts.items()}
    # Cutting a text by the prompt's excess and re-rendering may land a token or two off
    # (tokens merge differently at the cut), so repeat until the prompt fits.
    while len(ids) > spec.max_prompt_tokens:
        name = "context" if pieces["context"] else "source"
        if not pieces[name]:
            raise ValueError(
                f"the instruction and chat template alone take {len(ids)} tokens, more than "
                f"generation.max_prompt_tokens {spec.max_prompt_tokens}; raise it or shorten "
                "generation.instruction"
            )
        keep = max(0, len(pieces[name]) - (len(ids) - spec.max_prompt_tokens))
        pieces[name] = pieces[name][:keep]
        parts[name] = tokenizer.decode(pieces[name])
        ids = _render(tokenizer, spec.instruction, parts["source"], parts["context"])
    return ids


def cut_counts(tokenizer, spec: GenerationSpec, frame: pd.DataFrame) -> dict[str, int]:
    """How many rows' prompts exceed `max_prompt_tokens` (their context, then their source,
    loses its end: `prompt_ids`) and how many targets exceed `max_target_tokens`."""
    prompts = [
        len(_render(tokenizer, spec.instruction, source, context))
        for source, context in zip(frame[SOURCE], frame[CONTEXT], strict=True)
    ]
    targets = tokenizer(frame[TARGET].tolist(), add_special_tokens=False)["input_ids"]
    return {
        "prompts_cut": sum(n > spec.max_prompt_tokens for n in prompts),
        "targets_cut": sum(len(t) > spec.max_target_tokens for t in targets),
        "rows": len(frame),
    }


def encode_examples(tokenizer, spec: GenerationSpec, frame: pd.DataFrame) -> list[dict]:
    """Training examples: prompt + target tokens, labels IGNORE_INDEX on the prompt.

    The target is cut to `max_target_tokens` and ends with the end-of-sequence token, so the
    model learns when to stop; a target that was cut gets none, so the model never learns to
    stop mid-sentence.

    Returns:
        one {"input_ids": list[int], "labels": list[int]} per row of `frame`.
    """
    targets = tokenizer(frame[TARGET].tolist(), add_special_tokens=False)["input_ids"]
    examples = []
    for source, context, target in zip(frame[SOURCE], frame[CONTEXT], targets, strict=True):
        prompt = prompt_ids(tokenizer, spec, source, context)
        answer = target[: spec.max_target_tokens]
        if len(target) <= spec.max_target_tokens:
            answer = [*answer, tokenizer.eos_token_id]
        examples.append(
            {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}
        )
    return examples
