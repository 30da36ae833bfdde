"""Hyperparameter search: bad trials are pruned, killed trials are rerun, a restarted search
spends only what is left of its budget, and processes sharing a study split its trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from sklearn.metrics import f1_score

from attnops.models import search, search_evidence
from attnops.models.batching import encode
from attnops.models.data import load_labelled_data
from attnops.models.inference import predict
from attnops.spec import PipelineSpec, SpecError, load_spec
from tests.conftest import TINY_BERT

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "please refund my last order",
    "where is my parcel right now",
    "cancel the subscription today",
    "the screen arrived cracked",
    "i never got my money back",
    "tracking says it is stuck",
    "stop my plan from renewing",
    "box was crushed and item broken",
]
LABELS = ["refund", "where", "cancel", "broken"] * 2
LEARNS, NEVER_LEARNS = 3e-3, 1e-5
"""Measured on this data with the tiny model: validation macro-F1 0.73 after 5 epochs at
3e-3, stuck at chance (0.1) at 1e-5."""


def _spec_dict(folder: Path, training: dict | None = None, **search_fields) -> dict:
    for split, repeat in (("train", 4), ("validation", 1), ("test", 1)):
        frame = pd.DataFrame({"text": TEXTS * repeat, "label": LABELS * repeat})
        frame.to_csv(folder / f"{split}.csv", index=False)
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return {
        "name": "toy",
        "model": {"max_length": 16, "config_overrides": no_dropout},
        "data": {
            **{split: str(folder / f"{split}.csv") for split in ("train", "validation", "test")},
            # Validation repeats train on purpose: the tiny model can then learn it in seconds.
            "max_leakage_share": 1.0,
        },
        "training": {
            "epochs": 8,
            "batch_size": 8,
            "learning_rate": LEARNS,
            "warmup_ratio": 0.0,
            "early_stopping_patience": None,
            **(training or {}),
            "search": {
                "params": {
                    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}
                },
                "n_trials": 2,
                "heartbeat_interval_s": 1,
                "grace_period_s": 2,
                **search_fields,
            },
        },
    }


def _setup(tmp_path: Path, training: dict | None = None, **search_fields):
    spec = PipelineSpec.model_validate(_spec_dict(tmp_path, training, **search_fields))
    data = load_labelled_data(spec.data)
    return spec, data, f"sqlite:///{tmp_path / 'search.db'}"


def test_a_trial_behind_the_median_is_pruned_at_an_evaluation(tmp_path):
    spec, data, url = _setup(tmp_path, pruner_startup_trials=1, pruner_warmup_evaluations=5)
    study = search.open_study(spec, data.data_sha256, url)
    study.enqueue_trial({"learning_rate": NEVER_LEARNS})  # after the spec's own value
    kept = tmp_path / "kept"
    first = search.run_trial(study, spec, data, keep_dir=kept)
    second = search.run_trial(study, spec, data, keep_dir=kept)
    assert search.run_trial(study, spec, data, keep_dir=kept) is None, "n_trials=2 is spent"

    assert first.params == {"learning_rate": LEARNS}, "the first trial is the spec's recipe"
    assert first.state == TrialState.COMPLETE and len(first.intermediate_values) == 8
    assert first.value > 0.5
    # Pruned at the first evaluation after the warm-up: 0.1 against the first trial's 0.73.
    assert second.state == TrialState.PRUNED
    assert sorted(second.intermediate_values) == [1, 2, 3, 4, 5]
    best = search.best_spec(spec, study)
    assert best.training.learning_rate == LEARNS and best.training.search is None

    # The winner is kept (a pruned trial is not): registering it needs no second training.
    assert sorted(p.name for p in kept.iterdir()) == ["trial-0"]
    trained = search.kept_classifier(best, data, kept / "trial-0")
    assert trained.result.best_val_macro_f1 == first.value
    assert trained.result.run_card["search_trial"] == "trial-0"
    frame = data.in_scope("validation")
    validation = encode(trained.tokenizer, frame["text"].tolist(), 16, data.label_ids(frame))
    predicted = predict(trained.model, validation, pad_id=0, device=trained.device).labels
    kept_f1 = f1_score(validation.labels, predicted, average="macro", zero_division=0)
    assert kept_f1 == pytest.approx(first.value), "calibration keeps the predictions"
    assert search.kept_classifier(best, data, kept / "trial-1") is None


def test_a_trial_behind_the_median_only_at_its_last_evaluation_completes(tmp_path):
    # Pruning may start at evaluation 8, the last: stopping there would save nothing.
    spec, data, url = _setup(tmp_path, pruner_startup_trials=1, pruner_warmup_evaluations=8)
    study = search.open_study(spec, data.data_sha256, url)
    study.enqueue_trial({"learning_rate": NEVER_LEARNS})
    first = search.run_trial(study, spec, data)
    second = search.run_trial(study, spec, data)

    assert second.state == TrialState.COMPLETE and len(second.intermediate_values) == 8
    assert second.value < first.value
    assert search.best_spec(spec, study).training.learning_rate == LEARNS


def test_a_restarted_search_resumes_its_study_and_budget(tmp_path):
    spec, data, url = _setup(tmp_path, n_trials=3, pruner="none")
    first = search.run_trial(search.open_study(spec, data.data_sha256, url), spec, data)
    # A restart: a new study handle on the same database finds the same study.
    study = search.open_study(spec, data.data_sha256, url)
    ran = []
    while (trial := search.run_trial(study, spec, data)) is not None:
        ran.append(trial.number)
    assert first.number == 0 and ran == [1, 2]
    params = [t.params["learning_rate"] for t in study.trials]
    assert len(set(params)) == 3, "each trial number seeds its own draws"

    table = search_evidence.trial_table(study)
    assert list(table["trial"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    files = search_evidence.write_evidence(study, tmp_path / "evidence")
    assert {f.name for f in files} == {
        "search_trials.csv", "search_trials.md", "search_best.json", "search_importance.png",
    }  # fmt: skip
    best = json.loads((tmp_path / "evidence" / "search_best.json").read_text())
    assert best["trial"] == study.best_trial.number
    assert "learning_rate" in search_evidence.summary_markdown(study)
    # Raising the budget continues the same study instead of starting a new one.
    bigger = PipelineSpec.model_validate(_spec_dict(tmp_path, n_trials=4, pruner="none"))
    assert search.study_name(bigger, data.data_sha256) == study.study_name


def test_a_time_budget_stops_new_trials_once_the_trial_time_is_spent(tmp_path):
    # A budget far below one trial's time (8 epochs), so the first trial overruns it.
    spec, data, url = _setup(tmp_path, n_trials=None, time_budget_s=0.01, pruner="none")
    study = search.open_study(spec, data.data_sha256, url)
    assert search.trials_left(study, spec.training.search) == 1  # parallel_trials
    first = search.run_trial(study, spec, data)
    assert first.duration.total_seconds() > 0.01, "a started trial runs to its end"
    assert search.run_trial(study, spec, data) is None
    assert search.spent_seconds(study.get_trials()) == first.duration.total_seconds()


def test_a_killed_trial_costs_no_budget_and_a_search_ends_with_a_result(tmp_path):
    spec, data, url = _setup(tmp_path, n_trials=None, time_budget_s=0.5, pruner="none")
    study = search.open_study(spec, data.data_sha256, url)
    killed = study.ask()
    time.sleep(0.6)
    # Still running (not yet stale) and over the budget: nothing has completed, so one more.
    assert search.trials_left(study, spec.training.search) == 1
    study.tell(killed, state=TrialState.FAIL)
    assert search.spent_seconds(study.get_trials()) == 0
    assert search.trials_left(study, spec.training.search) == 1


WORKER = """
import json, os, sys, time
from pathlib import Path
from attnops.models import search
from attnops.models.data import load_labelled_data
from attnops.spec import PipelineSpec

