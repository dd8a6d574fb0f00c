#!/usr/bin/env bash
# Home networks on one machine: a "WAN" bridge (sinter-wan, 10.78.0.0/24, the root side
# 10.78.0.254) with PUBLIC reachable hosts (namespaces sinter-pub1 … at 10.78.0.1 …) and NATTED
# hosts each behind its own NAT router. Router i (namespace sinter-nat$i, WAN address
# 10.78.0.1$i) masquerades its LAN and, like a home router, drops what nobody inside asked
# for; host i (namespace sinter-lan$i) sits behind it at 192.168.1.2 — the same private
# address in every LAN, as in real homes. A router keeps a connection's source port (a
# "cone" NAT, which hole punching gets through) unless its number is in SYMMETRIC (e.g.
# SYMMETRIC="3"): then each connection gets a random port (a symmetric NAT, which it does
# not). Every WAN link is rate-limited to MBIT Mbit/s each way with tc tbf.
#
#   [SYMMETRIC="I …"] scripts/nat-topology.sh up PUBLIC NATTED [MBIT]   # default 50 Mbit/s
#   scripts/nat-topology.sh down PUBLIC NATTED
#   ip netns exec sinter-lan1 COMMAND                 # run something behind NAT 1
#
# Needs root (CAP_NET_ADMIN) and nftables (scripts/setup.sh installs it). Touches nothing but
# the names above.
set -euo pipefail

usage="usage: nat-topology.sh up|down PUBLIC NATTED [MBIT]"
action="${1:?$usage}"
public="${2:?$usage}"
natted="${3:?$usage}"
mbit="${4:-50}"

down() {
    for i in $(seq 1 "$public"); do
        ip netns del "sinter-pub$i" 2>/dev/null || true
        ip link del "sinter-wp$i" 2>/dev/null || true
    done
    for i in $(seq 1 "$natted"); do
        ip netns del "sinter-lan$i" 2>/dev/null || true
        ip netns del "sinter-nat$i" 2>/dev/null || true
        ip link del "sinter-wn$i" 2>/dev/null || true
    done
    ip link del sinter-wan 2>/dev/null || true
}

shape() { # tc-args device: tbf at MBIT, bursts of 64 kB, 100 ms of queue
    tc "$@" root tbf rate "${mbit}mbit" burst 64kb latency 100ms
}

# wan_link NAMESPACE VETH ADDRESS: a veth from the WAN bridge into NAMESPACE as `wan0`.
wan_link() {
    ip link add "$2" type veth peer name wan0 netns "$1"
    ip link set "$2" master sinter-wan up
    ip -n "$1" addr add "$3/24" dev wan0
    ip -n "$1" link set wan0 up
    ip -n "$1" link set lo up
    shape qdisc add dev "$2"
    shape -n "$1" qdisc add dev wan0
}

case "$action" in
up)
    command -v nft >/dev/null || { echo "nat-topology: nft missing (scripts/setup.sh installs nftables)" >&2; exit 1; }
    down
    ip link add sinter-wan type bridge
    ip addr add 10.78.0.254/24 dev sinter-wan
    ip link set sinter-wan up
    for i in $(seq 1 "$public"); do
        ip netns add "sinter-pub$i"
        wan_link "sinter-pub$i" "sinter-wp$i" "10.78.0.$i"
    done
    for i in $(seq 1 "$natted"); do
        router="sinter-nat$i" host="sinter-lan$i"
        ip netns add "$router"
        ip netns add "$host"
        wan_link "$router" "sinter-wn$i" "10.78.0.1$i"
        ip link add lan0 netns "$router" type veth peer name eth0 netns "$host"
        ip -n "$router" addr add 192.168.1.1/24 dev lan0
        ip -n "$router" link set lan0 up
        ip -n "$host" addr add 192.168.1.2/24 dev eth0
        ip -n "$host" link set eth0 up
        ip -n "$host" link set lo up
        ip -n "$host" route add default via 192.168.1.1
        ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
        mapping=""
        [[ " ${SYMMETRIC:-} " == *" $i "* ]] && mapping="fully-random"
        ip netns exec "$router" nft -f - <<NFT
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade $mapping
    }
}
table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan0" ct state established,related accept
        iifname "wan0" drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        iifname "lan0" accept
        ct state established,related accept
    }
}
NFT
    done
    echo "nat topology up: public hosts 10.78.0.1-$public; $natted NATted hosts at 192.168.1.2 behind routers 10.78.0.11-1$natted; ${mbit} Mbit/s WAN links"
    ;;
down)
    down
    echo "nat topology down"
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
