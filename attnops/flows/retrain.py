"""Prefect flow `retrain`: started by `attnops.drift.detected`; train, gate, release.

Guards, checked in this order, each a recorded decision (an MLflow run in the
`<name>-monitoring` experiment tagged `attnops.stage=retrain_trigger`, and a tag on the
champion version): one retrain at a time (a lock, besides the deployment's concurrency
limit), one retrain per event, the cooldown since the last started retrain, and enough
new labelled requests since the champion was registered.

The new training set is the spec's train split plus the labelled requests (their text
as logged: PII redacted; for `task: generation` the logged prompts with their corrected
replies, see `flows.retrain_generation`); validation and test stay the spec's, so the gate
compares the new version with the champion on exactly the inputs the champion was judged on.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml
from prefect import flow

from attnops.flows.gate import gate
from attnops.flows.monitor import MONITORING_SUFFIX
from attnops.flows.release import release
from attnops.flows.retrain_generation import corrections_since, generation_splits
from attnops.flows.tasks import io_task
from attnops.flows.train import train
from attnops.models import aliases, registry, versions
from attnops.models.data import LABEL, TEXT, load_labelled_data
from attnops.serving.log_reader import LogReader
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

TRIGGER_STAGE = "retrain_trigger"


@contextmanager
def _exclusive(path: Path):
    """Hold a lock file for the block, or yield False when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@io_task
def check_guards(
    spec: PipelineSpec, settings: Settings, event_id: str | None
) -> tuple[str | None, str, pd.DataFrame]:
    """(why not, or None to go ahead; the champion version; the new labelled requests)."""
    client = registry.client_for(settings)
    champion = aliases.resolve(client, spec.name, aliases.CHAMPION)
    if champion is None:
        return f"model '{spec.name}' has no champion to retrain", "", pd.DataFrame()
    started = _trigger_runs(client, spec.name, decision="started")
    if event_id and any(r.data.tags.get(f"{registry.TAG}event_id") == event_id for r in started):
        return f"event {event_id} already started a retrain", str(champion.version), pd.DataFrame()
    if started:
        last = started[0].info.start_time / 1000
        wait = last + spec.retrain.cooldown_s - time.time()
        if wait > 0:
            return (
                f"cooldown: the last retrain started {time.time() - last:.0f} s ago; the next is "
                f"allowed in {wait:.0f} s (retrain.cooldown_s {spec.retrain.cooldown_s:g})",
                str(champion.version),
                pd.DataFrame(),
            )
    since = champion.creation_timestamp / 1000
    if spec.task == "generation":
        labelled = corrections_since(spec, settings, since)
    else:
        labelled = LogReader(settings.inference_db).labelled_since(since)
    if len(labelled) < spec.retrain.min_new_labels:
        return (
            f"only {len(labelled)} {_new_labels(spec)} since v{champion.version} was "
            f"registered; retrain.min_new_labels is {spec.retrain.min_new_labels}",
            str(champion.version),
            labelled,
        )
    return None, str(champion.version), labelled


def _new_labels(spec: PipelineSpec) -> str:
    return "corrected replies" if spec.task == "generation" else "labelled requests"


