"""Real backends for the integration tests, each its own process.

PostgreSQL comes from outside (`.ci/start-postgres.sh` prints its URL into
ATTNOPS_TEST_POSTGRES_URL); on it each test module gets fresh databases. The S3 store is
a moto server; the MLflow tracking server keeps runs and the registry in PostgreSQL and
serves artifacts from the S3 bucket; the Prefect server keeps its state in PostgreSQL.

`release_loop` is what the tests run in a child process against them: the `attnops`
CLI, with only the environment pointing it at the servers, as a user would run it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import make_url

from tests.conftest import unavailable
from tests.integration.serving_fixtures import free_port

POSTGRES_URL_ENV = "ATTNOPS_TEST_POSTGRES_URL"
BUCKET = "attnops-artifacts"
ARTIFACTS_PREFIX = "mlflow"
ADMIN_TOKEN = "pg-admin-token"
# moto accepts any credentials; these keep boto3 from looking for real ones.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 180  # both servers migrate a fresh database on a busy 2-core box
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def postgres_admin_url() -> str:
    """ATTNOPS_TEST_POSTGRES_URL, checked: set, a driver installed, the server answering."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        unavailable(
            f"{POSTGRES_URL_ENV} is not set; start a server with "
            f"`export {POSTGRES_URL_ENV}=$(.ci/start-postgres.sh)`"
        )
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed; pip install -e '.[dev]'")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {POSTGRES_URL_ENV}={url} does not answer: {exc}")
    return url


