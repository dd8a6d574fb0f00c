#!/usr/bin/env bash
# sinter's training speed beside PyTorch's on the same model and machine, in one run.
#
#   scripts/bench-train.sh [CONFIG] [STEPS]     (default configs/parity.toml 60)
#
# Runs `launch bench train CONFIG --steps STEPS` (one worker, evaluations included, as
# `launch train` runs) and scripts/torch-llama.py on the same model, batch, optimiser and
# evaluations with THREADS threads (default 2), and prints both JSON lines and the ratio.
# PyTorch comes from a venv under ~/.cache/sinter (created on first use: pip install torch).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/parity.toml}
steps=${2:-60}
threads=${THREADS:-2}
venv="$HOME/.cache/sinter/torch-venv"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "bench-train: installing PyTorch into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch
fi
cargo build -q -p launch
launch=${CARGO_TARGET_DIR:-target}/debug/launch
sinter=$(RAYON_NUM_THREADS=$threads "$launch" bench train "$config" --steps "$steps" 2>/dev/null | tail -1)
torch=$("$venv/bin/python" -W ignore scripts/torch-llama.py "$config" --device cpu --threads "$threads" \
  --steps "$steps" --evals)
echo "$sinter"
echo "$torch"
python3 - "$sinter" "$torch" <<'PY'
import json, sys
s, t = (json.loads(a) for a in sys.argv[1:])
# The ratio depends on the CPU (BENCHMARKS.md): name it.
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"sinter {s['tokens_per_sec']:.0f} tokens/s, PyTorch {t['tokens_per_sec']:.0f} tokens/s: "
      f"{s['tokens_per_sec'] / t['tokens_per_sec']:.2f}x; peak memory {s['peak_host_rss_mib']} MiB; "
      f"CPU {cpu}")
PY
