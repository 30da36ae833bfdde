"""Faults a user meets: services down, damaged versions, bad flags, a stop mid-registration.

Each case asserts the exit code, the one line that names the URL, file or version and says
how to fix it, and that nothing was left half-written (no version, no logged model, no
state folder, the registry as it was).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import LoggedModelStatus

from attnops.flows.cli import main
from attnops.flows.train import train
from attnops.models import aliases, registry, versions
from attnops.settings import Settings
from tests.integration.serving_fixtures import client, serving_spec

NAME = "tiny-tickets"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _attnops(*args: str, cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """The real CLI in a fresh process, with `env` added to (or, for "", removed from) ours.

    State goes to ./.attnops of `cwd` and Prefect is not configured unless `env` says so.
    """
    env = {"ATTNOPS_HOME": "", "MLFLOW_TRACKING_URI": "", "PREFECT_API_URL": "", **env}
    environ = {k: v for k, v in os.environ.items() if k not in env or env[k]}
    environ |= {k: v for k, v in env.items() if v}
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "attnops.flows.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.perf_counter() - started


def _one_failure_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"attnops {command} failed")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def spec_dir(tmp_path, demo_dir) -> Path:
    """A folder with a valid tiny spec as `spec.yaml`; the CLI runs there."""
    (tmp_path / "spec.yaml").write_text(Path(serving_spec(demo_dir, tmp_path)).read_text())
    return tmp_path


# --- services that do not answer: one line within seconds, nothing left behind -------------


@pytest.mark.parametrize(
    "command", ["train", "gate", "release", "rollback", "monitor", "retrain", "serve", "ci"]
)
def test_unreachable_tracking_server_fails_in_seconds_naming_the_url(spec_dir, command):
    url = f"http://127.0.0.1:{_closed_port()}"
    extra = ["--event", "push"] if command == "ci" else []
    done, seconds = _attnops(
        command, "--spec", "spec.yaml", *extra, cwd=spec_dir, MLFLOW_TRACKING_URI=url
    )
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, command)
    assert f"the MLflow tracking server at {url} (MLFLOW_TRACKING_URI) is unreachable" in line
    assert "unset MLFLOW_TRACKING_URI" in line
    assert seconds < 60, "must not wait for MLflow's or Prefect's retries"
    assert not (spec_dir / ".attnops").exists(), "a refused command leaves nothing behind"


def test_unreachable_prefect_api_fails_in_seconds_naming_the_url(spec_dir):
    url = f"http://127.0.0.1:{_closed_port()}/api"
    done, seconds = _attnops(
        "train", "--spec", "spec.yaml", cwd=spec_dir, PREFECT_API_URL=url, MLFLOW_TRACKING_URI=""
    )
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, "train")
    assert f"the Prefect API at {url} (PREFECT_API_URL) is unreachable" in line
    assert "prefect server start" in line
    assert seconds < 60
    assert not (spec_dir / ".attnops").exists()


def test_service_timeout_bounds_a_server_that_accepts_but_never_answers(spec_dir):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        done, seconds = _attnops(
            "gate",
            "--spec",
            "spec.yaml",
            cwd=spec_dir,
            MLFLOW_TRACKING_URI=url,
            ATTNOPS_SERVICE_TIMEOUT_S="1",
        )
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, "gate")
    assert url in line and "waited at most 1 s" in line
    assert seconds < 30


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: (d / "notes.db").write_text("not a database"), "is not an SQLite database"),
        (lambda d: (d / "notes.db").mkdir(), "not an SQLite file"),
        (lambda d: None, "does not exist; create it or fix the path"),
    ],
    ids=["file-not-a-database", "folder", "missing-folder"],
)
def test_tracking_uri_at_something_that_is_not_a_database_names_the_path(spec_dir, make, expected):
    make(spec_dir)
    target = spec_dir / ("missing" if expected.startswith("does not") else "") / "notes.db"
    done, _ = _attnops(
        "gate", "--spec", "spec.yaml", cwd=spec_dir, MLFLOW_TRACKING_URI=f"sqlite:///{target}"
    )
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, "gate")
    assert str(target.parent if expected.startswith("does not") else target) in line
    assert expected in line


def test_tracking_uri_at_a_plain_file_names_the_file(spec_dir):
    (spec_dir / "notes.txt").write_text("hello")
    done, _ = _attnops(
        "gate", "--spec", "spec.yaml", cwd=spec_dir, MLFLOW_TRACKING_URI=str(spec_dir / "notes.txt")
    )
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, "gate")
    assert f"is the file {spec_dir / 'notes.txt'}, not a store" in line


def test_a_bad_service_timeout_is_named(spec_dir):
    done, _ = _attnops("gate", "--spec", "spec.yaml", cwd=spec_dir, ATTNOPS_SERVICE_TIMEOUT_S="ten")
    assert done.returncode == 1
    assert "ATTNOPS_SERVICE_TIMEOUT_S='ten' is not a positive number" in _one_failure_line(
        done.stderr, "gate"
    )


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_serve_rejects_a_port_that_is_not_a_tcp_port(spec_dir, port):
    done, seconds = _attnops("serve", "--spec", "spec.yaml", "--port", port, cwd=spec_dir)
    assert done.returncode == 1
    assert f"--port {port} is not a TCP port; use 1-65535" in _one_failure_line(
        done.stderr, "serve"
    )
    assert seconds < 30


def test_traffic_without_a_server_names_the_url(spec_dir):
    done, _ = _attnops("traffic", "--spec", "spec.yaml", "--requests", "5", cwd=spec_dir)
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, "traffic")
    port = __import__("yaml").safe_load((spec_dir / "spec.yaml").read_text())["serving"]["port"]
    assert f"no attnops server answers at http://127.0.0.1:{port}" in line
    assert "attnops serve --spec" in line


# --- damaged or unverifiable versions: refused wherever a version is loaded ------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory, demo_dir, prefect_server):
    """One tiny registered version, the champion; the env stays set for the module."""
    home = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNOPS_HOME", str(home / ".attnops"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("ATTNOPS_INFERENCE_DB", raising=False)
        spec_path = serving_spec(demo_dir, home)
        train(spec_path)
        yield spec_path


@contextmanager
def _champion():
    """Version 1 as the champion (what serve loads), for one test."""
    client().set_registered_model_alias(NAME, aliases.CHAMPION, "1")
    try:
        yield
    finally:
        client().delete_registered_model_alias(NAME, aliases.CHAMPION)


def _model_folder() -> Path:
    """Version 1's stored model (local artifact store)."""
    c = client()
    model_id = c.get_model_version(NAME, "1").source.removeprefix("models:/")
    return Path(c.get_logged_model(model_id).artifact_location.removeprefix("file://"))


