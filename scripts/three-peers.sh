#!/usr/bin/env bash
# Three real peers on this machine (loopback) training configs/tiny.toml together.
# Usage: scripts/three-peers.sh [CONFIG] [OUT]   (default configs/tiny.toml, out/peers)
# Each peer is its own process with its own key and output directory; logs go to OUT/pN.log.
set -euo pipefail
config=${1:-configs/tiny.toml}
out=${2:-out/peers}
port=${SINTER_PORT:-4001}
cargo build -p launch
launch=${CARGO_TARGET_DIR:-target}/debug/launch
mkdir -p "$out"
common=(run "$config" --workers 3)
"$launch" "${common[@]}" --listen "/ip4/127.0.0.1/tcp/$port" --key "$out/p1/peer.key" --out "$out/p1" >"$out/p1.out" 2>"$out/p1.log" &
pids=($!)
sleep 1
for p in p2 p3; do
  "$launch" "${common[@]}" --listen /ip4/127.0.0.1/tcp/0 --bootstrap "/ip4/127.0.0.1/tcp/$port" \
    --key "$out/$p/peer.key" --out "$out/$p" >"$out/$p.out" 2>"$out/$p.log" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
echo "3 peers running; follow one with: tail -f $out/p1.log"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
cat "$out"/p?.out | grep -E "^peer .* rounds" || true
exit $status
