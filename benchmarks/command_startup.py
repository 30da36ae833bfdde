"""How long do the one-shot commands an operator types during an incident take, and why?

Times `attnops rollback` and `attnops monitor` as the command line runs them (a fresh Python
process each), next to the time of the work itself (the same call inside this already
warm process), and `python -c "import attnops.flows.cli"` for the bare start:

    .venv/bin/python benchmarks/command_startup.py            # builds the home once, ~1 min
    .venv/bin/python benchmarks/command_startup.py --rebuild
    .venv/bin/python benchmarks/command_startup.py --baseline /tmp/attnops-main

`--baseline` names another checkout (e.g. `git worktree add /tmp/attnops-main main`): each
command then also runs from it, right after this checkout's, on the same home, so the two
are compared under the same load (on a shared 2-core machine one absolute figure says
little).

Each command runs twice: with no PREFECT_API_URL (a flow then starts a temporary Prefect
server in the process) and with PREFECT_API_URL pointing at a `prefect server start` that
this script keeps running, as README "Running commands by hand" recommends. Between runs
the aliases go back to champion v2 / previous v1 and the monitoring runs are deleted, so
every run does the same work (a rollback; a monitoring pass over a fresh window).

The home (`--home`, default .attnops/bench-startup) is the smallest that lets both commands
do their real work: a tiny 2-layer random BERT trained twice through the `train` flow on
demo tickets, both gated, v1 released as the first champion, then v2 made champion with v1
as `previous` (a canary release would need live traffic for its window; this is about
start-up), and one monitoring window of `--window` requests answered by the real server and
written to its inference log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's attnops, here and in the timed commands
NAME = "bench-startup"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=".attnops/bench-startup", type=Path)
    parser.add_argument("--window", type=int, default=500, help="requests in the window")
    parser.add_argument("--rebuild", action="store_true", help="build the home anew")
    parser.add_argument("--baseline", type=Path, help="another checkout to time side by side")
    args = parser.parse_args()
    home = args.home.resolve()
    if args.rebuild and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    # This process and its children share one home; the user's servers stay out of it.
    os.environ["ATTNOPS_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "ATTNOPS_PUSHGATEWAY_URL"):
        os.environ.pop(name, None)
    from attnops.settings import configure_process_env

    configure_process_env(home)
    spec_path = home / "spec.yaml"
    with prefect_server(home) as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # for the build and the in-process work
        if not (home / "built.json").is_file():
            build_home(home, spec_path, window=args.window)
        print(f"home: {home} ({json.loads((home / 'built.json').read_text())})", flush=True)
        rows = measure(spec_path, api_url, args.baseline)
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # while the server still answers
    print(f"\n{'what':<52}{'wall s':>8}")
    for what, seconds in rows:
        print(f"{what:<52}{seconds:>8.1f}")
    print(f"\n{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(home: Path):
    """`prefect server start` on a free port, as an operator keeps one; yields its API URL."""
    port = free_port()
    prefect = Path(sys.executable).with_name("prefect")
    log = (home / "prefect-server.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # Its own database: the commands timed without PREFECT_API_URL start temporary servers
    # on PREFECT_HOME's, and two servers must not share one SQLite file.
    env["PREFECT_HOME"] = str(home / "prefect-server")
    process = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/api"
    started = time.perf_counter()
    try:
        import httpx

        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 180:
                raise RuntimeError(f"prefect server did not start; see {log.name}")
            time.sleep(0.5)
        print(f"prefect server start: ready in {time.perf_counter() - started:.1f} s", flush=True)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def tiny_spec(data_dir: Path, window: int, port: int) -> dict:
    """A 2-layer random BERT (as tests/conftest.py's tiny_spec_dict) with limits opened up."""
    return {
        "name": NAME,
        "model": {
            "max_length": 48,
            "config_overrides": {
                "num_hidden_layers": 2,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "intermediate_size": 64,
            },
        },
        "data": {
            "train": str(data_dir / "train.csv"),
            "validation": str(data_dir / "validation.csv"),
            "test": str(data_dir / "test.csv"),
            "text_column": "text",
            "label_column": "intent",
            "slice_columns": ["channel"],
            "out_of_scope_label": "out_of_scope",
        },
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 0},
        "evaluation": {"latency_samples": 5, "probe_size": 8, "embedding_dim": 8},
        "gate": {  # a random tiny model: the gate must let it through, this is about start-up
            "min_macro_f1": 0.0,
            "max_ece": 1.0,
            "max_unsupported_assertion_rate": 1.0,
            "max_latency_ms_p95": 10_000,
            "max_latency_ms_p99": 10_000,
            "max_latency_increase": 10.0,
            "min_baseline_margin": None,
        },
        "monitoring": {"window_size": window},
        "serving": {"port": port, "max_batch_wait_ms": 2.0},
    }


