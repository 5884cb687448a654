#!/usr/bin/env bash
# Installs, once, the tools the test suite and the cluster tour use, and caches them by version:
#   ~/.cache/tac2sol/bin/<name>-<version>   the binary      ~/.cache/tac2sol/bin/<name>   a symlink to it
# - kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy: built from
#   k8s.io/kubernetes (version pinned in hack/k8s/go.mod), etcd: built from go.etcd.io/etcd/server/v3
#   (hack/k8s/etcd/go.mod), kwok, training-operator, helm, CoreDNS and Kubeflow Trainer v2's
#   trainer-controller-manager: `go install <module>@<version>`; the JobSet controller (the version
#   trainer's go.mod requires): `go build` in its module's folder (see go_build_module); prometheus
#   and promtool (github.com/prometheus/prometheus, with Kubernetes discovery: build_prometheus);
# - Debian packages: openssl and curl (used by hack/cluster.sh), mpirun
#   (the MPI launcher test), buildah, podman, runc and mmdebstrap (the image test), containerd,
#   the CNI plugins, socat and iptables (the real node, hack/node.sh);
# - the real node's pause image: hack/node/pause.c built static, in a docker-archive tarball
#   (~/.cache/tac2sol/images/pause.tar, keyed by the source and the compiler) that hack/node.sh
#   imports into containerd; and the MPIJob launcher's kubectl-delivery image the same way
#   (hack/node/kubectl-delivery.go beside kubectl: images/kubectl-delivery.tar);
# - the Kubeflow CRDs (PyTorchJob, MPIJob) with their licence, copied from the Go module of the
#   training-operator built here, so they match it: ~/.cache/tac2sol/crds/training-operator; and
#   likewise Trainer v2's (TrainJob, TrainingRuntime, ClusterTrainingRuntime) and JobSet's, from
#   their modules: ~/.cache/tac2sol/crds/trainer;
# - checkov (the chart's policy test), from PyPI into a virtualenv of its own,
#   ~/.cache/tac2sol/checkov-<version>: it pins dozens of packages the project does not use.
# Prints one line per item it builds or installs and nothing when everything is cached.
# Cold, on 2 cores shared with other builds (load 8-13), it took 71 min: Kubernetes 31, training-
# operator 14, kwok 12, helm 11, etcd 3; cached, it is silent and takes 0.2 s. Trainer v2 and JobSet,
# each with an empty Go build cache at load 8-14, took 8.6 and 10.7 min (4.2 and 5.2 min of CPU, so
# roughly 2.5 and 3 min on 2 idle cores). Build logs go to
# ~/.cache/tac2sol/logs/.
# Environment: TAC2SOL_CACHE (default ~/.cache/tac2sol).
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TAC2SOL_CACHE:-$HOME/.cache/tac2sol}
BIN=$CACHE/bin
LOGS=$CACHE/logs

