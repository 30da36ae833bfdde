"""Bad specs, data files and label files: each refused with one line that names the file,
the field or line and the value, and says what to change; nothing is left half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3

import numpy as np
import pytest

from attnops.flows.cli import main
from attnops.models.data import DataError, load_labelled_data
from attnops.serving.log_store import InferenceLog, LogRecord
from attnops.serving.routes import Feedback
from attnops.spec import DataSpec

SPEC_DATA = "data: {train: a.csv, validation: b.csv, test: c.csv}\n"
SPEC = "name: x\n" + SPEC_DATA


@pytest.fixture
def attnops_cli(tmp_path, monkeypatch, capsys):
    """`attnops ARGS` in-process, in tmp_path with its own state; returns (exit code, stderr)."""
    saved = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNOPS_HOME", str(tmp_path / ".attnops"))
    monkeypatch.setenv("ATTNOPS_INFERENCE_DB", f"sqlite:///{tmp_path / 'inference.db'}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().err

    yield run
    os.environ.clear()  # the CLI sets Prefect/MLflow defaults for its process
    os.environ.update(saved)


def _one_failure_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"attnops {command} failed: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_an_unexpected_error_says_it_is_a_bug_and_how_to_see_it(attnops_cli, monkeypatch, tmp_path):
    """A KeyError(1) from a library once printed "attnops gate failed: 1"."""
    (tmp_path / "spec.yaml").write_text(SPEC)

    def broken(args):
        raise KeyError(1)

    monkeypatch.setattr("attnops.flows.cli._run", broken)
    code, err = attnops_cli("gate", "--spec", "spec.yaml")
    assert code == 1
    assert _one_failure_line(err, "gate") == (
        "attnops gate failed: unexpected KeyError: 1 (a bug: rerun with --debug for the "
        "traceback and report it)"
    )


# --- specs ------------------------------------------------------------------------------------

SPEC_CASES = {
    "nan_learning_rate": (
        SPEC + "training: {learning_rate: .nan}\n",
        ["training.learning_rate: got nan", "write a finite number"],
    ),
    "inf_grad_norm": (
        SPEC + "training: {max_grad_norm: .inf}\n",
        ["training.max_grad_norm: got inf", "write a finite number"],
    ),
    "minus_inf_gate_limit": (SPEC + "gate: {max_ece: -.inf}\n", ["gate.max_ece: got -inf"]),
    "nan_as_text": (SPEC + "serving: {canary_share: 'nan'}\n", ["serving.canary_share: got 'nan'"]),
    "nan_in_config_override": (
        SPEC + "model: {config_overrides: {hidden_dropout_prob: .nan}}\n",
        ["model.config_overrides.hidden_dropout_prob: got nan", "finite number"],
    ),
    "list_as_config_override": (
        SPEC + "model: {config_overrides: {num_hidden_layers: [2]}}\n",
        ["model.config_overrides.num_hidden_layers: must be one of int or float", "got [2]"],
    ),
    "word_for_a_number": (
        SPEC + "training: {epochs: three}\n",
        ["training.epochs: Input should be a valid integer", "got 'three'"],
    ),
    "leakage_share_above_one": (
        "name: x\ndata: {train: a.csv, validation: b.csv, test: c.csv, max_leakage_share: 1.5}\n",
        ["data.max_leakage_share: Input should be less than or equal to 1", "got 1.5"],
    ),
}


@pytest.mark.parametrize("case", SPEC_CASES)
def test_bad_spec_value_is_named_with_its_field_and_value(attnops_cli, tmp_path, case):
    text, expected = SPEC_CASES[case]
    (tmp_path / "spec.yaml").write_text(text)
    code, err = attnops_cli("train", "--spec", "spec.yaml")
    line = _one_failure_line(err, "train")
    assert code == 1
    assert "invalid spec spec.yaml:" in line
    for part in expected:
        assert part in line
    assert not (tmp_path / ".attnops" / "mlflow.db").exists()  # stopped before any work


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"name: caf\xe9\n" + SPEC_DATA.encode(), "byte 0xe9 on line 1"),
        (SPEC.encode() + b"# \x89PNG\x00\x1a\n", "byte 0x89 on line 3"),
    ],
    ids=["latin1", "binary"],
)
def test_spec_that_is_not_utf8_is_named_with_the_byte(attnops_cli, tmp_path, content, where):
    (tmp_path / "spec.yaml").write_bytes(content)
    code, err = attnops_cli("train", "--spec", "spec.yaml")
    line = _one_failure_line(err, "train")
    assert code == 1
    assert f"spec.yaml is not UTF-8 text ({where}); save it as UTF-8" in line
    assert not (tmp_path / ".attnops" / "mlflow.db").exists()


def test_spec_that_is_a_folder_lists_the_yaml_inside(attnops_cli, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text(SPEC)
    code, err = attnops_cli("train", "--spec", "configs")
    line = _one_failure_line(err, "train")
    assert code == 1
    assert "spec path configs is a folder, not a file (YAML files there: mine.yaml)" in line
    assert "pass --spec configs/NAME.yaml" in line


# --- data -------------------------------------------------------------------------------------

GOOD = {
    split: [(f"{split} ticket {i} about {label}", label) for i, label in enumerate("aabbcc")]
    for split in ("train", "validation", "test")
}


def _csv(rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return out.getvalue()


def _jsonl(rows) -> str:
    return "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows)


def _data(folder, fmt="csv", **raw) -> DataSpec:
    """Splits in `folder`: GOOD unless given as file content (str or bytes) in `raw`."""
    paths = {}
    for split, rows in GOOD.items():
        path = folder / f"{split}.{fmt}"
        content = raw.get(split, _csv(rows) if fmt == "csv" else _jsonl(rows))
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths[split] = str(path)
    return DataSpec(**paths, min_examples_per_class=2)


def _rows_with(row: int, text: str, label: str = "a"):
    rows = list(GOOD["train"])
    rows[row] = (text, label)
    return rows


HEADER = "text,label\n"
DATA_CASES = {
    "whitespace_only_text": (
        {"train": _csv(_rows_with(2, " \t  "))},
        ["train.csv: 1 row(s) with empty or non-text 'text' (line 4; first: whitespace only)"],
    ),
    "zero_width_only_text": (
        {"train": _csv(_rows_with(1, "\u200b\u2060\ufeff"))},
        ["(line 3; first: zero-width characters only)", "remove or fill them"],
    ),
    "control_characters_only_text": (
        {"train": _csv(_rows_with(0, "\x07\x1b\x7f"))},
        ["(line 2; first: control or invisible characters only)"],
    ),
    "line_number_after_a_multi_line_text": (
        {"train": _csv([("first\nsecond\nthird line", "a"), *GOOD["train"][1:4], (" ", "c")])},
        ["1 row(s) with empty or non-text 'text' (line 8;"],
    ),
    "zero_width_label": (
        {"train": _csv(_rows_with(3, "fine text", "\u200b"))},
        ["train.csv: 1 row(s) without a 'label' label (line 5); label or remove them"],
    ),
    # On the first data row pandas took the extra field for an index column and shifted every
    # row, then reported all but one label missing.
    "ragged_first_row_with_an_unquoted_comma": (
        {"train": HEADER + "hello, where is it,a\nrefund please,a\n" + _csv(GOOD["train"])[11:]},
        [
            "train.csv line 2: 3 field(s) where the header has 2 (text, label)",
            'put texts that contain commas in double quotes ("...")',
        ],
    ),
    "ragged_row_without_its_label": (
        {"validation": HEADER + "refund please,a\n\nno label here\n"},
        ["validation.csv line 4: 1 field(s) where the header has 2"],
    ),
    "unclosed_quote": (
        {"test": HEADER + 'fine,a\n"refund, please,a\nnext,b\n'},
        ["test.csv line 3: 1 field(s)", 'a quote (") opened on this line is not closed'],
    ),
    "latin1_csv": (
        {"train": (HEADER + "fine,a\ncaf\xe9 order,a\n").encode("latin-1")},
        ["train.csv is not UTF-8 text (byte 0xe9 on line 3); save it as UTF-8"],
    ),
    "nul_bytes_in_csv": (
        {"test": HEADER + "fine,a\nbin\x00ary,b\n"},
        ["test.csv holds a NUL byte on line 3: a binary file, not text"],
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_file_is_named_with_line_and_fix(tmp_path, case):
    raw, expected = DATA_CASES[case]
    spec = _data(tmp_path, **raw)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(DataError) as error:
        load_labelled_data(spec, "configs/x.yaml")
    for part in expected:
        assert part in str(error.value)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # untouched


@pytest.mark.parametrize(
    ("test_file", "expected"),
    [
        (
            _jsonl(GOOD["test"][:2]) + '{"text": "cut off", "label": "a"\n',
            "test.jsonl line 3, column 33: not valid JSON (Expecting ',' delimiter)",
        ),
        (
            _jsonl(GOOD["test"][:1]) + '\n["a list", "a"]\n',
            "test.jsonl line 3: a JSON array, not an object",
        ),
    ],
    ids=["broken_line", "array_line"],
)
def test_bad_jsonl_line_is_named_by_its_number(tmp_path, test_file, expected):
    spec = _data(tmp_path, fmt="jsonl", test=test_file)
    with pytest.raises(DataError) as error:
        load_labelled_data(spec, "configs/x.yaml")
    assert expected in str(error.value)
    assert 'each line must be one object such as {"text": "...", "label": "..."}' in str(
        error.value
    )


def test_data_path_that_is_a_folder_says_so(tmp_path):
    spec = _data(tmp_path)
    spec = spec.model_copy(update={"validation": str(tmp_path)})
    with pytest.raises(DataError, match=r"validation data file .* a folder, not a file .*"):
        load_labelled_data(spec, "configs/x.yaml")


# --- leakage ----------------------------------------------------------------------------------


def test_train_that_contains_the_test_split_stops_with_counts_and_examples(tmp_path):
    """The issue's case: test rows copied into train would inflate every gate score."""
    spec = _data(tmp_path, train=_csv(GOOD["train"] + GOOD["test"]))
    with pytest.raises(DataError) as error:
        load_labelled_data(spec, "configs/x.yaml")
    message = str(error.value)
    assert "test.csv: 6 of 6 test rows (100.0%) also appear in the train split" in message
    assert "above data.max_leakage_share 0.2 in configs/x.yaml" in message
    assert "test in train: 6 exact + 0 near" in message
    assert "e.g. ['test ticket 0 about a', 'test ticket 1 about a', 'test ticket 2 about b']" in (
        message
    )
    assert "remove the shared rows from one side, or raise" in message  # test: no set-aside


