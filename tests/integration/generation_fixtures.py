"""Tiny generative specs and versions for integration tests: a ticket-replies spec over a tiny
random Llama, gate limits such a model passes, a version trained and registered through the
real flow with specs that serve it, and a second registered version of the same artifacts
(for canary and reload tests)."""

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
TINY_MODEL_GATES = {
    "gate": {"max_latency_increase": 10.0},
    "generation_gate": {
        "min_rouge_l": 0,
        "rouge_l_non_inferiority_margin": 1.0,
        "require_beats_base": False,
        "max_hallucination_rate": 1.0,
        "max_hallucination_increase": 1.0,
        "max_output_tokens_increase": 10.0,
        "max_latency_increase": 10.0,
    },
}
"""Gate limits a tiny random model passes: a test of the gate's plumbing, not of its limits."""


def generation_spec(data: Path, name: str, *, generation: dict, **sections) -> dict:
    """A tiny-Llama ticket-replies spec over `data` (as `write_ticket_replies` writes it).

    Args:
        generation: added to the generation section (which has the hallucination set and no
            zero-shot baseline).
        sections: top-level sections; `training` and `evaluation` replace the tiny defaults.
    """
    return {
        "name": name,
        "task": "generation",
        "model": {"base": "smollm2-135m-instruct", "config_overrides": TINY_LLAMA},
        "data": {
            **{split: str(data / f"{split}.jsonl") for split in ("train", "validation", "test")},
            "source_column": "ticket",
            "target_column": "reply",
            "context_column": "article",
        },
        "generation": {
            "hallucination_set": str(data / "hallucination.jsonl"),
            "zero_shot_baseline": False,
            **generation,
        },
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "num_threads": 1},
        "evaluation": {"probe_size": 4},
    } | sections


def write_generation_spec(
    folder: Path, name: str, *, n_test: int, n_labelled: int = 40, seed: int = 0, **sections
) -> str:
    """Tiny ticket replies in `folder/data` (16 train, 4 validation, `n_test` test and
    `n_labelled` labelled rows) and a `generation_spec` with `sections` over them in
    `folder/spec.yaml`; returns its path."""
    from attnops.demo.ticket_replies import write_ticket_replies

    data = folder / "data"
    write_ticket_replies(
        data, seed=seed, n_train=16, n_validation=4, n_test=n_test, n_labelled=n_labelled
    )
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(generation_spec(data, name, **sections)))
    return str(path)


@contextmanager
def trained_generator(
    home: Path, name: str, *, max_new_tokens: int = 32
) -> Iterator[Callable[..., str]]:
    """Train v1 of `name` under `home` (ATTNOPS_HOME must point there) and make it the
    champion; yields `spec_path(generation_serving=None, **serving) -> path`, a spec on a
    free port with `serving` in its top-level section."""
    from attnops.demo.ticket_replies import write_ticket_replies
    from attnops.flows.train import train

    data = home / "data"
    write_ticket_replies(data, seed=0, n_train=16, n_validation=4, n_test=4, n_labelled=40)

    def spec_path(generation_serving: dict | None = None, **serving) -> str:
        spec = generation_spec(
            data,
            name,
            generation={
                "max_new_tokens": max_new_tokens,
                "max_prompt_tokens": 200,
                "eval_samples": 2,
                "serving": generation_serving or {},
            },
            serving={"port": free_port(), "log_flush_interval_s": 0.1, **serving},
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
