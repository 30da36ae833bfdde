"""`attnops demo`: the whole loop on the embedded defaults, in a few minutes on a laptop.

train v1 -> gate (absolute limits) -> champion -> serve -> normal traffic -> monitor: no
alarm -> drifted traffic (a new product line) -> monitor: drift detected -> retrain v2 on
the new labels -> gate v2 vs v1 -> canary -> canary window -> promote. A `task: generation`
spec tells its own story (`flows.demo_generation`).

The demo keeps its state in `.attnops/demo/` and clears it (Prefect's database aside)
at every start, so it tells the same story each time it runs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from attnops.settings import Settings

_STATE = ("mlflow.db", "artifacts", "inference.db", "retrain", "locks", "checkpoints")


def use_demo_home() -> Path:
    """Point attnops at `<home>/demo` (embedded defaults) and clear the last demo's state."""
    home = Path(os.environ.get("ATTNOPS_HOME", ".attnops")).resolve() / "demo"
    os.environ["ATTNOPS_HOME"] = str(home)
    if os.environ.pop("MLFLOW_TRACKING_URI", None):
        print("note: the demo uses its own embedded MLflow store, not MLFLOW_TRACKING_URI")
    for name in os.listdir(home) if home.exists() else []:
        if name.startswith(_STATE) or name.startswith("serving-"):
            path = home / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return home


def run_demo(spec_path: str, *, regenerate: bool) -> None:
    from attnops.demo.tickets import write_demo_dataset
    from attnops.demo.traffic import CanaryTraffic, simulate, wait_for_log
    from attnops.flows.gate import gate
    from attnops.flows.monitor import monitor
    from attnops.flows.release import release
    from attnops.flows.retrain import retrain
    from attnops.flows.train import train
    from attnops.spec import load_spec

    spec = load_spec(spec_path)
    if spec.task == "generation":
        from attnops.flows.demo_generation import run_generation_demo

        run_generation_demo(spec_path, regenerate=regenerate)
        return
    settings = Settings.from_env()
    step = Steps()

    paths = [Path(f) for f in spec.data.split_files]
    if regenerate or not all(p.is_file() for p in paths):
        written = write_demo_dataset(
            paths[0].parent,
            seed=spec.training.seed,
            fmt=paths[0].suffix.lstrip("."),
            n_validation=200,  # smaller evaluation splits keep the demo within minutes
            n_test=400,
        )
        missing = [p for p in paths if p not in written.values()]
        if missing:
            raise ValueError(
                f"{spec_path} points at {missing[0]}, which the demo generator does not write; "
                f"the demo expects data.train/validation/test as {paths[0].parent}/"
                "train|validation|test"
            )
        step("data", f"demo tickets written to {paths[0].parent}/")

    v1 = train(spec_path)
    step("train v1", f"test macro-F1 {v1.metrics['test_macro_f1']:.3f}")
    decision = gate(spec_path, candidate=v1.version)
    if not decision.passed:
        raise RuntimeError(f"the demo's v1 did not pass the gate: {decision.reasons()}")
    step("gate v1", "passed (no champion: absolute limits)")
    release(spec_path, candidate=v1.version)
    step("release v1", "champion (first version)")

    token = secrets.token_hex(16)
    os.environ[spec.serving.admin_token_env] = token
    with serve_in_child(spec_path, spec.serving.url) as url:
        step("serve", f"champion v1 at {url}")

        size = spec.monitoring.window_size
        normal = simulate(url, scenario="normal", n=size, seed=1, label_share=0.3)
        wait_for_log(url)
        step("normal traffic", normal.summary())
        calm = monitor(spec_path)
        step("monitor", f"{calm['status']} " + "; ".join(calm.get("reasons", [])))
        drifted = simulate(url, scenario="new_product_line", n=size, seed=2, label_share=0.6)
        wait_for_log(url)
        step("drifted traffic (new product line)", drifted.summary())
        alarm = monitor(spec_path)
        reasons = "; ".join(alarm.get("reasons", []))
        step("monitor", f"{alarm['status']}: {reasons} (event {alarm.get('event_id')})")
        if alarm["status"] != "alarm":
            raise RuntimeError("the drifted window raised no alarm; the demo cannot go on")
        with CanaryTraffic(url):
            outcome = retrain(spec_path, event_id=alarm["event_id"])
        step(
            f"retrain -> v{outcome.get('version')}",
            f"{outcome['status']}: {outcome.get('reason', '')}",
        )
    print_summary(step.rows, settings)
    if outcome["status"] != "promoted":
        raise RuntimeError(f"v2 was not promoted: {outcome.get('reason')}")


class Steps:
    """The story's steps as they end: `step(name, outcome)` prints one and times it from the
    end of the previous one."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float]] = []
        self._clock = time.perf_counter()

    def __call__(self, name: str, outcome: str, *, ended: float | None = None) -> None:
        """Record a step; `ended`: when it ended (`time.perf_counter()`), if not now."""
        end = time.perf_counter() if ended is None else ended
        self.rows.append((name, outcome, end - self._clock))
        self._clock = end
        print(f"\n>>> {name}: {outcome}\n", flush=True)


@contextmanager
def serve_in_child(spec_path: str, url: str) -> Iterator[str]:
    """`attnops serve` in a child process, ready when the block starts, stopped after it."""
    from attnops.models.threads import ENV_VAR, available_cpus  # imports torch

    command = [sys.executable, "-m", "attnops.flows.cli", "serve", "--spec", spec_path]
    # The server chooses its threads once, at start, and outlives the demo's other stages
    # and any neighbour that starts meanwhile: half the CPUs, not all that are free now.
    threads = os.environ.get(ENV_VAR) or str(max(1, available_cpus() // 2))
    process = subprocess.Popen(command, env={**os.environ, ENV_VAR: threads})
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready at {url} within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()  # uvicorn answers what is in flight, then the log flushes
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def print_summary(steps: list[tuple[str, str, float]], settings: Settings) -> None:
    print("\n=== attnops demo: what happened ===")
    for name, outcome, seconds in steps:
        print(f"{seconds:6.0f} s  {name:<36} {outcome}")
    prefect_home = os.environ.get("PREFECT_HOME", "~/.prefect")
    print(f"\nMLflow UI:  {settings.mlflow_ui_command()}")
    print(f"Prefect UI: PREFECT_HOME={prefect_home} prefect server start")
