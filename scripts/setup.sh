#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test sinter: a Vulkan loader
# and Mesa's software Vulkan driver (lavapipe), on which the CubeCL kernels run in tests
# when there is no GPU, and nftables, whose masquerade makes the NAT routers of the
# network-namespace tests; in a venv under ~/.cache/sinter, Bittensor's wallet and drand
# timelock and OpenAI's client, which the wallet, timelocked-weights and serving tests
# compare with; and chopsticks (npm), which runs Bittensor's real runtime locally for the
# chain tests. Safe to run again; does nothing when everything is there.
set -euo pipefail

have_lavapipe() {
    # Not `grep -q`: it exits at the first match, and under pipefail ldconfig's SIGPIPE fails the test.
    ldconfig -p | grep 'libvulkan\.so\.1' >/dev/null && ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1
}

missing=()
have_lavapipe || missing+=(mesa-vulkan-drivers libvulkan1)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} (software Vulkan for the GPU kernels' tests; nftables for the NAT tests)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
have_lavapipe || { echo "setup: Vulkan (lavapipe) still missing" >&2; exit 1; }
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || { echo "setup: nft (nftables) still missing" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
# Bittensor's own wallet and drand timelock, which the wallet and timelocked-weights tests
# check sinter against (both ways), and OpenAI's client, which the serving tests use.
venv="$HOME/.cache/sinter/btwallet-venv"
if [ -z "${SINTER_SKIP_PYTHON:-}" ] && ! "$venv/bin/python" -c "import bittensor_wallet, bittensor_drand, openai" 2>/dev/null; then
    echo "setup: installing bittensor-wallet, bittensor-drand and openai into $venv (the tests compare with them)"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q bittensor-wallet==4.1.1 bittensor-drand==2.0.0 openai==3.60.0
fi
# Chopsticks executes subtensor's runtime (from a chain spec) on this machine: the live chain tests.
chopsticks="$HOME/.cache/sinter/chopsticks"
if [ -z "${SINTER_SKIP_CHAIN:-}" ] && [ ! -x "$chopsticks/node_modules/.bin/chopsticks" ]; then
    command -v npm >/dev/null || { echo "setup: npm (Node.js 20+) missing: install it, or set SINTER_SKIP_CHAIN=1 to skip the live chain tests" >&2; exit 1; }
    echo "setup: installing chopsticks into $chopsticks (the live chain tests run subtensor's runtime with it)"
    npm install --silent --no-audit --no-fund --prefix "$chopsticks" @acala-network/chopsticks@1.5.1
fi
echo "setup: ok ($(cargo --version))"
