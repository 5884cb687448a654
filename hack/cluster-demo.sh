#!/usr/bin/env bash
# The cluster tour (`make cluster-demo`): a real control plane on 127.0.0.1 (hack/cluster.sh), the
# tac2sol operator running against it, `kubectl apply -f runs/qwen32b.yaml`, and the simulated
# PyTorchJob (kwok's fake 4 x RTX 8000 nodes) running to completion; then DeepSeek-V3, which the
# planner refuses with the arithmetic; then the real path on the cluster's real node: the CPU
# trainer image built (layers cached; ~15 min cold) and imported, runs/tiny-cluster.yaml trained
# by 2 real pods (DDP over gloo) under Pod Security `restricted`, progress read from their
# /metrics by a second operator in the node's network namespace, and the adapter on the output
# volume. Everything the tour started is stopped at the end.
#
# Environment (optional): TAC2SOL_DEMO_KEEP=1 leaves the cluster and the operator running;
# TAC2SOL_REAL_NODE=0 skips the real path (no root, no real node);
# TAC2SOL_DEMO_NAMESPACE (tac2sol-demo); the TAC2SOL_CLUSTER_DIR and port variables of
# hack/cluster.sh choose which cluster (default ~/.cache/tac2sol/cluster).
set -euo pipefail
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
cd "$REPO"
export PYTHONSAFEPATH=1
CACHE=${TAC2SOL_CACHE:-$HOME/.cache/tac2sol}
STATE=${TAC2SOL_CLUSTER_DIR:-$CACHE/cluster}
NS=${TAC2SOL_DEMO_NAMESPACE:-tac2sol-demo}
TAC2SOL=${TAC2SOL:-$REPO/.venv/bin/tac2sol}
KEEP=${TAC2SOL_DEMO_KEEP:-}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

REAL_NS=$NS-real
started_cluster=""
operator_pid=""
node_operator_pid=""
cleanup() {
    local rc=$?
    if [[ -z $KEEP ]]; then
        if [[ -n $operator_pid ]]; then
            kill -TERM "$operator_pid" 2>/dev/null || true
            wait "$operator_pid" 2>/dev/null || true
        fi
        if [[ -n $node_operator_pid ]]; then  # its own session: node-exec's nsenter and the operator
            kill -TERM -- "-$node_operator_pid" 2>/dev/null || true
            wait "$node_operator_pid" 2>/dev/null || true
        fi
        if [[ -n $started_cluster ]]; then
            bash "$HACK/cluster.sh" down >/dev/null 2>&1 || true
        elif [[ -n ${KUBECONFIG:-} ]]; then
            kubectl delete namespace "$NS" "$REAL_NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
            kubectl delete pv "$NS-tac2sol-data" "$NS-tac2sol-output" --wait=false --ignore-not-found \
                >/dev/null 2>&1 || true
        fi
    fi
    ((rc == 0)) || echo "cluster-demo: failed (exit $rc); operator log: $STATE/logs/tac2sol-operator.log" >&2
    exit "$rc"
}
trap cleanup EXIT

step "1. A control plane: etcd, kube-apiserver, controllers, scheduler, training-operator, kwok"
if bash "$HACK/cluster.sh" status >/dev/null 2>&1; then
    echo "already up ($STATE)"
else
    bash "$HACK/cluster.sh" up
    started_cluster=1
fi
# shellcheck disable=SC1091
source "$STATE/cluster.env"
export PATH=$CACHE/bin:$PATH
show kubectl get nodes -L nvidia.com/gpu.product -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product'

step "2. The TrainingRun CRD and a namespace with the data and output claims"
show kubectl apply --server-side -f manifests/crds/trainingruns.tac2sol.dev.yaml
# Not `kubectl wait`: on a CRD made a moment ago it fails at once ("accessor error") until the
# apiserver has written its first condition.
for _ in $(seq 60); do
    [[ $(kubectl get crd trainingruns.tac2sol.dev \
        -o jsonpath='{.status.conditions[?(@.type=="Established")].status}') == True ]] && break
    sleep 0.5
done
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null
# A PV keeps the claim it was bound to: start from fresh ones.
kubectl delete pv "$NS-tac2sol-data" "$NS-tac2sol-output" --ignore-not-found >/dev/null
kubectl create namespace "$NS" >/dev/null
for claim in tac2sol-data tac2sol-output; do
    # Fake storage: kwok's pods never mount it, the scheduler only needs the claims bound.
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $NS-$claim}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteMany, ReadOnlyMany]
  storageClassName: ""
  hostPath: {path: /nonexistent/kwok-pods-never-mount-it}
  claimRef: {namespace: $NS, name: $claim}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $claim, namespace: $NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: $NS-$claim
  resources: {requests: {storage: 100Gi}}
EOF
done
echo "namespace $NS with claims tac2sol-data and tac2sol-output"

step "3. The operator, out of cluster: tac2sol operator --namespace $NS"
mkdir -p "$STATE/logs"
"$TAC2SOL" operator --namespace "$NS" --metrics-port 0 --progress-interval 5 \
    >"$STATE/logs/tac2sol-operator.log" 2>&1 &
operator_pid=$!
for _ in $(seq 100); do
    grep -q "serving operator metrics" "$STATE/logs/tac2sol-operator.log" && break
    kill -0 "$operator_pid" 2>/dev/null || { cat "$STATE/logs/tac2sol-operator.log" >&2; exit 1; }
    sleep 0.2
done
port=$(sed -n 's/.*serving operator metrics and \/healthz on [^:]*:\([0-9]*\).*/\1/p' "$STATE/logs/tac2sol-operator.log")
echo "operator pid $operator_pid; /metrics and /healthz on 127.0.0.1:$port; log $STATE/logs/tac2sol-operator.log"

