#!/usr/bin/env python3
"""Writes the fixtures that check sinter's drand-timelocked weights against Bittensor's own
bittensor-drand (PyPI), in mechanism/tests/fixtures/drand/:

- bittensor-drand.json (bittensor-drand 2.0, the stateful epoch clock): a weights payload
  SCALE-encoded by hand here, encrypted by bittensor-drand to quicknet round 1000 (whose real
  pulse subtensor's drand pallet tests hold), and the reveal rounds its
  get_encrypted_commit_v2 picks for a spread of epoch clocks, with the wall-clock window each
  was computed in;
- bittensor-drand-legacy.json (bittensor-drand 1.2, the modulo epoch clock): the rounds its
  get_encrypted_commit picks.

    python3 -m venv ~/.cache/sinter/btwallet-venv
    ~/.cache/sinter/btwallet-venv/bin/pip install bittensor-drand==2.0.0
    ~/.cache/sinter/btwallet-venv/bin/python scripts/bittensor-drand-fixtures.py
    python3 -m venv /tmp/drand12 && /tmp/drand12/bin/pip install bittensor-drand==1.2.0
    /tmp/drand12/bin/python scripts/bittensor-drand-fixtures.py --legacy
"""
import json
import os
import struct
import sys
import time

import bittensor_drand as drand

OUT = os.path.join(os.path.dirname(__file__), "..", "mechanism", "tests", "fixtures", "drand")
# Quicknet round 1000 (subtensor pallets/drand/src/tests.rs, DRAND_PULSE).
ROUND = 1000
SIGNATURE = "b44679b9a59af2ec876b1a6b1ad52ea9b1615fc3982b19576350f93447cb1125e342b73a8dd2bacbe47e4b6b63ed5e39"
HOTKEY = bytes(range(32))


def compact(n):
    assert n < 1 << 14
    return bytes([n << 2]) if n < 64 else struct.pack("<H", (n << 2) | 1)


def payload(uids, values, version_key, hotkey=HOTKEY):
    """subtensor's WeightsTlockPayload {hotkey: Vec<u8>, uids: Vec<u16>, values: Vec<u16>,
    version_key: u64}, SCALE by hand."""
    out = compact(len(hotkey)) + hotkey
    for row in (uids, values):
        out += compact(len(row)) + b"".join(struct.pack("<H", x) for x in row)
    return out + struct.pack("<Q", version_key)


def unwrap(user_data):
    """bittensor-drand's UserData {encrypted_data: Vec<u8>, reveal_round: u64} -> the bytes."""
    mode = user_data[0] & 3
    if mode == 0:
        n, at = user_data[0] >> 2, 1
    elif mode == 1:
        n, at = struct.unpack("<H", user_data[:2])[0] >> 2, 2
    else:
        n, at = struct.unpack("<I", user_data[:4])[0] >> 2, 4
    return user_data[at : at + n]


def timed(call):
    before = time.time()
    result = call()
    return result, before, time.time()


def stateful_cases():
    cases = []
    base = dict(last_epoch_block=1000, pending_epoch_at=0, tempo=100, current_block=1050,
                subnet_reveal_period_epochs=1, block_time=12.0)
    variations = [{}, {"current_block": 1098}, {"current_block": 1099}, {"current_block": 1100},
                  {"current_block": 1101}, {"subnet_reveal_period_epochs": 3},
                  {"pending_epoch_at": 1060}, {"pending_epoch_at": 1040},
                  {"last_epoch_block": 0, "current_block": 5}, {"tempo": 360, "current_block": 1001},
                  {"block_time": 0.25}, {"current_block": 900}, {"tempo": 1, "current_block": 1000}]
    for v in variations:
        case = dict(base, **v)
        (_, rnd), before, after = timed(lambda: drand.get_encrypted_commit_v2(
            [0], [1], 0, case["last_epoch_block"], case["pending_epoch_at"], 7, case["tempo"], 0,
            case["current_block"], case["subnet_reveal_period_epochs"], case["block_time"], HOTKEY))
        cases.append(dict(case, round=rnd, now_before=before, now_after=after))
    return cases


def legacy_cases():
    cases = []
    base = dict(netuid=1, tempo=99, current_block=150, subnet_reveal_period_epochs=1, block_time=12.0)
    variations = [{}, {"current_block": 197}, {"current_block": 198}, {"netuid": 0},
                  {"netuid": 7, "tempo": 360, "current_block": 12345},
                  {"subnet_reveal_period_epochs": 2}, {"block_time": 0.25}]
    for v in variations:
        case = dict(base, **v)
        (_, rnd), before, after = timed(lambda: drand.get_encrypted_commit(
            [0], [1], 0, case["tempo"], case["current_block"], case["netuid"],
            case["subnet_reveal_period_epochs"], case["block_time"], HOTKEY))
        cases.append(dict(case, round=rnd, now_before=before, now_after=after))
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--legacy" in sys.argv:
        fixture = {"tool": "bittensor-drand 1.2 get_encrypted_commit", "reveal_rounds": legacy_cases()}
        name = "bittensor-drand-legacy.json"
    else:
        weights = dict(uids=[0, 3, 7], values=[65535, 30000, 1], version_key=9)
        plaintext = payload(**weights)
        commit, reveal_round = drand.encrypt_at_round(plaintext, ROUND)
        assert reveal_round == ROUND
        assert drand.decrypt_with_signature(commit, SIGNATURE) == plaintext
        fixture = {
            "tool": "bittensor-drand 2.0 encrypt_at_round and get_encrypted_commit_v2",
            "round": ROUND,
            "signature": SIGNATURE,
            "payload": dict(weights, hotkey=HOTKEY.hex(), scale=plaintext.hex()),
            "commit": unwrap(commit).hex(),
            "reveal_rounds": stateful_cases(),
        }
        name = "bittensor-drand.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {name}")


if __name__ == "__main__":
    main()
