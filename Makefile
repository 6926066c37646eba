# segserve: `make serve` serves the bundled model; `make test` runs the whole suite.
# Every install step lives here so a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet -c constraints.txt
# ONNX Runtime build for serving: `make serve ORT=gpu` installs onnxruntime-gpu instead.
ORT    ?= cpu

.PHONY: serve test lint typecheck model model-v1 bench audit deploy-lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The serving install: no torch.
$(VENV)/.serve-$(ORT): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[$(ORT)]'
	touch $@

# Everything the tests need: the training stack (torch 2.13.0 CPU build first) and dev tools.
$(VENV)/.dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e '.[cpu,train,dev]'
	touch $@

serve: $(VENV)/.serve-$(ORT)
	$(BIN)/python -m service

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# The bundled default model (version 2), from fixed seeds, in two stages of one CPU thread each
# (so a rerun reproduces the weights): starting from version 1's weights (the committed ONNX
# file), train the mobile FCN on multi-scale Shapes (objects from 8 px to the whole frame, frames
# of any aspect ratio, JPEG) on 192 px crops, then on 288 px crops (more context for big objects).
# Export with the parity check, score the exported file on the held-out split (native policy)
# into its card, then on the second generator's 640x480 scenes (tests/scenes.py, never trained
# on) into its card too. See docs/MODEL.md.
MAX_SIDE := 320
MULTISCALE := --name shapes-fcn --architecture mobile-fcn --width 16 --dataset shapes-multiscale \
	--input-size 512 --max-side 640 --train-length 1200 --val-length 100 --seed 0 --data-seed 0 \
	--threads 1
model: $(VENV)/.dev
	$(BIN)/python -m model_export train $(MULTISCALE) --crop-size 192 --lr 1e-3 --epochs 30 \
		--init-from models/shapes-fcn/1/model.onnx --run-dir runs/shapes-fcn-2a
	$(BIN)/python -m model_export export runs/shapes-fcn-2a/best.pt --eval-split none \
		--out runs/shapes-fcn-2a/model.onnx
	$(BIN)/python -m model_export train $(MULTISCALE) --crop-size 288 --batch-size 12 \
		--lr 5e-4 --epochs 18 --init-from runs/shapes-fcn-2a/model.onnx --run-dir runs/shapes-fcn-2
	$(BIN)/python -m model_export export runs/shapes-fcn-2/best.pt --max-side $(MAX_SIDE) \
		--out models/shapes-fcn/2/model.onnx \
		--description "$(MODEL_2_DESCRIPTION)"
	$(BIN)/python -m bench.scales --data own --scenes 300 --max-sides $(SIDES) --record \
		--json bench/results/scales/own.json
	$(BIN)/python -m bench.scales --data second --scenes 200 --max-sides $(SIDES) --record \
		--stretch models/shapes-fcn/1/model.onnx --stretch models/shapes-fcn/2/model.onnx \
		--json bench/results/scales/second.json
SIDES := 256,320,384,448,512,640
MODEL_2_DESCRIPTION := Mobile FCN: circles, squares, triangles and stars from 8 px to the whole \
	frame. Default input policy: native, max_side $(MAX_SIDE) (input.resize=native, \
	input.max_side=$(MAX_SIDE) once the card schema has them)

# Version 1 (trained on 128x128 scenes, served stretched to 128x128), and the examples drawn with it.
model-v1: $(VENV)/.dev
	$(BIN)/python -m model_export train --name shapes-fcn --architecture mobile-fcn --width 16 \
		--input-size 128 --train-length 2000 --epochs 56 --seed 0 --threads 1 \
		--run-dir runs/shapes-fcn
	$(BIN)/python -m model_export export runs/shapes-fcn/best.pt \
		--out models/shapes-fcn/1/model.onnx \
		--description "Mobile FCN: circles, squares, triangles and stars in synthetic Shapes scenes"
	$(BIN)/python examples/generate.py

# The performance record (docs/PERFORMANCE.md): the four targets (the CPU pod's 2-process layout,
# then the default one), the in-process and server-level lever tables, the latency/throughput
# sweep against the naive baseline (LitServe, BentoML and Ray Serve need their own venvs:
# docs/PERFORMANCE.md). About 25 minutes; run on a quiet machine.
TWO_PROCESSES := SEGSERVE_PROCESSES=2 SEGSERVE_WORKER_THREADS=1 SEGSERVE_INTRA_OP_THREADS=1
bench: $(VENV)/.dev
	$(BIN)/python -m bench.targets $(addprefix --server-set=,$(TWO_PROCESSES))
	$(BIN)/python -m bench.targets --out bench/results/targets-1p
	$(BIN)/python -m bench.offline --processes 2 --set=SEGSERVE_WORKER_THREADS=1 \
		--set=SEGSERVE_INTRA_OP_THREADS=1 --json bench/results/targets/offline-small-2p.json
	$(BIN)/python -m bench.levers --json bench/results/levers.json
	$(BIN)/python -m bench.compare
	$(BIN)/python -m bench.sweep --servers segserve,segserve-2p,naive \
		--offline-json bench/results/targets/offline-small.json

# Known vulnerabilities in every pinned dependency, from PyPI's advisory data (network needed).
# --strict: a package that cannot be looked up fails the audit instead of passing unchecked.
audit: $(VENV)/.dev
	$(BIN)/pip-audit --requirement constraints.txt --no-deps --disable-pip --strict \
		--progress-spinner off || { echo "make audit: FAILED: a known vulnerability, or a" \
		"package whose advisories could not be fetched (see docs/SECURITY.md)" >&2; exit 1; }

# The deployment files, checked by the real tools of the dev extra (docs/DEPLOY.md).
# promtool is not on PyPI: with Debian's `prometheus` package installed it checks Prometheus too.
deploy-lint: $(VENV)/.dev
	$(BIN)/hadolint Dockerfile docker/Dockerfile.gpu
	$(BIN)/yamllint --strict .yamllint.yaml docker-compose.yml docker k8s
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec \
		docker-compose.yml docker/compose.gpu.yml
	for overlay in k8s/overlays/*/; do \
		$(BIN)/kubectl kustomize $$overlay | $(BIN)/kubernetes-validate --strict --quiet - || exit 1; \
	done
	! command -v promtool >/dev/null || promtool check config docker/prometheus/prometheus.yml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
