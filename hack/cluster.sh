#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, without a container runtime, for the tests and
# the cluster tour:
#   etcd, kube-apiserver (TLS from a CA made here, RBAC + Node authorization, service-account
#   tokens), kube-controller-manager, kube-scheduler, the Kubeflow CRDs (server-side apply),
#   training-operator v1.9.0 out of cluster (in network, mount and pid namespaces of its own: its
#   webhook server binds all interfaces; see start_training_operator), kwok running 2 fake nodes
#   x 4 nvidia.com/gpu, and one real node (hack/node.sh: containerd, runc, the kubelet, kube-proxy
#   and CoreDNS in network, mount and pid namespaces of its own; tainted tac2sol.dev/real-node=true:NoSchedule, labelled
#   tac2sol.dev/node=real, no GPU; StorageClass tac2sol-local: 24 local PersistentVolumes on it).
#   The host's network namespace gets nothing: the node reaches
#   the apiserver through a Unix socket (socat on both sides), the apiserver reaches the kubelet
#   and the pods through its egress selector (an HTTP CONNECT proxy on a Unix socket). The
#   apiserver advertises the node IP, where that socket's other end listens in the node's
#   namespace: the `kubernetes` Service's endpoint, so pods (the operator's, through kube-proxy)
#   reach it at its ClusterIP with in-cluster config, as on any cluster.
#
#   bash hack/cluster.sh up       start it (idempotent); prints KUBECONFIG=<path>
#   bash hack/cluster.sh down     stop every process and delete the cluster's data
#   bash hack/cluster.sh status   which processes run; exit 1 unless all of them do
#   bash hack/cluster.sh reap     `down`, only if nothing of the cluster runs (one whose owner and
#                                 watchdog died with the machine: its node's images go)
#   bash hack/cluster.sh trainer-up   add Kubeflow Trainer v2 to the running cluster (idempotent)
#
# Kubeflow Trainer v2 (trainer-controller-manager v2.3.0) and the JobSet controller it drives
# (v0.12.0) run only when asked: `trainer-up`, or TAC2SOL_TRAINER_V2=1 at `up`. Both run out of
# cluster like the training-operator, as users of their own bound to cluster-admin, with their CRDs
# (TrainJob, TrainingRuntime, ClusterTrainingRuntime, JobSet) from their Go modules. Their own
# certificate management is off (it wants a Secret, a Service and in-cluster DNS): their webhooks
# serve on 127.0.0.1 with a certificate from the cluster CA, and Mutating/ValidatingWebhook-
# Configurations (tac2sol-trainer, tac2sol-jobset) point the apiserver at them by URL. JobSet's Jobs
# are run by kube-controller-manager, their pods by kwok like any other (the same annotations steer
# them). Started on a running cluster they take 27 s (load 9-14 on 2 cores) and ~90 MiB of memory
# (JobSet 48, trainer 40 MiB resident), which the tests and the tour that do not use them never pay.
# Trainer's TrainJobStatus gate (progress the trainer pods push into a TrainJob's status.trainerStatus)
# is off unless TAC2SOL_TRAINER_STATUS=1 at `trainer-up` (real node only; `trainer-up` without it
# turns it off again, restarting only the trainer). Its status server binds ":10443", all interfaces,
# so the trainer-controller-manager then runs in the real node's network namespace (10443 exists only
# there, on 127.0.0.1 and the node IP), with a private mount namespace giving it what it reads from
# fixed paths: /tmp/k8s-webhook-server/serving-certs (the serving certificate, which also names the
# status Service), /var/run/secrets/kubernetes.io/serviceaccount (a token of ServiceAccount
# kubeflow-system/kubeflow-trainer-controller-manager: its issuer is where it finds the keys that
# verify the pods' tokens) and a resolv.conf naming CoreDNS. A socat on 127.0.0.1 in the host's
# namespace forwards the apiserver's webhook calls into the node's. The pods reach the server as
# Trainer tells them: Service kubeflow-trainer-controller-manager.kubeflow-system.svc:10443 (no
# selector; its EndpointSlice is the node IP), CA from Secret kubeflow-trainer-webhook-cert (the
# cluster CA). Switching the gate takes ~15 s: Trainer v2.3's status server never returns from its
# shutdown (pkg/statusserver waits on a channel nobody closes), so `stop` kills it after 10 s.
#
# Environment (all optional):
#   TAC2SOL_CLUSTER_DIR       state: certs, kubeconfigs, etcd data, pids, logs (~/.cache/tac2sol/cluster)
#   TAC2SOL_CACHE             where hack/install-tools.sh put the binaries (~/.cache/tac2sol)
#   TAC2SOL_CRDS_DIR          the Kubeflow CRDs (hack/install-tools.sh copies them from the
#                             training-operator's Go module to ~/.cache/tac2sol/crds/training-operator)
#   TAC2SOL_ETCD_PORT, TAC2SOL_APISERVER_PORT, ... the ports on 127.0.0.1: names and defaults are
#                             CLUSTER_PORTS in tac2sol/devtools.py (`python -m tac2sol.devtools cluster-env`)
#   TAC2SOL_PYTHON            the interpreter with tac2sol installed (<repo>/.venv/bin/python)
#   TAC2SOL_CLUSTER_TIMEOUT   seconds to wait for each component to be ready (60)
#   TAC2SOL_CLUSTER_OWNER_PID when set, the cluster stops itself once that process is gone (the
#                             test fixture passes pytest's pid, so a killed test run leaves nothing)
#   TAC2SOL_REAL_NODE         0: no real node (kwok only)
#   TAC2SOL_TRAINER_V2        1: `up` also starts Kubeflow Trainer v2 and JobSet (as `trainer-up`)
#   TAC2SOL_TRAINER_STATUS    1: Trainer's TrainJobStatus gate on, its status server in the node
#   TAC2SOL_TRAINER_CRDS_DIR  Trainer v2's and JobSet's CRDs (~/.cache/tac2sol/crds/trainer)
# `bash hack/cluster.sh node-exec CMD...` runs CMD in the real node's network namespace (to reach
# pod addresses, CoreDNS on the node IP, ...).
# The state dir also gets cluster.env (KUBECONFIG, server URL, ports) for other scripts to source.
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
CACHE=${TAC2SOL_CACHE:-$HOME/.cache/tac2sol}
BIN=$CACHE/bin
STATE=${TAC2SOL_CLUSTER_DIR:-$CACHE/cluster}
PYTHON=${TAC2SOL_PYTHON:-$REPO/.venv/bin/python}
TIMEOUT=${TAC2SOL_CLUSTER_TIMEOUT:-60}