def _stored_file(name: str) -> Path:
    """The file `name` among version 1's stored model files."""
    (found,) = [p for p in _model_folder().rglob(name) if p.is_file()]
    return found


@contextmanager
def _damaged(path: Path, damage):
    original = path.read_bytes()
    path.write_bytes(damage(original))
    try:
        yield
    finally:
        path.write_bytes(original)


def _flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2  # inside the tensor data, past the header
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _registry_state() -> dict:
    c = client()
    mvs = c.search_model_versions(f"name = '{NAME}'")
    return {
        "versions": sorted((mv.version, tuple(sorted(mv.tags.items()))) for mv in mvs),
        "aliases": sorted(c.get_registered_model(NAME).aliases.items()),
    }


def test_registration_tags_the_hash_of_the_stored_weights(registered, tmp_path):
    tags = client().get_model_version(NAME, "1").tags
    digest, files = registry.weights_sha256(_model_folder())
    assert files == ["model/model.safetensors"]
    assert tags[registry.WEIGHTS_TAG] == digest
    assert len(tags[registry.WEIGHTS_TAG]) == 64


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("model.safetensors", _flip_byte, "weights (model/model.safetensors) hash to"),
        ("tokenizer.json", lambda _: b"", "tokenizer.json is not valid JSON"),
        ("config.json", lambda data: data[:-10], "config.json is not valid JSON"),
    ],
    ids=["flipped-weight-byte", "empty-tokenizer", "truncated-config"],
)
def test_a_damaged_version_is_refused_by_the_loader_naming_version_and_file(
    registered, tmp_path, file, damage, expected
):
    c = client()
    with _damaged(_stored_file(file), damage), pytest.raises(ValueError) as refused:
        versions.load_version(c, NAME, "1", tmp_path)
    assert f"{NAME} v1" in str(refused.value)
    assert expected in str(refused.value)
    assert "refusing to use" in str(refused.value)


