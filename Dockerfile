# DeepPlan for Triton: the Triton image with the deepplan backend (target "triton", the default) and a
# light Locust image for the load tests (target "loadtest"). Built and run by docker-compose.yml; see
# deploy/README.md. Lint: `hadolint Dockerfile`; tests/unit/test_docker.py checks the backend install step.
#
# Base image: Triton 24.10 = server 2.51.0, CUDA 12.6.2, Ubuntu 22.04 with Python 3.10 (the Python the
# image's Python-backend stub embeds, hence the Python every package below is installed for). Why this tag
# (deploy/README.md has the long version): Python-based backends (model.py in backends/<name>/, 23.10+),
# restricted HTTP/gRPC APIs, custom metrics from the Python backend and shared-memory names with UUIDs
# (24.04+), and CUDA-12 torch wheels on PyPI for its Python. The nvidia-pytriton wheel used by the embedded
# launcher bundles server 2.41 (23.12), which has all of that except the UUID shm names.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
ARG LOADTEST_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${TRITON_IMAGE} AS triton

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Heavy dependencies first, in their own layer (rebuilt only when a pin changes). torch 2.10 is the newest
# release whose default PyPI wheel is a CUDA 12 build (cu128: runs on the CUDA 12 drivers this image needs;
# torch >= 2.11 wheels are CUDA 13 and need an R580+ driver). transformers 4.57 is the newest release for
# Python 3.10 (5.x needs a newer Python). cuda-python stays on 12.x for the same driver reason as torch.
ARG TORCH_VERSION=2.10.0
ARG TRANSFORMERS_VERSION=4.57.6
ARG PROTOBUF_VERSION=7.36.2
ARG CUDA_PYTHON_VERSION=12.9.10
ARG TQDM_VERSION=4.70.1
ARG NUMPY_VERSION=1.26.4
RUN python3 -m pip install \
        "torch==${TORCH_VERSION}" \
        "transformers==${TRANSFORMERS_VERSION}" \
        "protobuf==${PROTOBUF_VERSION}" \
        "cuda-python==${CUDA_PYTHON_VERSION}" \
        "tqdm==${TQDM_VERSION}" \
        "numpy==${NUMPY_VERSION}"

# The project as an installed package (the stub runs Python in isolated mode: PYTHONPATH is ignored, so
# deepplan_backend.runtime must be importable from site-packages), then the backend folder through the one
# definition of a backend installation, deepplan_backend.install, run from the installed package. The
# image already has backends/python with the stub for its Python, so no --python-backend-from-wheel.
# Run from /opt/tritonserver, where no source tree can shadow the installed package.
WORKDIR /opt/tritonserver
COPY . /tmp/deepplan-src
RUN python3 -m pip install /tmp/deepplan-src \
    && rm -rf /tmp/deepplan-src \
    && python3 -m deepplan_backend.install --backends-dir /opt/tritonserver/backends \
    && python3 -c "import torch, transformers, deepplan_backend.runtime; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

# An unprivileged user; the plans volume and its cache folders are writable by it.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin deepplan \
    && mkdir -p /plans /models \
    && chown deepplan:deepplan /plans
COPY --chown=root:root model_repository/ /models/

ENV DEEPPLAN_PLAN_REPOSITORY=/plans \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
VOLUME ["/plans"]
EXPOSE 8000 8001 8002
USER 10001:10001

HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"]

# docker-compose.yml replaces this command with the full one (restricted model-repository API + token).
# Run by hand, the model-repository API is disabled altogether (model-control mode "none").
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none"]

# ---------------------------------------------------------------------------------------------------------
FROM ${LOADTEST_IMAGE} AS loadtest

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# The versions the load tests were run with (Python 3.11). The loadtest package needs no torch: the project
# goes in with --no-deps.
ARG LOCUST_VERSION=2.18.4
ARG TRITONCLIENT_VERSION=2.41.0
ARG MATPLOTLIB_VERSION=3.11.2
ARG NUMPY_VERSION=1.26.4
RUN python3 -m pip install \
        "locust==${LOCUST_VERSION}" \
        "tritonclient[grpc,http]==${TRITONCLIENT_VERSION}" \
        "matplotlib==${MATPLOTLIB_VERSION}" \
        "numpy==${NUMPY_VERSION}"

WORKDIR /app
COPY loadtest/ /app/loadtest/
COPY . /tmp/deepplan-src
RUN python3 -m pip install --no-deps /tmp/deepplan-src \
    && rm -rf /tmp/deepplan-src \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin locust \
    && mkdir -p /results \
    && chown locust:locust /results

USER 10001:10001
EXPOSE 8089
ENTRYPOINT ["locust"]
CMD ["-f", "loadtest/synthetic.py"]