def _trigger_runs(client, name: str, *, decision: str) -> list:
    """Earlier trigger decisions of this model, newest first."""
    found = client.get_experiment_by_name(name + MONITORING_SUFFIX)
    if found is None:
        return []
    return client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{registry.TAG}stage` = '{TRIGGER_STAGE}' "
        f"and tags.`{registry.TAG}decision` = '{decision}'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )


@io_task
def record_trigger(
    spec: PipelineSpec,
    settings: Settings,
    champion: str,
    event_id: str | None,
    decision: str,
    reason: str,
) -> None:
    """One run per trigger decision, and the latest on the champion version."""
    client = registry.client_for(settings)
    name = spec.name + MONITORING_SUFFIX
    experiment_id = registry.experiment_for(client, settings, name)
    run = client.create_run(
        experiment_id,
        run_name=f"retrain-trigger-{decision}",
        tags={
            f"{registry.TAG}stage": TRIGGER_STAGE,
            f"{registry.TAG}decision": decision,
            f"{registry.TAG}reason": registry.tag_value(reason),
            f"{registry.TAG}event_id": event_id or "manual",
            f"{registry.TAG}version": champion,
        },
    )
    client.set_terminated(run.info.run_id)
    if champion:
        client.set_model_version_tag(
            spec.name,
            champion,
            f"{registry.TAG}retrain_trigger",
            registry.tag_value(f"{decision}: {reason}"),
        )


@io_task
def write_training_spec(
    spec: PipelineSpec, spec_path: str, settings: Settings, champion: str, labelled: pd.DataFrame
) -> str:
    """A spec for the retrain: the data with the new labelled requests (for generation: the
    corrected replies), warm-started weights."""
    folder = settings.home / "retrain" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True)
    raw = spec.model_dump(mode="json")
    if spec.task == "generation":
        # Replies hold newlines and quotes: JSON lines keep them as written.
        for split, frame in generation_splits(spec, spec_path, labelled).items():
            path = folder / f"{split}.jsonl"
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
            raw["data"][split] = str(path)
        raw["data"]["format"] = "jsonl"
    else:
        for split, frame in _classification_splits(spec, spec_path, labelled).items():
            path = folder / f"{split}.csv"
            frame.to_csv(path, index=False)
            raw["data"][split] = str(path)
        raw["data"]["format"] = "csv"
    if spec.retrain.warm_start:
        client = registry.client_for(settings)
        loaded = versions.load_version(client, spec.name, champion, folder / "champion")
        weights = folder / "champion" / "model"
        loaded.model.save_pretrained(weights)
        loaded.tokenizer.save_pretrained(weights)
        # A generator fine-tunes the champion's weights as it did the base's (new LoRA
        # adapters, merged again at registration).
        raw["model"] |= {"warm_start": str(weights), "config_overrides": {}}
        if spec.task == "generation":
            # The "zero-shot base" would now be the champion, and the gate would ask the new
            # version to beat it by generation_gate.min_rouge_l_gain_over_base; the gate
            # compares it with the champion anyway (non-inferiority, paired hallucinations).
            raw["generation"]["zero_shot_baseline"] = False
        if spec.task == "classification":
            # The head is trained already: the recipe's faster head rate is for a new, random
            # one and would pull the warm-started decision boundaries around (on the demo it
            # cost most of the out-of-scope recall).
            raw["training"]["head_learning_rate"] = raw["training"]["learning_rate"]
    if spec.retrain.epochs:
        raw["training"]["epochs"] = spec.retrain.epochs
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"retrain spec: {path}")
    return str(path)


def _classification_splits(
    spec: PipelineSpec, spec_path: str, labelled: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """The spec's splits in its column names, the train split with the labelled requests."""
    data = load_labelled_data(spec.data, spec_path)
    new = pd.DataFrame({TEXT: labelled["text"], LABEL: labelled["label"]})
    for column in spec.data.slice_columns:
        new[column] = "live"
    old = data.splits["train"]
    replay = spec.retrain.replay_examples
    if replay is not None and replay < len(old):
        old = old.sample(n=replay, random_state=spec.training.seed)
    repeat = spec.retrain.repeat_new_labels
    splits = {"train": pd.concat([old, *[new] * repeat], ignore_index=True)}
    splits |= {name: data.splits[name] for name in ("validation", "test")}
    names = {TEXT: spec.data.text_column, LABEL: spec.data.label_column}
    times = f" x {repeat}" if repeat > 1 else ""
    print(f"retrain data: {len(old)} original + {len(new)} labelled requests{times}")
    return {name: frame.rename(columns=names) for name, frame in splits.items()}


@flow(name="retrain", flow_run_name="retrain-{spec_path}", log_prints=True)
def retrain(spec_path: str, event_id: str | None = None) -> dict:
    """Retrain on fresh labelled traffic, guarded by cooldown, minimum data and one-at-a-time.

    Returns:
        `status`: `skipped` (with `reason`), `blocked` (the gate failed), `rolled_back` or
        `promoted`, and the new `version` when one was trained.
    """
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    settings.prepare()
    with _exclusive(settings.home / "locks" / f"retrain-{spec.name}.lock") as acquired:
        if not acquired:
            reason = "another retrain of this model is running"
            print(f"retrain skipped: {reason}")
            return {"status": "skipped", "reason": reason}
        why_not, champion, labelled = check_guards(spec, settings, event_id)
        if why_not:
            record_trigger(spec, settings, champion, event_id, "skipped", why_not)
            print(f"retrain skipped: {why_not}")
            return {"status": "skipped", "reason": why_not}
        reason = f"{len(labelled)} new {_new_labels(spec)}; event {event_id or 'manual'}"
        record_trigger(spec, settings, champion, event_id, "started", reason)
        new_spec = write_training_spec(spec, spec_path, settings, champion, labelled)
        version = train(
            new_spec, tags={"trigger": "retrain", "event_id": event_id or "manual"}
        ).version
        decision = gate(new_spec, candidate=version)
        if not decision.passed:
            print(f"v{version} blocked by the gate: {decision.reasons()}")
            return {"status": "blocked", "version": version, "reason": decision.reasons()}
        outcome = release(spec_path, candidate=version)
    status = "promoted" if outcome["promoted"] else "rolled_back"
    return {"status": status, "version": version, "reason": outcome["reasons"]}