def build_home(home: Path, spec_path: Path, *, window: int) -> None:
    from attnops.demo.tickets import write_demo_dataset
    from attnops.demo.traffic import simulate, wait_for_log
    from attnops.flows.gate import gate
    from attnops.flows.release import release
    from attnops.flows.train import train
    from attnops.models import aliases, registry
    from attnops.settings import Settings

    started = time.perf_counter()
    data_dir = home / "data"
    write_demo_dataset(data_dir, seed=0, n_train=360, n_validation=120, n_test=400)
    spec_path.write_text(yaml.safe_dump(tiny_spec(data_dir, window, free_port())))
    path = str(spec_path)
    for _ in range(2):
        version = train(path).version
        if not gate(path, candidate=version).passed:
            raise RuntimeError(f"v{version} did not pass the opened-up gate")
    release(path, candidate="1")  # the first champion
    client = registry.client_for(Settings.from_env())
    aliases.promote(client, NAME, "2")  # champion v2, previous v1
    with running_server(path) as url:
        result = simulate(url, scenario="normal", n=window, seed=1, label_share=0.3)
        wait_for_log(url)
    print(f"traffic: {result.summary()}")
    seconds = time.perf_counter() - started
    (home / "built.json").write_text(json.dumps({"window": window, "build_s": round(seconds)}))


@contextmanager
def running_server(spec_path: str):
    """The inference app under uvicorn in a thread, as tests/integration/serving_fixtures."""
    import uvicorn

    from attnops.serving.app import create_app
    from attnops.settings import Settings
    from attnops.spec import load_spec

    spec = load_spec(spec_path)
    os.environ.setdefault(spec.serving.admin_token_env, "bench-admin-token")
    app = create_app(spec, Settings.from_env())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=spec.serving.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.1)
    try:
        yield spec.serving.url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def reset(spec_path: Path) -> None:
    """Champion v2, previous v1, no monitoring runs: every timed command does the same work."""
    from attnops.models import aliases, registry
    from attnops.settings import Settings

    client = registry.client_for(Settings.from_env())
    client.set_registered_model_alias(NAME, aliases.CHAMPION, "2")
    client.set_registered_model_alias(NAME, aliases.PREVIOUS, "1")
    found = client.get_experiment_by_name(f"{NAME}-monitoring")
    if found is not None:
        for run in client.search_runs([found.experiment_id]):
            client.delete_run(run.info.run_id)


def command(args: list[str], *, api_url: str | None, root: Path = ROOT) -> float:
    """Wall seconds of one `attnops ...` in a fresh process; fails loudly on a failed command."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], env=env, cwd=root, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def measure(spec_path: Path, api_url: str, baseline: Path | None) -> list[tuple[str, float]]:
    cli = ["-m", "attnops.flows.cli"]
    spec = ["--spec", str(spec_path)]
    roots = [(ROOT, "")] + ([(baseline.resolve(), ", baseline")] if baseline else [])
    rows = []
    for root, tag in roots:
        seconds = command(["-c", "import attnops.flows.cli"], api_url=None, root=root)
        rows.append((f"python -c 'import attnops.flows.cli'{tag}", seconds))
    for label, url in (("temporary Prefect server", None), ("PREFECT_API_URL set", api_url)):
        for name in ("rollback", "monitor"):
            for root, tag in roots:
                reset(spec_path)
                seconds = command([*cli, name, *spec], api_url=url, root=root)
                rows.append((f"attnops {name} ({label}{tag})", seconds))
                print(f"{rows[-1][0]}: {seconds:.1f} s", flush=True)
    rows.extend(work_in_process(spec_path))
    return rows


def work_in_process(spec_path: Path) -> list[tuple[str, float]]:
    """The same two commands called inside this warm process: the work without the start."""
    from attnops.flows.monitor import monitor
    from attnops.flows.rollback import rollback
    from attnops.settings import Settings
    from attnops.spec import load_spec

    path = str(spec_path)
    reset(spec_path)
    monitor(path)  # warm: first flow call of this process, lazy imports inside the work
    rows = []
    reset(spec_path)
    started = time.perf_counter()
    rollback(load_spec(path), Settings.from_env())
    rows.append(("rollback, in a warm process (the work)", time.perf_counter() - started))
    reset(spec_path)
    started = time.perf_counter()
    status = monitor(path)["status"]
    rows.append((f"monitor, in a warm process (the work; {status})", time.perf_counter() - started))
    return rows


if __name__ == "__main__":
    main()
