# syntax=docker/dockerfile:1
# segserve, CPU image: ONNX Runtime (CPU build) behind FastAPI. No PyTorch, no compilers.
#   docker build -t segserve:0.1.0 .
#   docker run --rm -p 8000:8000 segserve:0.1.0
# Every setting is a SEGSERVE_* environment variable (see docs/DEPLOY.md and service/settings.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the serving extra into a venv that the runtime stage copies whole -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY service ./service
# constraints.txt pins every transitive version; a non-editable install leaves no source tree behind
# and byte-compiles it here, since the runtime's root filesystem may be read-only.
RUN pip install -c constraints.txt '.[cpu]' \
    && pip uninstall --yes pip

# --- runtime: the venv, the bundled model, an unprivileged user -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="segserve" \
      org.opencontainers.image.description="Semantic-segmentation masks over HTTP (ONNX Runtime, CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 segserve \
    && useradd --system --uid 10001 --gid segserve --no-create-home --shell /usr/sbin/nologin segserve
COPY --from=build /opt/venv /opt/venv
# The default model is part of the image; mount another repository over /models to replace it.
COPY models/shapes-fcn /models/shapes-fcn
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEGSERVE_MODEL_REPOSITORY=/models \
    SEGSERVE_PROVIDER=cpu \
    SEGSERVE_HOST=0.0.0.0 \
    SEGSERVE_PORT=8000 \
    SEGSERVE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
# Liveness only: /readyz is for load balancers (it is 503 while warming up and while draining).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SEGSERVE_PORT', '8000') + '/healthz', timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself, so the drain runs on `docker stop`.
CMD ["python", "-m", "service"]
