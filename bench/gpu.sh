#!/usr/bin/env bash
# The GPU measurement procedure (docs/PERFORMANCE.md, "GPU"): same tools, CUDA and TensorRT
# providers, run from the repository root on a machine with an NVIDIA GPU and its driver.
#
#   bench/gpu.sh                 # CUDA then TensorRT; results in bench/results/gpu-*/
#   MODEL=models/x/1/model.onnx DURATION=20 bench/gpu.sh
#
# It builds its own venv (.venv-gpu) with onnxruntime-gpu, because the CPU and GPU builds of
# ONNX Runtime must never share an environment. Bounded: every load level is DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/shapes-fcn/1/model.onnx}
DURATION=${DURATION:-15}
LEVELS=${LEVELS:-1,4,16,32,64,128}
VENV=${VENV:-.venv-gpu}
PY=$VENV/bin/python

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # The serving stack with the GPU build, plus what the bench itself imports.
    "$VENV/bin/pip" install --quiet -c constraints.txt -e '.[gpu]' httpx tqdm matplotlib
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee bench/results/gpu-device.txt
"$PY" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" \
    | tee -a bench/results/gpu-device.txt

for provider in cuda tensorrt; do
    out=bench/results/gpu-$provider
    mkdir -p "$out"
    # On a GPU the batch is the lever: let batches grow, keep two sessions so one batch uploads
    # while the other runs, and give decode/encode every core (inference no longer needs them).
    settings=(
        --set "SEGSERVE_PROVIDER=$provider"
        --set SEGSERVE_MAX_BATCH_SIZE=32
        --set SEGSERVE_SESSIONS=2
        --set "SEGSERVE_WORKER_THREADS=$(nproc)"
    )
    "$PY" -m bench.offline --model "$MODEL" "${settings[@]}" --json "$out/offline.json"
    "$PY" -m bench.offline --model "$MODEL" "${settings[@]}" --image large --batch-sizes 1 \
        --json "$out/offline-large.json"
    "$PY" -m bench.sweep --model "$MODEL" "${settings[@]}" --servers segserve,naive \
        --concurrency "$LEVELS" --duration "$DURATION" --offline-json "$out/offline.json" \
        --out "$out" --png "docs/images/perf-gpu-$provider.png"
done
echo "done: bench/results/gpu-*/ and docs/images/perf-gpu-*.png"