def test_near_duplicates_count_as_leakage(tmp_path):
    """Case, spacing and punctuation do not hide a copied text."""
    copied = [(f"  {t.upper()}!! ", lab) for t, lab in GOOD["validation"]]
    spec = _data(tmp_path, train=_csv(GOOD["train"] + copied))
    with pytest.raises(DataError, match=r"validation in train: 0 exact \+ 6 near") as error:
        load_labelled_data(spec, "configs/x.yaml")
    # A validation file cut from train: the fix may be to let attnops set one aside.
    assert "or leave data.validation out to have a share of train set aside" in str(error.value)


def test_natural_overlap_below_the_limit_is_counted_not_fatal(tmp_path):
    """A few repeats (BANKING77 has 20 near-duplicate test texts of 3080) pass and are reported;
    the same data stops under a stricter limit."""
    test = GOOD["test"] + [(f"test ticket {i} more", "a") for i in range(3)] + [GOOD["train"][0]]
    spec = _data(tmp_path, test=_csv(test))
    data = load_labelled_data(spec, "configs/x.yaml")
    counts = {(leak.later, leak.earlier): (leak.exact, leak.near) for leak in data.leakage}
    assert counts == {
        ("validation", "train"): (0, 0),
        ("test", "train"): (1, 1),
        ("test", "validation"): (0, 0),
    }
    assert data.leakage[1].as_dict()["near_share"] == 0.1
    strict = spec.model_copy(update={"max_leakage_share": 0.05})
    with pytest.raises(DataError, match=r"1 of 10 test rows \(10\.0%\)"):
        load_labelled_data(strict, "configs/x.yaml")


