//! Wallets on disk, in Bittensor's layout and format, so that an operator's existing keys
//! work unchanged and keys made here work in Bittensor's tools:
//!
//! ```text
//! WALLET_PATH/NAME/coldkey              encrypted (owns stake, pays registration)
//! WALLET_PATH/NAME/coldkeypub.txt       its public half
//! WALLET_PATH/NAME/hotkeys/HOTKEY       unencrypted (signs a peer's extrinsics)
//! WALLET_PATH/NAME/hotkeys/HOTKEYpub.txt
//! ```
//!
//! `WALLET_PATH` defaults to `~/.bittensor/wallets`. Files are written with mode 0600, synced,
//! and never overwritten. sinter's first format (`NAME/coldkey` and `NAME/hotkey` as JSON with
//! a `secret_phrase`) is still read ([`legacy`]).

mod keyfile;
mod legacy;

use std::io::Write;
use std::path::{Path, PathBuf};

use super::LedgerError;
use super::keys::{AccountId, Keypair};
use keyfile::KeyfileData;

/// Where one wallet and one of its hotkeys live.
#[derive(Debug, Clone)]
pub struct WalletPath {
    /// The wallets directory.
    pub base: PathBuf,
    /// The wallet's name.
    pub name: String,
    /// The hotkey's name.
    pub hotkey: String,
}

impl WalletPath {
    /// Wallet `name`'s hotkey `hotkey` under `base` (default `~/.bittensor/wallets`); both
    /// names must be plain file names.
    pub fn new(base: Option<&Path>, name: &str, hotkey: &str) -> Result<Self, LedgerError> {
        for (what, n) in [("wallet", name), ("hotkey", hotkey)] {
            if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') {
                return Err(LedgerError::Wallet(format!(
                    "{what} name {n:?} is not a plain name"
                )));
            }
        }
        let base = match base {
            Some(dir) => dir.to_owned(),
            None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
                LedgerError::Wallet("HOME is not set: name the wallets directory".into())
            })?)
            .join(".bittensor/wallets"),
        };
        Ok(Self {
            base,
            name: name.to_owned(),
            hotkey: hotkey.to_owned(),
        })
    }

    /// The wallet's directory.
    pub fn dir(&self) -> PathBuf {
        self.base.join(&self.name)
    }

    /// The coldkey's file.
    pub fn coldkey_file(&self) -> PathBuf {
        self.dir().join("coldkey")
    }

    fn coldkeypub_file(&self) -> PathBuf {
        self.dir().join("coldkeypub.txt")
    }

    /// The hotkey's file.
    pub fn hotkey_file(&self) -> PathBuf {
        self.dir().join("hotkeys").join(&self.hotkey)
    }

    fn hotkeypub_file(&self) -> PathBuf {
        self.dir()
            .join("hotkeys")
            .join(format!("{}pub.txt", self.hotkey))
    }

    /// The hotkey's file, or a legacy wallet's `hotkey`.
    fn hotkey_source(&self) -> Result<PathBuf, LedgerError> {
        let file = self.hotkey_file();
        if file.is_file() {
            return Ok(file);
        }
        legacy::hotkey_file(&self.dir()).ok_or_else(|| self.missing("hotkey", &file))
    }

    /// What to say when the wallet is not there.
    fn missing(&self, what: &str, path: &Path) -> LedgerError {
        LedgerError::Wallet(format!(
            "no {what} at {}: create the wallet with `launch wallet new --wallet-path {} --name {} --hotkey {}` (or point --wallet-path at where it is)",
            path.display(),
            self.base.display(),
            self.name,
            self.hotkey
        ))
    }
}

/// Which key of a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Owns stake, pays registration; stored encrypted.
    Coldkey,
    /// Signs a peer's extrinsics; stored as is.
    Hotkey,
}

/// A wallet's keys: the hotkey signs, the coldkey pays registration and stake. The coldkey
/// is decrypted only when first needed (its key derivation takes a second and 512 MiB).
pub struct Wallet {
    /// The hotkey.
    pub hotkey: Keypair,
    coldkey: Option<Coldkey>,
}

