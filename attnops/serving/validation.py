"""What the inference service refuses to answer or store, and the sentence that says why.

Texts: one definition of "empty" with training (`models/text_checks.py`): a text with
nothing visible after removing whitespace, zero-width and control characters gets 422,
alone or anywhere in a batch (the index is named), rather than a confident guess.

Labels (`/feedback`, `attnops labels`): all or nothing. A label for a request id the log
does not know, or naming a class the answering model does not have, would be joined into
retraining data as noise; the whole submission is refused with the bad ids and classes
named, and nothing is stored, so a client can fix it and resend it as one unit.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Collection, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from attnops.models.text_checks import describe_empty, is_empty_text

_LISTED = 5  # ids or classes named in a message; the rest are counted


class ClientError(Exception):
    """A request the server will not answer: HTTP status and a sentence saying why."""

    def __init__(self, status: int, reason: str, detail: str, route: str = "none") -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.route = status, reason, detail, route


async def read_body(request, model: type[BaseModel], max_bytes: int) -> BaseModel:
    """The request's JSON body as `model`.

    Raises:
        ClientError: 413 for a body over `max_bytes` (serving.max_request_bytes), 422 naming
            the first field that does not validate.
    """
    body = await request.body()
    if len(body) > max_bytes:
        raise ClientError(
            413,
            "too_large",
            f"request body is {len(body)} bytes; the limit is {max_bytes} "
            "(serving.max_request_bytes)",
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ClientError(422, "invalid", f"{where}: {first['msg']}") from None


def authorize(request, token_env: str) -> None:
    """Let an admin request through only with `Authorization: Bearer $<token_env>`.

    Raises:
        ClientError: 403 while the variable is unset (admin endpoints off), 401 on a wrong
            or missing token.
    """
    expected = os.environ.get(token_env)
    if not expected:
        raise ClientError(403, "admin_disabled", f"admin endpoints are off: set {token_env}")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ClientError(401, "unauthorized", f"send 'Authorization: Bearer ${token_env}'")


def check_model(request, name: str) -> None:
    """Refuse (409) an admin request whose `model` query parameter names another model: a
    release of one model must not reload the server of another that listens on its port.

    Raises:
        ClientError: 409 naming both models.
    """
    wanted = request.query_params.get("model")
    if wanted is not None and wanted != name:
        raise ClientError(
            409,
            "wrong_model",
            f"this server serves model '{name}', not '{wanted}': point serving.port (or "
            f"serving.url) in {wanted}'s spec at its own server",
        )


def check_texts(texts: Sequence[str], *, batch: bool) -> None:
    """Refuse empty texts (422), naming `text` or the indexes of `texts` that are empty.

    Raises:
        ClientError: 422 `empty_text`.
    """
    empty = [i for i, text in enumerate(texts) if is_empty_text(text)]
    if not empty:
        return
    why = describe_empty(texts[empty[0]])
    if not batch:
        raise ClientError(
            422,
            "empty_text",
            f"text is empty ({why}; whitespace, zero-width and control characters do not "
            "count); send the text to classify",
        )
    raise ClientError(
        422,
        "empty_text",
        f"texts.{empty[0]} is empty ({why}); {len(empty)} of {len(texts)} texts are empty "
        f"(indexes {_listed(empty)}); remove them or send their text, nothing was answered",
    )


def feedback_problems(
    labels: Mapping[str, str],
    known_ids: Collection[str],
    classes_of: Mapping[str, Collection[str] | None],
) -> list[str]:
    """What is wrong with a set of labels, one sentence per kind of problem (empty: fine).

    Args:
        labels: request_id -> true label, as submitted.
        known_ids: the submitted ids the inference log knows (written or waiting to be).
        classes_of: request_id -> the classes the label may name (the answering version's
            classes plus the out-of-scope label); None where they are not known, which
            skips the class check for that id.
    """
    problems = []
    unknown = [rid for rid in labels if rid not in known_ids]
    if unknown:
        problems.append(
            f"{len(unknown)} unknown request id(s): {_listed(unknown)} (use the request_id "
            "of a /predict answer)"
        )
    wrong: dict[str, list[str]] = {}
    for rid, label in labels.items():
        allowed = classes_of.get(rid)
        if rid in known_ids and allowed is not None and label not in allowed:
            wrong.setdefault(label, []).append(rid)
    if wrong:
        allowed = sorted({c for rid in labels for c in (classes_of.get(rid) or ())})
        named = "; ".join(f"'{label}' (for {_listed(ids)})" for label, ids in wrong.items())
        problems.append(
            f"label(s) the model does not have: {named}; its classes: {_listed(allowed, 20)}"
        )
    return problems


def check_feedback(
    labels: Mapping[str, str],
    known_ids: Collection[str],
    classes_of: Mapping[str, Collection[str] | None],
) -> None:
    """Raise 422 naming every bad id and class (see `feedback_problems`); nothing is stored.

    Raises:
        ClientError: 422 `bad_feedback`.
    """
    problems = feedback_problems(labels, known_ids, classes_of)
    if problems:
        raise ClientError(
            422, "bad_feedback", "; ".join(problems) + "; nothing was recorded, fix and resend"
        )


def _listed(items: Sequence[object], limit: int = _LISTED) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
