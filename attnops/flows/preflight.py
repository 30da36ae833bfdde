"""Checks the services a command needs before any work starts, each within a bounded time.

A tracking server that is down would otherwise show up minutes later, deep inside a flow,
after MLflow's and Prefect's retries; a tracking URI at a file that is not a database
would show up as an SQLAlchemy error that names no file. Each check takes at most
`Settings.service_timeout_s` (ATTNOPS_SERVICE_TIMEOUT_S) and fails with one sentence that
names the URL or file and the variable to change.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from attnops.settings import Settings

SQLITE_HEADER = b"SQLite format 3\x00"


class ServiceUnavailable(RuntimeError):
    """A service a command needs cannot be used; the message says which and how to fix it."""


def check_tracking(settings: Settings) -> None:
    """The tracking URI answers (a server) or is a usable SQLite file or folder.

    Raises:
        ServiceUnavailable: with the URI, the reason and what to change.
    """
    uri = settings.tracking_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        _answers(
            f"{uri.rstrip('/')}/health",
            f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI)",
            "start it, or unset MLFLOW_TRACKING_URI to use the embedded SQLite store",
            settings.service_timeout_s,
        )
    elif parsed.scheme == "sqlite":
        path = Path(unquote(uri.removeprefix("sqlite:///")))
        _check_sqlite_file(uri, path, settings.home)
    elif parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        if path.is_file():
            raise ServiceUnavailable(
                f"MLFLOW_TRACKING_URI={uri} is the file {path.resolve()}, not a store; point "
                "it at a tracking server, an SQLite database (sqlite:///PATH.db) or a folder"
            )


def check_prefect(settings: Settings) -> None:
    """PREFECT_API_URL, when set, answers its health check.

    Raises:
        ServiceUnavailable: with the URL and what to change.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        _answers(
            f"{url.rstrip('/')}/health",
            f"the Prefect API at {url} (PREFECT_API_URL)",
            "start it (prefect server start), or unset PREFECT_API_URL to use a temporary "
            "local server",
            settings.service_timeout_s,
        )


def _check_sqlite_file(uri: str, path: Path, home: Path) -> None:
    where = f"MLFLOW_TRACKING_URI={uri}"
    if path.is_dir():
        raise ServiceUnavailable(
            f"{where} points at the folder {path.resolve()}, not an SQLite file; "
            "name a file, e.g. sqlite:///.attnops/mlflow.db"
        )
    if path.is_file():
        with path.open("rb") as stream:
            header = stream.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise ServiceUnavailable(
                f"{where}: {path.resolve()} is not an SQLite database; point "
                "MLFLOW_TRACKING_URI at a .db file (created when missing) or a tracking server"
            )
    elif not path.parent.is_dir() and path.parent.resolve() != home:
        # The embedded default's folder (ATTNOPS_HOME) is created by Settings.prepare(); any other
        # missing folder is a typo that SQLite reports only as "unable to open database".
        raise ServiceUnavailable(
            f"{where}: the folder {path.parent.resolve()} does not exist; create it or fix the path"
        )


def _answers(url: str, what: str, fix: str, timeout_s: float) -> None:
    """Any HTTP answer will do (even 401/404): only no answer within `timeout_s` fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailable(
            f"{what} is unreachable ({reason}; waited at most {timeout_s:g} s, "
            f"ATTNOPS_SERVICE_TIMEOUT_S); {fix}"
        ) from None
