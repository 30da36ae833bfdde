"""The `attnops` command: one line and a non-zero exit on failure, before any slow work."""

import subprocess
import sys
import time


def _attnops(*args, cwd):
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "attnops.flows.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.perf_counter() - started


def test_bad_spec_fails_fast_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "name: x\ndata: {train: a.csv, validation: b.csv, test: c.csv}\ntraining: {epochs: 0}\n"
    )
    done, seconds = _attnops("train", "--spec", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 1
    error_lines = [
        line for line in done.stderr.splitlines() if line.startswith("attnops train failed")
    ]
    assert len(error_lines) == 1
    assert "training.epochs: Input should be greater than or equal to 1" in done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 30, "a bad spec must not wait for Prefect or MLflow"
    assert not (tmp_path / ".attnops" / "mlflow.db").exists()


def test_missing_spec_names_the_flag(tmp_path):
    done, _ = _attnops("train", "--spec", "configs/nope.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert "configs/nope.yaml not found; pass --spec" in done.stderr