@pytest.mark.parametrize("command", ["gate", "serve"])
def test_a_flipped_weight_byte_is_refused_by_gate_and_serve_in_one_line(registered, capfd, command):
    before = _registry_state()
    serving = _champion() if command == "serve" else nullcontext()
    with _damaged(_stored_file("model.safetensors"), _flip_byte), serving:
        code = main(
            [command, "--spec", registered, *(["--version", "1"] if command == "gate" else [])]
        )
    err = capfd.readouterr().err
    assert code == 1
    line = _one_failure_line(err, command)
    assert f"{NAME} v1: weights (model/model.safetensors) hash to" in line
    assert f"not to its tag {registry.WEIGHTS_TAG}" in line
    assert _registry_state() == before, "a refused version gets no decision written onto it"


def test_gate_failure_prints_no_prefect_traceback_unless_debug(registered, capfd):
    with _damaged(_stored_file("tokenizer.json"), lambda _: b"{"):
        assert main(["gate", "--spec", registered, "--version", "1"]) == 1
        quiet = capfd.readouterr().err
        assert main(["--debug", "gate", "--spec", registered, "--version", "1"]) == 1
        loud = capfd.readouterr().err
    line = _one_failure_line(quiet, "gate")
    assert "tokenizer.json is not valid JSON" in line and f"{NAME} v1" in line
    assert "Traceback" in loud, "--debug shows where it failed"


def test_retrain_warm_start_refuses_altered_champion_weights(registered):
    from attnops.flows.retrain import write_training_spec
    from attnops.spec import load_spec

    labelled = pd.DataFrame({"text": ["my card was declined"], "label": ["payments"]})
    refused = pytest.raises(ValueError, match=r"v1: weights \(model/model.safetensors\)")
    with _damaged(_stored_file("model.safetensors"), _flip_byte), refused:
        spec, settings = load_spec(registered), Settings.from_env()
        write_training_spec.fn(spec, registered, settings, "1", labelled)


def test_a_version_without_a_weights_tag_loads_with_a_warning_naming_the_tag_to_set(
    registered, tmp_path, caplog
):
    """Registered before weights were hashed: it keeps serving, and the log says how to tag it."""
    c = client()
    real = c.get_model_version(NAME, "1").tags[registry.WEIGHTS_TAG]
    c.delete_model_version_tag(NAME, "1", registry.WEIGHTS_TAG)
    try:
        with caplog.at_level("WARNING", logger="attnops.models.versions"):
            loaded = versions.load_version(c, NAME, "1", tmp_path)
    finally:
        c.set_model_version_tag(NAME, "1", registry.WEIGHTS_TAG, real)
    assert loaded.version == "1"
    message = caplog.text
    assert f"{NAME} v1 has no {registry.WEIGHTS_TAG} tag" in message
    assert f"set_model_version_tag('{NAME}', '1', '{registry.WEIGHTS_TAG}', '{real}')" in message


# --- serve start-up failures: the CLI's one line, not uvicorn's traceback --------------------


def test_serve_with_a_tampered_tokenizer_tag_fails_in_one_line(registered, capfd):
    c = client()
    real = c.get_model_version(NAME, "1").tags["attnops.tokenizer_sha256"]
    c.set_model_version_tag(NAME, "1", "attnops.tokenizer_sha256", "0" * 64)
    try:
        with _champion():
            code = main(["serve", "--spec", registered])
    finally:
        c.set_model_version_tag(NAME, "1", "attnops.tokenizer_sha256", real)
    assert code == 1
    line = _one_failure_line(capfd.readouterr().err, "serve")
    assert f"{NAME} v1: tokenizer hash" in line and "refusing to use this version" in line


