"""Data loading: the formats users have, and errors that say what to fix."""

import csv
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnops.models.data import DataError, load_labelled_data
from attnops.models.text_checks import is_empty_text, leakage_counts, near_duplicate_key
from attnops.models.text_files import read_csv
from attnops.spec import DataSpec


def _write(tmp_path, frames: dict[str, pd.DataFrame], fmt: str = "csv") -> dict[str, str]:
    paths = {}
    for split, frame in frames.items():
        path = tmp_path / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "tsv":
            frame.to_csv(path, index=False, sep="\t")
        elif fmt == "json":  # one array of objects, as many exports write it
            frame.to_json(path, orient="records", indent=1)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False)
        paths[split] = str(path)
    return paths


def _frame(labels, texts=None, split="train", **extra) -> pd.DataFrame:
    # Each split its own texts: shared ones count as leakage (data.max_leakage_share).
    texts = texts or [f"{split} message {i} about {label}" for i, label in enumerate(labels)]
    return pd.DataFrame({"body": texts, "intent": labels, **extra})


def _spec(paths, **kw) -> DataSpec:
    return DataSpec(
        **paths, text_column="body", label_column="intent", min_examples_per_class=2, **kw
    )


def _splits(train=None, validation=None, test=None):
    given = {"train": train, "validation": validation, "test": test}
    return {
        split: frame if frame is not None else _frame(["a", "a", "b", "b", "c", "c"], split=split)
        for split, frame in given.items()
    }


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_formats_load_to_same_content_and_fingerprint(tmp_path, fmt):
    folder = tmp_path / fmt
    folder.mkdir()
    data = load_labelled_data(_spec(_write(folder, _splits(), fmt)))
    assert data.label_names == ("a", "b", "c")
    assert list(data.splits["train"].columns) == ["text", "label"]
    # The fingerprint is of the content, so the same rows in another format match.
    reference = load_labelled_data(_spec(_write(tmp_path, _splits(), "csv")))
    assert data.sha256 == reference.sha256


def test_fingerprint_changes_when_one_label_changes(tmp_path):
    before = load_labelled_data(_spec(_write(tmp_path, _splits()))).data_sha256
    changed = _frame(["a", "a", "b", "b", "c", "a"], split="test")
    after = load_labelled_data(_spec(_write(tmp_path, _splits(test=changed)))).data_sha256
    assert before != after


def test_missing_file_names_split_and_field(tmp_path):
    paths = _write(tmp_path, _splits())
    paths["validation"] = str(tmp_path / "missing.csv")
    with pytest.raises(
        DataError, match=r"validation data file .*missing\.csv not found.*data\.validation"
    ):
        load_labelled_data(_spec(paths))


def test_missing_column_lists_columns_and_field(tmp_path):
    paths = _write(tmp_path, _splits())
    spec = DataSpec(**paths, text_column="text", label_column="intent", min_examples_per_class=2)
    with pytest.raises(DataError) as err:
        load_labelled_data(spec, "configs/x.yaml")
    assert "column 'text' not found" in str(err.value)
    assert "columns: body, intent" in str(err.value)
    assert "set data.text_column in configs/x.yaml" in str(err.value)


def test_a_header_name_with_spaces_around_it_is_pointed_out(tmp_path):
    """`label ` from a hand-edited CSV: the spaces show, and the message says what to set."""
    paths = _write(
        tmp_path, {k: v.rename(columns={"intent": "intent "}) for k, v in _splits().items()}
    )
    with pytest.raises(DataError) as err:
        load_labelled_data(_spec(paths), "configs/x.yaml")
    assert "(columns: body, 'intent ')" in str(err.value)
    assert "the header has 'intent ', with spaces around it" in str(err.value)


def test_labels_that_differ_only_in_case_are_refused(tmp_path):
    """Billing, billing and BILLING from three annotators are one class, not three."""
    train = _frame(["Billing", "Billing", "billing", "billing", "BILLING", "BILLING", "b", "b"])
    paths = _write(tmp_path, _splits(train=train))
    with pytest.raises(
        DataError, match=r"differ only in case.*'BILLING' \(2\) / 'Billing' \(2\) / 'billing' \(2\)"
    ):
        load_labelled_data(_spec(paths))


def test_a_hugging_face_parquet_export_keeps_its_class_names(tmp_path):
    """`Dataset.to_parquet` writes ClassLabel codes and keeps the names in the metadata."""
    features = {"body": {"dtype": "string", "_type": "Value"}}
    features["intent"] = {"names": ["sadness", "joy", "anger"], "_type": "ClassLabel"}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    for split in ("train", "validation", "test"):
        table = pa.table({"body": [f"{split} text {i}" for i in range(6)], "intent": [0, 1, 2] * 2})
        pq.write_table(table.replace_schema_metadata(meta), tmp_path / f"{split}.parquet")
    paths = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "validation", "test")}
    data = load_labelled_data(_spec(paths))
    assert data.label_names == ("anger", "joy", "sadness")
    assert data.splits["test"]["label"].tolist()[:3] == ["sadness", "joy", "anger"]


