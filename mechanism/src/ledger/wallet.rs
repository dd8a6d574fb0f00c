//! Wallets on disk: a directory per wallet holding a `coldkey` (owns stake, pays
//! registration, receives emission) and a `hotkey` (signs a peer's extrinsics), each a JSON
//! key file with its mnemonic, readable only by its owner and never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::LedgerError;
use super::keys::{AccountId, Keypair};

/// A wallet's keys: the hotkey signs, the coldkey (if present) pays registration and stake.
pub struct Wallet {
    /// The hotkey.
    pub hotkey: Keypair,
    /// The coldkey, when this machine holds it.
    pub coldkey: Option<Keypair>,
}

impl Wallet {
    /// Reads `DIR/hotkey` and, if present, `DIR/coldkey`.
    pub fn read(dir: &Path) -> Result<Self, LedgerError> {
        let hotkey_path = dir.join("hotkey");
        if !hotkey_path.exists() {
            return Err(LedgerError::Wallet(format!(
                "no hotkey in {}: create the wallet with `launch wallet new --name NAME` (or name the wallets directory with --wallets)",
                dir.display()
            )));
        }
        let hotkey = read_key_file(&hotkey_path)?;
        let coldkey_path = dir.join("coldkey");
        let coldkey = coldkey_path
            .exists()
            .then(|| read_key_file(&coldkey_path))
            .transpose()?;
        Ok(Self { hotkey, coldkey })
    }

    /// The hotkey's account.
    pub fn hotkey_account(&self) -> AccountId {
        self.hotkey.account()
    }
}

/// The directory of wallet `name` under `base` (default `~/.sinter/wallets`); the name must be
/// a plain file name.
pub fn wallet_dir(base: Option<&Path>, name: &str) -> Result<PathBuf, LedgerError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(LedgerError::Wallet(format!(
            "wallet name {name:?} is not a plain name"
        )));
    }
    let base = match base {
        Some(dir) => dir.to_owned(),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
            LedgerError::Wallet("HOME is not set: name the wallets directory".into())
        })?)
        .join(".sinter/wallets"),
    };
    Ok(base.join(name))
}

/// Writes a key file readable only by its owner (0600), synced, refusing to overwrite.
pub fn write_key_file(path: &Path, phrase: &str, key: &Keypair) -> Result<(), LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            LedgerError::Invalid(format!(
                "{} exists: a key is never overwritten, move the old one away first",
                path.display()
            ))
        } else {
            io(e)
        }
    })?;
    let body = serde_json::json!({ "secret_phrase": phrase, "account": key.account().ss58() });
    file.write_all(body.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// The key in a wallet key file.
pub fn read_key_file(path: &Path) -> Result<Keypair, LedgerError> {
    let text = std::fs::read_to_string(path).map_err(|source| LedgerError::Io {
        path: path.to_owned(),
        source,
    })?;
    let not_a_key = |why: &str| LedgerError::Wallet(format!("{}: {why}", path.display()));
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| not_a_key("not a sinter key file"))?;
    let phrase = value["secret_phrase"]
        .as_str()
        .ok_or_else(|| not_a_key("no secret_phrase"))?;
    Keypair::from_secret(phrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (key, phrase) = Keypair::generate();
        let path = dir.path().join("hotkey");
        write_key_file(&path, &phrase, &key).unwrap();
        assert_eq!(read_key_file(&path).unwrap().account(), key.account());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = write_key_file(&path, &phrase, &key).unwrap_err();
        assert!(again.to_string().contains("never overwritten"), "{again}");
        let wallet = Wallet::read(dir.path()).unwrap();
        assert_eq!(wallet.hotkey_account(), key.account());
        assert!(wallet.coldkey.is_none());
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(wallet_dir(Some(dir.path()), bad).is_err(), "{bad:?}");
        }
    }
}