@contextmanager
def scratch_databases(admin_url: str, *names: str) -> Iterator[dict[str, str]]:
    """Fresh databases (dropped afterwards); yields name -> SQLAlchemy URL (psycopg 3)."""
    import psycopg

    prefix = f"attnops_test_{secrets.token_hex(4)}"
    databases = {name: f"{prefix}_{name}" for name in names}
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for database in databases.values():
            conn.execute(f'CREATE DATABASE "{database}"')
    base = make_url(admin_url).set(drivername="postgresql+psycopg")
    try:
        yield {
            name: base.set(database=db).render_as_string(hide_password=False)
            for name, db in databases.items()
        }
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for database in databases.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@dataclass(frozen=True)
class Backends:
    mlflow_url: str
    prefect_api_url: str
    s3_endpoint: str
    databases: dict[str, str]  # mlflow, prefect, inference -> SQLAlchemy URL (psycopg)
    folder: Path

    def cli_env(self) -> dict[str, str]:
        """The environment a user sets to run attnops against these servers.

        No S3 credentials: uploads go through the tracking server, and downloads follow the
        presigned S3 URLs it hands out (MLflow 3's default for an S3 destination), so a
        client needs to reach the S3 endpoint, not to hold keys for it.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "ATTNOPS_"))
        }
        env.update(
            MLFLOW_TRACKING_URI=self.mlflow_url,
            PREFECT_API_URL=self.prefect_api_url,
            PREFECT_HOME=str(self.folder / "prefect-client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            ATTNOPS_HOME=str(self.folder / ".attnops"),
            ATTNOPS_INFERENCE_DB=self.databases["inference"],
            ATTNOPS_ADMIN_TOKEN=ADMIN_TOKEN,
            PYTHONPATH=str(REPO),
        )
        return env


@contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server in its own process group, stopped with its children: SIGTERM, then SIGKILL.

    The servers' state goes with the dropped databases, so a short grace period is enough.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise TimeoutError(f"{url} not ready after {START_TIMEOUT_S} s:\n{tail}")
        time.sleep(0.5)


@contextmanager
def real_backends(folder: Path) -> Iterator[Backends]:
    """PostgreSQL databases, moto S3, and MLflow + Prefect servers on them, started together."""
    import boto3

    admin_url = postgres_admin_url()
    with ExitStack() as stack:
        databases = stack.enter_context(
            scratch_databases(admin_url, "mlflow", "prefect", "inference")
        )
        base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))
        }
        s3_port, mlflow_port, prefect_port = free_port(), free_port(), free_port()
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        moto = stack.enter_context(
            _process(
                [str(BIN / "moto_server"), *f"-H 127.0.0.1 -p {s3_port}".split()],
                {**base_env, **AWS_ENV},
                folder / "moto.log",
            )
        )
        mlflow_server = (
            f"server --host 127.0.0.1 --port {mlflow_port} --workers 1 --serve-artifacts "
            f"--artifacts-destination s3://{BUCKET}/{ARTIFACTS_PREFIX}"
        )
        mlflow = stack.enter_context(
            _process(
                [
                    str(BIN / "mlflow"),
                    *mlflow_server.split(),
                    "--backend-store-uri",
                    databases["mlflow"],
                ],
                {
                    **base_env,
                    **AWS_ENV,
                    "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
                    "MLFLOW_ENABLE_TELEMETRY": "false",
                },
                folder / "mlflow-server.log",
            )
        )
        prefect_server = f"server start --host 127.0.0.1 --port {prefect_port} --no-ui"
        prefect = stack.enter_context(
            _process(
                [str(BIN / "prefect"), *prefect_server.split()],
                {
                    **base_env,
                    "PREFECT_HOME": str(folder / "prefect-server"),
                    "PREFECT_API_DATABASE_CONNECTION_URL": make_url(databases["prefect"])
                    .set(drivername="postgresql+asyncpg")
                    .render_as_string(hide_password=False),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                },
                folder / "prefect-server.log",
            )
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        _wait_ready(moto, f"{s3_endpoint}/moto-api/", folder / "moto.log", deadline)
        boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials()).create_bucket(
            Bucket=BUCKET
        )
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        _wait_ready(mlflow, f"{mlflow_url}/health", folder / "mlflow-server.log", deadline)
        prefect_api_url = f"http://127.0.0.1:{prefect_port}/api"
        _wait_ready(prefect, f"{prefect_api_url}/health", folder / "prefect-server.log", deadline)
        yield Backends(
            mlflow_url=mlflow_url,
            prefect_api_url=prefect_api_url,
            s3_endpoint=s3_endpoint,
            databases=databases,
            folder=folder,
        )


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


def s3_keys(backends: Backends) -> list[str]:
    """Every object key in the artifact bucket."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=backends.s3_endpoint, **_boto_credentials())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def release_loop(spec_path: str) -> dict:
    """What a user does, in this process, through the CLI entry point `attnops`.

    v1: train, gate, release (the first champion, no traffic needed). v2: train; then with
    the server up, gate and release it as a canary while simulated customers send traffic.
    Stops at the first command that fails; returns each command's exit code and seconds.
    """
    from attnops.demo.traffic import CanaryTraffic
    from attnops.flows.cli import main
    from tests.integration.serving_fixtures import running_server

    steps: list[dict] = []
    result = {"steps": steps}

    def attnops(*args: str) -> bool:
        started = time.monotonic()
        rc = main(["--debug", *args, "--spec", spec_path])
        steps.append({"command": " ".join(args), "rc": rc, "s": time.monotonic() - started})
        return rc == 0

    ok = attnops("train") and attnops("gate", "--version", "1")
    ok = ok and attnops("release", "--version", "1") and attnops("train")
    if not ok:
        return result
    with running_server(spec_path) as url:
        if attnops("gate", "--version", "2"):
            with CanaryTraffic(url, batch=40) as traffic:
                attnops("release", "--version", "2")
            result["traffic_sent"] = traffic.sent
        result["ready"] = httpx.get(f"{url}/ready", timeout=30).json()
    return result


if __name__ == "__main__":  # python -m tests.integration.postgres_fixtures SPEC RESULT_JSON
    Path(sys.argv[2]).write_text(json.dumps(release_loop(sys.argv[1])))
