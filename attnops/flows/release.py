"""Prefect flow `release`: canary -> observe live traffic -> promote or roll back.

A version that passed the gate gets the `canary` alias; the server (told to reload)
routes `serving.canary_share` of request keys to it. Once `release.canary_window` canary
requests are in the inference log, canary and champion answers from the same period are
compared (`attnops.monitors.canary`; for `task: generation` `monitors.canary_generation`,
see `flows.release_generation`) and the canary is promoted (old champion -> `previous`) or
removed. The decision and its evidence go onto the version under
`release/`, with the tag `attnops.release` (`promoted` / `rolled_back`) written last.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import flow

from attnops.flows.release_generation import observe_generation
from attnops.flows.rollback import RELEASE, reload_if_serving, write_release_record
from attnops.flows.tasks import io_task
from attnops.models import aliases, registry
from attnops.monitors.canary import compare_canary
from attnops.serving.client import reload_server
from attnops.serving.log_reader import LogReader
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec


@io_task
def check_candidate(
    spec: PipelineSpec, settings: Settings, candidate: str
) -> tuple[str, str | None]:
    """(version, the champion) for a candidate that passed the gate."""
    client = registry.client_for(settings)
    mv = aliases.resolve(client, spec.name, candidate)
    if mv is None:
        raise LookupError(f"no version of '{spec.name}' has the alias '{candidate}'")
    gate = mv.tags.get(f"{registry.TAG}gate")
    if gate == "failed":
        reasons = mv.tags.get(f"{registry.TAG}gate_reasons", "see its gate/ artifacts")
        raise ValueError(
            f"{spec.name} v{mv.version} failed the gate ({reasons}); only a version that "
            "passed it is released: train another"
        )
    if gate != "passed":
        raise ValueError(
            f"{spec.name} v{mv.version} has not been through the gate "
            f"(attnops.gate={gate or 'unset'}); run `attnops gate --version {mv.version}` first"
        )
    if not candidate.isdigit() and mv.tags.get(f"{registry.TAG}{RELEASE}") == "rolled_back":
        raise ValueError(
            f"{spec.name} v{mv.version} ({candidate}) was rolled back: "
            f"{mv.tags.get(f'{registry.TAG}release_reasons', 'see its release/ artifacts')}; "
            f"to release it anyway, name it: `attnops release --version {mv.version}`"
        )
    champion = aliases.version_of(client, spec.name, aliases.CHAMPION)
    if champion == str(mv.version):
        raise ValueError(f"{spec.name} v{mv.version} is already the champion")
    return str(mv.version), champion


@io_task
def start_canary(spec: PipelineSpec, settings: Settings, version: str) -> float:
    """Set the alias and make the server pick it up; returns when the canary started."""
    client = registry.client_for(settings)
    client.set_registered_model_alias(spec.name, aliases.CANARY, version)
    started = time.time()
    try:
        served = reload_server(spec.serving.url, spec.serving.admin_token_env, spec.name)
    except ConnectionError:
        aliases.remove_canary(client, spec.name)
        raise
    if served.get(aliases.CANARY) != version:
        aliases.remove_canary(client, spec.name)
        raise RuntimeError(f"the server did not load v{version} as canary (serves {served})")
    print(f"v{version} is canary: {spec.serving.canary_share:.0%} of request keys")
    return started


@io_task
def observe(spec: PipelineSpec, settings: Settings, version: str, since_ts: float) -> bool:
    """Wait until the canary has answered `release.canary_window` requests (or time runs out)."""
    log = LogReader(settings.inference_db)
    deadline = time.monotonic() + spec.release.timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = log.counts(version=version, route=aliases.CANARY, since_ts=since_ts)["requests"]
        if seen >= spec.release.canary_window:
            return True
        time.sleep(1.0)
    print(f"canary window not filled: {seen} of {spec.release.canary_window} requests")
    return False


@io_task
def read_windows(
    spec: PipelineSpec, settings: Settings, version: str, champion: str, since_ts: float
):
    """Canary and champion requests of the same period, newest `canary_window` x a margin."""
    log = LogReader(settings.inference_db)
    limit = 20 * spec.release.canary_window
    canary = log.window(version=version, route=aliases.CANARY, since_ts=since_ts, limit=limit)
    base = log.window(version=champion, route=aliases.CHAMPION, since_ts=since_ts, limit=limit)
    return canary, base


# A task inside the flow (retried on I/O); `attnops rollback` calls the plain function.
record_release = io_task(write_release_record, name="record_release")


@flow(name="release", flow_run_name="release-{spec_path}", log_prints=True)
# Flow defaults are literals: a deployment stores them as JSON ("challenger" = aliases.CHALLENGER).
def release(spec_path: str, candidate: str = "challenger") -> dict:
    """Put a gated version on canary, observe it on live traffic, then promote or roll back.

    Without a champion there is nothing to compare with: the version is promoted on the
    gate's evidence alone and the server is told to load it.
    """
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    settings.prepare()
    version, champion = check_candidate(spec, settings, candidate)
    client = registry.client_for(settings)
    with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
        folder = Path(scratch) / RELEASE
        folder.mkdir()
        if champion is None:
            aliases.promote(client, spec.name, version)
            reason = "first champion: promoted on the gate's evidence alone"
            record_release(
                spec,
                settings,
                version,
                verdict="promoted",
                heading="Release: promoted (first champion)",
                reason=reason,
                folder=folder,
            )
            reload_if_serving(spec)
            print(f"v{version} is the champion ({reason})")
            return {"version": version, "promoted": True, "reasons": reason}
        since = start_canary(spec, settings, version)
        decision = None
        reason = (
            f"the canary window of {spec.release.canary_window} requests did not fill within "
            f"{spec.release.timeout_s:g} s"
        )
        if spec.task == "generation":
            decision, reason = observe_generation(spec, settings, version, champion, since)
        elif observe(spec, settings, version, since):
            canary, base = read_windows(spec, settings, version, champion, since)
            decision = compare_canary(
                canary,
                base,
                spec.release,
                canary_version=version,
                champion_version=champion,
                confidence=spec.gate.confidence,
            )
            reason = decision.reasons()
            from attnops.monitors.reports import drift_report  # Evidently: seconds to import

            drift_report(
                base,
                canary,
                folder / "canary_vs_champion.html",
                title=f"{spec.name}: canary v{version} vs champion v{champion} on live traffic",
                tsne_rows=0,
            )
        promoted = decision is not None and decision.promote
        if promoted:
            aliases.promote(client, spec.name, version)
        else:
            aliases.remove_canary(client, spec.name)
        verdict = "promoted" if promoted else "rolled_back"
        record_release(
            spec,
            settings,
            version,
            verdict=verdict,
            heading=f"Release: {verdict.replace('_', ' ')} (vs champion v{champion})",
            reason=reason,
            folder=folder,
            decision=decision,
        )
    reload_if_serving(spec)
    print(f"v{version} {'promoted to champion' if promoted else 'rolled back'}: {reason}")
    return {
        "version": version,
        "promoted": promoted,
        "champion_before": champion,
        "reasons": reason,
    }
