"""Load the labelled splits a spec names, check them, and fingerprint their content.

Every problem a user can fix in their data or spec becomes a `DataError` that names the
file, the column or the rows, and says what to change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from attnops.models.text_checks import (
    Leakage,
    describe_empty,
    is_empty_text,
    label_name,
    leakage_counts,
    near_duplicate_key,
)
from attnops.models.text_files import DataError, read_csv, read_jsonl
from attnops.spec import DataSpec

SPLITS = ("train", "validation", "test")
_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",  # JSON lines, or one array of objects
    ".parquet": "parquet",
}
_CARVE_SEED = 0  # a set-aside validation split is the same rows on every run and every trial
TEXT = "text"
LABEL = "label"


@dataclass(frozen=True)
class LabelledData:
    """The three splits with canonical `text` and `label` columns plus slice columns.

    Rows labelled with the spec's out-of-scope label are kept in validation/test (they
    measure unsupported assertions) but never appear in `train`.
    """

    splits: dict[str, pd.DataFrame]
    label_names: tuple[str, ...]
    out_of_scope_label: str | None
    sha256: dict[str, str]
    leakage: tuple[Leakage, ...] = ()
    """Texts shared across splits (see `text_checks.leakage_counts`), for the data evidence."""

    @property
    def data_sha256(self) -> str:
        """One fingerprint of all three splits."""
        joined = "".join(f"{name}:{self.sha256[name]};" for name in SPLITS)
        return hashlib.sha256(joined.encode()).hexdigest()

    def in_scope(self, split: str) -> pd.DataFrame:
        """Rows of `split` whose label is one of the trained classes."""
        frame = self.splits[split]
        return frame[frame[LABEL].isin(self.label_names)].reset_index(drop=True)

    def out_of_scope(self, split: str) -> pd.DataFrame:
        """Rows of `split` labelled out-of-scope (empty when the spec declares none)."""
        frame = self.splits[split]
        return frame[frame[LABEL] == self.out_of_scope_label].reset_index(drop=True)

    def label_ids(self, frame: pd.DataFrame) -> list[int]:
        """Class indices of an in-scope frame, in `label_names` order."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[label] for label in frame[LABEL]]


def load_labelled_data(spec: DataSpec, spec_path: str = "the spec") -> LabelledData:
    """Read, validate and fingerprint the train/validation/test splits of `spec`.

    Args:
        spec: the spec's `data` section.
        spec_path: shown in error messages so the user knows which file to edit.

    Raises:
        DataError: a file or column is missing, a file is not UTF-8 or has a malformed
            line, rows are empty or not text, a split is empty, eval labels are unseen in
            train, a class has too few examples, or more than `max_leakage_share` of a
            split's texts also appear in an earlier split.
    """
    frames = read_splits(
        spec,
        lambda split: _read_split(spec, split, spec_path),
        key=(TEXT,),
        stratify=LABEL,
        keep=spec.min_examples_per_class,
        all_held=spec.out_of_scope_label,
    )
    oos = spec.out_of_scope_label
    train = frames["train"]
    frames["train"] = train[train[LABEL] != oos].reset_index(drop=True)
    counts = frames["train"][LABEL].value_counts()
    if len(counts) < 2:
        raise DataError(
            f"{spec.train} has {len(counts)} class(es) after removing out-of-scope rows; "
            "classification needs at least 2"
        )
    spellings: dict[str, list[str]] = {}
    for name in sorted(counts.index):
        spellings.setdefault(name.casefold(), []).append(name)
    if clashes := [names for names in spellings.values() if len(names) > 1]:
        listed = "; ".join(" / ".join(f"'{n}' ({counts[n]})" for n in names) for names in clashes)
        raise DataError(
            f"{spec.train}: labels that differ only in case would train as separate classes: "
            f"{listed}; write each class one way in every split"
        )
    too_few = counts[counts < spec.min_examples_per_class]
    if len(too_few):
        listed = ", ".join(f"'{k}' ({v})" for k, v in too_few.sort_index().items())
        raise DataError(
            f"{spec.train}: classes with fewer than {spec.min_examples_per_class} examples: "
            f"{listed}; add examples, merge them, or lower data.min_examples_per_class "
            f"in {spec_path}"
        )
    label_names = tuple(sorted(counts.index))
    for name in ("validation", "test"):
        unseen = sorted(set(frames[name][LABEL]) - set(label_names) - {oos})
        if unseen:
            hint = (
                f"or set data.out_of_scope_label in {spec_path} if they mean 'no intent'"
                if oos is None
                else "or relabel them"
            )
            raise DataError(
                f"{split_source(spec, name)}: labels not present in train: {unseen[:10]}; add "
                f"training examples for them {hint}"
            )
    return LabelledData(
        splits=frames,
        label_names=label_names,
        out_of_scope_label=oos,
        sha256={name: fingerprint(frame) for name, frame in frames.items()},
        leakage=check_leakage(
            spec, {name: frame[TEXT].tolist() for name, frame in frames.items()}, spec_path
        ),
    )


