"""Every call to a service is bounded in time and retried by one layer only."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import OperationalError

from attnops.flows.tasks import _transient
from attnops.monitors.pushed_metrics import MonitorMetrics
from attnops.serving.log_reader import LogReader
from attnops.settings import configure_process_env, service_timeout_s

MLFLOW_VARS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "PREFECT_CLIENT_MAX_RETRIES",
    "PREFECT_API_REQUEST_TIMEOUT",
)


@contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers; yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def _failed_with(exc: BaseException) -> SimpleNamespace:
    return SimpleNamespace(result=lambda raise_on_failure: exc)


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (OSError("disk busy"), True),
        (MlflowException("tracking server 503", error_code="TEMPORARILY_UNAVAILABLE"), False),
        (MlflowException("bad request", error_code="INVALID_PARAMETER_VALUE"), False),
        (ConnectionRefusedError("refused"), False),
        (TimeoutError("timed out"), False),
        (ValueError("bad data"), False),
    ],
    ids=["os-error", "mlflow-5xx", "mlflow-4xx", "connection", "timeout", "value"],
)
def test_task_retries_skip_what_another_layer_already_retried(exc, retried):
    """MLflow's HTTP layer retries its calls; a task retry on top would multiply the wait."""
    assert _transient(None, None, _failed_with(exc)) is retried


def test_mlflow_and_prefect_retries_are_bounded_and_follow_the_service_timeout(
    monkeypatch, tmp_path
):
    # A copy of the environment: configure_process_env only adds, and must not leak here.
    environ = {k: v for k, v in os.environ.items() if k not in MLFLOW_VARS}
    monkeypatch.setattr(os, "environ", environ)
    monkeypatch.setenv("ATTNOPS_SERVICE_TIMEOUT_S", "4")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    configure_process_env(tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "12"
    assert os.environ["PREFECT_CLIENT_MAX_RETRIES"] == "2"
    assert os.environ["PREFECT_API_REQUEST_TIMEOUT"] == "12"


def test_a_users_mlflow_settings_win(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    configure_process_env(tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"


@pytest.mark.parametrize("raw", ["0", "-3", "ten", "nan"])
def test_a_bad_service_timeout_is_refused_with_its_value(monkeypatch, raw):
    monkeypatch.setenv("ATTNOPS_SERVICE_TIMEOUT_S", raw)
    with pytest.raises(ValueError, match=f"ATTNOPS_SERVICE_TIMEOUT_S='{raw}' is not a positive"):
        service_timeout_s()


def test_pushgateway_that_never_answers_fails_within_the_timeout(monkeypatch):
    monkeypatch.setenv("ATTNOPS_SERVICE_TIMEOUT_S", "1")
    with silent_server() as port:
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        with pytest.raises(OSError, match=f"could not reach the Pushgateway at {url}"):
            MonitorMetrics().push(url, "tiny")
    assert time.perf_counter() - started < 10


def test_postgres_inference_log_that_never_answers_fails_within_the_timeout(monkeypatch):
    monkeypatch.setenv("ATTNOPS_SERVICE_TIMEOUT_S", "1")
    with silent_server() as port:
        started = time.perf_counter()
        with pytest.raises(OperationalError, match="timeout"):
            LogReader(f"postgresql+psycopg://attnops@127.0.0.1:{port}/attnops")
    assert time.perf_counter() - started < 15
