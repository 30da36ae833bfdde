"""A real Prefect server (temporary, once per session) and a fresh MLflow store per test."""

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def attnops_home(tmp_path, monkeypatch):
    """Embedded defaults (SQLite MLflow, local artifacts) inside this test's folder."""
    home = tmp_path / ".attnops"
    monkeypatch.setenv("ATTNOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