/// A coldkey on disk, with the password to open it, decrypted once.
struct Coldkey {
    file: PathBuf,
    password: Option<String>,
    key: std::sync::OnceLock<Keypair>,
}

impl Wallet {
    /// A wallet of keys in memory.
    pub fn with_keys(hotkey: Keypair, coldkey: Option<Keypair>) -> Self {
        let coldkey = coldkey.map(|key| Coldkey {
            file: PathBuf::new(),
            password: None,
            key: key.into(),
        });
        Self { hotkey, coldkey }
    }

    /// Reads the hotkey, and notes the coldkey to open with `password` when needed.
    pub fn read(path: &WalletPath, password: Option<&str>) -> Result<Self, LedgerError> {
        let hotkey = read_key_file(&path.hotkey_source()?, None)?;
        let coldkey = Some(path.coldkey_file())
            .filter(|file| file.is_file())
            .map(|file| Coldkey {
                file,
                password: password.map(str::to_owned),
                key: std::sync::OnceLock::new(),
            });
        Ok(Self { hotkey, coldkey })
    }

    /// The coldkey (none when the wallet has none), decrypted on first use; without its
    /// password, [`LedgerError::Locked`].
    pub fn coldkey(&self) -> Result<Option<&Keypair>, LedgerError> {
        let Some(cold) = &self.coldkey else {
            return Ok(None);
        };
        if let Some(key) = cold.key.get() {
            return Ok(Some(key));
        }
        let key = read_key_file(&cold.file, cold.password.as_deref())?;
        Ok(Some(cold.key.get_or_init(|| key)))
    }

    /// The coldkey that `call` must be signed with, or why there is none (for the `Ledger`
    /// interface).
    pub fn coldkey_for(
        &self,
        call: &'static str,
    ) -> Result<&Keypair, crate::ledger::interface::CallError> {
        let keys = |why: String| crate::ledger::interface::CallError::Keys { call, why };
        let hotkey = self.hotkey_account();
        match self.coldkey() {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(keys(format!(
                "hotkey {hotkey} needs its coldkey, and the wallet has none"
            ))),
            Err(e) => Err(keys(format!("hotkey {hotkey} needs its coldkey: {e}"))),
        }
    }

    /// The hotkey's account.
    pub fn hotkey_account(&self) -> AccountId {
        self.hotkey.account()
    }
}

/// A new wallet's accounts and mnemonics.
pub struct NewWallet {
    /// The coldkey's account and mnemonic.
    pub coldkey: (AccountId, String),
    /// The hotkey's account and mnemonic.
    pub hotkey: (AccountId, String),
}

/// Creates a wallet: a fresh coldkey (encrypted with `password`) and hotkey. Refuses to
/// overwrite any key already there.
pub fn create(path: &WalletPath, password: &str) -> Result<NewWallet, LedgerError> {
    // All four checked first, so that no half-made wallet is left.
    for file in [
        path.coldkey_file(),
        path.coldkeypub_file(),
        path.hotkey_file(),
        path.hotkeypub_file(),
    ] {
        if file.exists() {
            return Err(exists(&file));
        }
    }
    let (cold, cold_phrase) = Keypair::generate();
    let (hot, hot_phrase) = Keypair::generate();
    write_key(
        path,
        KeyRole::Coldkey,
        &cold,
        Some(&cold_phrase),
        Some(password),
    )?;
    write_key(path, KeyRole::Hotkey, &hot, Some(&hot_phrase), None)?;
    Ok(NewWallet {
        coldkey: (cold.account(), cold_phrase),
        hotkey: (hot.account(), hot_phrase),
    })
}

