"""Decisions written onto a model version, so a reviewer in the MLflow UI sees why.

Every decision (gate, release, rollback) follows one protocol: the version's
`attnops.{stage}` tag says `pending` first, then the evidence goes up (a JSON and a
markdown table under the run's `{stage}/` artifacts, plus any report files already in
the folder), then a section at the top of the version description, then the detail
tags, and the verdict tag last. A crash halfway leaves `pending`, never an old verdict
next to new evidence.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlflow import MlflowClient

from attnops.models import report_json
from attnops.models.registry import TAG, tag_value


def record_decision(
    client: MlflowClient,
    name: str,
    version: str,
    run_id: str,
    *,
    stage: str,
    verdict: str,
    heading: str,
    table: str,
    payload: dict,
    folder: Path,
    tags: dict[str, str],
) -> None:
    """Write one decision onto `name` v`version` (see the module docstring for the order).

    Args:
        stage: `gate`, `release`, ...: names the tag, the artifact folder and the files.
        verdict: the final value of the `attnops.{stage}` tag.
        heading: the description section's title, e.g. "Gate: passed (vs champion v1)".
        table: markdown table of the checks.
        payload: the full decision, written as `{stage}.json`.
        folder: local folder whose files (reports included) go up as `{stage}/`.
        tags: detail tags, without the `attnops.` prefix.
    """
    client.set_model_version_tag(name, version, f"{TAG}{stage}", "pending")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.json").write_text(report_json.dumps(payload))
    (folder / f"{stage}.md").write_text(f"# {heading}\n\n{table}\n")
    client.log_artifacts(run_id, str(folder), stage)
    section = f"## {heading}\n\n{table}\n\nEvidence: run artifacts `{stage}/`.\n"
    description = client.get_model_version(name, version).description or ""
    client.update_model_version(
        name, version, description=_with_section(description, stage, section)
    )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"{TAG}{key}", tag_value(value))
    client.set_model_version_tag(name, version, f"{TAG}{stage}", verdict)


def _with_section(description: str, stage: str, section: str) -> str:
    """The description with this stage's section replaced, or added on top (newest first)."""
    block = f"<!-- attnops:{stage} -->\n{section}<!-- /attnops:{stage} -->\n"
    pattern = re.compile(rf"<!-- attnops:{stage} -->\n.*?<!-- /attnops:{stage} -->\n", re.S)
    if pattern.search(description):
        return pattern.sub(lambda _: block, description, count=1)
    return f"{block}\n{description}"
