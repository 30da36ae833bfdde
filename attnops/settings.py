"""Where attnops keeps its state: embedded defaults under `.attnops/`, overridable by env.

Nothing here runs at import; `Settings.from_env()` reads the environment when called.
"""

from __future__ import annotations

import math
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
    service_timeout_s: float = 10.0
    """Longest wait for one call to a service (MLflow, Prefect, inference log, Pushgateway)."""
    search_db: str | None = None
    """SQLAlchemy URL of the hyperparameter-search studies (`from_env`: SQLite under home)."""

    @classmethod
    def from_env(cls) -> Settings:
        """Embedded defaults in ./.attnops unless ATTNOPS_HOME / MLFLOW_TRACKING_URI /
        ATTNOPS_ARTIFACT_ROOT / ATTNOPS_INFERENCE_DB / ATTNOPS_PUSHGATEWAY_URL /
        ATTNOPS_SERVICE_TIMEOUT_S / ATTNOPS_SEARCH_DB say otherwise."""
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
            service_timeout_s=service_timeout_s(),
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


def service_timeout_s() -> float:
    """ATTNOPS_SERVICE_TIMEOUT_S (default 10): the longest wait for one call to a service.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get("ATTNOPS_SERVICE_TIMEOUT_S", "10")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"ATTNOPS_SERVICE_TIMEOUT_S={raw!r} is not a positive number of seconds")
    return value


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
    # MLflow's own defaults (7 retries, backoff factor 2, 120 s per request) wait for many
    # minutes on a tracking server that is down. Its HTTP layer is the only one that retries
    # MLflow calls (the flows' task retries skip them), so this bounds the total: at most
    # 3 tries of one call, ~3 s of backoff, each try at most 3x ATTNOPS_SERVICE_TIMEOUT_S
    # (a busy server may take longer to answer a large upload than to accept a connection).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
    request_timeout_s = max(1, math.ceil(3 * service_timeout_s()))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(request_timeout_s))
    # Prefect's client likewise (5 retries, 60 s per request by default).
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
    os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", str(request_timeout_s))