# --- label files ------------------------------------------------------------------------------


def _record(request_id: str, version: str = "1") -> LogRecord:
    return LogRecord(
        request_id=request_id, ts=1.7e9, model_name="x", version=version, route="champion",
        text="where is my parcel", prediction="a", confidence=0.9, latency_ms=3.0, n_tokens=5,
        truncated=False, text_chars=18, unk_rate=0.0, tokens_per_word=1.0,
        non_letter_share=0.0, unsupported=False, embedding=np.zeros(4, dtype=np.float32),
    )  # fmt: skip


def _feedback_rows(db) -> list:
    return sqlite3.connect(db).execute("select request_id, label from feedback").fetchall()


@pytest.fixture
def answered(tmp_path):
    """An inference log holding requests r1 (version 1) and r2 (version 2)."""
    db = tmp_path / "inference.db"
    with InferenceLog(f"sqlite:///{db}", redact=False) as log:
        log.submit(_record("r1", "1"))
        log.submit(_record("r2", "2"))
    return db


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            [("r1", "a"), ("nope-1", "a"), ("nope-2", "b")],
            "2 unknown request id(s): nope-1, nope-2 (use the request_id of a /predict answer)",
        ),
        (
            [("r1", "zzz"), ("r2", "c")],
            "label(s) the model does not have: 'zzz' (for r1); its classes: a, b, none",
        ),
    ],
    ids=["unknown_ids", "unknown_class"],
)
def test_labels_file_with_bad_rows_records_nothing(answered, tmp_path, rows, expected):
    """All or nothing: the valid rows wait until the file is fixed."""
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label\n" + "".join(f"{r},{lab}\n" for r, lab in rows))
    classes = {"1": {"a", "b", "none"}, "2": None}.get  # version 2: classes unknown, unchecked
    with pytest.raises(ValueError) as error:
        InferenceLog(f"sqlite:///{answered}", redact=False).load_labels_file(path, classes)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)
    assert str(error.value).endswith("nothing was recorded")
    assert _feedback_rows(answered) == []


