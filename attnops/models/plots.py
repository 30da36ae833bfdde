"""PNG figures for the evaluation evidence. Headless (Agg), one function per figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: Path
) -> None:
    matrix = np.asarray(matrix)
    size = max(5.0, 0.45 * len(label_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(label_names)), label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (test, in-scope)")
    _save(fig, path)


def reliability_png(bins: pd.DataFrame, ece: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    filled = bins[bins["count"] > 0]
    width = float((bins["high"] - bins["low"]).iloc[0])
    ax.bar(
        filled["low"],
        filled["accuracy"],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE = {ece:.3f})")
    ax.legend(loc="upper left")
    _save(fig, path)


def head_matrix_png(
    matrix: np.ndarray,
    title: str,
    path: Path,
    *,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """Heatmap of a layers x heads matrix with the value in each cell."""
    layers, heads = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * heads + 2), max(3, 0.45 * layers + 1.5)))
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
