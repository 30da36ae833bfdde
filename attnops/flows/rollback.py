"""`attnops rollback`: the previous champion is the champion again, in seconds.

A rollback moves MLflow aliases (`previous` -> `champion`, any canary out of traffic),
writes the reason onto the replaced version (tag `attnops.release` = `rolled_back`, its
`release/` artifacts, a section of its description) and tells a running server to reload.
It is not a Prefect flow: it is what an operator types during an incident, it must work
while Prefect is down, and a flow run would add a Prefect client or a temporary server
(10-30 s on a 2-core machine) to a few MLflow calls. This module therefore imports neither
Prefect nor the model stack; the `release` flow uses its record and reload functions too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from attnops.models import aliases, evidence, registry
from attnops.serving.client import reload_server
from attnops.settings import Settings
from attnops.spec import PipelineSpec

if TYPE_CHECKING:
    from attnops.monitors.canary import CanaryDecision

RELEASE = "release"


def write_release_record(
    spec: PipelineSpec,
    settings: Settings,
    version: str,
    *,
    verdict: str,
    heading: str,
    reason: str,
    folder: Path,
    decision: CanaryDecision | None = None,
) -> None:
    """The release decision onto the version: `attnops.release` (`promoted`/`rolled_back`)."""
    client = registry.client_for(settings)
    table = (
        decision.table()
        if decision
        else f"| decision | reason |\n|---|---|\n| {verdict} | {reason} |"
    )
    evidence.record_decision(
        client,
        spec.name,
        version,
        client.get_model_version(spec.name, version).run_id,
        stage=RELEASE,
        verdict=verdict,
        heading=heading,
        table=table,
        payload=decision.to_dict() if decision else {"verdict": verdict, "reasons": reason},
        folder=folder,
        tags={"release_reasons": reason},
    )


def reload_if_serving(spec: PipelineSpec) -> None:
    """Tell the server to re-read the aliases; a server that is not running is only noted."""
    try:
        served = reload_server(spec.serving.url, spec.serving.admin_token_env, spec.name)
        print(f"server at {spec.serving.url} now serves {served}")
    except ConnectionError as exc:
        print(f"note: {exc}")


def rollback(spec: PipelineSpec, settings: Settings) -> tuple[str, str | None]:
    """`previous` becomes the champion again; the replaced version says why on its page.

    Returns:
        (restored version, the version it replaced).

    Raises:
        LookupError: there is no `previous` version to restore.
    """
    client = registry.client_for(settings)
    restored, replaced = aliases.restore_previous(client, spec.name)
    if replaced is not None:
        reason = f"rolled back by `attnops rollback`: v{restored} is the champion again"
        with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
            write_release_record(
                spec,
                settings,
                replaced,
                verdict="rolled_back",
                heading="Release: rolled back by `attnops rollback`",
                reason=reason,
                folder=Path(scratch) / RELEASE,
            )
    reload_if_serving(spec)
    return restored, replaced