step "4. kubectl apply -f runs/qwen32b.yaml"
echo "\$ tac2sol plan runs/qwen32b.yaml"
"$TAC2SOL" plan runs/qwen32b.yaml | sed -n 2,11p
show kubectl apply -n "$NS" -f runs/qwen32b.yaml
echo "\$ kubectl get trainingruns -o wide   (each time the phase changes)"
last="" phase=""
for _ in $(seq 240); do
    phase=$(kubectl get trainingrun qwen32b -n "$NS" -o jsonpath='{.status.phase}')
    if [[ $phase != "$last" ]]; then
        kubectl get trainingruns -n "$NS" -o wide | sed -n "$([[ -z $last ]] && echo 1 || echo 2),\$p"
        last=$phase
    fi
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 0.25
done
[[ $phase == Succeeded ]] || { echo "qwen32b ended $phase" >&2; exit 1; }

step "5. What the operator made, and what ran"
show kubectl get pytorchjobs,configmaps,pods -n "$NS" -l app.kubernetes.io/managed-by=tac2sol-operator -o wide
show kubectl get pods -n "$NS" -o wide
echo '$ kubectl get configmap qwen32b-train-config -o jsonpath={.data.train\.yaml} | grep -A9 ^distributed'
kubectl get configmap qwen32b-train-config -n "$NS" -o jsonpath='{.data.train\.yaml}' | grep -A9 '^distributed'
show kubectl get events -n "$NS" --field-selector involvedObject.kind=TrainingRun --sort-by=.metadata.resourceVersion

step "6. DeepSeek-V3 (671B): refused with the arithmetic, no job"
show kubectl apply -n "$NS" -f runs/deepseek-v3.yaml
for _ in $(seq 60); do
    [[ $(kubectl get trainingrun deepseek-v3 -n "$NS" -o jsonpath='{.status.phase}') == Failed ]] && break
    sleep 0.5
done
show kubectl get trainingruns -n "$NS"
kubectl get trainingrun deepseek-v3 -n "$NS" -o jsonpath='{.status.message}' | fold -s -w 110
echo
show curl -s "http://127.0.0.1:$port/metrics" -o /dev/null -w 'operator /metrics: HTTP %{http_code}\n'
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^tac2sol_(trainingruns|operator_jobs_created_total)'

step "7. The real node: runs/tiny-cluster.yaml trained by real pods"
if [[ ${TAC2SOL_REAL_NODE:-1} == 0 ]]; then
    echo "skipped: TAC2SOL_REAL_NODE=0 (no real node in this cluster)"
else
    echo "\$ python -m tac2sol.devimage load   (the CPU trainer image: build, cached, and import into the node)"
    TAC2SOL_CLUSTER_DIR=$STATE "$REPO/.venv/bin/python" -m tac2sol.devimage load
    kubectl delete namespace "$REAL_NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
    kubectl create namespace "$REAL_NS" >/dev/null
    show kubectl label namespace "$REAL_NS" pod-security.kubernetes.io/enforce=restricted
    # The pods' /metrics exist only in the node's network namespace: this operator runs there.
    setsid bash "$HACK/cluster.sh" node-exec "$TAC2SOL" operator --namespace "$REAL_NS" --metrics-port 0 \
        --trainer-image localhost/tac2sol/trainer:cpu --progress-interval 2 \
        >"$STATE/logs/tac2sol-operator-node.log" 2>&1 &
    node_operator_pid=$!
    echo "operator for $REAL_NS in the node's network namespace: log $STATE/logs/tac2sol-operator-node.log"
    show kubectl apply -n "$REAL_NS" -f runs/tiny-cluster/data.yaml
    show kubectl wait -n "$REAL_NS" --for=condition=Complete job/tiny-cluster-data --timeout=15m
    show kubectl apply -n "$REAL_NS" -f runs/tiny-cluster.yaml
    echo "\$ kubectl get trainingrun tiny-cluster   (phase and progress, as they change)"
    last="" phase=""
    for _ in $(seq 900); do
        line=$(kubectl get trainingrun tiny-cluster -n "$REAL_NS" \
            -o jsonpath='{.status.phase} step {.status.progress.step}/{.status.progress.totalSteps} loss {.status.progress.loss}')
        if [[ $line != "$last" ]]; then
            echo "  $line"
            last=$line
        fi
        phase=${line%% *}
        [[ $phase == Succeeded || $phase == Failed ]] && break
        sleep 2
    done
    [[ $phase == Succeeded ]] || { echo "tiny-cluster ended $phase" >&2; exit 1; }
    show kubectl get pods -n "$REAL_NS" -o wide
    echo "\$ kubectl logs tiny-cluster-master-0 | grep loss | tail -n 3"
    kubectl logs -n "$REAL_NS" tiny-cluster-master-0 | grep loss | tail -n 3
    volume=$(kubectl get pv "$(kubectl get pvc tiny-cluster-output -n "$REAL_NS" -o jsonpath='{.spec.volumeName}')" \
        -o jsonpath='{.spec.local.path}')
    echo "the adapter and reports on the output volume ($volume/tiny-cluster):"
    (cd "$volume/tiny-cluster" && ls -l adapter run.json eval/eval.md)
fi

step "Done"
if [[ -n $KEEP ]]; then
    echo "left running (TAC2SOL_DEMO_KEEP=1): source $STATE/cluster.env; operator pid $operator_pid"
else
    echo "stopping the operator${started_cluster:+ and the cluster}"
fi