def test_serve_with_an_unwritable_inference_log_fails_in_one_line(
    registered, tmp_path, capfd, monkeypatch
):
    (tmp_path / "a-file").write_text("")
    url = f"sqlite:///{tmp_path / 'a-file' / 'inference.db'}"
    monkeypatch.setenv("ATTNOPS_INFERENCE_DB", url)
    with _champion():
        assert main(["serve", "--spec", registered]) == 1
    line = _one_failure_line(capfd.readouterr().err, "serve")
    assert f"cannot open the inference log {url}" in line
    assert "ATTNOPS_INFERENCE_DB" in line


def test_serve_without_a_registered_model_fails_in_one_line(tmp_path, demo_dir, monkeypatch):
    monkeypatch.setenv("ATTNOPS_HOME", str(tmp_path / ".attnops"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text(Path(serving_spec(demo_dir, tmp_path)).read_text())
    done, seconds = _attnops("serve", "--spec", "spec.yaml", cwd=tmp_path)
    assert done.returncode == 1
    line = _one_failure_line(done.stderr, "serve")
    assert f"no registered model '{NAME}'" in line and "attnops train" in line
    assert seconds < 60


# --- a stop mid-registration -----------------------------------------------------------------


def test_a_stopped_registration_leaves_no_pending_logged_model(attnops_home, demo_dir, tmp_path):
    """What `train` does on SIGTERM (Prefect raises it in the flow): fail_run cleans up."""
    from attnops.spec import load_spec

    settings = Settings.from_env()
    settings.prepare()
    c = registry.client_for(settings)
    spec_path = serving_spec(demo_dir, tmp_path)
    spec = load_spec(spec_path)
    run_id = registry.start_run(c, settings, spec, Path(spec_path).read_text())
    experiment_id = c.get_run(run_id).info.experiment_id
    pending = c.create_logged_model(experiment_id, source_run_id=run_id, name="model")
    assert pending.status == LoggedModelStatus.PENDING  # as log_model leaves it mid-upload
    uploaded = c.create_logged_model(experiment_id, source_run_id=run_id, name="model")
    c.finalize_logged_model(uploaded.model_id, LoggedModelStatus.READY)  # stopped just after

    registry.fail_run(c, run_id, spec.name, "TerminationSignal: SIGTERM")

    for logged in (pending, uploaded):
        assert c.get_logged_model(logged.model_id).status == LoggedModelStatus.FAILED
    assert c.get_run(run_id).info.status == "FAILED"
    assert not c.search_model_versions(f"name = '{spec.name}'")


@pytest.mark.slow
def test_sigterm_while_registering_leaves_no_version_and_no_pending_model(tmp_path, demo_dir):
    """A real `attnops train`, stopped by SIGTERM while MLflow logs the model."""
    import signal

    from mlflow import MlflowClient

    (tmp_path / "spec.yaml").write_text(Path(serving_spec(demo_dir, tmp_path)).read_text())
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    environ |= {
        "ATTNOPS_HOME": str(tmp_path / ".attnops"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    log = tmp_path / "train.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "attnops.flows.cli", "train", "--spec", "spec.yaml"],
            cwd=tmp_path,
            env=environ,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: what it started can be found, and ended
        )
    deadline = time.monotonic() + 300
    try:
        # Until log_model saves the weights (its logged model is PENDING by then). Watching
        # the log, not the database: a reader of the SQLite store would lock out its writer.
        while "Writing model shards" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "registration never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        time.sleep(1)
        left = _group_members(process.pid)
    finally:
        if process.poll() is None:
            process.kill()
        if _group_members(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert process.returncode == 143, output[-3000:]
    assert "attnops train: terminated (SIGTERM)" in output
    assert not left, f"still running after train ended: {left}"
    c = MlflowClient(f"sqlite:///{tmp_path / '.attnops' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in c.search_experiments()]
    (run,) = c.search_runs(experiments)
    assert run.info.status == "FAILED", output[-3000:]
    assert not c.search_model_versions(f"name = '{NAME}'")
    statuses = {m.status for m in c.search_logged_models(experiments)}
    assert statuses == {LoggedModelStatus.FAILED}, statuses


def _group_members(group: int) -> list[str]:
    """Command lines of the live processes in process group `group`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append((stat.parent / "cmdline").read_text().replace("\0", " ")[:120])
        except OSError:  # ended meanwhile
            continue
    return members
