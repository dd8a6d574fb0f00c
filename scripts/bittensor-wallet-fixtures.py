#!/usr/bin/env python3
"""Makes the Bittensor wallet fixtures in mechanism/tests/fixtures/bittensor-wallets with
Bittensor's own wallet (PyPI `bittensor-wallet`), so that sinter's reader is checked against
the files the ecosystem writes. Keys come from fixed, public test mnemonics; the coldkey is
encrypted with the password in PASSWORD. Each run encrypts with a fresh nonce, so the coldkey's
bytes change while its key does not.

    python3 -m venv ~/.cache/sinter/btwallet-venv
    ~/.cache/sinter/btwallet-venv/bin/pip install bittensor-wallet==4.1.1
    ~/.cache/sinter/btwallet-venv/bin/python scripts/bittensor-wallet-fixtures.py
"""
import json
import shutil
from pathlib import Path

from bittensor_wallet import Wallet

OUT = Path(__file__).resolve().parent.parent / "mechanism/tests/fixtures/bittensor-wallets"
PASSWORD = "sinter fixture password"
COLD = "bottom drive obey lake curtain smoke basket hold race lonely fit walk"
HOT = "legal winner thank year wave sausage worth useful legal winner thank yellow"

shutil.rmtree(OUT, ignore_errors=True)
wallet = Wallet(name="alice", hotkey="miner", path=str(OUT))
wallet.regenerate_coldkey(mnemonic=COLD, use_password=True, overwrite=True, suppress=True,
                          coldkey_password=PASSWORD)
wallet.regenerate_hotkey(mnemonic=HOT, use_password=False, overwrite=True, suppress=True)
expected = {
    "password": PASSWORD,
    "coldkey": wallet.coldkeypub.ss58_address,
    "hotkey": wallet.hotkey.ss58_address,
    "coldkey_mnemonic": COLD,
    "hotkey_mnemonic": HOT,
    "made_with": "bittensor-wallet 4.1.1",
}
(OUT / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
print(json.dumps(expected, indent=2))
