#!/usr/bin/env bash
# Three real peers on loopback with the run's embedded ledger: p1 holds stake (it validates)
# and authors the blocks, p2 is a miner from the genesis, p3 registers itself with its
# coldkey (paying the burn). With LAZY=1, p3 trains nothing and sends zero updates (a
# test-only fault hook: the script then builds launch with `--features fault-injection`). Makes
# the wallets and the ledger's genesis (appended to CONFIG as [incentives.ledger]) in OUT,
# and prints the metagraph at the end.
#
#   scripts/ledger-run.sh [CONFIG] [OUT]   (default configs/incentives.toml, out/ledger-run)
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/incentives.toml}
out=${2:-out/ledger-run}
port=${SINTER_PORT:-4011}
[ -e "$out" ] && { echo "$out exists: remove it or name another OUT" >&2; exit 2; }
features=()
[ "${LAZY:-0}" = 1 ] && features=(--features fault-injection)
if [ -z "${LAUNCH:-}" ]; then cargo build -p launch "${features[@]}"; fi
launch="${LAUNCH:-${CARGO_TARGET_DIR:-target}/debug/launch}"
mkdir -p "$out"
wallets="$out/wallets"
# Test wallets: their coldkeys are encrypted with a known password.
export SINTER_COLDKEY_PASSWORD="${SINTER_COLDKEY_PASSWORD:-ledger run}"
for p in p1 p2 p3; do "$launch" wallet new --name "$p" --dir "$wallets" >/dev/null; done
key() { "$launch" wallet show --name "$1" --dir "$wallets" | sed -n "s/^$2: //p"; }
{
    cat "$config"
    cat <<EOF

[incentives.ledger]
author = "$(key p1 hotkey)"
block_secs = 1.0
balances = [{ account = "$(key p3 coldkey)", balance = 10000000000 }]
neurons = [
    { hotkey = "$(key p1 hotkey)", coldkey = "$(key p1 coldkey)", stake = 1000000000000 },
    { hotkey = "$(key p2 hotkey)", coldkey = "$(key p2 coldkey)", stake = 0 },
]
EOF
} >"$out/run.toml"
common=(run "$out/run.toml" --workers 3 --wallets "$wallets")
"$launch" "${common[@]}" --wallet p1 --listen "/ip4/127.0.0.1/tcp/$port" --key "$out/p1/peer.key" \
    --out "$out/p1" >"$out/p1.out" 2>"$out/p1.log" &
pids=($!)
sleep 2
for p in p2 p3; do
    lazy=0
    [ "$p" = p3 ] && lazy=${LAZY:-0}
    SINTER_FAULT_LAZY=$lazy "$launch" "${common[@]}" --wallet "$p" --listen /ip4/127.0.0.1/tcp/0 \
        --bootstrap "/ip4/127.0.0.1/tcp/$port" --key "$out/$p/peer.key" --out "$out/$p" \
        >"$out/$p.out" 2>"$out/$p.log" &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
echo "3 peers running; follow with: tail -f $out/p1.log; launch status --peer /ip4/127.0.0.1/tcp/$port"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
cat "$out/p1.out"
"$launch" ledger show "$out/p1/ledger.sntr"
exit $status