def test_labels_command_names_unknown_ids_and_records_nothing(answered, attnops_cli, tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "labels.csv").write_text("request_id,label\nr1,a\nmissing-7,a\n")
    code, err = attnops_cli("labels", "--spec", "spec.yaml", "--file", "labels.csv")
    line = _one_failure_line(err, "labels")
    assert code == 1
    assert "labels.csv: 1 unknown request id(s): missing-7" in line
    assert _feedback_rows(answered) == []


def test_labels_command_names_a_binary_file(answered, attnops_cli, tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "labels.csv").write_bytes(b"request_id,label\nr1,\xff\xfe\x00\x01\n")
    code, err = attnops_cli("labels", "--spec", "spec.yaml", "--file", "labels.csv")
    line = _one_failure_line(err, "labels")
    assert code == 1
    assert "labels.csv is not UTF-8 text (byte 0xff on line 2); save it as UTF-8" in line
    assert _feedback_rows(answered) == []


def test_labels_command_records_a_valid_file(answered, attnops_cli, tmp_path):
    """The control case: known ids, and no registry to say otherwise about their classes."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "labels.jsonl").write_text(_jsonl([]) + '{"request_id": "r2", "label": "b"}\n')
    code, err = attnops_cli("labels", "--spec", "spec.yaml", "--file", "labels.jsonl")
    assert code == 0, err
    assert _feedback_rows(answered) == [("r2", "b")]
    assert not (tmp_path / ".attnops" / "mlflow.db").exists()  # no registry made on the way


def test_feedback_labels_sent_as_json_numbers_or_booleans_name_the_classes_the_data_made():
    """A sentiment set labelled 0/1 or true/false trains classes "0"/"1" or "True"/"False";
    `/feedback` takes the labels as the data wrote them."""
    sent = Feedback.model_validate({"labels": {"a": 1, "b": True, "c": "pos ", "d": 1.0}})
    assert sent.labels == {"a": "1", "b": "True", "c": "pos", "d": "1"}
