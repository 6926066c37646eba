#!/usr/bin/env bash
# The GPU measurement procedure (docs/PERFORMANCE.md, "GPU"), one script of about 6 minutes,
# run from the repository root on a machine with an NVIDIA GPU and its driver:
#
#   bench/gpu.sh                 # CUDA, then TensorRT fp16; results in bench/results/gpu-*/
#   MODEL=models/x/1/model.onnx DURATION=20 bench/gpu.sh
#
# Per provider: the offline limit at batch 1, 8 and 32 with IO binding on and off, then the
# service at concurrency 64 (largest batch 32), then the verdict: service >= 0.8 x offline at
# batch 32. It builds its own venv (.venv-gpu) with onnxruntime-gpu (VENV= to reuse one),
# because the CPU and GPU builds of ONNX Runtime must never share an environment. Bounded:
# every load level runs DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/shapes-fcn/1/model.onnx}
DURATION=${DURATION:-15}
VENV=${VENV:-.venv-gpu}
PY=$VENV/bin/python

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # The serving stack with the GPU build, plus what the bench itself imports.
    "$VENV/bin/pip" install --quiet -c constraints.txt -e '.[gpu]' httpx tqdm matplotlib
fi

mkdir -p bench/results
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee bench/results/gpu-device.txt
"$PY" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" \
    | tee -a bench/results/gpu-device.txt

folders=()
for provider in cuda tensorrt; do
    out=bench/results/gpu-$provider
    mkdir -p "$out"
    folders+=("$out")
    # On a GPU the batch is the lever: let batches grow, keep two sessions so one batch uploads
    # while the other runs, and give decode/encode every core (inference no longer needs them).
    settings=(
        --set "SEGSERVE_PROVIDER=$provider"
        --set SEGSERVE_MAX_BATCH_SIZE=32
        --set SEGSERVE_SESSIONS=2
        --set "SEGSERVE_WORKER_THREADS=$(nproc)"
        --set "SEGSERVE_TRT_CACHE_DIR=$out/trt-cache"
    )
    if [ "$provider" = tensorrt ]; then settings+=(--set SEGSERVE_TRT_FP16=true); fi
    for io in true false; do
        "$PY" -m bench.offline --model "$MODEL" "${settings[@]}" --set "SEGSERVE_IO_BINDING=$io" \
            --batch-sizes 1,8,32 --seconds 5 --json "$out/offline-io-$io.json"
    done
    "$PY" -m bench.sweep --model "$MODEL" "${settings[@]}" --servers segserve \
        --concurrency 64 --duration "$DURATION" --offline-json "$out/offline-io-true.json" \
        --out "$out" --png "$out/sweep.png"
    rm -rf "$out/trt-cache"
done
"$PY" -m bench.gpu_verdict "${folders[@]}" | tee bench/results/gpu-verdict.md
