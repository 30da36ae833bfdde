"""A registry with two tiny trained versions, and a real uvicorn server on a free port."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
import yaml

from attnops.models import registry
from attnops.settings import Settings
from attnops.spec import load_spec
from tests.conftest import tiny_spec_dict

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_spec(data_dir: Path, folder: Path, **serving) -> str:
    """A tiny spec whose gate and monitors accept random tiny models."""
    spec = tiny_spec_dict(data_dir, epochs=1)
    # Tiny random models on a busy CI box: these tests are about plumbing, not quality or speed.
    spec["gate"] = {
        "min_macro_f1": 0.0,
        "max_ece": 1.0,
        "max_unsupported_assertion_rate": 1.0,
        "max_latency_ms_p95": 10_000,
        "max_latency_ms_p99": 10_000,
        "max_latency_increase": 10.0,
        "min_baseline_margin": None,  # a random tiny model does not beat bag-of-words
    }
    spec["monitoring"] = {"window_size": 60, "bootstrap_resamples": 200}
    spec["serving"] = {"port": free_port(), "max_batch_wait_ms": 2.0, **serving}
    path = folder / f"spec-{spec['serving']['port']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def client() -> object:
    return registry.client_for(Settings.from_env())


@contextmanager
def running_server(spec_path: str):
    """The app under uvicorn in a thread; yields its URL; a clean stop flushes the log."""
    from attnops.serving.app import create_app

    spec = load_spec(spec_path)
    app = create_app(spec, Settings.from_env())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=spec.serving.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = spec.serving.url
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError("server start took more than 120 s")
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def reload(url: str, token: str = ADMIN_TOKEN, model: str | None = None) -> httpx.Response:
    """`POST /admin/reload`; with `model`, as `attnops release` sends it (the server checks)."""
    return httpx.post(
        f"{url}/admin/reload",
        params={} if model is None else {"model": model},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
