"""Attention health of a version from its evaluation's per-head matrices (layers x heads).

- collapsed heads: fine-tuning drove the head's attention entropy near zero (it attends to
  one token whatever the input), judged against the model before fine-tuning, because
  pretrained encoders have heads that are sharp by design;
- dead heads: removing the head would not change the loss (importance a small share of a
  uniform head's);
- change vs. the champion: heads whose entropy moved most between the two versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Head = tuple[int, int]


@dataclass(frozen=True)
class AttentionHealth:
    collapsed_heads: list[Head]
    dead_heads: list[Head]
    entropy_change: dict[str, float] = field(default_factory=dict)
    """Largest |entropy change| vs the champion and the head it happened in."""

    def to_dict(self) -> dict[str, object]:
        return {
            "collapsed_heads": [list(h) for h in self.collapsed_heads],
            "dead_heads": [list(h) for h in self.dead_heads],
            "entropy_change": self.entropy_change,
        }


def attention_health(
    attention: dict[str, object],
    *,
    dead_head_importance: float,
    champion: dict[str, object] | None = None,
) -> AttentionHealth:
    """Health of one version's attention, optionally compared with the champion's.

    Args:
        attention: the `attention` section of a version's evaluation.json (entropy,
            importance, collapsed_heads).
        dead_head_importance: a head whose importance is below this share of a uniform
            head's (1 / sqrt(heads) after per-layer L2 normalisation) is dead.
        champion: the champion's `attention` section, when there is one.
    """
    importance = np.asarray(attention["importance"], dtype=float)
    uniform = 1.0 / np.sqrt(importance.shape[1])
    dead = np.argwhere(importance < dead_head_importance * uniform)
    change: dict[str, float] = {}
    if champion is not None:
        ours = np.asarray(attention["entropy"], dtype=float)
        theirs = np.asarray(champion["entropy"], dtype=float)
        if ours.shape == theirs.shape:
            delta = ours - theirs
            layer, head = np.unravel_index(np.abs(delta).argmax(), delta.shape)
            change = {
                "max_abs": float(abs(delta[layer, head])),
                "layer": int(layer),
                "head": int(head),
                "mean_abs": float(np.abs(delta).mean()),
            }
    return AttentionHealth(
        collapsed_heads=[(int(layer), int(head)) for layer, head in attention["collapsed_heads"]],
        dead_heads=[(int(layer), int(head)) for layer, head in dead],
        entropy_change=change,
    )
