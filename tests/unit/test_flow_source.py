"""Reading a flow's deployment facts from its source: the same as Prefect's, no import."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnops.flows.flow_source import FlowSourceError, read_flow

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "entrypoint",
    [
        "attnops/flows/train.py:train",
        "attnops/flows/monitor.py:monitor",
        "attnops/flows/retrain.py:retrain",
        "attnops/flows/release.py:release",
    ],
)
def test_what_prefect_derives_from_the_imported_flow(entrypoint):
    import importlib

    file, name = entrypoint.rsplit(":", 1)
    flow = getattr(importlib.import_module(file.removesuffix(".py").replace("/", ".")), name)
    flow_name, docstring, schema = read_flow(REPO_ROOT, entrypoint)
    assert flow_name == flow.name
    assert docstring == flow.description
    assert schema.model_dump() == flow.parameters.model_dump()


def _source(tmp_path: Path, body: str) -> Path:
    (tmp_path / "flows.py").write_text("from prefect import flow\nimport os\n\n" + body)
    return tmp_path


def test_a_function_without_flow_decorator_is_refused(tmp_path):
    root = _source(tmp_path, "def helper(x: int = 1):\n    return x\n")
    with pytest.raises(FlowSourceError, match=r"flows.py:helper is not a @flow function"):
        read_flow(root, "flows.py:helper")
    with pytest.raises(FlowSourceError, match=r"flows.py:absent is not a @flow function"):
        read_flow(root, "flows.py:absent")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FlowSourceError, match=r"entrypoint nope.py:f: .*nope.py not found"):
        read_flow(tmp_path, "nope.py:f")


def test_a_default_a_deployment_cannot_store_is_refused(tmp_path):
    root = _source(tmp_path, "@flow(name='f')\ndef f(path: str = os.getcwd()):\n    pass\n")
    with pytest.raises(
        FlowSourceError, match=r"flows.py:f: flow parameter default 'os.getcwd\(\)'"
    ):
        read_flow(root, "flows.py:f")
