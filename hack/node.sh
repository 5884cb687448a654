#!/usr/bin/env bash
# The real node of the test cluster, run by hack/cluster.sh as pid 1 of new network, mount and pid
# namespaces (`unshare --net --mount --pid --fork`), so that everything it makes stays in them:
#   - the network: a bridge cni0 holding the node IP, the pods' veths and addresses, ip_forward,
#     CoreDNS on the node IP; nothing in the host's network namespace;
#   - the files: /run, /var/lib and /var/log are this node's own folders under NODE_DIR (the fixed
#     paths of containerd, the CNI plugins and the kubelet: /run/containerd, /var/lib/cni,
#     /var/lib/kubelet, /var/log/containers, /var/log/pods), and files holding the values the
#     kubelet wants are mounted over the global sysctls it would otherwise write (with
#     protectKernelDefaults it only reads them), so the host keeps its settings;
#   - the processes: containerd, its shims and every container die with this pid 1.
# Inside, it starts: socat (the apiserver on 127.0.0.1:APISERVER_PORT and NODE_IP:APISERVER_PORT,
# the address the apiserver advertises as the `kubernetes` Service's endpoint, through a Unix
# socket that hack/cluster.sh serves on the host), hack/node/connect-proxy.py (the apiserver's way
# in: its egress selector sends kubelet and pod connections there), containerd with the pause
# and kubectl-delivery images imported, the kubelet, kube-proxy (iptables rules in this network namespace only: a pod
# reaches the apiserver at the `kubernetes` ClusterIP, as in-cluster config expects) and CoreDNS. On SIGTERM it stops them and exits; the
# kernel then ends whatever is left in the namespaces. hack/cluster.sh removes NODE_DIR and the
# node's cgroups afterwards.
#
#   bash hack/node.sh inside      (only as hack/cluster.sh starts it; settings come from the environment)
set -euo pipefail

: "${NODE_DIR:?}" "${NODE_NAME:?}" "${NODE_IP:?}" "${POD_CIDR:?}" "${SERVICE_CIDR:?}" "${CGROUP_ROOT:?}" "${APISERVER_PORT:?}"
: "${CACHE:?}" "${BIN:?}" "${PYTHON:?}" "${PAUSE_IMAGE:?}" "${PAUSE_TARBALL:?}"
: "${KUBECTL_DELIVERY_TARBALL:?}"
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGS=$NODE_DIR/logs
SOCK=$NODE_DIR/containerd.sock
# What the kubelet checks (protectKernelDefaults) and would otherwise write: global settings.
declare -A KERNEL_DEFAULTS=(
    [vm/overcommit_memory]=1 [vm/panic_on_oom]=0 [kernel/panic]=10 [kernel/panic_on_oops]=1
    [kernel/keys/root_maxkeys]=1000000 [kernel/keys/root_maxbytes]=25000000
)

say() { echo "node: $*" >&2; }

[[ $$ == 1 ]] || { say "ERROR: run by hack/cluster.sh as pid 1 of the node's namespaces"; exit 1; }

pids=()
run() {  # run NAME CMD...: start in the background, log to $LOGS/NAME.log
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    pids+=($!)
}

shutdown() {
    trap - TERM INT
    say "stopping"
    # The kubelet first, so it does not restart what goes away; then the rest.
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    exit 0
}
trap shutdown TERM INT

wait_for() {  # wait_for WHAT CMD...: poll for 60 s
    local what=$1 deadline=$((SECONDS + 60))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { say "ERROR: timed out waiting for $what"; exit 1; }
        sleep 0.2
    done
}

# --- namespaces: network, files, kernel settings ---------------------------------------------------

ip link set lo up
ip link add cni0 type bridge
ip addr add "$NODE_IP/${POD_CIDR#*/}" dev cni0
ip link set cni0 up
# Service addresses from the node itself (what runs in its namespace: the operator in the tests,
# Trainer's controller with its status server): routed to the bridge, where kube-proxy's rules
# rewrite them; pods have their default route for that.
ip route add "$SERVICE_CIDR" dev cni0 src "$NODE_IP"

