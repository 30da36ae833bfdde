"""The evidence of a hyperparameter search: trial table, parameter importance, card section.

Reads the study only (optuna, pandas, matplotlib): the flow logs the files it writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd

from attnops.models.search import OBJECTIVE, spent_seconds


def trial_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, score, evaluations, run time, retry origin and parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        started, completed = t.datetime_start, t.datetime_complete
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "val_macro_f1": t.value,
                "evaluations": len(t.intermediate_values),
                "seconds": (completed - started).total_seconds() if started and completed else None,
                "retry_of": t.system_attrs.get("failed_trial"),  # set by the retry callback
                **t.params,
            }
        )
    return pd.DataFrame(rows)


def write_evidence(study: optuna.Study, folder: Path) -> list[Path]:
    """Trial table (CSV and markdown), best parameters (JSON), parameter importance (PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = trial_table(study)
    files = [folder / "search_trials.csv", folder / "search_trials.md", folder / "search_best.json"]
    table.to_csv(files[0], index=False)
    files[1].write_text(markdown_table(table))
    best = study.best_trial
    files[2].write_text(
        json.dumps(
            {
                "study": study.study_name,
                "objective": OBJECTIVE,
                "trial": best.number,
                "val_macro_f1": best.value,
                "params": best.params,
            },
            indent=2,
        ),
    )
    importances = param_importances(study)
    if importances:
        files.append(folder / "search_importance.png")
        importance_png(importances, files[-1])
    return files


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's importances over completed trials; empty when they are too few to tell."""
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # fewer than 2 completed trials, or no variation
        return {}


def importance_png(importances: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (share of the variation in the score)")
    ax.set_title(f"Parameter importance for {OBJECTIVE}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(study: optuna.Study) -> str:
    """The search section of the model card: budget used, best values, where the evidence is."""
    table = trial_table(study)
    states = table["state"].value_counts().to_dict()
    best = study.best_trial
    lines = [
        "## Hyperparameter search",
        "",
        f"Optuna study `{study.study_name}`: {len(table)} trials "
        f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(states.items()))}), "
        f"{spent_seconds(study.get_trials(deepcopy=False)):.0f} s of trial time. "
        f"Best: trial {best.number}, {OBJECTIVE} {best.value:.4f}, with:",
        "",
        *[f"- `{name}`: {value}" for name, value in best.params.items()],
        "",
        "Trial table, parameter importance and best values: run artifacts under `search/`; "
        "each trial is a nested MLflow run of the train run that ran it.",
    ]
    return "\n".join(lines) + "\n"


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4g}"
        return "" if value is None else str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *body]) + "\n"