def check_leakage(
    spec: DataSpec, inputs: dict[str, list[str]], spec_path: str
) -> tuple[Leakage, ...]:
    """Count inputs shared across splits (split name -> the model's input per row); stop when
    a share exceeds data.max_leakage_share."""
    found = tuple(leakage_counts(inputs))
    worst = max(found, key=lambda leak: leak.near_share)
    if worst.near_share <= spec.max_leakage_share:
        return found
    counts = "; ".join(
        f"{leak.later} in {leak.earlier}: {leak.exact} exact + {leak.near - leak.exact} near"
        for leak in found
    )
    raise DataError(
        f"{split_source(spec, worst.later)}: {worst.near} of {worst.later_rows} {worst.later} "
        f"rows ({worst.near_share:.1%}) also appear in the {worst.earlier} split "
        f"{split_source(spec, worst.earlier)}, above data.max_leakage_share "
        f"{spec.max_leakage_share:g} in {spec_path}: scores on {worst.later} would be inflated "
        f"(duplicates {counts}; near = equal after casefolding and collapsing whitespace and "
        f"punctuation; e.g. {[text[:80] for text in worst.examples]}); remove the shared rows "
        "from one side, "
        + (
            "or leave data.validation out to have a share of train set aside as validation, "
            if worst.later == "validation" and spec.validation is not None
            else ""
        )
        + "or raise data.max_leakage_share if the repeats are expected"
    )


