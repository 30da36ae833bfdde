"""A flow's name, docstring and parameter schema, read from its source without importing it.

Importing the train flow loads torch and transformers (about 20 s on a laptop); `attnops
deploy` only needs what the `@flow` decorator and the signature say.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

from prefect.utilities.callables import (
    ParameterSchema,
    generate_parameter_schema,
    parameter_docstrings,
)

ANNOTATION_TYPES = {t.__name__: t for t in (str, int, float, bool, list, dict, tuple)}


class FlowSourceError(ValueError):
    """The entrypoint names no readable `@flow` function, or one a deployment cannot store."""


def read_flow(root: Path, entrypoint: str) -> tuple[str, str | None, ParameterSchema]:
    """(flow name, docstring, parameter schema) of `entrypoint` ("file.py:function", the file
    relative to `root`), as Prefect would derive them from the imported flow."""
    file, function_name = entrypoint.rsplit(":", 1)
    path = root / file
    if not path.is_file():
        raise FlowSourceError(f"entrypoint {entrypoint}: {path} not found")
    function = next(
        (
            node
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name == function_name
        ),
        None,
    )
    decorator = function and next(
        (
            d
            for d in function.decorator_list
            if _called_name(d.func if isinstance(d, ast.Call) else d) == "flow"
        ),
        None,
    )
    if decorator is None:
        raise FlowSourceError(f"entrypoint {entrypoint} is not a @flow function")
    flow_name = function_name.replace("_", "-")
    for keyword in getattr(decorator, "keywords", []):
        if keyword.arg == "name":
            flow_name = ast.literal_eval(keyword.value)
    docstring = ast.get_docstring(function)
    try:
        signature = _signature(function)
    except FlowSourceError as exc:
        raise FlowSourceError(f"entrypoint {entrypoint}: {exc}") from None
    schema = generate_parameter_schema(signature, parameter_docstrings(docstring))
    return flow_name, docstring, schema


def _called_name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)


def _signature(function: ast.FunctionDef | ast.AsyncFunctionDef) -> inspect.Signature:
    args = function.args
    positional = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
    pairs = [
        (a, d, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for a, d in zip(args.args, positional, strict=True)
    ]
    pairs += [
        (a, d, inspect.Parameter.KEYWORD_ONLY)
        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    return inspect.Signature(
        [
            inspect.Parameter(
                arg.arg,
                kind,
                default=inspect.Parameter.empty if default is None else _literal(default),
                annotation=_annotation(arg.annotation),
            )
            for arg, default, kind in pairs
        ]
    )


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise FlowSourceError(
            f"flow parameter default {ast.unparse(node)!r} is not a literal: a deployment "
            "stores its defaults as JSON"
        ) from None


def _annotation(node: ast.expr | None) -> Any:
    """Builtin annotations (str, bool, str | None) as types; anything else accepts Any."""
    if node is None:
        return inspect.Parameter.empty
    try:
        return eval(ast.unparse(node), {"__builtins__": {}}, dict(ANNOTATION_TYPES))
    except Exception:
        return Any
