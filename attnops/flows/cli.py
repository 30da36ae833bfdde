"""The `attnops` command line: each command runs a flow and prints where its results are.

Failures end with one line naming the reason and a non-zero exit code; `--debug` adds
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import traceback
from pathlib import Path

from attnops.flows.console import (
    StartupFailureFilter,
    Terminated,
    quiet_tracebacks,
    unwind_on_sigterm,
)
from attnops.models.aliases import CHALLENGER
from attnops.settings import Settings, configure_process_env
from attnops.spec import DEFAULT_SPEC

# Which services each command needs checked before it starts (see attnops/flows/preflight.py).
NEEDS_TRACKING = {"train", "gate", "release", "rollback", "serve", "monitor", "retrain", "ci"}
NEEDS_PREFECT = {"train", "gate", "release", "monitor", "retrain", "deploy", "ci", "demo"}


def build_parser() -> argparse.ArgumentParser:
    """The `attnops` parser with every command and its options."""
    parser = argparse.ArgumentParser(prog="attnops", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "--spec", default=DEFAULT_SPEC, help=f"pipeline spec (default {DEFAULT_SPEC})"
        )
        return sub

    command("train", "fine-tune, evaluate and register a version").add_argument(
        "--resume", action="store_true", help="continue an interrupted run"
    )
    command(
        "gate", "decide whether the challenger may go to canary (exit 0 only on pass)"
    ).add_argument(
        "--version", default=CHALLENGER, help=f"version number or alias (default: {CHALLENGER})"
    )
    command(
        "release", "canary a gated version, observe live traffic, promote or roll back"
    ).add_argument(
        "--version", default=CHALLENGER, help=f"version number or alias (default: {CHALLENGER})"
    )
    command("rollback", "make the previous champion the champion again")
    serve = command("serve", "run the inference service (champion + canary)")
    serve.add_argument("--host", help="default: serving.host")
    serve.add_argument("--port", type=int, help="default: serving.port")
    command("monitor", "judge the latest champion window; emit a drift event on alarm")
    command("retrain", "retrain on new labelled traffic (guarded), gate and release").add_argument(
        "--event-id", help="the drift event that asked for it"
    )
    command("deploy", "register the Prefect deployments of prefect.yaml").add_argument(
        "--work-pool", default="attnops", help="process work pool (default attnops)"
    )
    traffic = command("traffic", "send simulated tickets to the running server")
    traffic.add_argument("--scenario", default="normal", help="normal or a drift scenario")
    traffic.add_argument("--requests", type=int, default=500)
    traffic.add_argument("--concurrency", type=int, default=8)
    traffic.add_argument("--label-share", type=float, default=0.5)
    traffic.add_argument("--seed", type=int, default=0)
    command(
        "labels",
        "record labels that arrived later (CSV/JSONL: request_id,label; for a generation "
        "spec request_id,reference: the corrected reply)",
    ).add_argument("--file", required=True)
    ci = command("ci", "CI: gate a CI-budget build (pull_request) or train+gate+release (push)")
    ci.add_argument("--event", required=True, choices=("pull_request", "push"))
    ci.add_argument("--summary", help="write the markdown summary (the PR comment) here")
    command("demo", "the whole loop on the embedded defaults, in a few minutes").add_argument(
        "--regenerate", action="store_true", help="rewrite the demo data files"
    )
    command(
        "spec", "validate a spec and print it resolved (YAML), defaults filled in"
    ).add_argument(
        "--schema", action="store_true", help="print the JSON schema of every spec instead"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "spec":
        return _spec(args)
    if args.command == "demo":
        from attnops.flows.demo import use_demo_home

        use_demo_home()
    started = time.perf_counter()
    previous_sigterm = unwind_on_sigterm()
    try:
        # Before configure_process_env, which creates Prefect's folder: a command refused
        # here leaves nothing behind.
        _preflight(args)
        configure_process_env()
        if args.command in NEEDS_PREFECT:
            quiet_tracebacks(show=args.debug)
        ok = _run(args)
    except KeyboardInterrupt:
        print(f"attnops {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"attnops {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except Exception as exc:  # one line for the user; the traceback on request
        if args.debug:
            traceback.print_exc()
        reason = str(exc).strip().replace("\n", " ") or type(exc).__name__
        if isinstance(exc, _BUGS):  # no message meant for a user: "failed: 1" says nothing
            reason = f"unexpected {type(exc).__name__}: {reason} (a bug: rerun with --debug for "
            reason += "the traceback and report it)"
        print(f"attnops {args.command} failed: {reason}", file=sys.stderr)
        return 1
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0 if ok is not False else 1


_BUGS = (KeyError, IndexError, AttributeError, TypeError, NameError, AssertionError)
"""Exceptions that no attnops check raises on purpose."""


def _spec(args: argparse.Namespace) -> int:
    """`attnops spec`: reads only the spec module; no services, nothing written."""
    import json

    import yaml

    from attnops.spec import PipelineSpec, SpecError, load_spec

    if args.schema:
        print(json.dumps(PipelineSpec.model_json_schema(), indent=2))
        return 0
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"attnops spec failed: {exc}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _preflight(args: argparse.Namespace) -> None:
    """Fail in seconds on a bad spec, a bad flag or a service that does not answer."""
    from attnops.flows import preflight
    from attnops.spec import load_spec

    load_spec(args.spec)
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port; use 1-65535")
    settings = Settings.from_env()
    if args.command in NEEDS_TRACKING:
        preflight.check_tracking(settings)
    if args.command in NEEDS_PREFECT:
        preflight.check_prefect(settings)


def _run(args: argparse.Namespace) -> bool | None:
    """Run one command; False means a decision said no (gate failed, canary rolled back)."""
    from attnops.spec import load_spec

    spec = load_spec(args.spec)
    settings = Settings.from_env()
    if args.command == "train":
        _train(args.spec, resume=args.resume)
    elif args.command == "gate":
        return _gate(args.spec, args.version)
    elif args.command == "release":
        from attnops.flows.release import release

        outcome = release(args.spec, candidate=args.version)
        print(f"evidence: tags attnops.release*, artifacts release/ on {spec.name}")
        print(f"open the MLflow UI: {settings.mlflow_ui_command()}")
        return bool(outcome["promoted"])
    elif args.command == "rollback":
        _rollback(spec, settings)
    elif args.command == "serve":
        _serve(spec, settings, host=args.host, port=args.port, debug=args.debug)
    elif args.command == "monitor":
        from attnops.flows.monitor import monitor

        result = monitor(args.spec)
        print(f"monitoring: {result['status']}; runs in MLflow experiment {spec.name}-monitoring")
        print(f"open the MLflow UI: {settings.mlflow_ui_command()}")
    elif args.command == "retrain":
        from attnops.flows.retrain import retrain

        result = retrain(args.spec, event_id=args.event_id)
        print(f"retrain: {result['status']}: {result.get('reason', '')}")
        return result["status"] in ("promoted", "skipped")
    elif args.command == "deploy":
        from attnops.flows.deploy import deploy

        names = deploy(args.spec, work_pool=args.work_pool)
        print(f"deployments: {', '.join(names)}")
        print(f"run them with a worker: prefect worker start --pool {args.work_pool}")
    elif args.command == "traffic":
        from attnops.demo.traffic import simulate

        result = simulate(
            spec.serving.url,
            scenario=args.scenario,
            n=args.requests,
            seed=args.seed,
            concurrency=args.concurrency,
            label_share=args.label_share,
        )
        print(result.summary())
        return result.errors == 0
    elif args.command == "labels" and spec.task == "generation":
        from attnops.serving.generation_log_reader import GenerationLogReader

        count = GenerationLogReader(settings.inference_db).load_references_file(args.file)
        print(f"{count} reference replies recorded in {settings.inference_db}")
    elif args.command == "labels":
        from attnops.serving.log_reader import LogReader

        classes = _classes_of_version(spec, settings)
        count = LogReader(settings.inference_db).load_labels_file(args.file, classes)
        print(f"{count} labels recorded in {settings.inference_db}")
    elif args.command == "ci":
        from attnops.flows.ci import run_ci

        return run_ci(args.spec, event=args.event, summary_path=args.summary)
    else:
        from attnops.flows.demo import run_demo

        run_demo(args.spec, regenerate=args.regenerate)
    return None


def _classes_of_version(spec, settings: Settings):
    """version -> its classes (tag attnops.labels) and the out-of-scope label; None: unknown."""
    import json
    from functools import cache

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return lambda version: None  # no registry yet: do not create one as a side effect

    @cache  # asked only for versions that answered a labelled request
    def classes(version: str) -> set[str] | None:
        client = MlflowClient(settings.tracking_uri)  # not models.registry: no torch import
        try:
            tags = client.get_model_version(spec.name, version).tags
        except MlflowException:
            return None
        if "attnops.labels" not in tags:
            return None
        return set(json.loads(tags["attnops.labels"])) | {spec.data.out_of_scope_label} - {None}

    return classes


def _rollback(spec, settings: Settings) -> None:
    from attnops.flows.rollback import rollback  # MLflow only: no Prefect, no model stack

    restored, replaced = rollback(spec, settings)
    print(f"{spec.name}: champion is v{restored} again (v{replaced} rolled back)")
    print(f"open the MLflow UI: {settings.mlflow_ui_command()}")


def _serve(spec, settings: Settings, *, host: str | None, port: int | None, debug: bool) -> None:
    import uvicorn

    from attnops.serving.app import create_app

    serving = spec.serving.model_copy(
        update={"host": host or spec.serving.host, "port": port or spec.serving.port}
    )
    spec = spec.model_copy(update={"serving": serving})
    print(f"inference log: {settings.inference_db}; metrics: {serving.url}/metrics")
    app = create_app(spec, settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host=serving.host, port=serving.port, log_level="warning")
    )
    # uvicorn logs a failed start-up (no champion, a refused version, an unwritable log) as
    # a traceback and exits 3; the CLI says it in one line instead, traceback on --debug.
    uvicorn_log = logging.getLogger("uvicorn.error")
    quiet = StartupFailureFilter(app)
    if not debug:
        uvicorn_log.addFilter(quiet)
    try:
        server.run()
    except SystemExit:  # uvicorn's way to end a failed start-up
        if app.state.startup_error is not None:
            raise app.state.startup_error from None
        raise RuntimeError(
            f"the server did not start on {serving.url} (see the line above); "
            "pick another --port or stop what holds it"
        ) from None
    finally:
        uvicorn_log.removeFilter(quiet)


def _train(spec_path: str, *, resume: bool):
    from attnops.flows.train import train  # imports Prefect: only after the env is set
    from attnops.models.task_family import family_for
    from attnops.spec import load_spec

    version = train(spec_path, resume=resume)
    settings = Settings.from_env()
    m = version.metrics
    print(f"\nregistered {version.model_uri} (alias {CHALLENGER}, run {version.run_id})")
    rows = family_for(load_spec(spec_path)).headline(m)
    for label, value in rows:
        if value is not None:
            print(f"  {label:<32}{value:>10.3f}")
    print(f"tokenizer sha256: {version.tags['attnops.tokenizer_sha256']}")
    print(f"open the MLflow UI: {settings.mlflow_ui_command()}")
    return version


def _gate(spec_path: str, version: str) -> bool:
    from attnops.flows.gate import gate
    from attnops.spec import load_spec

    spec = load_spec(spec_path)
    decision = gate(spec_path, candidate=version)
    settings = Settings.from_env()
    verdict = "passed" if decision.passed else "FAILED"
    print(f"\ngate {verdict} for {spec.name} v{decision.candidate}", end="")
    print(f" vs champion v{decision.champion}" if decision.champion else " (no champion)")
    for check in decision.checks:
        print(f"  {'pass' if check.passed else 'FAIL':<6}{check.name:<24}{check.reason}")
    print(f"evidence: tags attnops.gate*, artifacts gate/ on {spec.name} v{decision.candidate}")
    print(f"open the MLflow UI: {settings.mlflow_ui_command()}")
    if not decision.passed:
        print(f"attnops gate: failed: {decision.reasons()}", file=sys.stderr)
    return decision.passed


if __name__ == "__main__":
    sys.exit(main())
