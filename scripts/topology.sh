#!/usr/bin/env bash
# Internet-like links on one machine: N network namespaces (sinter-p1 … sinter-pN), each
# with one veth into a bridge (sinter-br) in the root namespace, addresses 10.77.0.1 … N,
# the root side 10.77.0.254. Each link is rate-limited in both directions with tc tbf
# (netem does not exist on these kernels: latency and loss come from the test harness's
# proxy, which listens on 10.77.0.254).
#
#   scripts/topology.sh up N [MBIT]   # default 50 Mbit/s per direction
#   scripts/topology.sh down N
#   ip netns exec sinter-p1 COMMAND   # run something "on host 1"
#
# Needs root (CAP_NET_ADMIN). Touches nothing but the names above.
set -euo pipefail

action="${1:?usage: topology.sh up|down N [MBIT]}"
n="${2:?usage: topology.sh up|down N [MBIT]}"
mbit="${3:-50}"

down() {
    for i in $(seq 1 "$n"); do
        ip netns del "sinter-p$i" 2>/dev/null || true
        ip link del "sinter-v$i" 2>/dev/null || true
    done
    ip link del sinter-br 2>/dev/null || true
}

shape() { # namespace-args device: tbf at MBIT, bursts of 64 kB, 100 ms of queue
    tc "$@" root tbf rate "${mbit}mbit" burst "${TBF_BURST:-64kb}" latency "${TBF_LATENCY:-100ms}"
}

case "$action" in
up)
    down
    ip link add sinter-br type bridge
    ip addr add 10.77.0.254/24 dev sinter-br
    ip link set sinter-br up
    for i in $(seq 1 "$n"); do
        ns="sinter-p$i"
        ip netns add "$ns"
        ip link add "sinter-v$i" type veth peer name eth0 netns "$ns"
        ip link set "sinter-v$i" master sinter-br up
        ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        shape qdisc add dev "sinter-v$i"        # towards host i (its download)
        shape -n "$ns" qdisc add dev eth0       # from host i (its upload)
    done
    echo "topology up: $n hosts at 10.77.0.1-$n, ${mbit} Mbit/s each way, hub 10.77.0.254"
    ;;
down)
    down
    echo "topology down"
    ;;
*)
    echo "usage: topology.sh up|down N [MBIT]" >&2
    exit 2
    ;;
esac
