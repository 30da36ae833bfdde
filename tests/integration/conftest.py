"""A real Prefect server (temporary, once per session), a fresh MLflow store per test (or per
module: `embedded_home`), the admin token, and a real Prometheus Pushgateway."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def embedded_home(folder: Path, **env: str) -> Iterator[None]:
    """`attnops_home` for module-scoped fixtures: embedded defaults under `folder/.attnops`,
    and the variables `env`, until the block ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNOPS_HOME", str(folder / ".attnops"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield


@pytest.fixture
def admin_token(monkeypatch) -> str:
    """The admin token the test servers accept, set for this test (a release's reload sends
    it)."""
    from tests.integration.serving_fixtures import ADMIN_TOKEN

    monkeypatch.setenv("ATTNOPS_ADMIN_TOKEN", ADMIN_TOKEN)
    return ADMIN_TOKEN


@contextmanager
def running_pushgateway() -> Iterator[str]:
    """A real Prometheus Pushgateway on a free local port, empty; yields its URL."""
    import subprocess
    import time

    import httpx

    from tests.conftest import command_path
    from tests.integration.serving_fixtures import free_port

    binary = command_path(
        "prometheus-pushgateway", "Debian: apt-get install prometheus-pushgateway"
    )
    url = f"http://127.0.0.1:{free_port()}"
    # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: a test
    # gateway must start empty and leave nothing behind.
    args = [f"--web.listen-address={url.removeprefix('http://')}", "--persistence.file="]
    process = subprocess.Popen(
        [binary, *args, "--log.level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Pushgateway did not start: {process.stderr.read()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    """One Pushgateway for the session: tests judge only their own model's group."""
    with running_pushgateway() as url:
        yield url


@pytest.fixture
def pushgateway_if_installed(request) -> str | None:
    """The Pushgateway's URL, or None on a laptop without the binary (in CI it must exist)."""
    try:
        return request.getfixturevalue("pushgateway")
    except pytest.skip.Exception:
        return None