mount -t proc proc /proc  # this pid namespace's view (unshare --mount-proc without its ordering)
for dir in run var/lib var/log; do
    mkdir -p "$NODE_DIR/root/$dir"
    mount --bind "$NODE_DIR/root/$dir" "/$dir"
done
mkdir -p /var/lib/kubelet /var/log/pods /var/log/containers /run/containerd
mount --bind /var/lib/kubelet /var/lib/kubelet
mount --make-rshared /var/lib/kubelet  # volume mounts propagate into the containers
mkdir -p "$NODE_DIR/sysctl"
for key in "${!KERNEL_DEFAULTS[@]}"; do
    file=$NODE_DIR/sysctl/${key//\//.}
    echo "${KERNEL_DEFAULTS[$key]}" >"$file"
    mount --bind "$file" "/proc/sys/$key"
done

# --- the apiserver, both ways ----------------------------------------------------------------------

run socat-apiserver socat "TCP-LISTEN:$APISERVER_PORT,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$NODE_DIR/apiserver.sock"
run socat-apiserver-pods socat "TCP-LISTEN:$APISERVER_PORT,bind=$NODE_IP,fork,reuseaddr" "UNIX-CONNECT:$NODE_DIR/apiserver.sock"
run connect-proxy "$PYTHON" "$HACK/node/connect-proxy.py" "$NODE_DIR/egress.sock"

# --- containerd ------------------------------------------------------------------------------------

mkdir -p "$NODE_DIR/cni"
cat >"$NODE_DIR/cni/10-tac2sol.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tac2sol",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]]}}
  ]
}
EOF
cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd"
state = "/run/containerd"
# No /opt/containerd on the host; no snapshotters this machine cannot use.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE (a container's root), runc cannot lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
EOF
run containerd containerd --config "$NODE_DIR/containerd.toml"
wait_for "containerd" ctr --address "$SOCK" version
ctr --address "$SOCK" -n k8s.io images import "$PAUSE_TARBALL" >"$LOGS/import-pause.log" 2>&1
ctr --address "$SOCK" -n k8s.io images import "$KUBECTL_DELIVERY_TARBALL" >"$LOGS/import-kubectl-delivery.log" 2>&1

# --- kubelet ---------------------------------------------------------------------------------------

: >"$NODE_DIR/resolv.conf"  # pods get only the cluster DNS; nothing upstream to forward to
cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $NODE_DIR/ca.crt}
authorization: {mode: Webhook}
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
# cgroup v1 (hybrid) here: 1.35 refuses it unless told; cgroupfs, as containerd's runc uses.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
protectKernelDefaults: true
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $NODE_DIR/resolv.conf
registerWithTaints:
- {key: tac2sol.dev/real-node, value: "true", effect: NoSchedule}
# The images are imported, never pulled: never collect them; a busy disk must not evict.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
podPidsLimit: 4096
EOF
run kubelet "$BIN/kubelet" --config="$NODE_DIR/kubelet.yaml" --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --node-labels="tac2sol.dev/node=real" --v=1

# --- kube-proxy ------------------------------------------------------------------------------------

# iptables mode, in this network namespace. conntrack settings 0: leave the kernel's as they are
# (the table size is global); no NodePorts on localhost (that needs route_localnet).
cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$NODE_IP/32]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
EOF
run kube-proxy "$BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml" --v=1

# --- CoreDNS ---------------------------------------------------------------------------------------

cat >"$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $NODE_DIR/coredns.kubeconfig tac2sol-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
run coredns "$BIN/coredns" -conf "$NODE_DIR/Corefile"

say "started: kubelet, containerd, kube-proxy, CoreDNS on $NODE_IP"
: >"$NODE_DIR/started"
while true; do
    wait -n "${pids[@]}" || true
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "ERROR: a node process exited (pid $pid); logs in $LOGS"
            shutdown
        fi
    done
done
