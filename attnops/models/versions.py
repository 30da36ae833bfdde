"""Load a registered version back: model, tokenizer, tags and the evidence logged with it.

Whatever loads a version (the gate, the server, the retrain's warm start) goes through
`load_version`, which refuses a version whose weight files or tokenizer do not hash to the
values recorded at registration: a model served with altered weights or another tokenizer
gives wrong answers without an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from attnops.models.profile import (
    PROFILE_SUMMARY,
    PROFILE_TABLE,
    EmbeddingProjection,
    read_profile_summary,
)
from attnops.models.registry import TAG, WEIGHTS_TAG, weights_sha256

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation/evaluation.json"
REFERENCE_FOLDER = "reference_profile"


@dataclass
class LoadedVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    model: object
    tokenizer: object
    folder: Path
    """Local copy of the run's evaluation and reference-profile artifacts."""

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(json.loads(self.tags[f"{TAG}labels"]))

    @property
    def tokenizer_sha256(self) -> str:
        return self.tags[f"{TAG}tokenizer_sha256"]

    def evaluation(self) -> dict[str, object]:
        return json.loads((self.folder / EVALUATION_JSON).read_text())

    def profile_summary(self) -> tuple[dict[str, object], EmbeddingProjection]:
        return read_profile_summary(self.folder / REFERENCE_FOLDER / PROFILE_SUMMARY)

    def reference_records(self) -> pd.DataFrame:
        return pd.read_parquet(self.folder / REFERENCE_FOLDER / PROFILE_TABLE)


def load_version(client: MlflowClient, name: str, version: str, scratch: Path) -> LoadedVersion:
    """Download version `version` of `name` and its evidence into `scratch`; verify it.

    Raises:
        ValueError: the weight files do not hash to the version's `attnops.weights_sha256`
            tag, the tokenizer does not hash to its `attnops.tokenizer_sha256` tag (or that
            tag is missing), or a stored file is damaged: the version must not be used. A
            version without a weights tag (registered before weights were hashed) loads with
            a warning.
    """
    from attnops.models.modeling import tokenizer_sha256  # torch: only loading a model needs it

    mv = client.get_model_version(name, version)
    tags = dict(mv.tags)
    expected = tags.get(f"{TAG}tokenizer_sha256")
    labelled = tags.get(f"{TAG}task", "classification") == "classification"
    if not expected or (labelled and f"{TAG}labels" not in tags):
        raise ValueError(
            f"{name} v{version} lacks attnops tags (tokenizer hash, labels); it was not "
            "registered by `attnops train` and cannot be gated or served"
        )
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(scratch / f"v{version}-model")
        )
    )
    _verify_weights(name, version, tags.get(WEIGHTS_TAG), local)
    _check_json_files(name, version, local)
    try:
        components = mlflow.transformers.load_model(str(local), return_type="components")
    except (OSError, ValueError, RuntimeError, MlflowException) as exc:
        # The hashes matched, so the files are as registered but do not load here (e.g. a
        # transformers version that cannot read them): say which version and where.
        raise ValueError(
            f"{name} v{version}: its stored model in {local} does not load: {exc}"
        ) from exc
    actual = tokenizer_sha256(components["tokenizer"])
    if actual != expected:
        raise ValueError(
            f"{name} v{version}: tokenizer hash {actual[:12]} does not match its tag "
            f"{expected[:12]}; the stored tokenizer was altered, refusing to use this version"
        )
    folder = download_evidence(mv.run_id, scratch / f"v{version}")
    return LoadedVersion(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        tags=tags,
        model=components["model"],
        tokenizer=components["tokenizer"],
        folder=folder,
    )


def _verify_weights(name: str, version: str, expected: str | None, local: Path) -> None:
    actual, files = weights_sha256(local)
    if expected is None:
        # Versions registered before weights were hashed keep loading (a champion must not
        # stop serving on upgrade), but say so every time.
        logger.warning(
            "%s v%s has no %s tag (registered before weights were hashed): its weights are "
            "not verified; retrain it, or, if you trust its files, tag it: "
            "MlflowClient().set_model_version_tag('%s', '%s', '%s', '%s')",
            *(name, version, WEIGHTS_TAG, name, version, WEIGHTS_TAG, actual),
        )
        return
    if actual != expected:
        raise ValueError(
            f"{name} v{version}: weights ({', '.join(files)}) hash to {actual[:12]}, not to "
            f"its tag {WEIGHTS_TAG} {expected[:12]}; the stored weights were altered, "
            "refusing to use this version (retrain, or roll back to another version)"
        )


def _check_json_files(name: str, version: str, local: Path) -> None:
    """Name a damaged JSON file (tokenizer.json, config.json) instead of a bare parse error."""
    for path in sorted(local.rglob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{name} v{version}: stored file {path.relative_to(local).as_posix()} is not "
                f"valid JSON ({exc}); the version is damaged, refusing to use it (retrain, or "
                "roll back to another version)"
            ) from None


def artifact_texts(loaded: LoadedVersion) -> dict[str, list[str]]:
    """The version's human-readable artifacts by name, which the gate checks for PII: its
    model card and the values of its input example."""
    uri = f"models:/{loaded.name}/{loaded.version}"
    example = mlflow.models.Model.load(uri).load_input_example(uri)
    return {
        "model_card.md": [mlflow.artifacts.load_text(f"runs:/{loaded.run_id}/model_card.md")],
        "input_example": [] if example is None else [str(v) for v in np.ravel(example)],
    }


def download_evidence(run_id: str, folder: Path) -> Path:
    """The run's `evaluation/` and `reference_profile/` artifacts, into `folder`.

    What monitoring needs of a version without loading its model.
    """
    for artifact in ("evaluation", REFERENCE_FOLDER):
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(folder)
        )
    return folder