spec = PipelineSpec.model_validate(json.loads(sys.argv[1]))
if sys.argv[3] == "hang":  # a trial that never ends, until the test kills the process
    search.train_classifier = lambda *a, **k: time.sleep(3600)
data = load_labelled_data(spec.data)
study = search.open_study(spec, data.data_sha256, sys.argv[2])
barrier = Path(sys.argv[4])  # start together: imports take long on a busy machine
(barrier / f"ready-{os.getpid()}").touch()
while not (barrier / "go").exists():
    time.sleep(0.05)
while search.run_trial(study, spec, data) is not None:
    pass
"""


def _workers(spec: PipelineSpec, url: str, mode: str, folder: Path, n: int = 1) -> list:
    """`n` processes running the study's trials, started together once all are ready."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", WORKER, spec.model_dump_json(), url, mode, str(folder)]
    workers = []
    for i in range(n):
        with (folder / f"worker-{i}.log").open("w") as log:  # a pipe could fill and block
            workers.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log))
    deadline = time.monotonic() + 180
    while len(list(folder.glob("ready-*"))) < n:
        assert all(w.poll() is None for w in workers), _logs(folder)
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    (folder / "go").touch()
    return workers


def _logs(folder: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(folder.glob("worker-*.log")))


@pytest.mark.slow
def test_a_killed_trial_is_failed_and_run_again(tmp_path):
    spec, data, url = _setup(tmp_path, pruner="none")
    (worker,) = _workers(spec, url, "hang", tmp_path)
    study = search.open_study(spec, data.data_sha256, url)
    deadline = time.monotonic() + 120
    # Mid-trial: parameters drawn, heartbeat running (Optuna cannot tell a process killed in
    # the milliseconds between claiming a trial and its first heartbeat from a slow one).
    while not [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.params]:
        assert worker.poll() is None, _logs(tmp_path)
        assert time.monotonic() < deadline, "the worker never started a trial"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)  # mid-trial: no chance to clean up
    worker.wait()
    (killed,) = study.get_trials(states=(TrialState.RUNNING,))
    # Past the 2 s grace period without a heartbeat, with room for SQLite storing its
    # timestamps in whole seconds (2.5 s was sometimes not yet stale).
    time.sleep(3.5)

    ran = []
    while (trial := search.run_trial(study, spec, data)) is not None:
        ran.append(trial)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    # Its parameters ran again first; then a new trial, as 2 must finish.
    assert [t.number for t in ran] == [1, 2]
    assert ran[0].params == killed.params and ran[0].system_attrs["failed_trial"] == 0
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 2
    assert search_evidence.trial_table(study)["retry_of"].tolist()[1] == 0


