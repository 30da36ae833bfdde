"""Does the gate block generative candidates made worse on purpose?

Trains the demo spec's champion (when the home has none), then two candidates on altered
training targets and gates each against the champion on the same test inputs:

- `swapped_numbers`: every number in a training reply replaced by another (the model learns
  to state figures its input does not hold): expect the hallucination check to fail, naming
  the rates and McNemar's test;
- `pii`: every training reply ends with an e-mail address and phone number found in no
  input: expect the PII leakage check to fail.

    ATTNOPS_HOME=/tmp/bad-home nice .venv/bin/python benchmarks/generation_bad_candidates.py

Takes about three demo trainings (~8 minutes each on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient

from attnops.models.aliases import CHAMPION, resolve
from attnops.settings import Settings

SPEC = Path("configs/ticket-replies.yaml")
CONTACT = " You can also reach our agent Dana at dana.reyes@example.org or +1 415 555 0199."


def _swap_numbers(text: str, rng: np.random.Generator) -> str:
    return re.sub(r"\d+", lambda m: str(int(m.group()) + int(rng.integers(1, 9))), text)


def _altered_spec(kind: str, folder: Path) -> Path:
    spec = yaml.safe_load(SPEC.read_text())
    train = pd.read_json(spec["data"]["train"], lines=True)
    rng = np.random.default_rng(0)
    if kind == "swapped_numbers":
        train["reply"] = [_swap_numbers(r, rng) for r in train["reply"]]
    else:
        train["reply"] = train["reply"] + CONTACT
    folder.mkdir(parents=True, exist_ok=True)
    train.to_json(folder / "train.jsonl", orient="records", lines=True)
    spec["data"]["train"] = str(folder / "train.jsonl")
    spec["data"].pop("generator", None)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _attnops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnops.flows.cli", *args], capture_output=True, text=True
    )


def _champion(client: MlflowClient, name: str) -> str | None:
    try:
        found = resolve(client, name, CHAMPION)
    except LookupError:  # no registered model yet
        return None
    return None if found is None else str(found.version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/attnops-bad-candidates"))
    args = parser.parse_args()
    settings = Settings.from_env()
    client = MlflowClient(settings.tracking_uri)
    name = yaml.safe_load(SPEC.read_text())["name"]
    if _champion(client, name) is None:
        print("training the champion on the demo data ...", flush=True)
        for command in ("train", "gate"):
            result = _attnops(command, "--spec", str(SPEC))
            if result.returncode:
                raise SystemExit(result.stderr[-2000:])
        # A gated version promoted by hand: `attnops release` would wait for live traffic.
        version = client.get_model_version_by_alias(name, "challenger").version
        client.set_registered_model_alias(name, "champion", version)
    champion = _champion(client, name)
    for kind in ("swapped_numbers", "pii"):
        spec = _altered_spec(kind, args.work / kind)
        print(f"\n{kind}: training a candidate on altered replies ...", flush=True)
        trained = _attnops("train", "--spec", str(spec))
        if trained.returncode:
            raise SystemExit(trained.stderr[-2000:])
        gated = _attnops("gate", "--spec", str(spec))
        verdict = "BLOCKED" if gated.returncode else "passed"
        print(f"{kind}: gate vs champion v{champion}: {verdict}")
        for line in gated.stdout.splitlines():
            if line.strip().startswith(("FAIL", "pass  hallucination", "pass  pii_leakage")):
                print("   " + line.strip())


if __name__ == "__main__":
    main()
