#!/usr/bin/env bash
# Multi-peer checkpoint fetch over rate-limited links: N donors (network namespaces,
# scripts/topology.sh) at MBIT Mbit/s each serve the same checkpoint (`launch checkpoint
# serve`); a fetcher on an unshaped host (1 Gbit/s) fetches it from all of them at once
# (`launch checkpoint fetch`). Prints the throughput as a ratio of the donors' summed link
# rate, for each of ROUNDS fetches. Needs root.
#
#   scripts/bench-fetch.sh [N=3] [MBIT=20] [ROUNDS=3] [CONFIG=configs/tiny.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-3}"
mbit="${2:-20}"
rounds="${3:-3}"
config="${4:-configs/tiny.toml}"
launch="${LAUNCH:-${CARGO_TARGET_DIR:-target}/debug/launch}"
[ -x "$launch" ] || { echo "no launch binary at $launch (build it, or set LAUNCH=…)" >&2; exit 2; }
hosts=$((n + 1))
work="$(mktemp -d)"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    scripts/topology.sh down "$hosts" >/dev/null
}
trap cleanup EXIT
# One round of the config (its steps cut to one round's), checkpointed.
h="$(grep -m1 '^inner_steps' "$config" | tr -dc 0-9)"
sed -E "s/^steps = .*/steps = ${h:-16}/" "$config" >"$work/bench.toml"
config="$work/bench.toml"
"$launch" sim "$config" --checkpoint-every 1 --out "$work/run" >/dev/null 2>&1
scripts/topology.sh up "$hosts" "$mbit" >/dev/null
for dev in "sinter-v$hosts"; do tc qdisc replace dev "$dev" root tbf rate 1000mbit burst 1mb latency 100ms; done
ip netns exec "sinter-p$hosts" tc qdisc replace dev eth0 root tbf rate 1000mbit burst 1mb latency 100ms
from=()
for i in $(seq 1 "$n"); do
    ip netns exec "sinter-p$i" "$launch" checkpoint serve "$work/run/checkpoints" \
        --listen "/ip4/10.77.0.$i/tcp/4001" >"$work/s$i.out" 2>"$work/s$i.log" &
    from+=(--from "/ip4/10.77.0.$i/tcp/4001")
done
sleep 2
for r in $(seq 1 "$rounds"); do
    line="$(ip netns exec "sinter-p$hosts" "$launch" checkpoint fetch "$config" "${from[@]}" \
        --out "$work/fetched-$r" 2>"$work/fetch-$r.log")" || { cat "$work/fetch-$r.log" >&2; exit 1; }
    rate="$(head -n 1 <<<"$line" | sed -E 's/.* s, ([0-9.]+) Mbit\/s.*/\1/')"
    echo "$line"
    echo "  ratio to the donors' summed link rate ($n x $mbit Mbit/s): $(python3 -c "print(round($rate / ($n * $mbit), 3))")"
done
