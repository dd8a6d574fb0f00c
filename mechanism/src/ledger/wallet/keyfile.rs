//! Bittensor's key files, byte for byte as its wallet (`bittensor-wallet`) writes and reads
//! them: a JSON object (`publicKey`, `accountId`, `ss58Address`, `privateKey`, `secretSeed`,
//! `secretPhrase`, `cryptoType`), and for an encrypted key `$NACL` followed by a 24-byte nonce
//! and a NaCl secretbox (XSalsa20-Poly1305, tag first) of that JSON, under a key derived from
//! the password with Argon2i (v1.3, libsodium's "sensitive" limits: 8 passes over 512 MiB)
//! and the wallet's fixed salt.

use std::io::Read;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::{Nonce, Tag, XSalsa20Poly1305};
use serde::{Deserialize, Serialize};
use sp_core::crypto::Zeroize;

use super::super::LedgerError;
use super::super::keys::{AccountId, Keypair};

/// What starts an encrypted key file.
const NACL_PREFIX: &[u8] = b"$NACL";
/// The salt Bittensor's wallet derives every key file's key with.
const NACL_SALT: [u8; 16] = *b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1";
/// libsodium's `crypto_pwhash_argon2i_MEMLIMIT_SENSITIVE` (512 MiB), in KiB.
const ARGON2_KIB: u32 = 512 * 1024;
/// libsodium's `crypto_pwhash_argon2i_OPSLIMIT_SENSITIVE`.
const ARGON2_PASSES: u32 = 8;
/// sr25519, in the `cryptoType` field.
const SR25519: u8 = 1;
/// The largest key file read: real ones are under 1 KiB.
const MAX_KEYFILE: u64 = 64 << 10;

/// A key file's JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeyfileData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_seed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_phrase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ss58_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crypto_type: Option<u8>,
}

impl Drop for KeyfileData {
    fn drop(&mut self) {
        for secret in [
            &mut self.private_key,
            &mut self.secret_seed,
            &mut self.secret_phrase,
        ]
        .into_iter()
        .flatten()
        {
            secret.zeroize();
        }
    }
}

impl KeyfileData {
    /// The public half only (`coldkeypub.txt`, `HOTKEYpub.txt`).
    pub(super) fn public(account: &AccountId) -> Self {
        let hex = format!("0x{}", hex::encode(account.0));
        let mut data = Self::default();
        data.account_id = Some(hex.clone());
        data.public_key = Some(hex);
        data.ss58_address = Some(account.ss58());
        data.crypto_type = Some(SR25519);
        data
    }

    /// The whole key, with its mnemonic when it has one.
    pub(super) fn secret(key: &Keypair, phrase: Option<&str>) -> Result<Self, LedgerError> {
        let seed = match phrase {
            Some(phrase) => {
                let (derived, seed) = Keypair::from_phrase(phrase)?;
                if derived.account() != key.account() {
                    return Err(LedgerError::Key(
                        "the mnemonic does not name this key".into(),
                    ));
                }
                Some(format!("0x{}", hex::encode(seed)))
            }
            None => None,
        };
        let mut data = Self::public(&key.account());
        data.private_key = Some(format!("0x{}", hex::encode(key.secret_bytes())));
        data.secret_seed = seed;
        data.secret_phrase = phrase.map(str::to_owned);
        Ok(data)
    }

    pub(super) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("key files serialise")
    }

    /// Parses a key file's JSON; `path` names it in errors.
    pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<Self, LedgerError> {
        serde_json::from_slice(bytes).map_err(|e| {
            LedgerError::Wallet(format!(
                "{}: not a Bittensor key file ({e})",
                path.display()
            ))
        })
    }

    /// The account the file names (its public key, checked against its SS58 address).
    pub(super) fn account(&self, path: &Path) -> Result<AccountId, LedgerError> {
        let named = [&self.public_key, &self.account_id, &self.ss58_address]
            .into_iter()
            .flatten()
            .map(|text| AccountId::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LedgerError::Wallet(format!("{}: {e}", path.display())))?;
        let first = named.first().copied().ok_or_else(|| {
            LedgerError::Wallet(format!("{}: the key file names no account", path.display()))
        })?;
        if named.iter().any(|a| *a != first) {
            return Err(LedgerError::Wallet(format!(
                "{}: the key file names two accounts (damaged?)",
                path.display()
            )));
        }
        Ok(first)
    }

    /// The key: from the mnemonic, else the seed, else the secret key; it must match the
    /// account the file names.
    pub(super) fn keypair(&self, path: &Path) -> Result<Keypair, LedgerError> {
        let bad = |e: LedgerError| LedgerError::Wallet(format!("{}: {e}", path.display()));
        let from_hex = |text: &str| {
            hex::decode(text.trim_start_matches("0x"))
                .map_err(|_| bad(LedgerError::Key("not hex".into())))
        };
        let key = if let Some(phrase) = &self.secret_phrase {
            Keypair::from_phrase(phrase).map_err(bad)?.0
        } else if let Some(seed) = &self.secret_seed {
            Keypair::from_seed_bytes(&from_hex(seed)?).map_err(bad)?
        } else if let Some(secret) = &self.private_key {
            Keypair::from_seed_bytes(&from_hex(secret)?).map_err(bad)?
        } else {
            return Err(LedgerError::Wallet(format!(
                "{}: the key file holds only a public key",
                path.display()
            )));
        };
        // A file naming its account must name this key's (and name it readably).
        let names_one = [&self.public_key, &self.account_id, &self.ss58_address]
            .iter()
            .any(|f| f.is_some());
        if names_one && self.account(path)? != key.account() {
            return Err(LedgerError::Wallet(format!(
                "{}: its secret is not the key of the account it names (damaged?)",
                path.display()
            )));
        }
        Ok(key)
    }
}