PKI=$STATE/pki
# Built by hack/install-tools.sh from hack/node/pause.c; containerd's sandbox_image names it.
PAUSE_TARBALL=$CACHE/images/pause.tar
PAUSE_IMAGE=localhost/tac2sol/pause:1
# The MPIJob launcher's init container (training-operator's --mpi-kubectl-delivery-image), built by
# hack/install-tools.sh from hack/node/kubectl-delivery.go and kubectl; hack/node.sh imports it.
KUBECTL_DELIVERY_TARBALL=$CACHE/images/kubectl-delivery.tar
KUBECTL_DELIVERY_IMAGE=localhost/tac2sol/kubectl-delivery:1
# The CPU trainer image (Dockerfile, TRAINER_DEVICE=cpu) as the tests import it into the real node;
# PyTorchJob workers' init container runs from it too (hack/training-operator/init-pytorch.yaml).
TRAINER_CPU_IMAGE=localhost/tac2sol/trainer:cpu
KUBECONFIG_PATH=$STATE/kubeconfig
# training-operator v1.9.0 reads its webhook certificates from this fixed path (pkg/cert/cert.go);
# each cluster's gets its own folder bind-mounted there, in a private mount namespace.
WEBHOOK_CERT_DIR=/tmp/k8s-webhook-server/serving-certs
SERVICE_CIDR=10.96.0.0/16
SA_ISSUER=https://kubernetes.default.svc.cluster.local
REAL_NODE=${TAC2SOL_REAL_NODE:-1}
TRAINER_V2=${TAC2SOL_TRAINER_V2:-0}
TRAINER_STATUS=${TAC2SOL_TRAINER_STATUS:-0}
# The real node: its addresses exist only in its own network namespace (hack/node.sh).
NODE_DIR=$STATE/node
NODE_NAME=tac2sol-node
POD_CIDR=10.244.0.0/16
NODE_IP=10.244.0.1
# Claims of this StorageClass bind to local PersistentVolumes on the node (NODE_DIR/volumes/pv-N).
STORAGE_CLASS=tac2sol-local
# One session's cluster serves every real-node test, two claims a run, and a used volume stays
# Released (Retain), so the pool must hold all of them: 9 runs today; a volume is only a folder.
LOCAL_VOLUMES=24
# Its cgroups (cgroupfs), under a root named after this state dir: two clusters never share one.
CGROUP_ROOT=/tac2sol-$(echo -n "$STATE" | sha256sum | cut -c1-10)
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler training-operator-socket training-operator kwok)
[[ $REAL_NODE == 0 ]] || COMPONENTS+=(apiserver-socket node)
# Started by `trainer-up` only; `down` stops them first. JobSet first: Trainer creates JobSets.
TRAINER_COMPONENTS=(jobset trainer-controller-manager)
# With TAC2SOL_TRAINER_STATUS=1: the host's end of Trainer's webhooks, then in the node.
STATUS_FORWARDER=trainer-webhook-forwarder
# Trainer's TrainJobStatus plugin gives the pods https://<its webhook Service>.<its namespace>.svc:<port>
# and the ca.crt of its webhook Secret: its defaults (certManagement.webhookServiceName/SecretName,
# the namespace of its ServiceAccount), so nothing in its configuration differs from an install's.
STATUS_NS=kubeflow-system
STATUS_SERVICE=kubeflow-trainer-controller-manager
STATUS_SECRET=kubeflow-trainer-webhook-cert
STATUS_PORT=10443

say() { echo "cluster: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

load_settings() {  # the ports and TAC2SOL_CRDS_DIR, from their one owner, tac2sol.devtools
    local settings
    [[ -x $PYTHON ]] || die "$PYTHON is missing: run \`make venv\` first, or set TAC2SOL_PYTHON"
    settings=$(PYTHONSAFEPATH=1 "$PYTHON" -m tac2sol.devtools cluster-env) || die "could not read the cluster's settings"
    eval "$settings"
    mapfile -t PORT_VARS < <(sed -n 's/^\(TAC2SOL_[A-Z_]*_PORT\)=.*/\1/p' <<<"$settings")
    CRDS=$TAC2SOL_CRDS_DIR
    TRAINER_CRDS=$TAC2SOL_TRAINER_CRDS_DIR
    SERVER=https://127.0.0.1:$TAC2SOL_APISERVER_PORT
}

need_binaries() {
    local name
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl training-operator kwok; do
        [[ -x $BIN/$name ]] || die "$BIN/$name is missing: run \`bash hack/install-tools.sh\` (or \`make tools\`) first"
    done
    for name in socat unshare nsenter ip; do  # the training-operator's namespaces
        command -v "$name" >/dev/null || die "$name is missing: run \`bash hack/install-tools.sh\` (Debian: socat util-linux iproute2)"
    done
    if [[ $REAL_NODE != 0 ]]; then
        for name in kubelet kube-proxy coredns; do
            [[ -x $BIN/$name ]] || die "$BIN/$name is missing: run \`bash hack/install-tools.sh\` (or \`make tools\`) first"
        done
        [[ -f $PAUSE_TARBALL ]] || die "no pause image at $PAUSE_TARBALL: run \`bash hack/install-tools.sh\`"
        [[ -f $KUBECTL_DELIVERY_TARBALL ]] || die "no kubectl-delivery image at $KUBECTL_DELIVERY_TARBALL: run \`bash hack/install-tools.sh\`"
        for name in containerd ctr runc iptables-restore /usr/lib/cni/bridge; do
            command -v "$name" >/dev/null || die "$name is missing: run \`bash hack/install-tools.sh\` (Debian: containerd runc containernetworking-plugins socat iptables)"
        done
        [[ $(id -u) == 0 ]] || die "the real node needs root (namespaces, mounts, cgroups): run as root, or TAC2SOL_REAL_NODE=0 for kwok only"
    fi
    [[ -f $CRDS/kubeflow.org_pytorchjobs.yaml ]] \
        || die "no Kubeflow CRDs in $CRDS: run \`bash hack/install-tools.sh\` (or set TAC2SOL_CRDS_DIR to the folder holding kubeflow.org_*.yaml)"
}

# --- processes ---------------------------------------------------------------------------------

cmdline_of() {  # what the command line of a component contains
    case $1 in
    node) echo "$HACK/node.sh inside" ;;
    apiserver-socket) echo "UNIX-LISTEN:$NODE_DIR/apiserver.sock" ;;
    training-operator-socket) echo "UNIX-LISTEN:$STATE/training-operator/apiserver.sock" ;;
    "$STATUS_FORWARDER") echo "TCP-LISTEN:$TAC2SOL_TRAINER_WEBHOOK_PORT,bind=127.0.0.1" ;;
    *) echo "$BIN/$1" ;;
    esac
}

