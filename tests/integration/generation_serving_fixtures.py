"""A tiny generative version trained and registered through the real flow, specs that serve it,
and a second registered version of the same artifacts (for canary and reload tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from attnops.models import aliases
from tests.integration.serving_fixtures import client, free_port
from tests.unit.generation.conftest import TINY_LLAMA

ARTICLE = (
    "Refunds: once a return reaches our warehouse the refund is paid to the original payment "
    "method within 14 days. Orders over 50 dollars ship free; returns are free within 30 days."
)


def generation_spec(data: Path, name: str, *, generation_serving: dict, serving: dict) -> dict:
    """A tiny-Llama ticket-replies spec; `serving` is the top-level section (canary, log)."""
    return {
        "name": name,
        "task": "generation",
        "model": {"base": "smollm2-135m-instruct", "config_overrides": TINY_LLAMA},
        "data": {
            "train": str(data / "train.jsonl"),
            "validation": str(data / "validation.jsonl"),
            "test": str(data / "test.jsonl"),
            "source_column": "ticket",
            "target_column": "reply",
            "context_column": "article",
        },
        "generation": {
            "max_new_tokens": 32,
            "max_prompt_tokens": 200,
            "hallucination_set": str(data / "hallucination.jsonl"),
            "eval_samples": 2,
            "zero_shot_baseline": False,
            "serving": generation_serving,
        },
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "num_threads": 1},
        "evaluation": {"probe_size": 4},
        "serving": {"port": free_port(), "log_flush_interval_s": 0.1, **serving},
    }


@contextmanager
def trained_generator(home: Path, name: str) -> Iterator[Callable[..., str]]:
    """Train v1 of `name` under `home` (ATTNOPS_HOME must point there) and make it the
    champion; yields `spec_path(generation_serving=None, **serving) -> path`."""
    from attnops.demo.ticket_replies import write_ticket_replies
    from attnops.flows.train import train

    data = home / "data"
    write_ticket_replies(data, seed=0, n_train=16, n_validation=4, n_test=4, n_labelled=40)

    def spec_path(generation_serving: dict | None = None, **serving) -> str:
        spec = generation_spec(
            data, name, generation_serving=generation_serving or {}, serving=serving
        )
        path = home / f"spec-{spec['serving']['port']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return str(path)

    version = train(spec_path())
    client().set_registered_model_alias(name, aliases.CHAMPION, version.version)
    yield spec_path


def register_again(name: str, version: str) -> str:
    """A new version number of `name` holding `version`'s artifacts, run and tags: what the
    canary and reload tests need (routing and loading are about versions, not weights)."""
    c = client()
    mv = c.get_model_version(name, version)
    again = c.create_model_version(name, mv.source, run_id=mv.run_id, tags=dict(mv.tags))
    return str(again.version)
