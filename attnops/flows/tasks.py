"""Task decorators shared by the flows: no input hashing, retries only on transient I/O."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE


def _transient(_task, _task_run, state) -> bool:
    """Retry I/O hiccups (file system, network, a busy tracking server), nothing else."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500
    return isinstance(exc, OSError)


# Inputs are models and data frames: never hash them for a cache key.
compute_task = task(cache_policy=NO_CACHE)
io_task = task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient
)
