# syntax=docker/dockerfile:1.7
# tac2sol images, one file, two targets (hack/images.sh builds both; `make images`):
#   --target operator  slim Python base, only the `operator` extra, non-root, read-only-rootfs friendly
#   --target trainer   CUDA 12 runtime base, torch + bitsandbytes + peft + transformers + DeepSpeed
#                      (ops prebuilt for sm_75 and sm_80+), non-root, HF_HOME on a volume;
#                      --build-arg TRAINER_DEVICE=cpu: the same trainer on a plain Debian/Ubuntu base
#                      with python3, python3-venv and openmpi-bin (CUDA_DEVEL_BASE and CUDA_RUNTIME_BASE name it),
#                      the packages pinned by requirements.lock, no DeepSpeed ops compiled (the tests
#                      build it and run it on the test cluster's real node)
# Base images are build arguments, so a mirror or a local base (tests use one made with mmdebstrap)
# can stand in. Behind a TLS-intercepting proxy, pass its CA bundle as the build secret `pip_cert`
# (buildah/podman/docker: --secret id=pip_cert,src=/path/to/ca.pem); without it pip uses its own.

ARG PYTHON_BASE=docker.io/library/python:3.12-slim-bookworm
ARG CUDA_DEVEL_BASE=docker.io/nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_BASE=docker.io/nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# cuda: the GPU image; cpu: no apt-get, no nvcc, torch and the rest at the lock's versions.
ARG TRAINER_DEVICE=cuda

# ---- wheel: the tac2sol wheel, built once for both targets ---------------------------------------
FROM ${PYTHON_BASE} AS wheel
# PYTHONSAFEPATH: the source tree's operator/ must not shadow the stdlib `operator` module.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONSAFEPATH=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tac2sol/ tac2sol/
COPY operator/ operator/
COPY trainer/ trainer/
COPY observability/ observability/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /tmp/build-venv \
    && /tmp/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- operator ----------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS operator-venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels/ /wheels/
# Byte-compiled at install time (pip's default), so nothing needs to write .pyc files at run time.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/tac2sol \
    && set -- /wheels/tac2sol-*.whl \
    && /opt/tac2sol/bin/pip install "$1[operator]" \
    && /opt/tac2sol/bin/pip uninstall --yes pip

FROM ${PYTHON_BASE} AS operator
ARG UID=10001
LABEL org.opencontainers.image.title="tac2sol-operator" \
      org.opencontainers.image.description="tac2sol operator: TrainingRun -> PyTorchJob/MPIJob" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --uid "${UID}" --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tac2sol
COPY --from=operator-venv /opt/tac2sol /opt/tac2sol
# Read-only root filesystem: no .pyc writes, HOME in /tmp (an emptyDir in the chart), logs to stdout.
ENV PATH=/opt/tac2sol/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    HOME=/tmp \
    TAC2SOL_LOG_FORMAT=json
USER ${UID}:${UID}
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["tac2sol"]
CMD ["operator"]

# ---- trainer ---------------------------------------------------------------------------------------
# Built on the CUDA *devel* image (nvcc compiles DeepSpeed's ops), run on the *runtime* image.
FROM ${CUDA_DEVEL_BASE} AS trainer-venv
ARG TRAINER_DEVICE
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# sm_75 (Turing, the RTX 8000 reference card) and sm_80+ (Ampere, Ada, Hopper; PTX for newer).
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX"
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
# hadolint ignore=DL3008
RUN if [ "${TRAINER_DEVICE}" = cuda ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-dev python3-venv ninja-build g++ libaio-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# cuda only (the cpu image makes its venv in its final stage, so that ~7 GB are not copied twice):
# torch from the CUDA 12 index; then the trainer extra, and remote-data (s3fs, gcsfs: s3:// and
# gs:// dataset URIs). DeepSpeed's ops are compiled at install
# time (DS_BUILD_*), so no rank JIT-compiles them: fused Adam (GPU), CPU Adam (ZeRO offload), async I/O
# (ZeRO-Infinity NVMe), and the utils op (flatten/unflatten).
COPY --from=wheel /wheels/ /wheels/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && mkdir -p /opt/tac2sol \
    && if [ "${TRAINER_DEVICE}" = cuda ]; then \
        python3 -m venv /opt/tac2sol \
        && /opt/tac2sol/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4" \
        && /opt/tac2sol/bin/pip install "setuptools>=69" "wheel>=0.43" \
        && set -- /wheels/tac2sol-*.whl \
        && DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_AIO=1 DS_BUILD_UTILS=1 \
           /opt/tac2sol/bin/pip install --no-build-isolation "$1[trainer,remote-data]" \
        && /opt/tac2sol/bin/ds_report; \
    fi

FROM ${CUDA_RUNTIME_BASE} AS trainer
ARG TRAINER_DEVICE
ARG UID=10001
LABEL org.opencontainers.image.title="tac2sol-trainer" \
      org.opencontainers.image.description="tac2sol trainer: QLoRA (bitsandbytes NF4 + peft) with DDP or DeepSpeed ZeRO" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# openmpi-bin: an MPIJob's launcher runs mpirun and its workers orted (the training-operator's
# kubectl exec is the rsh agent: no ssh). The cpu base must bring python3, python3-venv and openmpi-bin.
# hadolint ignore=DL3008
RUN if [ "${TRAINER_DEVICE}" = cuda ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 libaio1t64 openmpi-bin \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && if ! command -v mpirun >/dev/null; then echo "no mpirun in the base: install openmpi-bin" >&2; exit 1; fi \
    && useradd --uid "${UID}" --user-group --create-home --home-dir /home/tac2sol --shell /usr/sbin/nologin tac2sol \
    && mkdir -p /var/cache/huggingface \
    && chown "${UID}:${UID}" /var/cache/huggingface
COPY --from=trainer-venv /opt/tac2sol /opt/tac2sol
# cpu: requirements.lock, hash-checked, as `make venv` installs it (the extras operator, trainer,
# laptop-model and dev; --no-deps keeps out what hack/lock-excludes.txt excludes): torch is the lock's PyPI build, which runs on CPUs and brings the CUDA libraries it loads at
# import; DeepSpeed without compiled ops. Then tac2sol alone, in a layer of its own, so that a change
# to the sources reuses the ~7 GB layer of the dependencies.
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=secret,id=pip_cert \
    if [ "${TRAINER_DEVICE}" = cpu ]; then \
        if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
        && python3 -m venv /opt/tac2sol \
        && DS_BUILD_OPS=0 /opt/tac2sol/bin/pip install --no-cache-dir --disable-pip-version-check \
           --require-hashes --no-deps -r /tmp/requirements.lock; \
    fi \
    && rm /tmp/requirements.lock
COPY --from=wheel /wheels/ /tmp/wheels/
RUN if [ "${TRAINER_DEVICE}" = cpu ]; then \
        /opt/tac2sol/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/wheels/tac2sol-*.whl; \
    fi \
    && rm -rf /tmp/wheels
ENV PATH=/opt/tac2sol/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    HF_HOME=/var/cache/huggingface \
    TAC2SOL_LOG_FORMAT=json
# Model downloads go to a volume (a PVC in the TrainingRun's pods), never into the image layer.
VOLUME ["/var/cache/huggingface"]
USER ${UID}:${UID}
WORKDIR /home/tac2sol
EXPOSE 9400
ENTRYPOINT ["tac2sol"]
CMD ["train", "--help"]
