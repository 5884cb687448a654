#!/usr/bin/env bash
# Builds the images of the Dockerfile (`make images`):
#   $REGISTRY/tac2sol-operator:$TAG   (--target operator)
#   $REGISTRY/tac2sol-trainer:$TAG    (--target trainer; CUDA 12 + torch + DeepSpeed ops: ~20 min, ~10 GB)
#   TRAINER_DEVICE=cpu: the trainer for CPU nodes instead: CUDA_DEVEL_BASE and CUDA_RUNTIME_BASE name a
#   Debian/Ubuntu base with python3, python3-venv and openmpi-bin, packages from requirements.lock (the tests
#   build it on an mmdebstrap base: tests/e2e/test_tiny_cluster.py)
# with the first of docker, podman, buildah found (IMAGE_BUILDER picks one). The base images come
# from a registry (docker.io by default), so this needs one reachable, or local bases named in
# PYTHON_BASE / CUDA_DEVEL_BASE / CUDA_RUNTIME_BASE.
#
# Environment (all optional):
#   REGISTRY (ghcr.io/tac2sol)  TAG (the package version)  TARGETS ("operator trainer")
#   PUSH=1                push after building
#   PYTHON_BASE, CUDA_DEVEL_BASE, CUDA_RUNTIME_BASE, TORCH_CUDA_ARCH_LIST, TORCH_INDEX_URL,
#   TRAINER_DEVICE (cuda or cpu)
#                         passed as build args when set
#   PIP_CERT=<CA bundle>  behind a TLS-intercepting proxy: handed to pip as the `pip_cert` build secret
#   BUILD_FLAGS           extra builder flags, e.g. "--isolation chroot" for buildah in a container
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "images: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' tac2sol/__init__.py)
[[ -n $version ]] || die "no __version__ in tac2sol/__init__.py"
REGISTRY=${REGISTRY:-ghcr.io/tac2sol}
TAG=${TAG:-$version}
read -r -a targets <<<"${TARGETS:-operator trainer}"

builder=${IMAGE_BUILDER:-}
if [[ -z $builder ]]; then
    for b in docker podman buildah; do
        if command -v "$b" >/dev/null; then builder=$b; break; fi
    done
fi
[[ -n $builder ]] || die "no image builder: install docker, podman or buildah (Debian: apt-get install buildah podman)"
command -v "$builder" >/dev/null || die "IMAGE_BUILDER=$builder is not installed"

build=("$builder" build)
[[ $builder == buildah ]] && build=(buildah bud)
[[ $builder == docker ]] && export DOCKER_BUILDKIT=1  # RUN --mount=type=secret needs BuildKit
args=()
for arg in PYTHON_BASE CUDA_DEVEL_BASE CUDA_RUNTIME_BASE TORCH_CUDA_ARCH_LIST TORCH_INDEX_URL TRAINER_DEVICE; do
    [[ -n ${!arg:-} ]] && args+=(--build-arg "$arg=${!arg}")
done
if [[ -n ${PIP_CERT:-} ]]; then
    [[ -f $PIP_CERT ]] || die "PIP_CERT=$PIP_CERT is not a file"
    args+=(--secret "id=pip_cert,src=$PIP_CERT")
fi
read -r -a extra <<<"${BUILD_FLAGS:-}"

for target in "${targets[@]}"; do
    case $target in operator | trainer) ;; *) die "unknown target $target (operator or trainer)" ;; esac
    image=$REGISTRY/tac2sol-$target:$TAG
    say "building $image with $builder"
    start=$SECONDS
    "${build[@]}" "${extra[@]}" "${args[@]}" --target "$target" --tag "$image" --file Dockerfile .
    say "built $image in $((SECONDS - start)) s"
    if [[ ${PUSH:-0} == 1 ]]; then
        "$builder" push "$image"
        say "pushed $image"
    fi
done
