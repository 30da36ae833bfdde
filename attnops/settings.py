"""Where attnops keeps its state: embedded defaults under `.attnops/`, overridable by env.

Nothing here runs at import; `Settings.from_env()` reads the environment when called.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    artifact_root: str | None
    """Artifact location for new experiments; None lets a tracking server decide."""
    inference_db: str
    pushgateway_url: str | None = None
    """Where the monitor pushes its gauges for Prometheus; None pushes nothing."""
    search_db: str | None = None
    """SQLAlchemy URL of the hyperparameter-search studies (`from_env`: SQLite under home)."""

    @classmethod
    def from_env(cls) -> Settings:
        """Embedded defaults in ./.attnops unless ATTNOPS_HOME / MLFLOW_TRACKING_URI /
        ATTNOPS_ARTIFACT_ROOT / ATTNOPS_INFERENCE_DB / ATTNOPS_PUSHGATEWAY_URL /
        ATTNOPS_SEARCH_DB say otherwise."""
        home = Path(os.environ.get("ATTNOPS_HOME", ".attnops")).resolve()
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        embedded = tracking_uri.startswith("sqlite:")
        artifact_root = os.environ.get("ATTNOPS_ARTIFACT_ROOT") or (
            (home / "artifacts").as_uri() if embedded else None
        )
        return cls(
            home=home,
            tracking_uri=tracking_uri,
            artifact_root=artifact_root,
            inference_db=os.environ.get("ATTNOPS_INFERENCE_DB")
            or f"sqlite:///{home / 'inference.db'}",
            pushgateway_url=os.environ.get("ATTNOPS_PUSHGATEWAY_URL") or None,
            search_db=os.environ.get("ATTNOPS_SEARCH_DB") or f"sqlite:///{home / 'search.db'}",
        )

    def prepare(self) -> None:
        """Create the local folders the embedded defaults need."""
        self.home.mkdir(parents=True, exist_ok=True)

    def mlflow_ui_command(self) -> str:
        """How to look at the results: the server's URL, or the command that starts a UI."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri
        mlflow = Path(sys.executable).with_name("mlflow")
        return (
            f"{mlflow if mlflow.exists() else 'mlflow'} ui --backend-store-uri {self.tracking_uri}"
        )


def configure_process_env(home: Path | None = None) -> None:
    """Environment for Prefect and Hugging Face that must be set before they are imported.

    Keeps Prefect's state under .attnops unless the user points Prefect elsewhere
    (PREFECT_HOME, PREFECT_API_URL, or a profile in ~/.prefect), and turns off telemetry.
    Existing values always win.
    """
    home = (home or Path(os.environ.get("ATTNOPS_HOME", ".attnops"))).resolve()
    configured = (
        os.environ.get("PREFECT_API_URL") or Path("~/.prefect/profiles.toml").expanduser().exists()
    )
    if not configured:
        os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    if "PREFECT_HOME" in os.environ:
        # Prefect's SQLite database cannot be created in a missing folder, and its temporary
        # server then only reports a start-up timeout.
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first start migrates a fresh database: on a busy 2-core laptop that takes longer
    # than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
