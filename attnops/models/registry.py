"""MLflow registry I/O: one training run per fine-tune, one model version per registration.

A version is created only at the very end, after every artifact is logged, with all of
its tags in the same call; if anything after that fails the version is deleted again. So
a failed run never leaves a version behind, and a version never lacks its evidence.
Its tags hold a hash of the tokenizer's behaviour and one of the stored weight files, so
whatever loads it later can tell that it is what was registered.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param

from attnops.models.aliases import CHALLENGER
from attnops.settings import Settings
from attnops.spec import PipelineSpec

if TYPE_CHECKING:  # torch and transformers: only registering a version needs them
    from attnops.models.evaluate import Evaluation
    from attnops.models.task_family import TaskFamily, TrainingEvidence

TAG = "attnops."
WEIGHTS_TAG = f"{TAG}weights_sha256"
MAX_TAG_VALUE_CHARS = 5000
"""Where free-text tag values (reasons, failures) are cut: below MLflow's 8000 for run tags."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_PACKAGES = ("attnops", "torch", "transformers", "mlflow", "prefect", "scikit-learn")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str
    tags: dict[str, str]
    metrics: dict[str, float]


def tag_value(value: object) -> str:
    """`value` as an MLflow tag value, cut to `MAX_TAG_VALUE_CHARS`."""
    return str(value)[:MAX_TAG_VALUE_CHARS]


def client_for(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri)


def experiment_for(client: MlflowClient, settings: Settings, name: str) -> str:
    """The id of experiment `name`, created (in the settings' artifact root) if missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=settings.artifact_root)


def start_run(
    client: MlflowClient,
    settings: Settings,
    spec: PipelineSpec,
    spec_text: str,
    tags: dict[str, str] | None = None,
) -> str:
    """Create the experiment (named like the spec) if needed and open a training run.

    `tags` (without the `attnops.` prefix) say why the run exists, e.g. trigger=retrain.
    """
    experiment_id = experiment_for(client, settings, spec.name)
    run = client.create_run(
        experiment_id,
        run_name=f"train-{spec.name}",
        tags={f"{TAG}stage": "train", **{f"{TAG}{k}": v for k, v in (tags or {}).items()}},
    )
    run_id = run.info.run_id
    try:
        # The resolved spec (every default filled in) is what the run used; keep the file too.
        resolved = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        client.log_text(run_id, resolved, "spec.yaml")
        client.log_text(run_id, spec_text, "spec.source.yaml")
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(spec.model_dump()).items()]
        client.log_batch(run_id, params=params)
    except Exception as exc:
        fail_run(client, run_id, spec.name, f"could not log the spec: {exc}")
        raise
    return run_id


def fail_run(client: MlflowClient, run_id: str, model_name: str, reason: str) -> None:
    """Mark the run FAILED with the reason and remove any version it registered.

    The UI then shows why nothing was registered, and no alias points at a version whose
    run did not finish. The models it logged belong to no version now: each is marked
    FAILED, so none is left PENDING (stopped mid-upload, e.g. by SIGTERM) or READY.
    """
    query = f"name = '{model_name}' and run_id = '{run_id}'"
    for stale in client.search_model_versions(query):
        client.delete_model_version(model_name, stale.version)
    experiment_id = client.get_run(run_id).info.experiment_id
    for logged in client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"
    ):
        if logged.status != LoggedModelStatus.FAILED:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
    client.set_tag(run_id, f"{TAG}failure", tag_value(reason))
    client.set_terminated(run_id, status="FAILED")


def log_evidence(
    client: MlflowClient, run_id: str, training: TrainingEvidence, evaluation: Evaluation
) -> None:
    """Training curves, run card, evaluation metrics, plots and the reference profile."""
    now_ms = int(time.time() * 1000)
    history = [
        Metric(key, float(value), now_ms, int(row["step"]))
        for row in training.history
        for key, value in row.items()
        if key != "step"
    ]
    scalars = {**evaluation.metrics, **training.scalars}
    metrics = history + [Metric(k, float(v), now_ms, 0) for k, v in scalars.items()]
    for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[start : start + 900])
    client.log_dict(run_id, training.run_card, "run_card.json")
    client.log_dict(run_id, training.data_fingerprint, "data_fingerprint.json")
    client.log_dict(run_id, training.data_checks, "data_checks.json")
    for path in evaluation.files:
        folder = "reference_profile" if path.name.startswith("reference_") else "evaluation"
        client.log_artifact(run_id, str(path), folder)


def register_version(
    client: MlflowClient,
    run_id: str,
    *,
    spec: PipelineSpec,
    family: TaskFamily,
    model,
    tokenizer,
    data,
    data_sha256: str,
    evaluation: Evaluation,
    card_section: str | None = None,
) -> RegisteredVersion:
    """Log the model with its tokenizer, create the version with its tags, alias it challenger.

    `family` says what is task-specific (MLflow task, example, card, tags); `card_section`
    (markdown, e.g. the hyperparameter search's summary) ends the model card.
    """
    from huggingface_hub import ModelCard
    from mlflow.models import infer_signature

    from attnops.models.modeling import tokenizer_sha256

    tok_hash = tokenizer_sha256(tokenizer)
    _check_tokenizer_roundtrip(tokenizer, tok_hash)
    tags = {
        f"{TAG}tokenizer_sha256": tok_hash,
        f"{TAG}data_sha256": data_sha256,
        f"{TAG}git_sha": git_sha(),
        f"{TAG}base_model": spec.model.base,
        f"{TAG}task": spec.task,
        **{f"{TAG}version.{pkg}": _version(pkg) for pkg in _PACKAGES},
    }
    details = family.registration(spec, data, evaluation, tags)
    tags |= details.tags
    signature = infer_signature(details.input_example, details.output_example)
    card = details.card if not card_section else f"{details.card}\n{card_section}"
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags(tags)
        mlflow.log_text(card, "model_card.md")
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="model",
            task=details.mlflow_task,
            signature=signature,
            input_example=details.input_example,
            pip_requirements=[
                f"{pkg}=={_version(pkg)}" for pkg in ("torch", "transformers", "accelerate")
            ],
            metadata=details.metadata,
            model_card=ModelCard(card),
        )
        # MLflow 3 shows a logged model's own metrics on its page and the version's.
        mlflow.log_metrics(evaluation.metrics, model_id=info.model_id)
    tags[WEIGHTS_TAG] = stored_weights_sha256(info.model_uri)
    if not client.search_registered_models(filter_string=f"name = '{spec.name}'"):
        client.create_registered_model(spec.name, description=f"attnops pipeline '{spec.name}'")
    created = client.create_model_version(
        spec.name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
    )
    try:
        client.update_model_version(spec.name, created.version, description=card)
        client.set_registered_model_alias(spec.name, CHALLENGER, created.version)
    except Exception:
        client.delete_model_version(spec.name, created.version)
        raise
    return RegisteredVersion(
        name=spec.name,
        version=str(created.version),
        run_id=run_id,
        model_uri=f"models:/{spec.name}/{created.version}",
        tags=tags,
        metrics=evaluation.metrics,
    )


def weights_sha256(folder: Path) -> tuple[str, list[str]]:
    """sha256 over the weight files under `folder` (names and bytes), and their paths.

    Hashes the files as stored, so one flipped byte anywhere in them changes the hash.

    Raises:
        FileNotFoundError: `folder` holds no weight file.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {folder}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest(), [p.relative_to(folder).as_posix() for p in files]


def stored_weights_sha256(model_uri: str) -> str:
    """The weights hash of a logged model, read back from the artifact store.

    Hashing what was uploaded (not the model in memory) is what a later load compares with.
    """
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder)
        return weights_sha256(Path(local))[0]


