"""The registry aliases that say which version does what, and the moves between them.

`challenger` is the newest trained version, `canary` the one taking a share of live
traffic, `champion` the one serving the rest, `previous` the champion before it (what a
rollback restores). Each move sets the new alias before removing the old one, so a crash
halfway never leaves the model without a champion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mlflow only once a client exists: the CLI imports the alias names
    from mlflow import MlflowClient

CHALLENGER, CHAMPION, CANARY, PREVIOUS = "challenger", "champion", "canary", "previous"


def resolve(client: MlflowClient, name: str, ref: str):
    """A model version by number ("3") or alias ("champion"); None for an unset alias."""
    from mlflow.exceptions import MlflowException

    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        raise LookupError(f"no registered model '{name}' in this MLflow; run `attnops train` first")
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        # Only "not there" means none; a busy or failing server must not read as "no
        # champion", or a candidate would be gated on absolute limits alone.
        missing = exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
        if not missing or "not found" not in str(exc).lower():
            raise
        if ref.isdigit():
            raise LookupError(f"model '{name}' has no version {ref}") from None
        return None


def version_of(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number an alias points at, or None when it is not set."""
    mv = resolve(client, name, alias)
    return None if mv is None else str(mv.version)


def promote(client: MlflowClient, name: str, version: str) -> str | None:
    """Make `version` the champion; the old champion becomes `previous`. Returns the old one."""
    old = version_of(client, name, CHAMPION)
    if old is not None and old != version:
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)
    if version_of(client, name, CANARY) == version:
        client.delete_registered_model_alias(name, CANARY)
    return old


def remove_canary(client: MlflowClient, name: str) -> str | None:
    """Take the canary out of traffic; returns its version (None if there was none)."""
    canary = version_of(client, name, CANARY)
    if canary is not None:
        client.delete_registered_model_alias(name, CANARY)
    return canary


def restore_previous(client: MlflowClient, name: str) -> tuple[str, str]:
    """Roll back: `previous` becomes the champion again, any canary leaves traffic.

    Returns:
        (restored version, the champion it replaced).

    Raises:
        LookupError: there is no `previous` version to restore.
    """
    previous = version_of(client, name, PREVIOUS)
    if previous is None:
        raise LookupError(
            f"model '{name}' has no 'previous' version to restore (nothing was promoted "
            "over another champion yet)"
        )
    replaced = version_of(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    remove_canary(client, name)
    return previous, replaced
