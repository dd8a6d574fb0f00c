//! Wallets in Bittensor's format, checked against Bittensor's own wallet: fixtures it wrote
//! (`scripts/bittensor-wallet-fixtures.py`) are read here, and a wallet written here is read
//! by it (the `bittensor-wallet` venv that `scripts/setup.sh` makes;
//! `SINTER_SKIP_PYTHON=1` skips that half where Python packages cannot be installed).

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The Python of the venv with Bittensor's wallet, or none when skipped.
fn bittensor_python() -> Option<PathBuf> {
    if std::env::var_os("SINTER_SKIP_PYTHON").is_some() {
        return None;
    }
    let python = std::env::var_os("SINTER_BTWALLET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/sinter/btwallet-venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh (it installs bittensor-wallet), or set SINTER_SKIP_PYTHON=1",
        python.display()
    );
    Some(python)
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
    let out = Command::new(&python)
        .args(["-c", script, dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its wallet prints progress ("Decrypting...") before the answer.
    let stdout = String::from_utf8_lossy(&out.stdout);
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