def read_splits(
    spec: DataSpec,
    read: Callable[[str], pd.DataFrame],
    *,
    key: tuple[str, ...],
    stratify: str | None = None,
    keep: int = 1,
    all_held: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The three splits, each from `read(split)`; without `data.validation`, validation is
    `data.validation_share` of train (see `carve_validation` for the other arguments)."""
    if spec.validation is not None:
        return {name: read(name) for name in SPLITS}
    train, validation = carve_validation(
        read("train"),
        spec.validation_share,
        key=key,
        stratify=stratify,
        keep=keep,
        all_held=all_held,
    )
    # Out-of-scope rows alone are no validation: early stopping and calibration need classes.
    if validation.empty or (stratify and (validation[stratify] == all_held).all()):
        per_class = (
            " (a class of n rows gives round(share * n) and keeps data.min_examples_per_class "
            "in train)"
            if stratify
            else ""
        )
        raise DataError(
            f"{spec.train}: {len(train)} rows leave no validation rows at "
            f"data.validation_share {spec.validation_share:g}{per_class}; a row whose input "
            "stays in train is not set aside either; set data.validation to a file or raise "
            "the share" + (", or lower data.min_examples_per_class" if stratify else "")
        )
    return {"train": train, "validation": validation, "test": read("test")}


def carve_validation(
    train: pd.DataFrame,
    share: float,
    *,
    key: tuple[str, ...],
    stratify: str | None = None,
    keep: int = 1,
    all_held: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest of train, validation): `share` of the rows, of each class when `stratify` names
    the label column (a class of n rows gives round(share * n), leaving at least `keep` of
    them in train: `data.min_examples_per_class` is about the file), seeded. Every row of
    class `all_held` (the out-of-scope label: never trained on) goes to validation.

    A held-out row whose `key` columns (the model's input) also stay in train (a duplicate, up
    to case, spacing and punctuation) goes back to train: validation scores would be inflated
    by it.
    """
    train = train.reset_index(drop=True)
    rng = np.random.default_rng(_CARVE_SEED)
    groups = train.groupby(stratify, sort=True).indices if stratify else {"": np.arange(len(train))}
    held = np.zeros(len(train), dtype=bool)
    for label, rows in groups.items():
        take = min(int(share * len(rows) + 0.5), max(len(rows) - keep, 0))
        held[rng.permutation(rows)[: len(rows) if label == all_held else take]] = True
    keys = pd.Series(
        ["\x1f".join(map(near_duplicate_key, row)) for row in train[list(key)].itertuples(False)]
    )
    kept = set(keys[~held])
    held &= ~keys.isin(kept).to_numpy()
    return train[~held].reset_index(drop=True), train[held].reset_index(drop=True)


def split_source(spec: DataSpec, split: str) -> str:
    """Where a split comes from, for messages: its file, or the train file it was set aside from."""
    if split == "validation" and spec.validation is None:
        return f"{spec.train} (validation: {spec.validation_share:g} of it set aside)"
    return getattr(spec, split)


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of a split's content (column names, then every cell), independent of file format."""
    digest = hashlib.sha256("\x1f".join(frame.columns).encode())
    for row in frame.itertuples(index=False):
        digest.update(("\x1e" + "\x1f".join(str(value) for value in row)).encode())
    return digest.hexdigest()


def _read_split(spec: DataSpec, split: str, spec_path: str) -> pd.DataFrame:
    source = getattr(spec, split)
    raw, lines = read_table(source, spec.format, split, spec_path, class_names=spec.label_column)
    if raw.empty:
        raise DataError(f"{source} ({split} split) has no rows")
    wanted = {"data.text_column": spec.text_column, "data.label_column": spec.label_column}
    wanted |= {f"data.slice_columns ({col})": col for col in spec.slice_columns}
    require_columns(raw, wanted, source, spec_path)
    text = raw[spec.text_column]
    # The same definition the server uses to answer 422: nothing visible left.
    bad_text = text.map(is_empty_text)
    if bad_text.any():
        first = describe_empty(text[bad_text].iloc[0])
        raise DataError(
            f"{source}: {int(bad_text.sum())} row(s) with empty or non-text '{spec.text_column}' "
            f"({row_numbers(bad_text, lines)}; first: {first}); remove or fill them"
        )
    labels = raw[spec.label_column]
    missing = labels.isna() | labels.map(lambda v: is_empty_text(str(v)))
    if missing.any():
        raise DataError(
            f"{source}: {int(missing.sum())} row(s) without a '{spec.label_column}' label "
            f"({row_numbers(missing, lines)}); label or remove them"
        )
    frame = pd.DataFrame({TEXT: text.astype(str), LABEL: labels.map(label_name)})
    for column in spec.slice_columns:
        frame[column] = raw[column].fillna("").astype(str).to_numpy()
    return frame


def require_columns(raw: pd.DataFrame, wanted: dict[str, str], source: str, spec_path: str) -> None:
    """Each of `wanted` (spec field -> column name) is a column of `raw`, or a DataError that
    names the field to set; a header name with spaces around it is pointed out."""
    for field, column in wanted.items():
        if column in raw.columns:
            continue
        spaced = [name for name in map(str, raw.columns) if name.strip() == column]
        hint = (
            f"the header has {spaced[0]!r}, with spaces around it: rename it in the file or "
            f"set {field} to {spaced[0]!r}"
            if spaced
            else f"set {field}"
        )
        raise DataError(
            f"column '{column}' not found in {source} (columns: {describe_columns(raw)}); "
            f"{hint} in {spec_path}"
        )


def describe_columns(raw: pd.DataFrame) -> str:
    """The header for messages: names with spaces around them quoted, so the spaces show."""
    return ", ".join(repr(c) if c != c.strip() else c for c in map(str, raw.columns))


def row_numbers(mask: pd.Series, lines: list[int] | None, limit: int = 5) -> str:
    """'lines 3, 7' (file lines, for text formats) or 'rows 3, 7' (1-based data rows)."""
    positions = mask.to_numpy().nonzero()[0][:limit]
    numbers = [lines[i] if lines is not None else int(i) + 1 for i in positions]
    more = ", ..." if int(mask.sum()) > limit else ""
    unit = "line" if lines is not None else "row"
    unit += "s" if len(numbers) > 1 else ""
    return f"{unit} " + ", ".join(map(str, numbers)) + more


def read_table(
    source: str, fmt: str, split: str, spec_path: str, class_names: str | None = None
) -> tuple[pd.DataFrame, list[int] | None]:
    """The split as read, and for CSV/JSONL the file line where each row starts.

    `class_names`: the label column, whose integer codes a Hugging Face parquet export maps
    back to its class names (see `_with_class_names`); no other column is touched.
    """
    if fmt == "hf":
        return _read_hf(source, split, spec_path), None
    path = Path(source)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "not found"
        raise DataError(
            f"{split} data file {source} {what} (cwd {Path.cwd()}); set data.{split} in "
            f"{spec_path}, or run `attnops demo` to generate the demo data"
        )
    if fmt == "auto":
        fmt = _FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            raise DataError(
                f"cannot tell the format of {source} from its extension; use .csv, .tsv, "
                f".jsonl, .json or .parquet, or set data.format in {spec_path}"
            )
    if fmt in ("csv", "tsv"):
        return read_csv(path, delimiter="\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return read_jsonl(path)
    try:
        frame = pd.read_parquet(path)
        return (_with_class_names(frame, path, class_names) if class_names else frame), None
    except (ValueError, OSError) as exc:
        raise DataError(
            f"cannot read {source} as parquet: {exc}; set data.format in {spec_path} if it is "
            "CSV or JSONL"
        ) from exc


def _with_class_names(frame: pd.DataFrame, path: Path, column: str) -> pd.DataFrame:
    """A Hugging Face export (`Dataset.to_parquet`, the Hub's parquet files) keeps a
    ClassLabel column as integer codes and its names in the file's metadata: the names are
    the classes, as `format: hf` reads them (a code outside the names stays as it is)."""
    metadata = pq.read_schema(path).metadata or {}
    if b"huggingface" not in metadata:
        return frame
    features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
    feature = features.get(column)
    if not isinstance(feature, dict) or feature.get("_type") != "ClassLabel":
        return frame
    if (names := feature.get("names")) and column in frame.columns:
        frame[column] = [
            names[code] if isinstance(code, int) and 0 <= code < len(names) else code
            for code in frame[column].tolist()
        ]
    return frame


def _read_hf(source: str, split: str, spec_path: str) -> pd.DataFrame:
    """`source` is 'NAME_OR_DIR' or 'NAME_OR_DIR:SPLIT' (default split: the spec's split name).

    ClassLabel columns come back as their names, not their integer codes.
    """
    try:
        import datasets  # slow import; only for specs that use it
    except ImportError:
        raise DataError(
            f"data.format 'hf' in {spec_path} needs the datasets package: pip install 'attnops[hf]'"
        ) from None

    name, _, hf_split = source.partition(":")
    hf_split = hf_split or split
    try:
        if Path(name).is_dir():
            loaded = datasets.load_from_disk(name)
            table = loaded[hf_split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            table = datasets.load_dataset(name, split=hf_split)
    except (FileNotFoundError, KeyError, ValueError, ConnectionError) as exc:
        raise DataError(
            f"cannot load Hugging Face dataset '{name}' split '{hf_split}' for data.{split} in "
            f"{spec_path}: {exc}"
        ) from exc
    frame = table.to_pandas()
    for column, feature in table.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[column] = [feature.int2str(int(code)) for code in frame[column]]
    return frame
