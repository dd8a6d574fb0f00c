//! sinter's first wallet format, still read: `DIR/NAME/coldkey` and `DIR/NAME/hotkey`, each a
//! JSON object `{"secret_phrase": …, "account": …}` (unencrypted, mode 0600). `launch wallet
//! convert` rewrites such a wallet in Bittensor's format.

use std::path::{Path, PathBuf};

use super::super::LedgerError;
use super::super::keys::Keypair;

/// The key in a legacy key file's bytes, with the secret it was made from (a mnemonic or a
/// secret URI), if they are one.
pub(super) fn parse(bytes: &[u8], path: &Path) -> Option<Result<(Keypair, String), LedgerError>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let phrase = value.get("secret_phrase")?.as_str()?;
    Some(
        Keypair::from_secret(phrase)
            .map(|key| (key, phrase.to_owned()))
            .map_err(|e| LedgerError::Wallet(format!("{}: {e}", path.display()))),
    )
}

/// A legacy wallet's `hotkey` file in `dir`, if there is one (its `coldkey` is where
/// Bittensor's is).
pub(super) fn hotkey_file(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("hotkey")).filter(|p| p.is_file())
}
