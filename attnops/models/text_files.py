"""Reading CSV and JSONL splits as text, with the file line of every row.

Errors name the file and the line: a byte that is not UTF-8, a NUL byte (a binary file), a
CSV row with more or fewer fields than its header, a JSONL line that is not one JSON object.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    """Input data that cannot be used as it is."""


def read_utf8(path: Path) -> str:
    """The file's text; a file that is not UTF-8 (or is binary) names the first bad byte.

    Raises:
        DataError: with the file, the byte and its line.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is not part of the header
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8), or point to the right file"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path} holds a NUL byte on line {line}: a binary file, not text")
    return text


def read_csv(path: Path, delimiter: str = ",") -> tuple[pd.DataFrame, list[int]]:
    """Every cell as text ("007" stays a label, a ticket "12345" stays a string); TSV with a
    tab `delimiter`.

    Read with the csv module rather than pandas to know the file line of every row (a quoted
    text may span lines) and to stop at a ragged row instead of shifting or padding it.

    Many TSV files (GLUE, Kaggle, IANA's definition) have no quoting: a `"` is a character of
    the text, and reading it as a quote would join the lines after an unclosed one into one
    text. Others were written by a quoting writer (pandas, R, Excel). A TSV is read with
    quoting held strictly (a closing quote must end its cell), which such a file passes and a
    stray quote in a text almost never does; then without quoting.
    """
    text = read_utf8(path)
    if delimiter != "\t":
        return _read_delimited(path, text, delimiter, csv.QUOTE_MINIMAL)
    try:
        return _read_delimited(path, text, delimiter, csv.QUOTE_MINIMAL, strict=True)
    except DataError as quoted:
        try:
            return _read_delimited(path, text, delimiter, csv.QUOTE_NONE)
        except DataError:
            raise quoted from None


def _read_delimited(
    path: Path, text: str, delimiter: str, quoting: int, strict: bool = False
) -> tuple[pd.DataFrame, list[int]]:
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=strict
    )
    try:
        header = next(reader, [])
        rows, lines = [], []
        start = reader.line_num + 1
        for record in reader:
            if record:  # blank lines are skipped, as pandas does
                if len(record) != len(header):
                    raise DataError(_ragged(path, start, record, header, delimiter))
                rows.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return pd.DataFrame(rows, columns=header, dtype=object), lines


def _ragged(path: Path, line: int, record: list[str], header: list[str], delimiter: str) -> str:
    separator = "tabs" if delimiter == "\t" else "commas"
    hint = (
        'a quote (") opened on this line is not closed, so the lines after it became one text'
        if any("\n" in field for field in record)
        else f'put texts that contain {separator} in double quotes ("...")'
    )
    return (
        f"{path} line {line}: {len(record)} field(s) where the header has {len(header)} "
        f"({', '.join(header)}); {hint}"
    )


def read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int] | None]:
    """One JSON object per line; blank lines skipped. A bad line is named by its number.

    A file that is one JSON array of objects (a `.json` export) is read too; its rows are then
    named by their position, not a line.
    """
    text = read_utf8(path)
    if text.lstrip().startswith("["):
        return _read_json_array(path, text), None
    _refuse_one_object(path, text)
    records, lines = [], []
    # split("\n"), not splitlines(): U+2028 may stand unescaped inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {number}, column {exc.colno}: not valid JSON ({exc.msg}); each "
                'line must be one object such as {"text": "...", "label": "..."}'
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path} line {number}: {_kind(record)}, not an object; each "
                'line must be one object such as {"text": "...", "label": "..."}'
            )
        records.append(record)
        lines.append(number)
    return pd.DataFrame.from_records(records), lines


def _kind(value: object) -> str:
    """What a parsed JSON value was, in JSON's words: 'a JSON array', 'a JSON null'."""
    kinds = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "a JSON " + ("null" if value is None else kinds.get(type(value), "value"))


def _refuse_one_object(path: Path, text: str) -> None:
    """A `.json` file, or a pretty-printed one, holding one object: columns of pandas'
    default `to_json()`, or the rows under a key; say how to write it rather than fail on
    its first line."""
    if not text.lstrip().startswith("{") or (
        path.suffix.lower() != ".json" and len(text.strip().split("\n")) == 1
    ):
        return
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return
    keys = ", ".join(list(whole)[:5])
    raise DataError(
        f"{path} is one JSON object (keys: {keys}), not rows: write one object per row, as a "
        "JSON array or one per line (pandas: to_json(orient='records') or "
        "to_json(orient='records', lines=True)), or save the array that holds the rows"
    )


def _read_json_array(path: Path, text: str) -> pd.DataFrame:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(
            f"{path} item {bad + 1}: {_kind(records[bad])}, not an object; the "
            'array must hold objects such as {"text": "...", "label": "..."}'
        )
    return pd.DataFrame.from_records(records)
