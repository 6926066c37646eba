# segserve: `make serve` serves the bundled model; `make test` runs the whole suite.
# Every install step lives here so a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet -c constraints.txt
# ONNX Runtime build for serving: `make serve ORT=gpu` installs onnxruntime-gpu instead.
ORT    ?= cpu

.PHONY: serve test browser screenshots lint typecheck model model-v3 model-v2 model-v1 bench audit deploy-lint \
	docker-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module: both in one venv is
# whichever unpacked last, and uninstalling one deletes the other's files. Switching build
# removes both (and the stamps that promised the other one) before installing the one asked for.
ORT_PACKAGE_cpu := onnxruntime
ORT_PACKAGE_gpu := onnxruntime-gpu
define switch_ort
	if $(BIN)/pip show --quiet $(ORT_PACKAGE_$(1)) >/dev/null 2>&1; then \
		$(BIN)/pip uninstall --quiet --yes onnxruntime onnxruntime-gpu; \
		rm -f $(VENV)/.serve-$(1) $(VENV)/.dev; \
	fi
endef
OTHER_ORT := $(if $(filter gpu,$(ORT)),cpu,gpu)

# The serving install: no torch.
$(VENV)/.serve-$(ORT): $(BIN)/python pyproject.toml constraints.txt
	$(call switch_ort,$(OTHER_ORT))
	$(PIP) -e '.[$(ORT)]'
	touch $@

# Everything the tests need: the training stack (torch 2.13.0 CPU build first) and dev tools.
$(VENV)/.dev: $(BIN)/python pyproject.toml constraints.txt
	$(call switch_ort,gpu)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[cpu,train,dev]'
	touch $@

serve: $(VENV)/.serve-$(ORT)
	$(BIN)/python -m service

test: $(VENV)/.dev browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The browser tests (tests/test_browser.py) drive Debian's chromium with its chromium-driver; a
# browser build downloaded by a tool would not match the system's libraries (nor download
# offline). Installed with apt when missing and possible; otherwise those tests skip, loudly.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "make browser: chromium/chromedriver missing and apt-get as root unavailable:" \
			"the browser tests will SKIP (install Debian's chromium and chromium-driver)" >&2; \
	fi

# Redraw docs/images/page.png, the page's screenshot that README shows, from the browser test.
screenshots: $(VENV)/.dev browser
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q tests/test_browser.py

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# The bundled default model (version 4): version 3's network with a fixed bilinear decoder
# (`lite-fcn-bilinear`: the learned x2 upsamplers were half of its CPU time at 640x480),
# fine-tuned from version 3's last checkpoint (every other weight) on the same data, small
# objects weighted up (C); the last epoch and version 3's policy (native <= 640, 256-px tiles),
# fixed before training. Export, then score the file at every scale on the held-out split and on
# the second generator's 640x480 scenes into its card. See docs/MODEL.md.
MAX_SIDE := 640
TILE := 256
SIDES := 320,384,448,512,640,800,1024
MULTISCALE := --name shapes-fcn --dataset shapes-multiscale --input-size 512 --max-side 640 \
	--train-length 3000 --val-length 100 --seed 0 --data-seed 0 --crop-size 288
model: model-v3
	$(BIN)/python -m model_export train $(MULTISCALE) --architecture lite-fcn-bilinear \
		--lr 1e-3 --epochs 15 --threads 2 --small-object-weight 8 \
		--init-from runs/shapes-fcn-3/last.pt --run-dir runs/shapes-fcn-4
	$(BIN)/python -m model_export export runs/shapes-fcn-4/last.pt --max-side $(MAX_SIDE) \
		--tile $(TILE) --out models/shapes-fcn/4/model.onnx --description "$(MODEL_DESCRIPTION)"
	$(BIN)/python -m bench.scales --data own --scenes 300 --max-sides $(SIDES) --record \
		--json bench/results/scales/own.json
	$(BIN)/python -m bench.scales --data second --scenes 200 --max-sides $(SIDES) --record \
		--stretch models/shapes-fcn/1/model.onnx --json bench/results/scales/second.json
MODEL_DESCRIPTION := Lite FCN: circles, squares, triangles and stars from 8 px to the whole \
	frame. Default input policy: native, max_side $(MAX_SIDE); tiles of $(TILE) px

# Version 3 (the lite FCN with learned upsamplers; its last checkpoint starts version 4), from
# fixed seeds (so a rerun with the same threads reproduces the weights): trained from scratch on
# 3,000 multi-scale Shapes scenes (objects from 8 px to the whole frame, frames of any aspect
# ratio, JPEG) on 288 px crops (A), then fine-tuned with small objects' pixels weighted up (B).
# B's last epoch and the card's max_side were chosen on the held-out split by a criterion fixed
# beforehand; the tiles window (256 px) on memory and throughput.
V3 := models/shapes-fcn/3/model.onnx
model-v3: $(VENV)/.dev
	$(BIN)/python -m model_export train $(MULTISCALE) --architecture lite-fcn --lr 3e-3 \
		--epochs 40 --threads 1 --run-dir runs/shapes-fcn-3a
	$(BIN)/python -m model_export export runs/shapes-fcn-3a/best.pt --eval-split none \
		--out runs/shapes-fcn-3a/model.onnx
	$(BIN)/python -m model_export train $(MULTISCALE) --architecture lite-fcn --lr 1e-3 \
		--epochs 20 --threads 2 --small-object-weight 8 --init-from runs/shapes-fcn-3a/model.onnx \
		--run-dir runs/shapes-fcn-3
	$(BIN)/python -m model_export export runs/shapes-fcn-3/last.pt --max-side $(MAX_SIDE) \
		--tile $(TILE) --out $(V3) --description "$(MODEL_DESCRIPTION)"
	$(BIN)/python -m bench.scales --model $(V3) --data own --scenes 300 --max-sides $(SIDES) \
		--record --json bench/results/scales/v3/own.json
	$(BIN)/python -m bench.scales --model $(V3) --data second --scenes 200 --max-sides $(SIDES) \
		--record --stretch models/shapes-fcn/1/model.onnx --json bench/results/scales/v3/second.json

