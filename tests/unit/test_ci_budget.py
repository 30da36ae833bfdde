"""The CI budget: a spec that trains on a stratified sample, validation and test whole."""

from __future__ import annotations

import pandas as pd

from attnops.flows.ci_budget import stratified_sample, write_ci_spec
from attnops.models.data import LABEL, load_labelled_data
from attnops.spec import load_spec
from tests.conftest import tiny_spec_dict


def test_sample_keeps_every_label_its_share_and_the_floor():
    frame = pd.DataFrame({LABEL: ["common"] * 900 + ["rare"] * 20 + ["tiny"] * 3, "x": range(923)})
    sample = stratified_sample(frame, 100, floor=5, seed=0)
    counts = sample[LABEL].value_counts()
    assert counts["common"] == 98 and counts["rare"] == 5  # share kept, floor lifts "rare"
    assert counts["tiny"] == 3  # fewer than the floor: all of them
    assert sample.equals(stratified_sample(frame, 100, floor=5, seed=0)), "seeded"
    assert stratified_sample(frame, 5000, floor=5, seed=0) is frame


def test_ci_spec_trains_on_the_sample_and_judges_on_the_whole_test_split(
    demo_dir, write_spec, tmp_path
):
    raw = tiny_spec_dict(demo_dir) | {"ci": {"train_sample": 120, "max_steps": 7}}
    path = write_spec(raw)
    spec = load_spec(path)
    (tmp_path / "ci").mkdir()
    ci_path, budget = write_ci_spec(spec, str(path), tmp_path / "ci")
    assert ci_path != str(path)
    assert budget.startswith("at most 7 optimizer steps, ")
    ci = load_spec(ci_path)
    assert ci.training.max_steps == 7
    full, reduced = load_labelled_data(spec.data), load_labelled_data(ci.data)
    assert abs(len(reduced.splits["train"]) - 120) <= len(full.label_names)
    assert set(reduced.splits["train"][LABEL]) == set(full.splits["train"][LABEL])
    for split in ("validation", "test"):
        assert reduced.splits[split].equals(full.splits[split])


def test_a_spec_without_a_ci_budget_is_used_as_it_is(demo_dir, write_spec, tmp_path):
    path = write_spec(tiny_spec_dict(demo_dir))
    ci_path, budget = write_ci_spec(load_spec(path), str(path), tmp_path)
    assert ci_path == str(path) and "reduces nothing" in budget
