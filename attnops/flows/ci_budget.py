"""The CI budget of a spec (its `ci:` section): a spec that trains in minutes on CI.

`max_steps` caps the optimizer steps; `train_sample` trains on a stratified sample of the
training split (every label kept, at least `data.min_examples_per_class` of each). The
validation and test splits stay whole, so the gate judges the CI build on the same inputs
as the champion.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from attnops.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd

# pandas and attnops.models load only when a sample is drawn: `attnops ci --event push`
# imports this module and must answer about PREFECT_API_URL in seconds.


def write_ci_spec(spec: PipelineSpec, spec_path: str, folder: Path) -> tuple[str, str]:
    """The spec with the CI budget applied, written into `folder` (the spec itself when
    its `ci:` section reduces nothing).

    Returns:
        (its path, a one-line description of the budget).
    """
    if spec.ci.max_steps is None and spec.ci.train_sample is None:
        return spec_path, "the spec's own training budget: its `ci:` section reduces nothing"
    raw = spec.model_dump(mode="json")
    budget = []
    if spec.ci.max_steps is not None:
        raw["training"]["max_steps"] = spec.ci.max_steps
        budget.append(f"at most {spec.ci.max_steps} optimizer steps")
    if spec.ci.train_sample is not None:
        from attnops.models.data import LABEL, TEXT, load_labelled_data

        data = load_labelled_data(spec.data, spec_path)
        train = data.splits["train"]
        sample = stratified_sample(
            train, spec.ci.train_sample, spec.data.min_examples_per_class, spec.training.seed
        )
        splits = {"train": sample, **{k: data.splits[k] for k in ("validation", "test")}}
        names = {TEXT: spec.data.text_column, LABEL: spec.data.label_column}
        for split, frame in splits.items():
            path = folder / f"{split}.csv"
            frame.rename(columns=names).to_csv(path, index=False)
            raw["data"][split] = str(path)
        raw["data"]["format"] = "csv"
        budget.append(f"{len(sample)} of {len(train)} training examples")
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path), ", ".join(budget)


def stratified_sample(frame: pd.DataFrame, n: int, floor: int, seed: int) -> pd.DataFrame:
    """About `n` rows with each label's share kept, and at least `floor` of every label."""
    import pandas as pd

    from attnops.models.data import LABEL

    if n >= len(frame):
        return frame
    share = n / len(frame)
    parts = [
        group.sample(n=min(len(group), max(floor, round(len(group) * share))), random_state=seed)
        for _, group in frame.groupby(LABEL, sort=True)
    ]
    return pd.concat(parts).sort_index().reset_index(drop=True)
