"""Runbooks: each names a dashboard panel, a real attnops command and the MLflow evidence."""

from __future__ import annotations

import argparse
import re
import shlex

from attnops.flows.cli import build_parser
from tests.unit.infra.infra_files import RUNBOOKS, SPEC, panel_titles, run_attnops_cli

# ---------------------------------------------------------------------------- runbooks


# A version tag, a monitoring-run tag or an artifact folder of a run.
MLFLOW_EVIDENCE = re.compile(
    r"attnops\.(gate|release|tokenizer|alarm)|(gate|release|monitor|evaluation)/"
)


def _cli_commands() -> str:
    """The subcommands of `attnops`, read from its parser, as a regex alternation."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "|".join(commands.choices)


def test_runbooks_name_a_panel_a_command_and_the_mlflow_evidence(monkeypatch):
    titles = {t.split(" / ", 1)[1] for t in panel_titles()}
    pages = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
    index = (RUNBOOKS / "README.md").read_text()
    assert pages
    for page in pages:
        text = page.read_text()
        assert f"]({page.name})" in index, f"README.md does not list {page.name}"
        named = set(re.findall(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", text)) & titles
        assert named, f"{page.name} names no dashboard panel"
        assert MLFLOW_EVIDENCE.search(text), f"{page.name} names no MLflow evidence"
        commands = re.findall(rf"attnops ((?:{_cli_commands()})\b[^`\n)]*)", text)
        assert commands, f"{page.name} names no attnops command"
        for command in commands:
            argv = shlex.split(command.replace("$SPEC", SPEC), comments=True)
            argv = ["3" if a == "N" else a for a in argv]
            code, _ = run_attnops_cli(argv, monkeypatch)
            assert code == 0, f"{page.name}: attnops {command}"