def log_trial(client: MlflowClient, parent_run_id: str, study_name: str, trial) -> str:
    """A finished search trial as a nested run of `parent_run_id`: its parameters, its
    validation score at every evaluation, its state. Returns the nested run's id."""
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=f"trial-{trial.number}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            f"{TAG}stage": "search-trial",
            f"{TAG}study": study_name,
            f"{TAG}trial_number": str(trial.number),
            f"{TAG}trial_state": trial.state.name,
        },
    )
    now_ms = int(time.time() * 1000)
    metrics = [
        Metric("val_macro_f1", float(value), now_ms, int(step))
        for step, value in sorted(trial.intermediate_values.items())
    ]
    if trial.value is not None:
        metrics.append(Metric("best_val_macro_f1", float(trial.value), now_ms, 0))
    if trial.duration is not None:
        metrics.append(Metric("trial_seconds", trial.duration.total_seconds(), now_ms, 0))
    params = [Param(name, str(value)) for name, value in trial.params.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def log_search_evidence(
    client: MlflowClient, run_id: str, files: list, best_params: dict[str, object]
) -> None:
    """The search's trial table, importance plot and best values on the training run."""
    for path in files:
        client.log_artifact(run_id, str(path), "search")
    params = [Param(f"search.best.{name}", str(value)) for name, value in best_params.items()]
    client.log_batch(run_id, params=params)


def git_sha() -> str:
    """HEAD of the current repository ('-dirty' with uncommitted changes; 'unknown' outside git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _check_tokenizer_roundtrip(tokenizer, expected: str) -> None:
    from transformers import AutoTokenizer

    from attnops.models.modeling import tokenizer_sha256

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        reloaded = tokenizer_sha256(AutoTokenizer.from_pretrained(folder))
    if reloaded != expected:
        raise RuntimeError(
            f"tokenizer hash changes across save/load ({expected[:12]} -> {reloaded[:12]}); "
            "refusing to register a version whose tokenizer cannot be verified when served"
        )


def _version(package: str) -> str:
    try:
        return version(package).split("+")[0]
    except PackageNotFoundError:
        return "unknown"


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
