"""Spec validation: a spec that loads can run; one that cannot says which field and why."""

import json
from pathlib import Path

import pytest
import yaml

from attnops.spec import DEFAULT_BASE_MODEL, DEFAULT_SPEC, PipelineSpec, SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


def test_default_spec_loads_with_offline_base_model():
    spec = load_spec(REPO / DEFAULT_SPEC)
    assert spec.name == "support-tickets"
    assert spec.task == "classification"
    assert spec.model.base == DEFAULT_BASE_MODEL
    assert spec.data.out_of_scope_label == "out_of_scope"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"training": {"learning_rate": -1}}, "training.learning_rate", "greater than 0"),
        ({"training": {"epoch": 3}}, "training.epoch", "unknown field"),
        ({"task": "regression"}, "task", "'classification' or 'generation'"),
        ({"generation": {"lora": {"r": 0}}}, "generation.lora.r", "greater than or equal to 1"),
        ({"name": "bad name!"}, "name", "pattern"),
        ({"evaluation": {"length_buckets": [64, 16]}}, "evaluation.length_buckets", "increasing"),
        ({"data": {"train": "a.csv", "validation": "b.csv"}}, "data.test", "Field required"),
    ],
)
def test_invalid_spec_names_field_and_reason(write_spec, change, field, reason):
    raw = {"name": "x", "data": {"train": "a.csv", "validation": "b.csv", "test": "c.csv"}}
    path = write_spec({**raw, **change})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message
    assert f"{field}:" in message
    assert reason in message


def test_missing_file_and_bad_yaml_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(bad)


def test_schema_describes_fields_with_their_docstrings():
    """A field documented by its docstring has that text as its JSON-schema description."""
    schema = PipelineSpec.model_json_schema()
    margin = schema["$defs"]["GateSpec"]["properties"]["non_inferiority_margin"]
    assert margin["description"].startswith("Macro-F1 the candidate may lose to the champion")
    batch = schema["$defs"]["ServingSpec"]["properties"]["forward_batch_size"]
    assert "length-sorted forward passes" in batch["description"]


def _no_services(monkeypatch):
    from attnops.flows import cli

    def refuse(*_):
        raise AssertionError("attnops spec must not check or configure services")

    monkeypatch.setattr(cli, "_preflight", refuse)
    monkeypatch.setattr(cli, "configure_process_env", refuse)
    return cli


def test_cli_prints_the_json_schema(monkeypatch, capsys):
    cli = _no_services(monkeypatch)
    assert cli.main(["spec", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "PipelineSpec"
    assert "non_inferiority_margin" in schema["$defs"]["GateSpec"]["properties"]


def test_cli_prints_the_resolved_spec_or_the_reason_it_is_invalid(monkeypatch, capsys, write_spec):
    cli = _no_services(monkeypatch)
    raw = {"name": "x", "data": {"train": "a.csv", "validation": "b.csv", "test": "c.csv"}}
    assert cli.main(["spec", "--spec", str(write_spec(raw))]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["name"] == "x"
    assert resolved["gate"]["non_inferiority_margin"] == 0.03  # the default, filled in
    bad = write_spec({**raw, "training": {"learning_rate": -1}})
    assert cli.main(["spec", "--spec", str(bad)]) == 1
    assert "training.learning_rate:" in capsys.readouterr().err