/// Writes one key of a wallet and its public half: the coldkey encrypted with `password`
/// (required), the hotkey as is. Refuses to overwrite.
pub fn write_key(
    path: &WalletPath,
    role: KeyRole,
    key: &Keypair,
    phrase: Option<&str>,
    password: Option<&str>,
) -> Result<(), LedgerError> {
    let (file, public) = match role {
        KeyRole::Coldkey => (path.coldkey_file(), path.coldkeypub_file()),
        KeyRole::Hotkey => (path.hotkey_file(), path.hotkeypub_file()),
    };
    for f in [&file, &public] {
        if f.exists() {
            return Err(exists(f));
        }
    }
    let json = KeyfileData::secret(key, phrase)?.to_json();
    let body = match (role, password) {
        (KeyRole::Coldkey, Some(password)) => keyfile::encrypt(&json, password),
        (KeyRole::Coldkey, None) => {
            return Err(LedgerError::Wallet(
                "a coldkey is stored encrypted: it needs a password".into(),
            ));
        }
        (KeyRole::Hotkey, _) => json,
    };
    write_private(&file, &body)?;
    write_private(&public, &KeyfileData::public(&key.account()).to_json())
}

/// The wallet's coldkey and hotkey accounts, from their public files (no password), those
/// that exist.
pub fn public_accounts(
    path: &WalletPath,
) -> Result<(Option<AccountId>, Option<AccountId>), LedgerError> {
    // Bittensor writes a public file beside each key; a legacy wallet's keys are unencrypted.
    let account = |public: PathBuf, key: PathBuf| -> Result<Option<AccountId>, LedgerError> {
        if public.is_file() {
            let bytes = keyfile::read(&public)?;
            return KeyfileData::parse(&bytes, &public)?
                .account(&public)
                .map(Some);
        }
        match key.is_file() {
            true => read_key_file(&key, None).map(|k| Some(k.account())),
            false => Ok(None),
        }
    };
    let cold = account(path.coldkeypub_file(), path.coldkey_file())?;
    let hot = match path.hotkey_source() {
        Ok(key) => account(path.hotkeypub_file(), key)?,
        Err(_) => None,
    };
    Ok((cold, hot))
}

/// Rewrites a wallet of sinter's first format (`from/coldkey`, `from/hotkey`) in Bittensor's
/// at `to`, the coldkey encrypted with `password`. Returns the coldkey's and hotkey's accounts.
pub fn convert_legacy(
    from: &Path,
    to: &WalletPath,
    password: &str,
) -> Result<(AccountId, AccountId), LedgerError> {
    let read = |name: &str| -> Result<(Keypair, String), LedgerError> {
        let file = from.join(name);
        let bytes = keyfile::read(&file)?;
        legacy::parse(&bytes, &file).unwrap_or_else(|| {
            Err(LedgerError::Wallet(format!(
                "{}: not a key file of sinter's first format",
                file.display()
            )))
        })
    };
    let (cold, cold_secret) = read("coldkey")?;
    let (hot, hot_secret) = read("hotkey")?;
    // A key made from a secret URI (`//Alice`) has no mnemonic to keep.
    let mnemonic = |secret: &str| {
        Keypair::from_phrase(secret)
            .is_ok()
            .then(|| secret.to_owned())
    };
    write_key(
        to,
        KeyRole::Coldkey,
        &cold,
        mnemonic(&cold_secret).as_deref(),
        Some(password),
    )?;
    write_key(
        to,
        KeyRole::Hotkey,
        &hot,
        mnemonic(&hot_secret).as_deref(),
        None,
    )?;
    Ok((cold.account(), hot.account()))
}

/// Decrypts the wallet's coldkey.
pub fn unlock_coldkey(path: &WalletPath, password: &str) -> Result<Keypair, LedgerError> {
    let file = path.coldkey_file();
    if !file.is_file() {
        return Err(path.missing("coldkey", &file));
    }
    read_key_file(&file, Some(password))
}

/// The key in any key file: Bittensor's (encrypted with `password`, or not) or sinter's first
/// format. An encrypted one without a password is [`LedgerError::Locked`].
pub fn read_key_file(path: &Path, password: Option<&str>) -> Result<Keypair, LedgerError> {
    let bytes = keyfile::read(path)?;
    if keyfile::is_encrypted(&bytes) {
        let password = password.ok_or_else(|| LedgerError::Locked {
            path: path.to_owned(),
        })?;
        let plain = keyfile::decrypt(&bytes, password, path)?;
        return KeyfileData::parse(&plain, path)?.keypair(path);
    }
    if let Some(key) = legacy::parse(&bytes, path) {
        return key.map(|(key, _)| key);
    }
    KeyfileData::parse(&bytes, path)?.keypair(path)
}

