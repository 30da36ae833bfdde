"""The `attnops` command line: each command runs a flow and prints where its results are.

Failures end with one line naming the reason and a non-zero exit code; `--debug` adds
the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from attnops.settings import Settings, configure_process_env

DEFAULT_SPEC = "configs/support-tickets.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnops", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune, evaluate and register a version")
    train.add_argument(
        "--spec", default=DEFAULT_SPEC, help=f"pipeline spec (default {DEFAULT_SPEC})"
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")

    gate = commands.add_parser(
        "gate", help="decide whether the challenger may go to canary (exit 0 only on pass)"
    )
    gate.add_argument(
        "--spec", default=DEFAULT_SPEC, help=f"pipeline spec (default {DEFAULT_SPEC})"
    )
    gate.add_argument(
        "--version",
        default="challenger",
        help="version number or alias to gate (default: the challenger)",
    )

    demo = commands.add_parser(
        "demo", help="generate the demo data, train and gate the first version"
    )
    demo.add_argument(
        "--spec", default=DEFAULT_SPEC, help=f"pipeline spec (default {DEFAULT_SPEC})"
    )
    demo.add_argument("--regenerate", action="store_true", help="rewrite the demo data files")

    args = parser.parse_args(argv)
    configure_process_env()
    started = time.perf_counter()
    try:
        if args.command == "train":
            _train(args.spec, resume=args.resume)
        elif args.command == "gate":
            if not _gate(args.spec, args.version):
                return 1
        else:
            _demo(args.spec, regenerate=args.regenerate)
    except KeyboardInterrupt:
        print(f"attnops {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the traceback on request
        if args.debug:
            traceback.print_exc()
        reason = str(exc).strip() or type(exc).__name__
        print(f"attnops {args.command} failed: {reason}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _train(spec_path: str, *, resume: bool):
    from attnops.spec import load_spec

    load_spec(spec_path)  # fail in a second on a bad spec, before Prefect starts a server
    from attnops.flows.train import train  # imports Prefect: only after the env is set

    version = train(spec_path, resume=resume)
    settings = Settings.from_env()
    m = version.metrics
    print(f"\nregistered {version.model_uri} (alias challenger, run {version.run_id})")
    rows = [
        ("test macro-F1", m["test_macro_f1"]),
        ("TF-IDF baseline macro-F1", m.get("baseline_macro_f1")),
        ("calibration error (ECE)", m["test_ece"]),
        ("unsupported assertion rate", m.get("unsupported_assertion_rate")),
        ("latency p95 at batch 1 (ms)", m["latency_ms_p95"]),
        ("heads collapsed by fine-tuning", m["attention_collapsed_heads"]),
    ]
    for label, value in rows:
        if value is not None:
            print(f"  {label:<32}{value:>10.3f}")
    print(f"tokenizer sha256: {version.tags['attnops.tokenizer_sha256']}")
    print(f"open the MLflow UI: {settings.mlflow_ui_command()}")
    return version


def _gate(spec_path: str, version: str) -> bool:
    from attnops.spec import load_spec

    spec = load_spec(spec_path)
    from attnops.flows.gate import gate

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


def _demo(spec_path: str, *, regenerate: bool) -> None:
    from attnops.demo.tickets import write_demo_dataset
    from attnops.spec import load_spec

    spec = load_spec(spec_path)
    paths = [Path(spec.data.train), Path(spec.data.validation), Path(spec.data.test)]
    if regenerate or not all(p.is_file() for p in paths):
        folder = paths[0].parent
        written = write_demo_dataset(
            folder, seed=spec.training.seed, fmt=paths[0].suffix.lstrip(".")
        )
        missing = [p for p in paths if p not in written.values()]
        if missing:
            raise ValueError(
                f"{spec_path} points at {missing[0]}, which the demo generator does not write; "
                f"the demo expects data.train/validation/test as {folder}/train|validation|test"
            )
        print(f"demo data written to {folder}/")
    version = _train(spec_path, resume=False)
    print(f"\ngating v{version.version} (the demo's first version: absolute limits)")
    if not _gate(spec_path, version.version):
        raise RuntimeError(f"the demo's v{version.version} did not pass the gate (see above)")


if __name__ == "__main__":
    sys.exit(main())