def test_missing_slice_column_is_named(tmp_path):
    paths = _write(tmp_path, _splits())
    with pytest.raises(DataError, match=r"column 'channel'.*data\.slice_columns"):
        load_labelled_data(_spec(paths, slice_columns=("channel",)))


def test_empty_and_non_text_rows_are_reported_with_row_numbers(tmp_path):
    bad = _frame(["a", "a", "b", "b", "c", "c"], texts=["ok", "  ", "fine", "", "x", "y"])
    with pytest.raises(DataError, match=r"2 row\(s\) with empty or non-text 'body' \(lines 3, 5;"):
        load_labelled_data(_spec(_write(tmp_path, _splits(train=bad))))


def test_missing_labels_are_reported(tmp_path):
    bad = _frame(["a", "a", "b", None, "c", "c"])
    with pytest.raises(DataError, match=r"1 row\(s\) without a 'intent' label \(line 5\)"):
        load_labelled_data(_spec(_write(tmp_path, _splits(train=bad))))


def test_unseen_eval_labels_point_to_out_of_scope_setting(tmp_path):
    test = _frame(["a", "b", "c", "zzz"], split="test")
    with pytest.raises(
        DataError, match=r"labels not present in train: \['zzz'\].*out_of_scope_label"
    ):
        load_labelled_data(_spec(_write(tmp_path, _splits(test=test))))


def test_out_of_scope_rows_stay_out_of_training(tmp_path):
    train = _frame(["a", "a", "b", "b", "none"])
    validation = _frame(["a", "a", "b", "b", "none"], split="validation")
    test = _frame(["a", "b", "none", "none"], split="test")
    paths = _write(tmp_path, _splits(train=train, validation=validation, test=test))
    data = load_labelled_data(_spec(paths, out_of_scope_label="none"))
    assert data.label_names == ("a", "b")
    assert "none" not in set(data.splits["train"]["label"])
    assert len(data.out_of_scope("test")) == 2
    assert len(data.in_scope("test")) == 2


def test_too_few_examples_per_class(tmp_path):
    train = _frame(["a", "a", "a", "b", "c", "c"])
    with pytest.raises(
        DataError, match=r"fewer than 2 examples: 'b' \(1\).*min_examples_per_class"
    ):
        load_labelled_data(_spec(_write(tmp_path, _splits(train=train))))


def test_integer_labels_match_across_formats(tmp_path):
    train = _frame([0, 0, 1, 1])
    test = pd.DataFrame({"body": ["x", "y"], "intent": [0.0, 1.0]})
    paths = _write(tmp_path, {"train": train, "validation": _frame([0, 1], split="validation")})
    paths |= {"test": _write(tmp_path, {"test": test}, "parquet")["test"]}
    data = load_labelled_data(_spec(paths))
    assert data.label_names == ("0", "1")
    assert data.label_ids(data.in_scope("test")) == [0, 1]


def test_hugging_face_dataset_on_disk_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"body": datasets.Value("string"), "intent": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    splits = {}
    for name, frame in _splits().items():
        frame["intent"] = frame["intent"].map({"a": 0, "b": 1, "c": 2})
        splits[name] = datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "hf")
    paths = {name: str(tmp_path / "hf") for name in ("train", "validation", "test")}
    data = load_labelled_data(_spec(paths, format="hf"))
    assert data.label_names == ("a", "b", "c")
    assert len(data.splits["test"]) == 6


def test_digit_only_texts_and_zero_padded_labels_stay_strings(tmp_path):
    frame = _frame(["007", "007", "010", "010"], texts=["12345", "0042", "refund", "track"])
    validation, test = (_frame(["007", "010"], split=name) for name in ("validation", "test"))
    data = load_labelled_data(_spec(_write(tmp_path, _splits(frame, validation, test))))
    assert data.label_names == ("007", "010")
    assert data.splits["train"]["text"].tolist()[:2] == ["12345", "0042"]


@pytest.mark.parametrize(
    ("text", "empty"),
    [
        ("", True), (" \t\n", True), ("\u00a0\u3000", True), ("\u200b\u200c\u2060\ufeff", True),
        ("\x00\x1b\x7f\x85", True), ("\u00ad\u200e", True), (None, True), (12, True),
        ("a", False), ("\u200bok\u200b", False), ("?", False), ("\U0001f44d", False),
        ("\u0645", False),
    ],
)  # fmt: skip
def test_empty_text_definition(text, empty):
    """Nothing visible after whitespace, zero-width, control and format characters: empty."""
    assert is_empty_text(text) is empty


