#!/usr/bin/env bash
# Every check CI runs: formatting, clippy with warnings as errors, all tests (the GPU kernels
# and wgpu training on Mesa's software Vulkan when there is no GPU; the default build holds the
# CUDA backend too), and a compile check of the CPU-only build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
step "cargo check --no-default-features (CPU only)"
cargo check -p launch --no-default-features --locked
step "done"
