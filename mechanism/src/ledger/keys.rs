//! sr25519 keys as the chain uses them (`sp-core`): an account is a 32-byte public key, shown
//! in SS58 (Bittensor's prefix 42); signatures are 64 bytes.

use parity_scale_codec::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sp_core::crypto::{Ss58Codec, Zeroize};
use sp_core::{Pair as _, sr25519};

use super::LedgerError;

/// An account: an sr25519 public key (serialized as its SS58 address).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct AccountId(pub [u8; 32]);

impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.ss58())
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl AccountId {
    /// Parses an SS58 address or `0x`-prefixed hex.
    pub fn parse(text: &str) -> Result<Self, LedgerError> {
        let bad = |why: String| LedgerError::Key(format!("account {text:?}: {why}"));
        if let Some(hex) = text.strip_prefix("0x") {
            let bytes = hex::decode(hex).ok().ok_or_else(|| bad("not hex".into()))?;
            let raw: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("must be 32 bytes".into()))?;
            return Ok(Self(raw));
        }
        sr25519::Public::from_ss58check(text)
            .map(|p| Self(p.0))
            .map_err(|e| bad(format!("not an SS58 address ({e:?})")))
    }

    /// The SS58 address (prefix 42).
    pub fn ss58(&self) -> String {
        sr25519::Public::from_raw(self.0).to_ss58check()
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.ss58())
    }
}

impl std::fmt::Debug for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ss58())
    }
}

/// Serde for a 32-byte hash as lower-case hex (`#[serde(with = "hex32")]`).
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the hash as hex.
    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    /// Reads a hash from 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(&text)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 64 hex digits")))
    }
}

/// A signing key.
#[derive(Clone)]
pub struct Keypair(sr25519::Pair);

impl Keypair {
    /// A fresh key and its 12-word mnemonic (the only way to restore it).
    pub fn generate() -> (Self, String) {
        let (pair, phrase, mut seed) = sr25519::Pair::generate_with_phrase(None);
        seed.zeroize();
        (Self(pair), phrase)
    }

    /// The key a mnemonic (BIP-39) or a secret URI (`//Alice`, `0x…` seed) names.
    pub fn from_secret(secret: &str) -> Result<Self, LedgerError> {
        sr25519::Pair::from_string(secret.trim(), None)
            .map(Self)
            .map_err(|e| LedgerError::Key(format!("not a mnemonic or secret URI: {e:?}")))
    }

    /// The key a BIP-39 mnemonic names, with its 32-byte seed (Bittensor's `secretSeed`).
    pub fn from_phrase(phrase: &str) -> Result<(Self, [u8; 32]), LedgerError> {
        sr25519::Pair::from_phrase(phrase.trim(), None)
            .map(|(pair, seed)| (Self(pair), seed))
            .map_err(|e| LedgerError::Key(format!("not a mnemonic: {e:?}")))
    }

    /// The key from a 32-byte seed or a 64-byte secret key (Bittensor's `privateKey`).
    pub fn from_seed_bytes(bytes: &[u8]) -> Result<Self, LedgerError> {
        sr25519::Pair::from_seed_slice(bytes)
            .map(Self)
            .map_err(|e| LedgerError::Key(format!("not an sr25519 seed or secret key: {e:?}")))
    }

    /// The 64-byte secret key (key and nonce), as Bittensor's `privateKey`.
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.0.to_raw_vec()
    }

    /// The account.
    pub fn account(&self) -> AccountId {
        AccountId(self.0.public().0)
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).0
    }
}

impl std::fmt::Debug for Keypair {
    /// The account only: a key's secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.account())
    }
}

/// Whether `signature` is `who`'s over `message`.
pub fn verify(signature: &[u8; 64], message: &[u8], who: &AccountId) -> bool {
    sr25519::Pair::verify(
        &sr25519::Signature::from_raw(*signature),
        message,
        &sr25519::Public::from_raw(who.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bob_is_the_chains_bob_and_signatures_verify() {
        let bob = Keypair::from_secret("//Bob").unwrap();
        assert_eq!(
            hex::encode(bob.account().0),
            "8eaf04151687736326c9fea17e25fc5287613693c912909cb226aa4794f26a48",
            "vectors.json's bob_account_hex"
        );
        let parsed = AccountId::parse(&bob.account().ss58()).unwrap();
        assert_eq!(parsed, bob.account());
        let signature = bob.sign(b"hello");
        assert!(verify(&signature, b"hello", &bob.account()));
        assert!(!verify(&signature, b"hellp", &bob.account()));
        let (fresh, phrase) = Keypair::generate();
        assert_eq!(phrase.split_whitespace().count(), 12);
        assert_eq!(
            Keypair::from_secret(&phrase).unwrap().account(),
            fresh.account()
        );
        assert!(Keypair::from_secret("not a mnemonic").is_err());
    }
}