KWOK_VERSION=v0.8.0
TRAINING_OPERATOR_VERSION=v1.9.0
# Kubeflow Trainer v2 and the JobSet controller it drives (the version trainer's go.mod requires).
TRAINER_VERSION=v2.3.0
JOBSET_VERSION=v0.12.0  # checked against trainer's go.mod when its CRDs are copied
HELM_VERSION=v3.22.0
COREDNS_VERSION=v1.15.0
CHECKOV_VERSION=3.3.30
# Prometheus 3.16.0 and its promtool; the Go module numbers Prometheus 3.X.Y as v0.3XX.Y.
PROMETHEUS_VERSION=3.16.0 PROMETHEUS_MODULE_VERSION=v0.316.0
required_version() {  # required_version GO.MOD MODULE: the version GO.MOD requires of MODULE
    local v
    v=$(awk -v m="$2" '$1 == "require" && $2 == m {print $3; exit} $1 == m && $2 ~ /^v/ {print $2; exit}' "$1")
    [[ -n $v ]] || { echo "install-tools: ERROR: $1 does not require $2" >&2; exit 1; }
    echo "$v"
}
K8S_VERSION=$(required_version "$HACK/k8s/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(required_version "$HACK/k8s/etcd/go.mod" go.etcd.io/etcd/server/v3)
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
# apt package per command below, same order; mpirun: the 2-rank MPI launcher test; buildah to
# mmdebstrap: the image test (tests/packaging/test_image.py); containerd to gcc: the real node.
APT_PACKAGES=(openssl curl openmpi-bin buildah podman runc mmdebstrap containerd
    containernetworking-plugins socat iproute2 util-linux iptables gcc libc6-dev)
APT_COMMANDS=(openssl curl mpirun buildah podman runc mmdebstrap containerd
    /usr/lib/cni/bridge socat ip nsenter iptables-restore gcc /usr/lib/x86_64-linux-gnu/libc.a)

say() { echo "install-tools: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

mkdir -p "$BIN" "$LOGS"
# Two callers at once (make test and a pytest fixture) must not build into the same files.
exec 9>"$CACHE/install-tools.lock"
flock -n 9 || { say "waiting for another install-tools run to finish"; flock 9; }

cached() {  # cached NAME VERSION: true when the versioned binary exists; (re)points the symlink
    [[ -x "$BIN/$1-$2" ]] || return 1
    ln -sfn "$1-$2" "$BIN/$1"
}

run_logged() {  # run_logged LOGFILE CMD...: run quietly, show the log's tail on failure
    local log=$1 start=$SECONDS
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "failed: $* (full log: $log)"
    fi
    say "  done in $((SECONDS - start)) s"
}

go_env() {  # the environment every Go build here runs with
    command -v go >/dev/null || die "the Go toolchain (go >= 1.26) is needed to build the Kubernetes tools; install it and rerun: bash hack/install-tools.sh"
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false"
}

k8s_ldflags() {  # what `kubectl version` and /version report, as Kubernetes' own build sets it
    local v=$K8S_VERSION minor
    minor=$(cut -d. -f2 <<<"$v")
    local flags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    echo "$flags"
}

build_k8s() {
    local missing=() name
    for name in "${K8S_BINARIES[@]}"; do cached "$name" "$K8S_VERSION" || missing+=("$name"); done
    ((${#missing[@]})) || return 0
    go_env
    say "building ${missing[*]} $K8S_VERSION from k8s.io/kubernetes (all of them: ~30 min on 2 busy cores)"
    local out=$CACHE/build/k8s-$K8S_VERSION pkgs=()
    for name in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
    mkdir -p "$out"
    (cd "$HACK/k8s" && run_logged "$LOGS/k8s-$K8S_VERSION.log" \
        go build -trimpath -ldflags="$(k8s_ldflags)" -o "$out/" "${pkgs[@]}")
    for name in "${missing[@]}"; do
        mv -f "$out/$name" "$BIN/$name-$K8S_VERSION"
        cached "$name" "$K8S_VERSION"
    done
    rmdir "$out" 2>/dev/null || true
}

build_etcd() {
    cached etcd "$ETCD_VERSION" && return
    go_env
    say "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
    (cd "$HACK/k8s/etcd" && run_logged "$LOGS/etcd-$ETCD_VERSION.log" \
        go build -trimpath -ldflags="-s -w" -o "$BIN/etcd-$ETCD_VERSION.tmp" go.etcd.io/etcd/server/v3)
    mv -f "$BIN/etcd-$ETCD_VERSION.tmp" "$BIN/etcd-$ETCD_VERSION"
    cached etcd "$ETCD_VERSION"
}

go_install() {  # go_install NAME VERSION PACKAGE [LDFLAGS [KEY]]: `go install PACKAGE@VERSION` into the cache
    # KEY (default VERSION) names the cached binary; change it when LDFLAGS change.
    local name=$1 version=$2 pkg=$3 ldflags="-s -w ${4:-}" key=${5:-$2}
    cached "$name" "$key" && return
    go_env
    say "building $name $version ($pkg)"
    local gobin=$CACHE/build/$name-$key
    rm -rf "$gobin" && mkdir -p "$gobin"
    # `go install pkg@version` builds in module mode from the proxy; -mod does not apply to it.
    run_logged "$LOGS/$name-$key.log" env GOFLAGS=-buildvcs=false GOBIN="$gobin" \
        go install -trimpath -ldflags="$ldflags" "$pkg@$version"
    mv -f "$gobin/$(basename "$pkg")" "$BIN/$name-$key"
    rm -rf "$gobin"
    cached "$name" "$key"
}

go_build_module() {  # go_build_module NAME VERSION MODULE [LDFLAGS]: build MODULE's root package
    # In the module's own folder, with its own go.mod and go.sum, as `go install MODULE@VERSION`
    # would, minus its deprecation look-up: that reads the module's version list, which the
    # proxy refuses for some modules (sigs.k8s.io/jobset: 403) while it serves the version itself.
    local name=$1 version=$2 module=$3 ldflags="-s -w ${4:-}" dir
    cached "$name" "$version" && return
    go_env
    say "building $name $version ($module)"
    dir=$(module_dir "$module@$version")
    (cd "$dir" && run_logged "$LOGS/$name-$version.log" env GOFLAGS="-mod=readonly -buildvcs=false" \
        go build -trimpath -ldflags="$ldflags" -o "$BIN/$name-$version.tmp" .)
    mv -f "$BIN/$name-$version.tmp" "$BIN/$name-$version"
    cached "$name" "$version"
}

install_apt() {
    local missing=() i
    for i in "${!APT_COMMANDS[@]}"; do
        # A command, or a file the package installs (an absolute path).
        command -v "${APT_COMMANDS[$i]}" >/dev/null || [[ -e ${APT_COMMANDS[$i]} ]] || missing+=("${APT_PACKAGES[$i]}")
    done
    if ((${#missing[@]})); then
        local sudo=()
        [[ $(id -u) == 0 ]] || sudo=(sudo)
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get here: install them with your package manager"
        say "installing Debian packages: ${missing[*]}"
        # Keep a package's service (containerd) from starting: the tests start their own.
        local policy=/usr/sbin/policy-rc.d added_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
            "${sudo[@]}" chmod +x "$policy"
            added_policy=1
        fi
        local log=$LOGS/apt.log
        export DEBIAN_FRONTEND=noninteractive
        if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
            "${sudo[@]}" apt-get update -q >>"$log" 2>&1 || true
            run_logged "$log" "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
        fi
        if [[ $added_policy == 1 ]]; then "${sudo[@]}" rm -f "$policy"; fi
    fi
}

build_prometheus() {  # prometheus and promtool, with only the Kubernetes (and file, HTTP) discovery
    # Debian's prometheus is built without Kubernetes discovery; the e2e tests discover the
    # trainer pods with it. remove_all_sd + enable_kubernetes_sd leave out the cloud SDKs (the
    # build is shorter); the web UI's assets are left out too (no builtinassets): the API is all
    # the tests use.
    local key=$PROMETHEUS_VERSION-k8s-sd dir out flags=-s\ -w pkg=github.com/prometheus/common/version
    cached prometheus "$key" && cached promtool "$key" && return
    go_env
    say "building prometheus and promtool $PROMETHEUS_VERSION (github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION)"
    dir=$(module_dir "github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION")
    out=$CACHE/build/prometheus-$key
    rm -rf "$out" && mkdir -p "$out"
    flags+=" -X $pkg.Version=$PROMETHEUS_VERSION -X $pkg.Revision=$PROMETHEUS_MODULE_VERSION -X $pkg.Branch=HEAD"
    # GOWORK=off: the module ships a go.work that names folders its module zip leaves out.
    (cd "$dir" && run_logged "$LOGS/prometheus-$key.log" env GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" \
        go build -trimpath -tags=netgo,remove_all_sd,enable_kubernetes_sd -ldflags="$flags" \
        -o "$out/" ./cmd/prometheus ./cmd/promtool)
    local name
    for name in prometheus promtool; do
        mv -f "$out/$name" "$BIN/$name-$key"
        cached "$name" "$key"
    done
    rm -rf "$out"
}

module_dir() {  # module_dir MODULE@VERSION: the module's (read-only) folder in the Go module cache
    local dir
    dir=$(GOFLAGS= go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [[ -d $dir ]] || die "go mod download $1 gave no module folder"
    echo "$dir"
}

install_kubeflow_crds() {  # the CRDs of the training-operator built above, from its Go module
    local crds=$CACHE/crds dir="training-operator-$TRAINING_OPERATOR_VERSION" module
    if [[ ! -f $crds/$dir/kubeflow.org_mpijobs.yaml ]]; then
        go_env
        say "copying the Kubeflow CRDs of training-operator $TRAINING_OPERATOR_VERSION from its Go module"
        module=$(module_dir "github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION")
        [[ -d $module/manifests/base/crds ]] || die "no manifests/base/crds in the training-operator module ($module)"
        rm -rf "$crds/$dir.tmp" && mkdir -p "$crds/$dir.tmp"
        cp "$module"/manifests/base/crds/kubeflow.org_{pytorchjobs,mpijobs}.yaml "$module/LICENSE" "$crds/$dir.tmp/"
        chmod -R u+w "$crds/$dir.tmp"  # the module cache is read-only
        rm -rf "${crds:?}/$dir" && mv -T "$crds/$dir.tmp" "$crds/$dir"
    fi
    ln -sfn "$dir" "$crds/training-operator"
}

install_trainer_crds() {  # Trainer v2's CRDs and JobSet's, from the Go modules of the controllers built above
    local crds=$CACHE/crds dir="trainer-$TRAINER_VERSION-jobset-$JOBSET_VERSION" trainer jobset required
    if [[ ! -f $crds/$dir/jobset.x-k8s.io_jobsets.yaml ]]; then
        go_env
        say "copying the CRDs of Kubeflow Trainer $TRAINER_VERSION and JobSet $JOBSET_VERSION from their Go modules"
        trainer=$(module_dir "github.com/kubeflow/trainer/v2@$TRAINER_VERSION")
        required=$(required_version "$trainer/go.mod" sigs.k8s.io/jobset)
        [[ $required == "$JOBSET_VERSION" ]] \
            || die "trainer $TRAINER_VERSION requires sigs.k8s.io/jobset $required: set JOBSET_VERSION=$required in hack/install-tools.sh"
        jobset=$(module_dir "sigs.k8s.io/jobset@$JOBSET_VERSION")
        rm -rf "$crds/$dir.tmp" && mkdir -p "$crds/$dir.tmp"
        cp "$trainer"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$jobset"/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml \
            "$crds/$dir.tmp/"
        cp "$trainer/LICENSE" "$crds/$dir.tmp/LICENSE.trainer"
        cp "$jobset/LICENSE" "$crds/$dir.tmp/LICENSE.jobset"
        chmod -R u+w "$crds/$dir.tmp"
        rm -rf "${crds:?}/$dir" && mv -T "$crds/$dir.tmp" "$crds/$dir"
    fi
    ln -sfn "$dir" "$crds/trainer"
}

image_archive() {  # image_archive ROOTFS NAME ENTRYPOINT OUT: ROOTFS's files as a one-layer docker-archive
    local rootfs=$1 name=$2 entrypoint=$3 out=$4 tmp diff_id files
    tmp=$(mktemp -d)
    mapfile -t files < <(ls "$rootfs")
    # Reproducible: fixed owner, mode and time.
    tar --create --file "$tmp/layer.tar" --directory "$rootfs" --owner=0 --group=0 --numeric-owner \
        --mtime=@0 --mode=0755 "${files[@]}"
    diff_id=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
    printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["%s"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$entrypoint" "$diff_id" >"$tmp/config.json"
    printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$name" >"$tmp/manifest.json"
    tar --create --file "$out.tmp" --directory "$tmp" --owner=0 --group=0 --mtime=@0 \
        manifest.json config.json layer.tar
    mv -f "$out.tmp" "$out"
    rm -rf "$tmp"
}

build_pause_image() {  # hack/node/pause.c, static, as the only file of a docker-archive image
    local src=$HACK/node/pause.c images=$CACHE/images key
    key=$( (cat "$src"; gcc --version | head -n 1) | sha256sum | cut -c1-12)
    if [[ ! -f $images/pause-$key.tar ]]; then
        say "building the pause image ($key) from hack/node/pause.c"
        local tmp
        tmp=$(mktemp -d)
        mkdir -p "$tmp/rootfs" "$images"
        gcc -static -Os -s -o "$tmp/rootfs/pause" "$src"
        image_archive "$tmp/rootfs" localhost/tac2sol/pause:1 /pause "$images/pause-$key.tar"
        rm -rf "$tmp"
    fi
    ln -sfn "pause-$key.tar" "$images/pause.tar"
}

build_kubectl_delivery_image() {  # hack/node/kubectl-delivery.go and kubectl: the MPIJob launcher's init container
    local src=$HACK/node/kubectl-delivery.go images=$CACHE/images key
    go_env
    key=$( (cat "$src"; go version; echo "$K8S_VERSION") | sha256sum | cut -c1-12)
    if [[ ! -f $images/kubectl-delivery-$key.tar ]]; then
        say "building the kubectl-delivery image ($key) from hack/node/kubectl-delivery.go and kubectl $K8S_VERSION"
        local tmp
        tmp=$(mktemp -d)
        mkdir -p "$tmp/rootfs" "$images"
        go build -trimpath -ldflags="-s -w" -o "$tmp/rootfs/kubectl-delivery" "$src"
        cp "$BIN/kubectl-$K8S_VERSION" "$tmp/rootfs/kubectl"
        image_archive "$tmp/rootfs" localhost/tac2sol/kubectl-delivery:1 /kubectl-delivery \
            "$images/kubectl-delivery-$key.tar"
        rm -rf "$tmp"
    fi
    ln -sfn "kubectl-delivery-$key.tar" "$images/kubectl-delivery.tar"
}

install_checkov() {  # a virtualenv of its own; .installed marks a complete install
    local venv=$CACHE/checkov-$CHECKOV_VERSION
    [[ -f $venv/.installed ]] && return
    say "installing checkov $CHECKOV_VERSION from PyPI into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    run_logged "$LOGS/checkov-$CHECKOV_VERSION.log" \
        "$venv/bin/pip" install --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    touch "$venv/.installed"
}

install_apt
build_etcd
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
go_install training-operator "$TRAINING_OPERATOR_VERSION" \
    github.com/kubeflow/training-operator/cmd/training-operator.v1
install_kubeflow_crds
go_install trainer-controller-manager "$TRAINER_VERSION" \
    github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager
go_build_module jobset "$JOBSET_VERSION" sigs.k8s.io/jobset "-X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION"
install_trainer_crds
# As helm's own Makefile does: the default Kubernetes version for `helm template`/`lint` comes
# from its client-go (v0.37 -> 1.37); without it `helm template` assumes v1.20 and refuses the chart.
HELM_KUBE_MAJOR=1 HELM_KUBE_MINOR=37
go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$HELM_KUBE_MAJOR \
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_KUBE_MINOR \
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$HELM_KUBE_MAJOR \
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_KUBE_MINOR" \
    "$HELM_VERSION-kube$HELM_KUBE_MAJOR.$HELM_KUBE_MINOR"
go_install coredns "$COREDNS_VERSION" github.com/coredns/coredns
build_prometheus
build_k8s
build_pause_image
build_kubectl_delivery_image
install_checkov