pid_of() {  # the pid of a running component, or nothing
    local file=$STATE/pids/$1.pid pid
    [[ -f $file ]] || return 0
    pid=$(<"$file")
    # The pid must still be that component (pids get reused after a reboot or a crash).
    if [[ -r /proc/$pid/cmdline && $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$(cmdline_of "$1")"* ]]; then
        echo "$pid"
    fi
}

start() {  # start NAME ARGS...: run $BIN/NAME in the background in its own session, log to a file
    local name=$1
    shift
    setsid "$BIN/$name" "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
    await_exec $! "$BIN/$name"
}

await_exec() {  # await_exec PID EXE: until PID runs EXE, or is gone
    # While a process execs its cmdline reads empty, which pid_of would take for an exit.
    local exe i
    exe=$(readlink -f "$2")
    for ((i = 0; i < 100; i++)); do
        [[ $(readlink "/proc/$1/exe" 2>/dev/null) != "$exe" ]] && kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
}

stop() {  # stop NAME...: SIGTERM to all of them at once, SIGKILL to those left after 10 s
    local name pid pids=() alive=() i
    for name in "$@"; do
        pid=$(pid_of "$name")
        if [[ -n $pid ]]; then
            pids+=("$pid")
            # Its process group when it leads one (setsid): what it forked goes too (socat's
            # per-connection children hold their ports).
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/pids/$name.pid"
    done
    for ((i = 0; i < 100; i++)); do
        alive=()
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
        done
        ((${#alive[@]})) || return 0
        sleep 0.1
    done
    say "pids ${alive[*]} did not stop in 10 s: killing them"
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
    local var port
    for var in "${PORT_VARS[@]}"; do
        port=${!var}
        port_free "$port" || die "port $port ($var) on 127.0.0.1 is in use: stop what uses it, or set $var (another cluster? \`bash hack/cluster.sh status\`)"
    done
}

wait_for() {  # wait_for WHAT COMPONENT CMD...: poll CMD until it succeeds; on timeout show the log
    local what=$1 component=$2 deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [[ -z $(pid_of "$component") ]]; then
            tail -n 25 "$STATE/logs/$component.log" >&2 || true
            die "$component exited while waiting for $what (log: $STATE/logs/$component.log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 25 "$STATE/logs/$component.log" >&2 || true
            die "timed out after ${TIMEOUT}s waiting for $what (log: $STATE/logs/$component.log)"
        fi
        sleep 0.2
    done
}

wait_readyz() {  # wait_readyz COMPONENT PORT WHAT [node|own]: until its /readyz on 127.0.0.1:PORT (in the node's or its own namespace) answers
    local in=()
    [[ ${4:-} != node ]] || in=(node_exec)
    [[ ${4:-} != own ]] || in=(to_exec)
    wait_for "$1 /readyz ($3)" "$1" "${in[@]}" curl -sf "http://127.0.0.1:$2/readyz"
}

bind_cluster_admin() {  # bind_cluster_admin NAME...: user tac2sol:NAME (a client certificate) is cluster-admin
    local user
    for user in "$@"; do
        kubectl create clusterrolebinding "tac2sol:$user" --clusterrole=cluster-admin \
            --user="tac2sol:$user" --dry-run=client -o yaml | kubectl apply --server-side \
            --field-manager=tac2sol-cluster -f - >/dev/null
    done
}

# --- certificates and kubeconfigs ----------------------------------------------------------------

issue() {  # issue NAME CN [O] [SANS]: an EC key and a certificate signed by the cluster CA
    local name=$1 cn=$2 org=${3:-} sans=${4:-} subj ext=()
    subj="/CN=$cn"
    [[ -n $org ]] && subj="/O=$org$subj"
    [[ -n $sans ]] && ext=(-addext "subjectAltName=$sans")
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
    openssl req -new -key "$PKI/$name.key" -subj "$subj" "${ext[@]}" -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -copy_extensions copyall -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr"
}

make_pki() {
    rm -rf "$PKI" && mkdir -p "$PKI" && chmod 700 "$PKI"
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=tac2sol-test-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
    issue apiserver kube-apiserver "" \
        "IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin tac2sol-admin system:masters
    issue kube-controller-manager system:kube-controller-manager
    issue kube-scheduler system:kube-scheduler
    issue training-operator tac2sol:training-operator
    issue kwok tac2sol:kwok
    issue kubelet "system:node:$NODE_NAME" system:nodes
    issue apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    issue coredns tac2sol:coredns
    issue kube-proxy system:kube-proxy  # bound to system:node-proxier by the default RBAC
    issue trainer-controller-manager tac2sol:trainer-controller-manager
    issue jobset tac2sol:jobset
    # The serving certificate of Trainer v2's and JobSet's webhooks on 127.0.0.1 (trainer-up) and of
    # Trainer's status server (TAC2SOL_TRAINER_STATUS=1); webhook configurations and pods trust the cluster CA.
    issue webhook-serving tac2sol-webhooks "" "IP:127.0.0.1,DNS:$STATUS_SERVICE.$STATUS_NS.svc"
    # Service-account tokens: the apiserver signs with sa.key (ES256), everyone verifies with sa.pub.
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
    openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    # training-operator's webhook certificates, in the shape its cert rotator accepts as valid
    # (a CA named training-operator-ca, a server cert for training-operator.kubeflow.svc, both
    # valid past its 90-day look-ahead), so it uses them as they are. It parses the CA key as
    # PKCS#1 RSA (cert-controller's buildArtifactsFromSecret): no EC keys here.
    local w=$PKI/webhook
    mkdir -p "$w"
    openssl genrsa -traditional -out "$w/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$w/ca.key" -subj "/O=training-operator/CN=training-operator-ca" \
        -addext "subjectAltName=DNS:training-operator-ca" -days 3650 -out "$w/ca.crt" 2>/dev/null
    openssl genrsa -traditional -out "$w/tls.key" 2048 2>/dev/null
    openssl req -new -key "$w/tls.key" -subj "/CN=training-operator.kubeflow.svc" \
        -addext "subjectAltName=DNS:training-operator.kubeflow.svc" -out "$w/tls.csr" 2>/dev/null
    openssl x509 -req -in "$w/tls.csr" -CA "$w/ca.crt" -CAkey "$w/ca.key" -CAcreateserial -days 3650 \
        -copy_extensions copyall -out "$w/tls.crt" 2>/dev/null
    rm -f "$w/tls.csr"
}

write_kubeconfig() {  # write_kubeconfig FILE USER: certificates embedded, so the file travels alone
    local file=$1 user=$2
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tac2sol-test
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: tac2sol-test
  context:
    cluster: tac2sol-test
    user: $user
current-context: tac2sol-test
EOF
    chmod 600 "$file"
}

write_env() {
    cat >"$STATE/cluster.env" <<EOF
# Written by hack/cluster.sh up: source it to talk to this cluster.
export KUBECONFIG=$KUBECONFIG_PATH
export TAC2SOL_CLUSTER_DIR=$STATE
export TAC2SOL_APISERVER_URL=$SERVER
EOF
    local var
    for var in "${PORT_VARS[@]}"; do echo "export $var=${!var}" >>"$STATE/cluster.env"; done
    if [[ $REAL_NODE != 0 ]]; then echo "export TAC2SOL_NODE_CGROUP_ROOT=$CGROUP_ROOT" >>"$STATE/cluster.env"; fi
}

# --- components ----------------------------------------------------------------------------------

start_etcd() {
    start etcd --name=tac2sol --data-dir="$STATE/etcd" \
        --listen-client-urls="http://127.0.0.1:$TAC2SOL_ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$TAC2SOL_ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$TAC2SOL_ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$TAC2SOL_ETCD_PEER_PORT" \
        --initial-cluster="tac2sol=http://127.0.0.1:$TAC2SOL_ETCD_PEER_PORT" \
        --unsafe-no-fsync --log-level=warn
    wait_for "etcd health" etcd curl -sf "http://127.0.0.1:$TAC2SOL_ETCD_PORT/health"
}

start_apiserver() {
    local node_args=()
    if [[ $REAL_NODE != 0 ]]; then
        # Connections to kubelets and pods (logs, exec, proxy) go into the node's namespace.
        mkdir -p "$NODE_DIR"
        cat >"$STATE/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $NODE_DIR/egress.sock
EOF
        node_args=(--egress-selector-config-file="$STATE/egress-selector.yaml"
            --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
            --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
            --kubelet-preferred-address-types=InternalIP,Hostname
            # The `kubernetes` Service's endpoint: NODE_IP:PORT, which hack/node.sh forwards here.
            --advertise-address="$NODE_IP" --endpoint-reconciler-type=lease)
    else
        # No pods to serve: no endpoint (a loopback one is invalid).
        node_args=(--advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
    fi
    start kube-apiserver --etcd-servers="http://127.0.0.1:$TAC2SOL_ETCD_PORT" \
        --bind-address=127.0.0.1 --secure-port="$TAC2SOL_APISERVER_PORT" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" --anonymous-auth=false \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-account-issuer="$SA_ISSUER" --api-audiences="$SA_ISSUER" \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=true --profiling=false "${node_args[@]}"
    wait_for "kube-apiserver /readyz" kube-apiserver kubectl get --raw /readyz
}

start_controllers() {
    local kc=$STATE/kube-controller-manager.kubeconfig ks=$STATE/kube-scheduler.kubeconfig
    # --secure-port=0: no HTTPS endpoint to collide with another cluster; readiness is the lease.
    start kube-controller-manager --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
        --bind-address=127.0.0.1 --secure-port=0 --leader-elect=true \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
    start kube-scheduler --kubeconfig="$ks" \
        --authentication-kubeconfig="$ks" --authorization-kubeconfig="$ks" \
        --bind-address=127.0.0.1 --secure-port=0 --leader-elect=true --profiling=false
}

install_crds_and_rbac() {
    kubectl apply --server-side --field-manager=tac2sol-cluster -f "$CRDS/kubeflow.org_pytorchjobs.yaml" \
        -f "$CRDS/kubeflow.org_mpijobs.yaml" >/dev/null
    # training-operator and kwok run out of cluster as users of their own, bound to cluster-admin.
    bind_cluster_admin training-operator kwok
    # The operator's cert rotator updates this Secret but never creates it.
    kubectl create namespace kubeflow --dry-run=client -o yaml \
        | kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null
    local w=$PKI/webhook
    kubectl -n kubeflow create secret generic training-operator-webhook-cert \
        --from-file=ca.crt="$w/ca.crt" --from-file=ca.key="$w/ca.key" \
        --from-file=tls.crt="$w/tls.crt" --from-file=tls.key="$w/tls.key" --dry-run=client -o yaml \
        | kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null
    kubectl wait --for=condition=Established --timeout="${TIMEOUT}s" \
        crd/pytorchjobs.kubeflow.org crd/mpijobs.kubeflow.org >/dev/null
}

start_training_operator() {
    # Its webhook server binds ":WEBHOOK_PORT", all interfaces (v1.9 has no flag for the host), so it
    # runs as pid 1 of network, mount and pid namespaces of its own: that port exists only there.
    # Nothing registers its webhook with the apiserver (no ValidatingWebhookConfiguration here), so
    # nothing needs to reach it from outside; /readyz is polled from inside (to_exec). It reaches
    # the apiserver as the real node does: its 127.0.0.1:APISERVER_PORT is a socat to a Unix socket
    # whose other end (component training-operator-socket) connects to the apiserver. Its cert
    # rotator writes the Secret's certificates to the fixed /tmp/k8s-webhook-server/serving-certs
    # (pkg/cert/cert.go), where its webhook server reads them: a private bind mount of its own
    # folder there, so that clusters running at once never share the files.
    local dir=$STATE/training-operator userns=()
    mkdir -p "$dir/serving-certs" "$WEBHOOK_CERT_DIR"  # the host's path: only a mount point
    cp "$PKI/webhook/tls.crt" "$PKI/webhook/tls.key" "$dir/serving-certs/"
    setsid socat "UNIX-LISTEN:$dir/apiserver.sock,fork,mode=600" "TCP:127.0.0.1:$TAC2SOL_APISERVER_PORT" \
        >"$STATE/logs/training-operator-socket.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/training-operator-socket.pid"
    await_exec $! "$(command -v socat)"
    [[ $(id -u) == 0 ]] || userns=(--user --map-root-user)  # unprivileged: a user namespace owns them
    # shellcheck disable=SC2016  # expanded by the inner bash
    KUBECONFIG=$STATE/training-operator.kubeconfig TMPDIR=/tmp setsid \
        unshare "${userns[@]}" --net --mount --pid --fork --propagation private -- bash -c '
            dir=$1 port=$2 && shift 2
            ip link set lo up
            mount --bind "$dir/serving-certs" /tmp/k8s-webhook-server/serving-certs
            socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$dir/apiserver.sock" </dev/null &
            until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
            exec "$@"' training-operator "$dir" "$TAC2SOL_APISERVER_PORT" "$BIN/training-operator" \
        --enable-scheme=pytorchjob --enable-scheme=mpijob --leader-elect=false \
        --pytorch-init-container-template-file="$HACK/training-operator/init-pytorch.yaml" \
        --pytorch-init-container-image="$TRAINER_CPU_IMAGE" \
        --mpi-kubectl-delivery-image="$KUBECTL_DELIVERY_IMAGE" \
        --metrics-bind-address="127.0.0.1:$TAC2SOL_TRAINING_OPERATOR_METRICS_PORT" \
        --health-probe-bind-address="127.0.0.1:$TAC2SOL_TRAINING_OPERATOR_HEALTH_PORT" \
        --webhook-server-port="$TAC2SOL_TRAINING_OPERATOR_WEBHOOK_PORT" \
        >"$STATE/logs/training-operator.log" 2>&1 </dev/null &
    # Its pid 1, as the host sees it: when it exits, the kernel ends the socat inside too.
    local child
    child=$(ns_pid1 $! "$STATE/logs/training-operator.log" "the training-operator's")
    echo "$child" >"$STATE/pids/training-operator.pid"
    await_exec "$child" "$BIN/training-operator"
}

to_exec() {  # to_exec CMD...: run CMD in the training-operator's network namespace
    local pid userns=()
    pid=$(pid_of training-operator)
    [[ -n $pid ]] || die "the training-operator is not running"
    [[ $(id -u) == 0 ]] || userns=(--user --preserve-credentials)
    nsenter --target "$pid" "${userns[@]}" --net -- "$@"
}

start_kwok() {
    start kwok --kubeconfig="$STATE/kwok.kubeconfig" --config="$HACK/kwok/stages.yaml" \
        --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
    kubectl apply --server-side --field-manager=tac2sol-cluster -f "$HACK/kwok/nodes.yaml" >/dev/null
}

# --- Kubeflow Trainer v2 and JobSet (trainer-up) ------------------------------------------------

need_trainer() {
    local name
    for name in "${TRAINER_COMPONENTS[@]}"; do
        [[ -x $BIN/$name ]] || die "$BIN/$name is missing: run \`bash hack/install-tools.sh\` (or \`make tools\`) first"
    done
    [[ -f $TRAINER_CRDS/jobset.x-k8s.io_jobsets.yaml && -f $TRAINER_CRDS/trainer.kubeflow.org_trainjobs.yaml ]] \
        || die "no Trainer v2 / JobSet CRDs in $TRAINER_CRDS: run \`bash hack/install-tools.sh\` (or set TAC2SOL_TRAINER_CRDS_DIR)"
    [[ -f $PKI/webhook-serving.crt ]] \
        || die "$STATE was started by an older hack/cluster.sh (no webhook-serving certificate): \`down\`, then \`up\` again"
    [[ $TRAINER_STATUS == 0 || $(openssl x509 -in "$PKI/webhook-serving.crt" -noout -ext subjectAltName) == *"$STATUS_SERVICE"* ]] \
        || die "$STATE was started by an older hack/cluster.sh (its serving certificate does not name $STATUS_SERVICE): \`down\`, then \`up\` again"
}

serving_certs() {  # serving_certs DIR: the webhook certificate where controller-runtime reads it
    mkdir -p "$1"
    cp "$PKI/webhook-serving.crt" "$1/tls.crt"
    cp "$PKI/webhook-serving.key" "$1/tls.key"
}

webhook() {  # webhook NAME PORT PATH RULE [OBJECT_SELECTOR]: one webhook entry, called by URL
    cat <<EOF
- name: $1
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
  clientConfig:
    url: https://127.0.0.1:$2$3
    caBundle: $(base64 -w0 "$PKI/ca.crt")
  rules: [$4]
EOF
    [[ -z ${5:-} ]] || echo "  objectSelector: $5"
}

start_jobset() {
    local dir=$STATE/jobset port=$TAC2SOL_JOBSET_WEBHOOK_PORT
    serving_certs "$dir/serving-certs"
    cat >"$dir/config.yaml" <<EOF
apiVersion: config.jobset.x-k8s.io/v1alpha1
kind: Configuration
webhook: {host: 127.0.0.1, port: $port, certDir: $dir/serving-certs}
health: {healthProbeBindAddress: "127.0.0.1:$TAC2SOL_JOBSET_HEALTH_PORT"}
metrics: {bindAddress: "0"}
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
EOF
    KUBECONFIG=$STATE/jobset.kubeconfig start jobset --config="$dir/config.yaml" \
        --metrics-bind-address=0 --leader-elect=false --zap-devel=false
    wait_readyz jobset "$TAC2SOL_JOBSET_HEALTH_PORT" "webhook server"
    # As JobSet's own manifests (config/components/webhook): pods only when a JobSet made them.
    local jobsets='{apiGroups: [jobset.x-k8s.io], apiVersions: [v1alpha2], resources: [jobsets]'
    local pods='{apiGroups: [""], apiVersions: [v1], resources: [pods], operations: [CREATE]}'
    local jobset_pods='{matchExpressions: [{key: jobset.sigs.k8s.io/jobset-name, operator: Exists}]}'
    kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: tac2sol-jobset}
webhooks:
$(webhook mjobset.kb.io "$port" /mutate-jobset-x-k8s-io-v1alpha2-jobset "$jobsets, operations: [CREATE]}")
$(webhook mpod.kb.io "$port" /mutate--v1-pod "$pods" "$jobset_pods")
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: tac2sol-jobset}
webhooks:
$(webhook vjobset.kb.io "$port" /validate-jobset-x-k8s-io-v1alpha2-jobset "$jobsets, operations: [CREATE, UPDATE]}")
$(webhook vpod.kb.io "$port" /validate--v1-pod "$pods" "$jobset_pods")
EOF
}

start_trainer() {
    local dir=$STATE/trainer port=$TAC2SOL_TRAINER_WEBHOOK_PORT
    # Its webhook server reads $TMPDIR/k8s-webhook-server/serving-certs (controller-runtime's
    # default; its Configuration has no certDir): a TMPDIR of its own keeps it off the
    # training-operator's fixed /tmp path and off other clusters'.
    serving_certs "$dir/tmp/k8s-webhook-server/serving-certs"
    cat >"$dir/config.yaml" <<EOF
apiVersion: config.trainer.kubeflow.org/v1alpha1
kind: Configuration
webhook: {host: 127.0.0.1, port: $port}
health: {healthProbeBindAddress: "127.0.0.1:$TAC2SOL_TRAINER_HEALTH_PORT"}
metrics: {bindAddress: "0", secureServing: false}
leaderElection: {leaderElect: false}
certManagement: {enable: false}
EOF
    if [[ $TRAINER_STATUS == 0 ]]; then
        rm -f "$dir/status-server"
        TMPDIR=$dir/tmp KUBECONFIG=$STATE/trainer-controller-manager.kubeconfig \
            start trainer-controller-manager --config="$dir/config.yaml"
        wait_readyz trainer-controller-manager "$TAC2SOL_TRAINER_HEALTH_PORT" "webhook server"
    else
        printf 'featureGates: {TrainJobStatus: true}\nstatusServer: {port: %s}\n' "$STATUS_PORT" >>"$dir/config.yaml"
        start_trainer_in_node "$dir"
        wait_readyz trainer-controller-manager "$TAC2SOL_TRAINER_HEALTH_PORT" "webhook server" node
        wait_for "the status server on $NODE_IP:$STATUS_PORT" trainer-controller-manager \
            node_exec curl -s -o /dev/null --cacert "$PKI/ca.crt" --resolve "$STATUS_SERVICE.$STATUS_NS.svc:$STATUS_PORT:$NODE_IP" \
            "https://$STATUS_SERVICE.$STATUS_NS.svc:$STATUS_PORT/"
        # The apiserver calls the webhooks on 127.0.0.1 of the host's namespace: one nsenter + socat
        # per connection carries them to 127.0.0.1 of the node's.
        setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" \
            "EXEC:nsenter --target $(pid_of node) --net socat STDIO TCP\:127.0.0.1\:$port" \
            >"$STATE/logs/$STATUS_FORWARDER.log" 2>&1 </dev/null &
        echo $! >"$STATE/pids/$STATUS_FORWARDER.pid"
        await_exec $! "$(command -v socat)"
        wait_for "the webhook forwarder on 127.0.0.1:$port" "$STATUS_FORWARDER" \
            curl -sk -o /dev/null "https://127.0.0.1:$port/"
        : >"$dir/status-server"
    fi
    # As Trainer's own manifests (manifests/base/webhook); the label lets a runtime opt out.
    local group='apiGroups: [trainer.kubeflow.org], apiVersions: [v1alpha1], operations: [CREATE, UPDATE]'
    local opt_out='{matchExpressions: [{key: trainer.kubeflow.org/webhook-validation, operator: NotIn, values: [disabled]}]}'
    kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: tac2sol-trainer}
webhooks:
$(webhook defaulter.trainjob.trainer.kubeflow.org "$port" /mutate-trainer-kubeflow-org-v1alpha1-trainjob "{$group, resources: [trainjobs]}")
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: tac2sol-trainer}
webhooks:
$(webhook validator.clustertrainingruntime.trainer.kubeflow.org "$port" \
    /validate-trainer-kubeflow-org-v1alpha1-clustertrainingruntime "{$group, resources: [clustertrainingruntimes]}" "$opt_out")
$(webhook validator.trainingruntime.trainer.kubeflow.org "$port" \
    /validate-trainer-kubeflow-org-v1alpha1-trainingruntime "{$group, resources: [trainingruntimes]}" "$opt_out")
$(webhook validator.trainjob.trainer.kubeflow.org "$port" \
    /validate-trainer-kubeflow-org-v1alpha1-trainjob "{$group, resources: [trainjobs]}")
EOF
}

status_server_objects() {  # what Trainer's status plugin and its pods look up, as an install has them
    kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $STATUS_NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: $STATUS_SERVICE, namespace: $STATUS_NS}
---
apiVersion: v1
kind: Secret
metadata: {name: $STATUS_SECRET, namespace: $STATUS_NS}
data: {ca.crt: $(base64 -w0 "$PKI/ca.crt")}
---
apiVersion: v1
kind: Service
metadata: {name: $STATUS_SERVICE, namespace: $STATUS_NS}
spec:
  ports: [{name: status, port: $STATUS_PORT, targetPort: $STATUS_PORT, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $STATUS_SERVICE-node
  namespace: $STATUS_NS
  labels: {kubernetes.io/service-name: $STATUS_SERVICE, endpointslice.kubernetes.io/managed-by: tac2sol-cluster}
addressType: IPv4
ports: [{name: status, port: $STATUS_PORT, protocol: TCP}]
endpoints: [{addresses: [$NODE_IP], conditions: {ready: true}}]
EOF
}

start_trainer_in_node() {  # start_trainer_in_node DIR: trainer-controller-manager in the node's network namespace
    local dir=$1 sa=$1/run/secrets/kubernetes.io/serviceaccount resolv target
    status_server_objects
    mkdir -p "$sa"
    kubectl -n "$STATUS_NS" create token "$STATUS_SERVICE" --duration=24h >"$sa/token"
    echo "$STATUS_NS" >"$sa/namespace"
    cp "$PKI/ca.crt" "$sa/ca.crt"
    # Its private /run is $dir/run: where /etc/resolv.conf points into /run, the file goes there.
    resolv=$dir/resolv.conf
    target=$(readlink -f /etc/resolv.conf)
    if [[ $target == /run/* ]]; then resolv=$dir/run/${target#/run/} && mkdir -p "$(dirname "$resolv")"; fi
    printf 'nameserver %s\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n' \
        "$NODE_IP" "$STATUS_NS" >"$resolv"
    mkdir -p /tmp/k8s-webhook-server/serving-certs  # the mount point (training-operator's path)
    # shellcheck disable=SC2016  # expanded by the inner bash
    KUBECONFIG=$STATE/trainer-controller-manager.kubeconfig TMPDIR=$dir/tmp setsid \
        nsenter --target "$(pid_of node)" --net -- unshare --mount --propagation private -- bash -c '
            dir=$1 && shift
            [[ $(readlink -f /etc/resolv.conf) == /run/* ]] || mount --bind "$dir/resolv.conf" /etc/resolv.conf
            mount --bind "$dir/tmp/k8s-webhook-server/serving-certs" /tmp/k8s-webhook-server/serving-certs
            mount --bind "$dir/run" /run
            exec "$@"' trainer "$dir" "$BIN/trainer-controller-manager" --config="$dir/config.yaml" \
        >"$STATE/logs/trainer-controller-manager.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/trainer-controller-manager.pid"
    await_exec $! "$BIN/trainer-controller-manager"  # four execs to get there
}

trainer_mode() {  # what runs: none, plain or status (the gate)
    if [[ -z $(pid_of trainer-controller-manager) || -z $(pid_of jobset) ]]; then
        echo none
    elif [[ -f $STATE/trainer/status-server ]]; then
        echo status
    else
        echo plain
    fi
}

trainer_up() {  # JobSet, then Trainer v2, with their CRDs and webhooks; nothing when both run as asked
    local want=plain mode c
    [[ $TRAINER_STATUS == 0 ]] || want=status
    [[ $want == plain || $REAL_NODE != 0 ]] || die "TAC2SOL_TRAINER_STATUS=1 needs the real node (TAC2SOL_REAL_NODE=0 here)"
    mode=$(trainer_mode)
    [[ $mode != "$want" ]] || return 0
    need_trainer
    local t0=$SECONDS
    if [[ $mode != none ]]; then  # the gate changes: only the trainer restarts
        say "restarting trainer-controller-manager with the TrainJobStatus gate $([[ $want == status ]] && echo on || echo off)"
        stop "$STATUS_FORWARDER" trainer-controller-manager
        start_trainer
        say "trainer-controller-manager ready in $((SECONDS - t0)) s"
        return
    fi
    stop "$STATUS_FORWARDER" "${TRAINER_COMPONENTS[@]}"  # a half-started pair: start over
    say "installing the Trainer v2 and JobSet CRDs; starting JobSet and trainer-controller-manager"
    kubectl apply --server-side --field-manager=tac2sol-cluster -f "$TRAINER_CRDS/jobset.x-k8s.io_jobsets.yaml" \
        -f "$TRAINER_CRDS/trainer.kubeflow.org_trainjobs.yaml" \
        -f "$TRAINER_CRDS/trainer.kubeflow.org_trainingruntimes.yaml" \
        -f "$TRAINER_CRDS/trainer.kubeflow.org_clustertrainingruntimes.yaml" >/dev/null
    bind_cluster_admin "${TRAINER_COMPONENTS[@]}"
    kubectl wait --for=condition=Established --timeout="${TIMEOUT}s" crd/jobsets.jobset.x-k8s.io \
        crd/trainjobs.trainer.kubeflow.org crd/trainingruntimes.trainer.kubeflow.org \
        crd/clustertrainingruntimes.trainer.kubeflow.org >/dev/null
    mkdir -p "$STATE/jobset" "$STATE/trainer"
    start_jobset
    start_trainer
    say "Trainer v2 and JobSet ready in $((SECONDS - t0)) s"
}

# --- the real node (hack/node.sh) ----------------------------------------------------------------

cgroup_dirs() {  # the node's cgroup root in every hierarchy (v1 controllers, or the v2 tree)
    local h
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        echo "/sys/fs/cgroup$CGROUP_ROOT"
        return
    fi
    for h in /sys/fs/cgroup/*/; do
        if [[ -f $h/cgroup.procs && ! -L ${h%/} ]]; then echo "${h%/}$CGROUP_ROOT"; fi
    done
}

make_cgroups() {  # the kubelet wants its cgroupRoot to exist
    local dir f
    while read -r dir; do
        mkdir -p "$dir"
        for f in cpuset.cpus cpuset.mems; do  # a new v1 cpuset has none: copy its parent's
            if [[ -f $dir/$f ]]; then cat "$(dirname "$dir")/$f" >"$dir/$f"; fi
        done
    done < <(cgroup_dirs)
}

remove_cgroups() {  # deepest first; a process that is still dying keeps its cgroup a moment
    local dir i
    for ((i = 0; i < 50; i++)); do
        local left=0
        while read -r dir; do
            [[ -d $dir ]] || continue
            find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
            if [[ -d $dir ]]; then left=1; fi
        done < <(cgroup_dirs)
        ((left)) || return 0
        sleep 0.2
    done
    say "cgroups under $CGROUP_ROOT are still busy: $(cgroup_dirs | tr '\n' ' ')"
}

start_node() {
    mkdir -p "$NODE_DIR/logs"
    cp "$PKI/ca.crt" "$NODE_DIR/ca.crt"
    write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet
    write_kubeconfig "$NODE_DIR/coredns.kubeconfig" coredns
    write_kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" kube-proxy
    kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "tac2sol:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "tac2sol:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "tac2sol:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "tac2sol:coredns"}]
EOF
    make_cgroups
    # The host's end of the node's way to the apiserver: a Unix socket, no address.
    setsid socat "UNIX-LISTEN:$NODE_DIR/apiserver.sock,fork,mode=600" "TCP:127.0.0.1:$TAC2SOL_APISERVER_PORT" \
        >"$STATE/logs/apiserver-socket.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/apiserver-socket.pid"
    await_exec $! "$(command -v socat)"
    setsid unshare --net --mount --pid --fork --propagation private \
        env NODE_DIR="$NODE_DIR" NODE_NAME="$NODE_NAME" NODE_IP="$NODE_IP" POD_CIDR="$POD_CIDR" SERVICE_CIDR="$SERVICE_CIDR" \
        CGROUP_ROOT="$CGROUP_ROOT" APISERVER_PORT="$TAC2SOL_APISERVER_PORT" CACHE="$CACHE" BIN="$BIN" \
        PYTHON="$PYTHON" PAUSE_IMAGE="$PAUSE_IMAGE" PAUSE_TARBALL="$PAUSE_TARBALL" \
        KUBECTL_DELIVERY_TARBALL="$KUBECTL_DELIVERY_TARBALL" \
        bash "$HACK/node.sh" inside >"$STATE/logs/node.log" 2>&1 </dev/null &
    local child
    child=$(ns_pid1 $! "$STATE/logs/node.log" "the node's")
    echo "$child" >"$STATE/pids/node.pid"
}

ns_pid1() {  # ns_pid1 UNSHARE_PID LOG WHAT: the pid 1 of `unshare --fork`'s namespaces, as the host sees it
    local child="" i
    for ((i = 0; i < 100; i++)); do
        child=$(cat "/proc/$1/task/$1/children" 2>/dev/null | awk '{print $1}')
        [[ -n $child ]] && break
        sleep 0.05
    done
    [[ -n $child ]] || { tail -n 25 "$2" >&2; die "$3 namespaces did not start"; }
    echo "$child"
}

make_local_volumes() {  # a StorageClass and a pool of local PersistentVolumes on the node's disk
    local i docs=""
    for ((i = 0; i < LOCAL_VOLUMES; i++)); do
        mkdir -p "$NODE_DIR/volumes/pv-$i"
        docs+="---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $NODE_NAME-pv-$i, labels: {tac2sol.dev/node: real}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $STORAGE_CLASS
  local: {path: $NODE_DIR/volumes/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]
"
    done
    kubectl apply --server-side --field-manager=tac2sol-cluster -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $STORAGE_CLASS}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
$docs
EOF
}

node_exec() {  # node_exec CMD...: run CMD in the node's network namespace
    local pid
    pid=$(pid_of node)
    [[ -n $pid ]] || die "the real node is not running"
    nsenter --target "$pid" --net -- "$@"
}

node_ready() {
    [[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

lease_held() { kubectl -n kube-system get lease "$1" -o jsonpath='{.spec.holderIdentity}' | grep -q .; }
nodes_ready() {
    [[ $(kubectl get nodes -l type=kwok \
        -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
        | grep -c '^True$') == 2 ]]
}

# --- commands ------------------------------------------------------------------------------------

running_count() {
    local n=0 c
    for c in "${COMPONENTS[@]}"; do [[ -n $(pid_of "$c") ]] && n=$((n + 1)); done
    echo "$n"
}

cmd_up() {
    load_settings
    need_binaries
    [[ $TRAINER_V2 == 0 ]] || need_trainer
    mkdir -p "$STATE"
    if [[ $(running_count) == "${#COMPONENTS[@]}" ]]; then
        say "already up ($STATE)"
        [[ $TRAINER_V2 == 0 ]] || trainer_up
        echo "KUBECONFIG=$KUBECONFIG_PATH"
        return
    fi
    cmd_down quiet  # a half-started cluster: start over from nothing
    local t0=$SECONDS
    check_ports
    mkdir -p "$STATE/pids" "$STATE/logs"
    make_pki
    local user
    for user in admin kube-controller-manager kube-scheduler training-operator kwok trainer-controller-manager jobset; do
        write_kubeconfig "$STATE/$user.kubeconfig" "$user"
    done
    cp "$STATE/admin.kubeconfig" "$KUBECONFIG_PATH"
    trap 'on_exit_during_up $?' EXIT
    say "starting etcd and kube-apiserver on 127.0.0.1:$TAC2SOL_APISERVER_PORT"
    start_etcd
    start_apiserver
    say "starting controller-manager, scheduler; installing the Kubeflow CRDs"
    start_controllers
    install_crds_and_rbac
    say "starting training-operator and kwok (2 fake nodes x 4 nvidia.com/gpu)"
    start_training_operator
    start_kwok
    wait_for "the kube-controller-manager lease" kube-controller-manager lease_held kube-controller-manager
    wait_for "the kube-scheduler lease" kube-scheduler lease_held kube-scheduler
    wait_for "the default ServiceAccount (service-account controller)" kube-controller-manager \
        kubectl -n default get serviceaccount default
    wait_for "2 Ready kwok nodes" kwok nodes_ready
    wait_readyz training-operator "$TAC2SOL_TRAINING_OPERATOR_HEALTH_PORT" "webhook certs, controllers" own
    if [[ $REAL_NODE != 0 ]]; then
        local t_node=$SECONDS
        say "starting the real node $NODE_NAME (containerd, kubelet, kube-proxy, CoreDNS; its own namespaces)"
        start_node
        wait_for "node $NODE_NAME Ready" node node_ready
        wait_for "CoreDNS ready" node node_exec curl -sf http://127.0.0.1:8181/ready
        make_local_volumes
        say "node $NODE_NAME Ready in $((SECONDS - t_node)) s"
    fi
    [[ $TRAINER_V2 == 0 ]] || trainer_up
    trap - EXIT
    write_env
    [[ -z ${TAC2SOL_CLUSTER_OWNER_PID:-} ]] || start_watchdog "$TAC2SOL_CLUSTER_OWNER_PID"
    say "up in $((SECONDS - t0)) s; state and logs in $STATE"
    echo "KUBECONFIG=$KUBECONFIG_PATH"
}

on_exit_during_up() {  # a failed `up` leaves nothing running
    if [[ $1 != 0 ]]; then
        say "start failed; stopping what started (logs stay in $STATE/logs)"
        cmd_down quiet
    fi
}

start_watchdog() {  # start_watchdog PID: `down` once PID has exited
    # shellcheck disable=SC2016  # $1, $2 expand in the watchdog's shell
    TAC2SOL_CLUSTER_DIR=$STATE setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done; exec bash "$2" down' \
        watchdog "$1" "$HACK/cluster.sh" >>"$STATE/logs/watchdog.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/watchdog.pid"
}

watchdog_pid() {  # the watchdog's pid while it runs, or nothing
    local file=$STATE/pids/watchdog.pid pid
    [[ -f $file ]] || return 0
    pid=$(<"$file")
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^bash -c while kill -0"; then echo "$pid"; fi
}

stop_watchdog() {  # unless this is the watchdog itself, going down
    local pid
    pid=$(watchdog_pid)
    rm -f "$STATE/pids/watchdog.pid"
    if [[ -n $pid && $pid != "$$" ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
}

cmd_down() {
    local quiet=${1:-}
    stop_watchdog
    # Clients first, all at once; etcd last, so that the apiserver can shut down cleanly.
    stop "$STATUS_FORWARDER" "${TRAINER_COMPONENTS[@]}" "${COMPONENTS[@]:1}"
    stop etcd
    # The node's pid 1 is gone, so are its namespaces and what ran in them: its cgroups and files last.
    remove_cgroups
    rm -rf "$NODE_DIR"
    # Fresh data on the next `up`; logs stay for a look after a failure.
    rm -rf "$STATE/etcd" "$STATE/pids" "$STATE/cluster.env" "$STATE/jobset" "$STATE/trainer" "$STATE/training-operator"
    [[ -n $quiet ]] || say "down ($STATE)"
}

cmd_reap() {  # down, unless a component or the watchdog still runs
    local c
    [[ -d $STATE && -z $(watchdog_pid) ]] || return 0
    load_settings
    [[ $(running_count) == 0 ]] || return 0
    for c in "${TRAINER_COMPONENTS[@]}"; do [[ -z $(pid_of "$c") ]] || return 0; done
    cmd_down quiet
    say "reaped a cluster nothing ran of ($STATE)"
}

cmd_status() {
    local c pid missing=0
    for c in "${COMPONENTS[@]}"; do
        pid=$(pid_of "$c")
        if [[ -n $pid ]]; then
            printf '%-26s running (pid %s)\n' "$c" "$pid"
        else
            printf '%-26s stopped\n' "$c"
            missing=1
        fi
    done
    for c in "${TRAINER_COMPONENTS[@]}"; do  # optional: counted only with TAC2SOL_TRAINER_V2=1
        pid=$(pid_of "$c")
        if [[ -n $pid ]]; then
            printf '%-26s running (pid %s)\n' "$c" "$pid"
        else
            printf '%-26s not started (bash hack/cluster.sh trainer-up)\n' "$c"
            [[ $TRAINER_V2 == 0 ]] || missing=1
        fi
    done
    pid=$(pid_of "$STATUS_FORWARDER")
    [[ -z $pid ]] || printf '%-26s running (pid %s; TrainJobStatus gate on)\n' "$STATUS_FORWARDER" "$pid"
    if [[ $missing == 0 ]]; then
        echo "KUBECONFIG=$KUBECONFIG_PATH"
    fi
    return "$missing"
}

cmd_trainer_up() {
    load_settings
    [[ $(running_count) == "${#COMPONENTS[@]}" ]] \
        || die "the cluster in $STATE is not (fully) up: \`bash hack/cluster.sh up\` first (or TAC2SOL_TRAINER_V2=1 at up)"
    # A failed start leaves neither running (the cluster itself stays up).
    trap 'if [[ $? != 0 ]]; then say "trainer-up failed (logs in $STATE/logs)"; stop "$STATUS_FORWARDER" "${TRAINER_COMPONENTS[@]}"; fi' EXIT
    trainer_up
    trap - EXIT
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
reap) cmd_reap ;;
trainer-up) cmd_trainer_up ;;
node-exec)
    shift
    node_exec "$@"
    ;;
*) die "usage: bash hack/cluster.sh up|down|status|reap|trainer-up|node-exec CMD... (see the header of hack/cluster.sh)" ;;
esac
