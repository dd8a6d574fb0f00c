#!/usr/bin/env bash
# A real run over rate-limited links: N peers, each in its own network namespace behind a
# MBIT Mbit/s link (scripts/topology.sh), training CONFIG together. Extra arguments go to
# every `launch run`. Logs and outputs land in OUT (default out/netns). Needs root.
#
#   scripts/netns-run.sh N MBIT CONFIG [launch run args…]
#   e.g. scripts/netns-run.sh 4 50 configs/tiny.toml --workers 4 --max-rounds 3
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: netns-run.sh N MBIT CONFIG [args…]}"
mbit="${2:?usage: netns-run.sh N MBIT CONFIG [args…]}"
config="${3:?usage: netns-run.sh N MBIT CONFIG [args…]}"
shift 3
out="${OUT:-out/netns}"
launch="${LAUNCH:-${CARGO_TARGET_DIR:-target}/debug/launch}"
[ -x "$launch" ] || { echo "no launch binary at $launch (build it, or set LAUNCH=…)" >&2; exit 2; }
trap 'scripts/topology.sh down "$n" >/dev/null' EXIT
scripts/topology.sh up "$n" "$mbit"
mkdir -p "$out"
for i in $(seq 1 "$n"); do
    bootstrap=()
    [ "$i" -gt 1 ] && bootstrap=(--bootstrap /ip4/10.77.0.1/tcp/4001)
    ip netns exec "sinter-p$i" "$launch" run "$config" --listen "/ip4/10.77.0.$i/tcp/4001" \
        "${bootstrap[@]}" --key "$out/p$i/peer.key" --out "$out/p$i" "$@" \
        >"$out/p$i.out" 2>"$out/p$i.log" &
    [ "$i" -eq 1 ] && sleep 1
done
wait
tail -n 2 "$out"/p*.out
