"""One torchrun worker of the fine-tune step: what `torchrun_launch` starts with `-m`.

Rank 0 reads the job written by `torchrun_launch.train_with_torchrun` and hands it to the
other ranks, every rank runs `train_classifier`, and rank 0 saves the trained model back.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from attnops.models import distributed
from attnops.models.classifier import train_classifier
from attnops.models.torchrun_launch import JOB_FILE, OUTPUT, save_output


def main(argv: list[str] | None = None) -> None:
    """One torchrun worker: join the group, get the job from rank 0, train, rank 0 saves."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--job", type=Path, help="job folder (read by rank 0 only)")
    parser.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args(argv)
    with distributed.process_group(args.backend, args.device, args.timeout_s) as world:
        if world.is_main and args.job is None:
            parser.error("rank 0 needs --job (written by the train flow)")
        payload = pickle.loads((args.job / JOB_FILE).read_bytes()) if world.is_main else None
        payload = distributed.broadcast_from_main(payload, world)
        trained = train_classifier(
            payload["spec"],
            payload["data"],
            checkpoint_dir=payload["checkpoint_dir"],
            resume=payload["resume"],
            progress=payload["progress"],
        )
        if world.is_main:
            save_output(trained, args.job / OUTPUT)


if __name__ == "__main__":
    main()
