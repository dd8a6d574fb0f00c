#!/usr/bin/env bash
# The market half on one machine: an embedded ledger node, a miner serving MODEL (a checkpoint
# directory or weights) on its axon, a second miner serving MODEL fine-tuned on Milton, and a
# validator that routes held-out Shakespeare and Milton through its gate to them, pays each by
# its Shapley value, and sets weights on the ledger. Makes the wallets and the ledger's genesis
# in OUT; the processes' logs are OUT/*.log. Ends with the validator's view
# (`launch status --validator`) and the ledger's neurons.
#
#   scripts/market.sh [MODEL] [OUT] [ROUNDS]   (default out/tiny/checkpoints, out/market, 6)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-out/tiny/checkpoints}
out=${2:-out/market}
rounds=${3:-6}
config=configs/tiny.toml
[ -e "$model" ] || { echo "$model missing: run the demo first (launch sim $config --out out/tiny)" >&2; exit 2; }
[ -e "$out" ] && { echo "$out exists: remove it or name another OUT" >&2; exit 2; }
if [ -z "${LAUNCH:-}" ]; then cargo build --release -p launch; fi
launch="${LAUNCH:-${CARGO_TARGET_DIR:-target}/release/launch}"
mkdir -p "$out"
wallets="$out/wallets"
# Demo wallets: their coldkeys are encrypted with a known password.
export SINTER_COLDKEY_PASSWORD="${SINTER_COLDKEY_PASSWORD:-market demo}"
as() { echo --wallet-path "$wallets" --name "$1" --hotkey default; }
for w in author validator miner specialist; do "$launch" wallet new $(as "$w") >/dev/null; done
key() { "$launch" wallet show --json $(as "$1") | sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p"; }
neuron() { echo "{\"hotkey\": \"$(key "$1" hotkey)\", \"coldkey\": \"$(key "$1" coldkey)\", \"stake\": $2}"; }
cat >"$out/genesis.json" <<EOF
{"author": "$(key author hotkey)", "tempo": 10, "burn": 1, "emission_per_epoch": 1000000,
 "balances": [],
 "neurons": [$(neuron validator 1000), $(neuron miner 0), $(neuron specialist 0)]}
EOF

pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
"$launch" ledger node --genesis "$out/genesis.json" --ledger "$out/author.ledger" \
    --author-key "$wallets/author/hotkeys/default" --listen /ip4/127.0.0.1/tcp/0 --block-secs 1 \
    >"$out/node.out" 2>"$out/node.log" &
pids+=($!)
until node=$(sed -n 's/^listening on //p' "$out/node.out" | head -1) && [ -n "$node" ]; do sleep 0.2; done
ledger=(--ledger-node "$node" --genesis "$out/genesis.json" --block-secs 1)
echo "ledger node at $node"

echo "fine-tuning $model on Milton for the specialist"
"$launch" train "$config" --from "$model" --corpus milton --steps 40 --out "$out/specialist" \
    >"$out/specialist-train.log" 2>&1
source_of() { if [ -d "$1" ]; then echo --checkpoint "$1"; else echo "$1"; fi; }
serve() { # NAME MODEL HTTP_PORT
    "$launch" serve $(source_of "$2") --http "127.0.0.1:$3" --axon /ip4/127.0.0.1/tcp/0 \
        --axon-key "$out/$1.axon.key" --ledger "$out/$1.ledger" "${ledger[@]}" $(as "$1") \
        >"$out/$1.out" 2>"$out/$1.log" &
    pids+=($!)
    until grep -q "axon announced" "$out/$1.out" 2>/dev/null; do sleep 0.2; done
    sed -n 's/^axon announced on the ledger: /'"$1"' announced its axon: /p' "$out/$1.out"
}
serve miner "$model" 8011
serve specialist "$out/specialist/model.safetensors" 8012

"$launch" validate "$config" "${ledger[@]}" $(as validator) --ledger "$out/validator.ledger" \
    --out "$out/validator" --rounds "$rounds" --round-secs 2 --examples 4 --k 2 \
    --eval-corpus shakespeare --eval-corpus milton --shared "$model" 2>"$out/validator.log"
echo "waiting for the ledger's next epoch to pay the miners"
sleep 12
"$launch" status --validator "$out/validator"
"$launch" ledger show "$out/author.ledger"
