"""Data-parallel training: two gloo processes on CPU take the same steps as one process."""

import contextlib
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from attnops.models.batching import encode
from attnops.models.classifier import train_classifier
from attnops.models.data import TEXT, load_labelled_data
from attnops.models.modeling import build_classifier
from attnops.models.train import fine_tune
from attnops.spec import ModelSpec, PipelineSpec, TrainingSpec
from tests.conftest import TINY_BERT, tiny_spec_dict

CPU = torch.device("cpu")
# Dropout off: each rank draws masks for its own share, not the slices of the masks one
# process would draw, so only a dropout-free run can match exactly.
NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# 71 examples in global micro-batches of 15 (8/7 per rank) and one of 11 (6/5); with
# accumulation 2 the epoch's fifth micro-batch is a group of its own: 3 steps an epoch.
# fp32: the comparisons below are at fp32 tolerances (bf16 rounding differs by batch shape).
CFG = TrainingSpec(epochs=2, batch_size=15, grad_accum_steps=2, learning_rate=3e-3,
                   warmup_ratio=0.0, early_stopping_patience=None, seed=3,
                   bf16=False)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread_each():
    """Two ranks share the cores: one thread each (as torchrun sets), the reference too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _demo_train(tokenizer, demo_dir, n=71):
    data = load_labelled_data(PipelineSpec.model_validate(tiny_spec_dict(demo_dir)).data)
    frame = data.in_scope("train").head(n)
    return encode(tokenizer, frame[TEXT].tolist(), 32, data.label_ids(frame)), data.label_names


def _model(labels, seed):
    torch.manual_seed(seed)
    return build_classifier(ModelSpec(config_overrides=NO_DROPOUT), labels)


def _rank_worker(rank, world, store, encoded, labels, out, resume=False):
    """One of `world` processes: join the group, fine-tune, log to out/rankN/output.txt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    folder = out / f"rank{rank}"
    folder.mkdir(exist_ok=True)
    try:
        with (
            open(folder / "output.txt", "w") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            # Rank 1 starts from other weights: DDP must hand it rank 0's.
            model = _model(labels, seed=rank)
            fine_tune(model, encoded, encoded, CFG, pad_id=0, device=CPU,
                      checkpoint_dir=folder / "checkpoints", resume=resume,
                      progress=True)  # fmt: skip
    finally:
        dist.destroy_process_group()


def _fork_ranks(*args) -> None:
    # Forked, not spawned: the ranks inherit this process's imports, which take seconds.
    mp.start_processes(_rank_worker, args=args, nprocs=2, start_method="fork")


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


@pytest.mark.slow
def test_two_processes_take_the_same_steps_as_one(tokenizer, demo_dir, tmp_path):
    """Global batch 15 over 2 ranks (uneven shards, accumulation) == batch 15 in 1 process."""
    encoded, labels = _demo_train(tokenizer, demo_dir)
    single = _model(labels, seed=0)
    result = fine_tune(single, encoded, encoded, CFG, pad_id=0, device=CPU,
                       checkpoint_dir=tmp_path / "single", progress=False)  # fmt: skip
    assert result.optimizer_steps == 6
    _fork_ranks(2, tmp_path / "store", encoded, labels, tmp_path)

    two = load_file(tmp_path / "rank0" / "checkpoints" / "last" / "model.safetensors")
    one = load_file(tmp_path / "single" / "last" / "model.safetensors")
    diff = _max_diff(two, one)
    print(f"max abs weight difference, 2 processes vs 1: {diff:.2e}")
    assert diff < 1e-4
    moved = _max_diff(one, _model(labels, 0).state_dict())
    assert moved > 1e-2, "the weights must have trained for the comparison to mean anything"

    # Only rank 0 logs (run card, progress bar) and writes checkpoints.
    rank0 = (tmp_path / "rank0" / "output.txt").read_text()
    assert "run card:" in rank0 and "processes=2" in rank0 and "fine-tune" in rank0
    assert (tmp_path / "rank1" / "output.txt").read_text() == ""
    assert not (tmp_path / "rank1" / "checkpoints").exists()


class Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_two_processes_resume_a_one_process_checkpoint(tokenizer, demo_dir, tmp_path):
    """Checkpoints do not depend on the world size; rank 0 hands the state to rank 1."""
    encoded, labels = _demo_train(tokenizer, demo_dir)
    fine_tune(_model(labels, seed=0), encoded, encoded, CFG, pad_id=0, device=CPU,
              checkpoint_dir=tmp_path / "reference", progress=False)  # fmt: skip

    def crash_at_step_4(step, _metrics):
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        fine_tune(_model(labels, seed=0), encoded, encoded, CFG, pad_id=0, device=CPU,
                  checkpoint_dir=tmp_path / "run" / "rank0" / "checkpoints",
                  on_step=crash_at_step_4, progress=False)  # fmt: skip
    _fork_ranks(2, tmp_path / "store", encoded, labels, tmp_path / "run", True)

    rank0 = (tmp_path / "run" / "rank0" / "output.txt").read_text()
    assert "resumed_at_step=3" in rank0 and "processes=2" in rank0
    assert (tmp_path / "run" / "rank1" / "output.txt").read_text() == ""
    resumed = load_file(tmp_path / "run" / "rank0" / "checkpoints" / "last" / "model.safetensors")
    reference = load_file(tmp_path / "reference" / "last" / "model.safetensors")
    assert _max_diff(resumed, reference) < 1e-4


@pytest.mark.slow
def test_the_train_step_launches_torchrun_and_gets_the_model_back(
    tokenizer, demo_dir, tmp_path, capfd
):
    """What the train flow calls: a spec asking for 2 processes trains under torchrun."""
    raw = tiny_spec_dict(demo_dir, epochs=1, max_steps=4, batch_size=16)
    raw["model"]["config_overrides"] = NO_DROPOUT
    raw["training"]["bf16"] = False  # compared at fp32 tolerance below
    one = PipelineSpec.model_validate(raw)
    raw["training"]["distributed"] = {"nproc_per_node": 2, "backend": "auto"}
    two = PipelineSpec.model_validate(raw)
    data = load_labelled_data(one.data)

    launched = train_classifier(two, data, checkpoint_dir=tmp_path / "ckpt", progress=False)
    output = capfd.readouterr().out
    local = train_classifier(one, data, progress=False)

    assert output.count("run card:") == 1 and "processes=2" in output
    assert launched.result.optimizer_steps == 4 and launched.result.run_card["processes"] == 2
    assert (tmp_path / "ckpt" / "last" / "model.safetensors").is_file()
    assert launched.temperature == pytest.approx(local.temperature, rel=1e-3)
    diff = _max_diff(launched.model.state_dict(), local.model.state_dict())
    print(f"max abs weight difference, torchrun x2 vs 1 process: {diff:.2e}")
    assert diff < 1e-4
    assert output.count("calibration: temperature") == 1


def test_spec_rejects_a_batch_smaller_than_the_processes(demo_dir):
    raw = tiny_spec_dict(demo_dir, batch_size=2, distributed={"nproc_per_node": 4})
    with pytest.raises(ValueError, match="at least 4"):
        PipelineSpec.model_validate(raw)
    raw = tiny_spec_dict(demo_dir, distributed={"nnodes": 2})
    with pytest.raises(ValueError, match="master_addr"):
        PipelineSpec.model_validate(raw)


def test_multi_node_command_puts_the_flow_on_node_0(demo_dir):
    from attnops.models.torchrun_launch import torchrun_command

    raw = tiny_spec_dict(demo_dir, distributed={"nproc_per_node": 4, "nnodes": 2,
                                                "master_addr": "10.0.0.5"})  # fmt: skip
    training = PipelineSpec.model_validate(raw).training
    here = torchrun_command(training, job_dir=demo_dir)
    assert {"--nnodes=2", "--node_rank=0", "--master_addr=10.0.0.5", "--nproc_per_node=4",
            f"--job={demo_dir}"} <= set(here)  # fmt: skip
    others = torchrun_command(training, node_rank=None)
    assert "--node_rank=NODE_RANK" in others and not any(a.startswith("--job") for a in others)


def test_a_failed_launch_says_so(capfd):
    from attnops.models.torchrun_launch import _run

    with pytest.raises(RuntimeError, match="exit code 3"):
        _run([sys.executable, "-c", "print('worker output'); raise SystemExit(3)"])
    assert "worker output" in capfd.readouterr().out
