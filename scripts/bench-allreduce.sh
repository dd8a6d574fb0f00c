#!/usr/bin/env bash
# All-reduce goodput over rate-limited links: N hosts (network namespaces, scripts/topology.sh)
# at MBIT Mbit/s each way; one `launch bench allreduce` peer per host exchanging MB megabytes.
# Prints each peer's JSON report (goodput_ratio = optimum 2(N-1)/N·S/B over the measured time;
# naive_over_allreduce = a naive exchange of full payloads over the all-reduce). Needs root.
#
#   scripts/bench-allreduce.sh [N=4] [MB=16] [MBIT=50]
#   TRANSPORT=tcp scripts/bench-allreduce.sh …   # tcp + noise + yamux instead of QUIC
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-4}"
mb="${2:-16}"
mbit="${3:-50}"
case "${TRANSPORT:-quic}" in
quic) transport=udp/4001/quic-v1 ;;
tcp) transport=tcp/4001 ;;
*) echo "TRANSPORT is quic or tcp" >&2; exit 2 ;;
esac
launch="${LAUNCH:-${CARGO_TARGET_DIR:-target}/debug/launch}"
[ -x "$launch" ] || { echo "no launch binary at $launch (build it, or set LAUNCH=…)" >&2; exit 2; }
trap 'scripts/topology.sh down "$n" >/dev/null' EXIT
scripts/topology.sh up "$n" "$mbit"
out="$(mktemp -d)"
for i in $(seq 1 "$n"); do
    bootstrap=()
    [ "$i" -gt 1 ] && bootstrap=(--bootstrap /ip4/10.77.0.1/$transport)
    ip netns exec "sinter-p$i" "$launch" bench allreduce --peers "$n" --mb "$mb" --link-mbit "$mbit" \
        --listen "/ip4/10.77.0.$i/$transport" "${bootstrap[@]}" >"$out/p$i.json" 2>"$out/p$i.log" &
    [ "$i" -eq 1 ] && sleep 1
done
wait
for i in $(seq 1 "$n"); do
    tail -n 1 "$out/p$i.json"
done
