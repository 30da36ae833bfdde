"""Write BANKING77 as attnops splits, with intents held out as out-of-scope.

BANKING77 (../shared/data/banking77, CC-BY-4.0) has a train and a test file. This carves a
stratified validation split from train (seeded), holds `--held-out` intents out of training
(their queries stay in validation and test, labelled `out_of_scope`) and writes a spec with
only the data section, so the rest is attnops' defaults, and one with the demo spec's recipe:

    .venv/bin/python benchmarks/banking77_splits.py --out data/banking77
    .venv/bin/attnops train --spec data/banking77/spec.yaml              # the defaults
    .venv/bin/attnops train --spec data/banking77/spec-demo-recipe.yaml  # the demo's recipe
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
OUT_OF_SCOPE = "out_of_scope"


def write_splits(
    source: Path, out: Path, *, held_out: int, validation_share: float, seed: int
) -> dict[str, int]:
    """Write train/validation/test CSVs and `spec.yaml` to `out`; return the row counts."""
    train = pd.read_csv(source / "train.csv")
    test = pd.read_csv(source / "test.csv")
    rng = np.random.default_rng(seed)
    intents = sorted(train["category"].unique())
    held = set(rng.choice(intents, size=held_out, replace=False)) if held_out else set()

    validation_rows = (
        train.groupby("category", group_keys=False)
        .sample(frac=validation_share, random_state=seed)
        .index
    )
    splits = {
        "train": train.drop(index=validation_rows),
        "validation": train.loc[validation_rows],
        "test": test,
    }
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, frame in splits.items():
        frame = frame.rename(columns={"category": "intent"}).copy()
        is_held = frame["intent"].isin(held)
        if name == "train":
            frame = frame[~is_held]
        else:
            frame.loc[is_held, "intent"] = OUT_OF_SCOPE
        frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        frame.to_csv(out / f"{name}.csv", index=False)
        counts[name] = len(frame)
    spec = [
        "# BANKING77 with only the data section written: everything else is attnops' defaults.",
        "name: banking77",
        "data:",
        f"  train: {out / 'train.csv'}",
        f"  validation: {out / 'validation.csv'}",
        f"  test: {out / 'test.csv'}",
        "  text_column: text",
        "  label_column: intent",
        f"  out_of_scope_label: {OUT_OF_SCOPE}",
        "",
    ]
    (out / "spec.yaml").write_text("\n".join(spec))
    demo_recipe = [
        "# BANKING77 with the demo spec's training recipe (configs/support-tickets.yaml).",
        "name: banking77-demo-recipe",
        *spec[2:-1],
        "training:",
        "  epochs: 2",
        "  learning_rate: 1.0e-4",
        "  head_learning_rate: 2.0e-3",
        "  freeze_embeddings: true",
        "",
    ]
    (out / "spec-demo-recipe.yaml").write_text("\n".join(demo_recipe))
    (out / "held_out_intents.txt").write_text("\n".join(sorted(held)) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=Path("data/banking77"))
    parser.add_argument("--held-out", type=int, default=10, help="intents held out as OOS")
    parser.add_argument("--validation-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.source / "train.csv").is_file():
        raise SystemExit(f"BANKING77 not found in {args.source}; see ../shared/data/README.md")
    counts = write_splits(
        args.source,
        args.out.resolve(),
        held_out=args.held_out,
        validation_share=args.validation_share,
        seed=args.seed,
    )
    print(f"wrote {counts} and spec.yaml to {args.out}")


if __name__ == "__main__":
    main()
