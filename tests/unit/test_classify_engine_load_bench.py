"""benchmarks/classify_engine_load.py, the GPU check's classification leg, runs on a box
without the server's stack: it answers on every side, prints the ratios, and imports nothing
a bare GPU box lacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = """
import runpy, sys
sys.argv = ["classify_engine_load.py", "--seconds", "0.5", "--clients", "4", "--threads", "1"]
runpy.run_path("benchmarks/classify_engine_load.py", run_name="__main__")
stack = {"mlflow", "prefect", "evidently", "fastapi", "sqlalchemy", "sklearn", "presidio_analyzer"}
print("imported:", sorted(stack & {name.split(".")[0] for name in sys.modules}))
"""


def test_every_side_answers_and_nothing_of_the_server_stack_is_imported():
    run = subprocess.run(
        [sys.executable, "-c", RUN], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rates = dict(re.findall(r"^(pipeline|ours|bound)\s+([\d.]+)", run.stdout, re.M))
    assert set(rates) == {"pipeline", "ours", "bound"} and all(float(r) > 0 for r in rates.values())
    assert re.search(r"ours / pipeline: [\d.]+x; ours / bound: [\d.]+x", run.stdout)
    assert "imported: []" in run.stdout