def test_leakage_counts_exact_and_near_duplicates_per_pair():
    """Case, width, spacing and punctuation fold away; a text of punctuation or emoji only
    matches itself (a repeated reaction in a review dataset), not another such text."""
    assert near_duplicate_key("  Where's  MY\u00a0card?! ") == near_duplicate_key("where s my card")
    train = ["Where is my card?", "refund please", "?", "ｆｕｌｌｗｉｄｔｈ text", "😂😂"]
    test = ["where is my card", "refund please", "!!", "fullwidth TEXT", "new one", "😂😂 "]
    (validation_in_train, test_in_train, test_in_validation) = leakage_counts(
        {"train": train, "validation": ["nothing shared"], "test": test}
    )
    assert (test_in_train.exact, test_in_train.near, test_in_train.later_rows) == (1, 4, 6)
    assert test_in_train.examples == ("where is my card", "refund please", "fullwidth TEXT")
    assert test_in_train.as_dict() == {
        "splits": "test in train", "rows": 6, "exact_duplicates": 1, "near_duplicates": 4,
        "near_share": 0.666667,
    }  # fmt: skip
    assert validation_in_train.near == test_in_validation.near == 0


def test_without_a_validation_file_a_share_of_train_is_set_aside_per_class(tmp_path):
    """Public datasets often ship train and test only: validation is 10% of each class of
    train, the same rows every time, never a text that stays in train, and out of training.
    Out-of-scope rows are never trained on: all of them go to validation."""
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 10 + ["out"] * 10
    texts = [f"query {i} about {label}" for i, label in enumerate(labels)]
    # Class c is one text written ten ways: any row set aside has its twin left in train.
    texts[60:70] = [f"{'Refund' if i % 2 else 'REFUND'} please{'!' * i}" for i in range(10)]
    paths = _write(tmp_path, {"train": _frame(labels, texts), "test": _splits()["test"]})
    spec = _spec(paths, out_of_scope_label="out")
    assert spec.validation is None
    data = load_labelled_data(spec)
    validation, train = data.splits["validation"], data.splits["train"]
    assert validation["label"].value_counts().to_dict() == {"a": 4, "b": 2, "out": 10}
    assert train["label"].value_counts().to_dict() == {"a": 36, "b": 18, "c": 10}
    assert not set(validation["text"].map(near_duplicate_key)) & set(
        train["text"].map(near_duplicate_key)
    )
    again = load_labelled_data(spec)
    assert again.splits["validation"].equals(validation) and again.data_sha256 == data.data_sha256


def test_too_small_a_train_split_to_set_validation_aside_says_what_to_set(tmp_path):
    paths = _write(tmp_path, {"train": _frame(["a", "a", "b", "b"]), "test": _splits()["test"]})
    with pytest.raises(DataError, match=r"train\.csv.*data\.validation"):
        load_labelled_data(_spec(paths, validation_share=0.1))


def test_tsv_quotes_are_text_unless_the_file_was_written_quoted(tmp_path):
    """GLUE- and Kaggle-style TSV: a lone `"` is a character, not the start of a quoted text
    that swallows the lines after it; a TSV that pandas wrote (quoting) reads back as written."""
    literal = tmp_path / "glue.tsv"
    texts = ['"Bad Boys" is loud', '" the film is a mess', '" a charming film "', 'the 12" vinyl']
    literal.write_text("sentence\tlabel\n" + "".join(f"{t}\t0\n" for t in texts))
    frame, lines = read_csv(literal, delimiter="\t")
    assert frame["sentence"].tolist() == texts and lines == [2, 3, 4, 5]
    written = pd.DataFrame({"text": ['he said "wow"', "a\tb\nc", "two\nlines", '"quoted"']})
    written["label"] = list("abcd")
    written.to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    frame, _ = read_csv(tmp_path / "pandas.tsv", delimiter="\t")
    assert frame["text"].tolist() == written["text"].tolist()
    # Every cell quoted (R's write.table, csv.QUOTE_ALL), no quote inside any text.
    plain = pd.DataFrame({"text": ["where is my card", "refund please"], "label": ["a", "b"]})
    plain.to_csv(tmp_path / "all.tsv", sep="\t", index=False, quoting=csv.QUOTE_ALL)
    frame, _ = read_csv(tmp_path / "all.tsv", delimiter="\t")
    assert frame.equals(plain.astype(object))


def test_bad_rows_of_tsv_and_json_arrays_are_named(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("body\tintent\nhello there\ta\nrefund please\tb\textra\n")
    with pytest.raises(DataError, match=r"train\.tsv line 3: 3 field\(s\).*contain tabs"):
        load_labelled_data(_spec({"train": str(tsv), "validation": str(tsv), "test": str(tsv)}))
    array = tmp_path / "train.json"
    array.write_text('[{"body": "hi", "intent": "a"}, ["not", "an", "object"]]')
    with pytest.raises(DataError, match=r"train\.json item 2: a JSON array, not an object"):
        load_labelled_data(_spec({"train": str(array), "validation": str(tsv), "test": str(tsv)}))
    # pandas' default to_json() writes columns, not rows: say how to write rows.
    pd.DataFrame({"body": ["hi", "yo"], "intent": ["a", "b"]}).to_json(array)
    with pytest.raises(DataError, match=r"train\.json is one JSON object.*orient='records'"):
        load_labelled_data(_spec({"train": str(array), "validation": str(tsv), "test": str(tsv)}))