# Version 2: the mobile FCN from version 1's weights (the committed ONNX file), on 1,200
# multi-scale scenes, 192 px crops then 288 px crops; served natively at long side <= 320.
MODEL_2 := --name shapes-fcn --architecture mobile-fcn --width 16 --dataset shapes-multiscale \
	--input-size 512 --max-side 640 --train-length 1200 --val-length 100 --seed 0 --data-seed 0 \
	--threads 1
model-v2: $(VENV)/.dev
	$(BIN)/python -m model_export train $(MODEL_2) --crop-size 192 --lr 1e-3 --epochs 30 \
		--init-from models/shapes-fcn/1/model.onnx --run-dir runs/shapes-fcn-2a
	$(BIN)/python -m model_export export runs/shapes-fcn-2a/best.pt --eval-split none \
		--out runs/shapes-fcn-2a/model.onnx
	$(BIN)/python -m model_export train $(MODEL_2) --crop-size 288 --batch-size 12 \
		--lr 5e-4 --epochs 18 --init-from runs/shapes-fcn-2a/model.onnx --run-dir runs/shapes-fcn-2
	$(BIN)/python -m model_export export runs/shapes-fcn-2/best.pt --max-side 320 \
		--out models/shapes-fcn/2/model.onnx --description "$(MODEL_2_DESCRIPTION)"
	$(BIN)/python -m bench.scales --model models/shapes-fcn/2/model.onnx --data own --scenes 300 \
		--max-sides 256,320,384,448,512,640 --record
	$(BIN)/python -m bench.scales --model models/shapes-fcn/2/model.onnx --data second \
		--scenes 200 --max-sides 256,320,384,448,512,640 --record
MODEL_2_DESCRIPTION := Mobile FCN: circles, squares, triangles and stars from 8 px to the whole \
	frame. Default input policy: native, max_side 320

# Version 1 (trained on 128x128 scenes, served stretched to 128x128), and the examples drawn with it.
model-v1: $(VENV)/.dev
	$(BIN)/python -m model_export train --name shapes-fcn --architecture mobile-fcn --width 16 \
		--input-size 128 --train-length 2000 --epochs 56 --seed 0 --threads 1 \
		--run-dir runs/shapes-fcn
	$(BIN)/python -m model_export export runs/shapes-fcn/best.pt \
		--out models/shapes-fcn/1/model.onnx \
		--description "Mobile FCN: circles, squares, triangles and stars in synthetic Shapes scenes"
	$(BIN)/python examples/generate.py

# The performance record (docs/PERFORMANCE.md): the targets (the CPU pod's 2-process layout, with
# its own 2-process offline run, then the default one), the in-process and server-level lever
# tables, the latency/throughput sweep against the naive baseline (LitServe, BentoML and Ray
# Serve need their own venvs: docs/PERFORMANCE.md). About 25 minutes; run on a quiet machine.
TWO_PROCESSES := SEGSERVE_PROCESSES=2 SEGSERVE_WORKER_THREADS=1 SEGSERVE_INTRA_OP_THREADS=1
bench: $(VENV)/.dev
	$(BIN)/python -m bench.targets $(addprefix --server-set=,$(TWO_PROCESSES))
	$(BIN)/python -m bench.targets --all --out bench/results/targets-all
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
	$(BIN)/check-jsonschema --schemafile k8s/kserve/schemas/servingruntime_v1alpha1.json \
		k8s/kserve/servingruntime.yaml
	$(BIN)/check-jsonschema --schemafile k8s/kserve/schemas/inferenceservice_v1beta1.json \
		k8s/kserve/inferenceservice.yaml

# The CPU image built and run by a real Docker engine (tests/test_container.py; docs/DEPLOY.md
# has the timings). docker/with-engine.sh starts an engine where none runs (and skips loudly where
# none can start); docker/base-image.sh makes the base image with debootstrap where Docker Hub
# cannot be reached, once: later runs find it in the engine. Debian's prometheus scrapes the
# container.
docker-test: $(VENV)/.dev
	command -v prometheus >/dev/null || { apt-get update -qq && \
		apt-get install -y -q --no-install-recommends prometheus; }
	docker/with-engine.sh sh -c 'docker/base-image.sh && \
		$(BIN)/pytest -q -m docker --durations=0 tests/test_container.py'

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
