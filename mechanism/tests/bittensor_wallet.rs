//! Wallets in Bittensor's format, checked against Bittensor's own wallet: fixtures it wrote
//! (`scripts/bittensor-wallet-fixtures.py`) are read here, and a wallet written here is read
//! by it (the `bittensor-wallet` venv that `scripts/setup.sh` makes;
//! `SINTER_SKIP_PYTHON=1` skips that half where Python packages cannot be installed).

mod python;

use std::path::{Path, PathBuf};

use python::bittensor_python;

use sinter_mechanism::ledger::LedgerError;
use sinter_mechanism::ledger::keys::{Keypair, verify};
use sinter_mechanism::ledger::wallet::{self, Wallet, WalletPath};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bittensor-wallets")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

#[test]
fn a_wallet_bittensor_wrote_opens_with_its_password_only() {
    let expected = expected();
    let path = WalletPath::new(Some(&fixtures()), "alice", "miner").unwrap();
    let (cold, hot) = wallet::public_accounts(&path).unwrap();
    assert_eq!(cold.unwrap().ss58(), expected["coldkey"]);
    assert_eq!(hot.unwrap().ss58(), expected["hotkey"]);
    let read = Wallet::read(&path, None).unwrap();
    assert_eq!(read.hotkey_account().ss58(), expected["hotkey"]);
    let password = expected["password"].as_str().unwrap();
    let coldkey = wallet::unlock_coldkey(&path, password).unwrap();
    assert_eq!(coldkey.account().ss58(), expected["coldkey"]);
    // The mnemonic Bittensor was given names the same key here.
    let phrase = expected["coldkey_mnemonic"].as_str().unwrap();
    assert_eq!(
        Keypair::from_phrase(phrase).unwrap().0.account(),
        coldkey.account()
    );
    assert!(matches!(
        wallet::unlock_coldkey(&path, "not the password"),
        Err(LedgerError::WrongPassword { .. })
    ));
}

#[test]
fn bittensors_wallet_opens_a_wallet_written_here() {
    let Some(python) = bittensor_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = WalletPath::new(Some(dir.path()), "bob", "validator").unwrap();
    let made = wallet::create(&path, "a password").unwrap();
    let script = r#"
import json, sys
from bittensor_wallet import Wallet
w = Wallet(name="bob", hotkey="validator", path=sys.argv[1])
cold = w.coldkey_file.get_keypair(password="a password")
print(json.dumps({"coldkey": cold.ss58_address, "coldkeypub": w.coldkeypub.ss58_address,
                  "hotkey": w.hotkey.ss58_address,
                  "signature": w.hotkey.sign(b"signed by bittensor").hex()}))
"#;
    // Its wallet prints progress ("Decrypting...") before the answer.
    let stdout = python::run(&python, script, &[dir.path().to_str().unwrap()]);
    let read: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(read["coldkey"], made.coldkey.0.ss58());
    assert_eq!(read["coldkeypub"], made.coldkey.0.ss58());
    assert_eq!(read["hotkey"], made.hotkey.0.ss58());
    // It holds the hotkey's secret: it signs as the hotkey.
    let signature: [u8; 64] = hex::decode(read["signature"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert!(verify(&signature, b"signed by bittensor", &made.hotkey.0));
}