/// Whether a key file's bytes are encrypted (`$NACL`).
pub(super) fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(NACL_PREFIX)
}

/// Reads a key file, refusing one larger than any real key file.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEYFILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_KEYFILE {
        return Err(LedgerError::Wallet(format!(
            "{}: over {MAX_KEYFILE} bytes, not a key file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The secretbox key for `password` (Argon2i as libsodium's `crypto_pwhash` with
/// "sensitive" limits; takes a second or more and 512 MiB, on purpose).
fn derive_key(password: &str) -> [u8; 32] {
    let params = Params::new(ARGON2_KIB, ARGON2_PASSES, 1, Some(32)).expect("valid parameters");
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), &NACL_SALT, &mut key)
        .expect("a 32-byte output and a 16-byte salt are valid");
    key
}

/// Encrypts a key file's JSON as Bittensor's wallet does.
pub(super) fn encrypt(plain: &[u8], password: &str) -> Vec<u8> {
    let mut key = derive_key(password);
    let cipher = XSalsa20Poly1305::new(&key.into());
    key.zeroize();
    let nonce: [u8; 24] = rand::random();
    let mut body = plain.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(nonce), b"", &mut body)
        .expect("a key file is far below the cipher's limit");
    [NACL_PREFIX, &nonce, &tag, &body].concat()
}

/// Decrypts an encrypted key file; a wrong password (or a damaged file: the two cannot be
/// told apart) is [`LedgerError::WrongPassword`].
pub(super) fn decrypt(bytes: &[u8], password: &str, path: &Path) -> Result<Vec<u8>, LedgerError> {
    let rest = bytes.strip_prefix(NACL_PREFIX).ok_or_else(|| {
        LedgerError::Wallet(format!("{}: not an encrypted key file", path.display()))
    })?;
    if rest.len() < 24 + 16 {
        return Err(LedgerError::Wallet(format!(
            "{}: an encrypted key file too short to hold a key",
            path.display()
        )));
    }
    let (nonce, rest) = rest.split_at(24);
    let (tag, body) = rest.split_at(16);
    let mut key = derive_key(password);
    let cipher = XSalsa20Poly1305::new(&key.into());
    key.zeroize();
    let mut plain = body.to_vec();
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            b"",
            &mut plain,
            Tag::from_slice(tag),
        )
        .map_err(|_| LedgerError::WrongPassword {
            path: path.to_owned(),
        })?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_key_opens_with_its_password_only_and_truncation_is_refused() {
        let path = Path::new("coldkey");
        let sealed = encrypt(b"{\"secretPhrase\":\"x\"}", "pw one");
        assert!(is_encrypted(&sealed));
        assert_eq!(sealed.len(), 5 + 24 + 16 + 20);
        assert_eq!(
            decrypt(&sealed, "pw one", path).unwrap(),
            b"{\"secretPhrase\":\"x\"}"
        );
        assert!(matches!(
            decrypt(&sealed, "pw two", path),
            Err(LedgerError::WrongPassword { .. })
        ));
        let short = decrypt(&sealed[..30], "pw one", path).unwrap_err();
        assert!(short.to_string().contains("too short"), "{short}");
    }

    #[test]
    fn a_key_round_trips_through_its_json_and_a_mismatched_file_is_refused() {
        let path = Path::new("hotkey");
        let (key, phrase) = Keypair::generate();
        let data = KeyfileData::secret(&key, Some(&phrase)).unwrap();
        let back = KeyfileData::parse(&data.to_json(), path).unwrap();
        assert_eq!(back.keypair(path).unwrap().account(), key.account());
        // Without the mnemonic, the seed and then the secret key still name the key.
        let mut seed_only = KeyfileData::parse(&data.to_json(), path).unwrap();
        seed_only.secret_phrase = None;
        assert_eq!(seed_only.keypair(path).unwrap().account(), key.account());
        seed_only.secret_seed = None;
        assert_eq!(seed_only.keypair(path).unwrap().account(), key.account());
        // A file whose secret is another account's.
        let (other, _) = Keypair::generate();
        let mut forged = KeyfileData::secret(&other, None).unwrap();
        forged.public_key = data.public_key.clone();
        forged.account_id = data.account_id.clone();
        forged.ss58_address = data.ss58_address.clone();
        let e = forged.keypair(path).unwrap_err();
        assert!(e.to_string().contains("not the key of the account"), "{e}");
        // An unreadable account is refused, not passed over.
        let mut garbled = KeyfileData::parse(&data.to_json(), path).unwrap();
        garbled.ss58_address = Some("5Not-an-address".into());
        assert!(garbled.keypair(path).is_err());
        let public = KeyfileData::public(&key.account());
        assert_eq!(public.account(path).unwrap(), key.account());
        assert!(public.keypair(path).is_err());
    }
}
