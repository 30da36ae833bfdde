"""How the `attnops` process behaves around its work: signals and what reaches the console.

The CLI's contract is one line per failure, tracebacks only with --debug; Prefect and
uvicorn print their own tracebacks unless told otherwise, and SIGTERM must unwind like
Ctrl-C so every cleanup on the way out runs.
"""

from __future__ import annotations

import logging
import signal
import threading


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that cleanups run on the way out."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated


def unwind_on_sigterm():
    """SIGTERM unwinds the stack instead of ending the process where it stands.

    Inside a flow Prefect turns SIGTERM into its own exception (the train flow then marks
    the MLflow run and its logged model FAILED) and afterwards re-sends the signal to the
    handler it found: with Python's default one the process died there, leaving Prefect's
    temporary server running. Returns the previous handler (None off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


class _NoTraceback(logging.Filter):
    """Drops the traceback from a record shown on the console (the message stays).

    Prefect's API handler sits on the run loggers and so sees the record first, traceback
    included; the console handler sits on their parent and sees it after.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


_NO_TRACEBACK = _NoTraceback()


def quiet_tracebacks(*, show: bool) -> None:
    """Prefect prints a failed task's and flow's traceback on the console; the CLI prints one
    line instead and keeps tracebacks for --debug. Prefect's API log (the UI) keeps them."""
    import prefect.main  # noqa: F401 (its import sets up Prefect's handlers, anew each time)

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ != "PrefectConsoleHandler":
                continue
            if show:
                handler.removeFilter(_NO_TRACEBACK)
            else:
                handler.addFilter(_NO_TRACEBACK)


class StartupFailureFilter(logging.Filter):
    """Hides uvicorn's report of a start-up failure that the CLI reports itself."""

    def __init__(self, app) -> None:
        super().__init__()
        self.app = app

    def filter(self, record: logging.LogRecord) -> bool:
        return self.app.state.startup_error is None
