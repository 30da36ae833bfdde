"""Talking to a running inference service: readiness and the admin reload."""

from __future__ import annotations

import os

import httpx


def reload_server(
    url: str, token_env: str, model: str, *, timeout_s: float = 300.0
) -> dict[str, str | None]:
    """Ask the server of `model` at `url` to re-read the aliases; returns what each route now
    serves.

    Raises:
        ConnectionError: nobody answers at `url`, or the server refused the reload (the
            message says why: wrong token, another model's server, tokenizer mismatch, no
            champion).
    """
    token = os.environ.get(token_env, "")
    try:
        response = httpx.post(
            f"{url}/admin/reload",
            params={"model": model},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ConnectionError(
            f"no inference server answered at {url} ({exc}); start it with `attnops serve`"
        ) from exc
    if response.status_code != 200:
        detail = response.json().get("detail", response.text)
        raise ConnectionError(f"the server at {url} refused the reload: {detail}")
    return response.json()
