"""Launch the fine-tune step under torchrun (DDP), and bring the trained model back.

`train_with_torchrun` (what `train_classifier` calls when the spec asks for more than one
process) writes the job, the spec and the train/validation data, to a scratch folder and runs

    python -m torch.distributed.run --nproc_per_node N --standalone \\
        -m attnops.models.torchrun_entry --job DIR

In the workers, rank 0 reads the job and hands it to the other ranks (so other nodes need
no copy of the data), every rank runs `train_classifier`, and rank 0 saves the trained
model, its `TrainResult` and its calibration temperature to DIR/out (`save_output`), which
`train_with_torchrun` loads: the caller gets the same `TrainedClassifier` as from one process.
The workers' side is `torchrun_entry`; this module does not import `classifier`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

import attnops
from attnops.models.data import LabelledData
from attnops.models.modeling import load_tokenizer, pick_device
from attnops.models.train import TrainedClassifier, TrainResult
from attnops.spec import PipelineSpec, TrainingSpec

ENTRY = "attnops.models.torchrun_entry"
JOB_FILE = "job.pkl"
OUTPUT = "out"


def train_with_torchrun(
    spec: PipelineSpec,
    data: LabelledData,
    *,
    checkpoint_dir: Path | None,
    resume: bool,
    progress: bool = True,
) -> TrainedClassifier:
    """Fine-tune under torchrun as `spec.training.distributed` says; return rank 0's model.

    Raises:
        ValueError: more processes per node than CUDA devices.
        RuntimeError: a worker failed (its traceback is on stderr above).
    """
    training = spec.training
    cfg = training.distributed
    gpus = torch.cuda.device_count()
    if pick_device(training.device).type == "cuda" and cfg.nproc_per_node > gpus:
        raise ValueError(
            f"training.distributed.nproc_per_node is {cfg.nproc_per_node} but this node has "
            f"{gpus} CUDA device(s); use at most {gpus}"
        )
    with tempfile.TemporaryDirectory(prefix="attnops-torchrun-") as scratch:
        job = Path(scratch)
        # Only what training reads: the test split stays out of the job.
        splits = {name: data.splits[name] for name in ("train", "validation")}
        payload = {
            "spec": spec,
            "data": dataclasses.replace(data, splits=splits),
            "checkpoint_dir": checkpoint_dir.resolve() if checkpoint_dir else None,
            "resume": resume,
            "progress": progress,
        }
        (job / JOB_FILE).write_bytes(pickle.dumps(payload))
        command = torchrun_command(training, job_dir=job)
        print(f"fine-tune: {cfg.world_size} processes under torchrun: {' '.join(command)}")
        if cfg.nnodes > 1:
            other = torchrun_command(training, node_rank=None)
            print(f"start nodes 1..{cfg.nnodes - 1} with: {' '.join(other)}")
        _run(command)
        return load_output(job / OUTPUT, spec)


def torchrun_command(
    training: TrainingSpec, *, job_dir: Path | None = None, node_rank: int | None = 0
) -> list[str]:
    """The torchrun command line for one node (node 0 reads the job; `None`: a placeholder)."""
    cfg = training.distributed
    command = [sys.executable, "-m", "torch.distributed.run"]
    command.append(f"--nproc_per_node={cfg.nproc_per_node}")
    if cfg.nnodes == 1:
        command.append("--standalone")  # rendezvous on a free local port
    else:
        rank = "NODE_RANK" if node_rank is None else str(node_rank)
        command += [f"--nnodes={cfg.nnodes}", f"--node_rank={rank}"]
        command += [f"--master_addr={cfg.master_addr}", f"--master_port={cfg.master_port}"]
    command += ["-m", ENTRY, f"--backend={cfg.backend}", f"--device={training.device}"]
    command.append(f"--timeout-s={cfg.timeout_s:g}")
    if job_dir is not None:
        command.append(f"--job={job_dir}")
    return command


def _run(command: list[str]) -> None:
    """Run torchrun, re-printing the workers' stdout (the flow's log) and passing stderr on."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Workers import attnops from the same place as this process, installed or not.
    source = str(Path(attnops.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            for line in proc.stdout:
                print(line, end="")
        except BaseException:
            proc.terminate()  # torchrun stops its workers
            raise
    if proc.returncode != 0:
        raise RuntimeError(
            f"distributed fine-tuning failed (torchrun exit code {proc.returncode}); "
            "the failing worker's traceback is printed above"
        )


def save_output(trained: TrainedClassifier, folder: Path) -> None:
    """What the launching process needs: weights (safetensors), the result, the temperature."""
    trained.model.save_pretrained(folder, safe_serialization=True)
    summary = {"result": dataclasses.asdict(trained.result), "temperature": trained.temperature}
    (folder / "train_result.json").write_text(json.dumps(summary))


def load_output(folder: Path, spec: PipelineSpec) -> TrainedClassifier:
    """The `TrainedClassifier` rank 0 saved, on this process's device."""
    summary = json.loads((folder / "train_result.json").read_text())
    device = pick_device(spec.training.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, attn_implementation="sdpa", dtype=torch.float32
    )
    model.to(device).eval()
    return TrainedClassifier(
        model=model,
        tokenizer=load_tokenizer(spec.model),
        result=TrainResult(**summary["result"]),
        device=device,
        temperature=summary["temperature"],
    )
