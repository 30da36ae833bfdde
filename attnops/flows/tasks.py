"""Task decorators shared by the flows: no input hashing, retries only on transient I/O."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE


def _transient(_task, _task_run, state) -> bool:
    """Retry local I/O hiccups (a file system, the Pushgateway), nothing else.

    MLflow calls are not retried here: MLflow's own HTTP layer already retries them
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, set by `configure_process_env`), and retrying its
    failures again would multiply the wait for a server that is down. Connection errors of
    other clients are final for the same reason: their URL is checked before a flow starts.
    """
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError)


# Inputs are models and data frames: never hash them for a cache key.
compute_task = task(cache_policy=NO_CACHE)
io_task = task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient
)