fn exists(path: &Path) -> LedgerError {
    LedgerError::Invalid(format!(
        "{} exists: a key is never overwritten, move the old one away first",
        path.display()
    ))
}

/// Writes a file readable only by its owner (0600), synced, creating its directory and
/// refusing to overwrite.
fn write_private(path: &Path, body: &[u8]) -> Result<(), LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => exists(path),
        _ => io(e),
    })?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        }
        #[cfg(not(unix))]
        0o600
    }

    #[test]
    fn a_new_wallet_has_bittensors_files_private_never_overwritten_and_a_locked_coldkey() {
        let dir = tempfile::tempdir().unwrap();
        let path = WalletPath::new(Some(dir.path()), "alice", "miner").unwrap();
        let made = create(&path, "pw").unwrap();
        for file in [
            "alice/coldkey",
            "alice/coldkeypub.txt",
            "alice/hotkeys/miner",
            "alice/hotkeys/minerpub.txt",
        ] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        assert_eq!(
            public_accounts(&path).unwrap(),
            (Some(made.coldkey.0), Some(made.hotkey.0))
        );
        let wallet = Wallet::read(&path, None).unwrap();
        assert_eq!(wallet.hotkey_account(), made.hotkey.0);
        assert!(
            matches!(wallet.coldkey(), Err(LedgerError::Locked { .. })),
            "locked without the password"
        );
        let unlocked = Wallet::read(&path, Some("pw")).unwrap();
        assert_eq!(
            unlocked.coldkey().unwrap().unwrap().account(),
            made.coldkey.0
        );
        assert!(matches!(
            unlock_coldkey(&path, "wrong"),
            Err(LedgerError::WrongPassword { .. })
        ));
        let again = create(&path, "pw").map(|_| ()).unwrap_err();
        assert!(again.to_string().contains("never overwritten"), "{again}");
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(
                WalletPath::new(Some(dir.path()), bad, "h").is_err(),
                "{bad:?}"
            );
            assert!(
                WalletPath::new(Some(dir.path()), "w", bad).is_err(),
                "{bad:?}"
            );
        }
        let missing = WalletPath::new(Some(dir.path()), "bob", "default").unwrap();
        let e = Wallet::read(&missing, None).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("launch wallet new"), "{e}");
    }

    #[test]
    fn a_legacy_sinter_wallet_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = WalletPath::new(Some(dir.path()), "old", "default").unwrap();
        let (cold, cold_phrase) = Keypair::generate();
        let (hot, hot_phrase) = Keypair::generate();
        std::fs::create_dir_all(path.dir()).unwrap();
        for (name, phrase) in [("coldkey", &cold_phrase), ("hotkey", &hot_phrase)] {
            let body = serde_json::json!({ "secret_phrase": phrase });
            std::fs::write(path.dir().join(name), body.to_string()).unwrap();
        }
        let wallet = Wallet::read(&path, None).unwrap();
        assert_eq!(wallet.hotkey_account(), hot.account());
        assert_eq!(wallet.coldkey().unwrap().unwrap().account(), cold.account());
        assert_eq!(
            public_accounts(&path).unwrap(),
            (Some(cold.account()), Some(hot.account()))
        );
        // Converted to Bittensor's format elsewhere: the same keys, the coldkey encrypted.
        let to = WalletPath::new(Some(dir.path()), "new", "miner").unwrap();
        let accounts = convert_legacy(&path.dir(), &to, "pw").unwrap();
        assert_eq!(accounts, (cold.account(), hot.account()));
        assert!(Wallet::read(&to, None).unwrap().coldkey().is_err());
        assert_eq!(unlock_coldkey(&to, "pw").unwrap().account(), cold.account());
        assert_eq!(
            Wallet::read(&to, None).unwrap().hotkey_account(),
            hot.account()
        );
    }
}
