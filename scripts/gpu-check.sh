#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: does sinter train there, how fast, and does a GPU peer agree
# bit for bit with a CPU peer? Prints one line per check and writes everything to OUT.
#
#   scripts/gpu-check.sh [OUT]          (default out/gpu-check)
#
# 1. `launch train configs/tiny.toml --backend cuda`: the loss must fall.
# 2. A mixed run: two real peers of configs/tiny.toml on loopback, one on `--backend cpu`, one
#    on `--backend cuda`; their final global parameters must be the same bytes.
# 3. `launch train configs/125m.toml --backend cuda` for STEPS steps (of BATCH windows, if set;
#    else the config's own): tokens/s and model FLOPs utilization (PaLM's count against
#    PEAK_TFLOPS, default 989: dense bf16 on an H100/H200).
# 4. With PyTorch installed: the same model and batch in PyTorch
#    (scripts/torch-llama.py), fp32 and bf16, for the ratio.
#
# CHECKS picks some (default "tiny mixed 125m torch").
# LAUNCH names the binary (default: builds `cargo build --release -p launch`).
# The CUDA driver is loaded at run time; NVRTC (libnvrtc) must be on the library path.
set -uo pipefail
out=${1:-out/gpu-check}
steps=${STEPS:-200}
batch=${BATCH:-}
checks=" ${CHECKS:-tiny mixed 125m torch} "
peak=${PEAK_TFLOPS:-989}
mkdir -p "$out"
if [[ -z "${LAUNCH:-}" ]]; then
  cargo build --release -p launch || exit 1
  LAUNCH=${CARGO_TARGET_DIR:-target}/release/launch
fi
launch=$LAUNCH
failed=0
check() { # NAME OK? DETAIL
  if [[ $2 == 0 ]]; then echo "ok    $1: $3"; else echo "FAIL  $1: $3"; failed=1; fi
}
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

# 1. The loss falls on CUDA.
if [[ $checks == *" tiny "* ]]; then
timeout 300 "$launch" train configs/tiny.toml --backend cuda --steps 48 --out "$out/tiny-cuda" \
  >"$out/tiny-cuda.out" 2>"$out/tiny-cuda.log"
rc=$?
if [[ $rc == 0 ]]; then
  first=$(json "$out/tiny-cuda/summary.json" '["initial_val_loss"]')
  last=$(json "$out/tiny-cuda/summary.json" '["final_val_loss"]')
  python3 -c "import sys; sys.exit(0 if $last < $first - 0.5 else 1)"
  check "tiny on cuda" $? "validation loss $first -> $last"
else
  check "tiny on cuda" 1 "exit $rc (see $out/tiny-cuda.log)"
fi
fi

# 2. A CPU peer and a CUDA peer in one run.
if [[ $checks == *" mixed "* ]]; then
port=${SINTER_PORT:-4301}
common=(run configs/tiny.toml --workers 2 --steps 32 --start-wait 120)
timeout 300 "$launch" "${common[@]}" --backend cpu --listen "/ip4/127.0.0.1/tcp/$port" \
  --key "$out/mixed-cpu/peer.key" --out "$out/mixed-cpu" >"$out/mixed-cpu.out" 2>"$out/mixed-cpu.log" &
cpu_pid=$!
sleep 2
timeout 300 "$launch" "${common[@]}" --backend cuda --listen /ip4/127.0.0.1/tcp/0 \
  --bootstrap "/ip4/127.0.0.1/tcp/$port" --key "$out/mixed-cuda/peer.key" --out "$out/mixed-cuda" \
  >"$out/mixed-cuda.out" 2>"$out/mixed-cuda.log"
rc_cuda=$?
wait $cpu_pid
rc_cpu=$?
if [[ $rc_cpu == 0 && $rc_cuda == 0 ]]; then
  a=$(json "$out/mixed-cpu/summary.json" '["params_sha256"]')
  b=$(json "$out/mixed-cuda/summary.json" '["params_sha256"]')
  rounds=$(json "$out/mixed-cpu/summary.json" '["rounds"]')
  [[ "$a" == "$b" ]]
  check "cpu + cuda peers" $? "$rounds rounds; global parameters ${a:0:16} (cpu) ${b:0:16} (cuda)"
else
  check "cpu + cuda peers" 1 "exit $rc_cpu (cpu) $rc_cuda (cuda); see $out/mixed-*.log"
fi
fi

# 3. The 125M model's speed on CUDA, on its prepared dataset (made once: configs/125m.toml).
if [[ $checks == *" 125m "* && ! -f data/prepared/bundled-32k/manifest.json ]]; then
  corpora=(data/shakespeare.txt.zst data/milton.txt.zst)
  "$launch" data tokenizer "${corpora[@]}" --txt-documents paragraph --vocab 32000 \
    --out data/prepared/bpe-32k.json >"$out/prepare.log" 2>&1 &&
    "$launch" data prepare "${corpora[@]}" --txt-documents paragraph \
      --tokenizer data/prepared/bpe-32k.json --out data/prepared/bundled-32k >>"$out/prepare.log" 2>&1 ||
    echo "preparing the 125M dataset failed: see $out/prepare.log"
fi
config=$out/125m.toml
if [[ -n $batch ]]; then
  sed "s/^batch_size = .*/batch_size = $batch/" configs/125m.toml >"$config"
else
  cp configs/125m.toml "$config"
fi
if [[ $checks == *" 125m "* ]]; then
timeout "${TIMEOUT_125M:-420}" "$launch" train "$config" --backend cuda --steps "$steps" \
  --out "$out/125m-cuda" >"$out/125m-cuda.out" 2>"$out/125m-cuda.log"
rc=$?
if [[ $rc == 0 ]]; then
  mfu=$(python3 scripts/torch-llama.py "$config" --mfu-of "$out/125m-cuda/summary.json" \
    --peak-tflops "$peak" | tee "$out/125m-cuda-mfu.json")
  check "125m on cuda" 0 "$mfu"
else
  check "125m on cuda" 1 "exit $rc (see $out/125m-cuda.log)"
fi
fi

# 4. PyTorch's speed on the same model and GPU.
if [[ $checks == *" torch "* ]] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  for dtype in fp32 bf16; do
    timeout 180 python3 scripts/torch-llama.py "$config" --device cuda --steps 30 \
      --dtype "$dtype" --peak-tflops "$peak" >"$out/125m-torch-$dtype.json" 2>"$out/125m-torch-$dtype.log"
    check "125m in torch ($dtype)" $? "$(cat "$out/125m-torch-$dtype.json")"
  done
fi
exit $failed