@pytest.mark.slow
def test_two_processes_sharing_a_study_run_distinct_trials(tmp_path):
    spec, data, url = _setup(tmp_path, {"epochs": 3}, n_trials=6, pruner="none")
    search.open_study(spec, data.data_sha256, url)  # created once, before the race
    for worker in _workers(spec, url, "run", tmp_path, n=2):
        assert worker.wait(timeout=300) == 0, _logs(tmp_path)

    study = search.open_study(spec, data.data_sha256, url)
    trials = study.get_trials()
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    # Each worker checks the budget before claiming a trial: a race may add one trial.
    assert 6 <= len(trials) <= 7
    assert [t.number for t in trials] == list(range(len(trials)))
    params = [t.params["learning_rate"] for t in trials]
    assert len(set(params)) == len(params), "no parameters evaluated twice"
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"


@pytest.mark.parametrize(
    ("search_section", "message"),
    [
        ({"params": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}},
         "set n_trials, time_budget_s or both"),
        ({"n_trials": 3, "params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-3}}},
         "params.lr is not a searchable training field"),
        ({"n_trials": 3, "params": {"learning_rate": {"type": "float", "low": 0, "high": 1e-3,
                                                      "log": True}}},
         "log=true needs low > 0"),
        ({"n_trials": 3, "params": {"epochs": {"type": "categorical", "choices": [2]}}},
         "at least 2 choices"),
    ],
)  # fmt: skip
def test_an_unusable_search_section_fails_at_load(tmp_path, write_spec, search_section, message):
    raw = _spec_dict(tmp_path)
    raw["training"]["search"] = search_section
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(raw))


def test_search_values_outside_the_training_limits_name_the_values(tmp_path):
    spec, _, _ = _setup(tmp_path)
    with pytest.raises(ValueError, match=r"'warmup_ratio': 1\.5"):
        search.with_training(spec, {"warmup_ratio": 1.5})


def test_study_name_follows_data_and_settings(tmp_path):
    spec, data, _ = _setup(tmp_path)
    name = search.study_name(spec, data.data_sha256)
    assert name.startswith(f"toy-{data.data_sha256[:12]}-")
    other = PipelineSpec.model_validate(_spec_dict(tmp_path, {"weight_decay": 0.2}))
    assert search.study_name(other, data.data_sha256) != name
