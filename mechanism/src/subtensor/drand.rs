//! Weights timelocked to drand. Where a subnet has commit-reveal on and its runtime takes
//! `commit_timelocked_weights` (or the older `commit_crv3_weights`), a validator does not
//! reveal its weights itself: it encrypts them to a future round of drand's quicknet beacon,
//! and the chain, once that round's signature is on it, decrypts them and sets them. Until
//! then nobody, the validator included, can read them: that is what stops weight copying.
//!
//! The encryption is Boneh–Franklin identity-based encryption on BLS12-381 (the identity is
//! SHA-256 of the round number, the round's BLS signature its private key) around AES-GCM,
//! from Ideal Labs' `timelock` crate: the scheme subtensor decrypts with. This module adds
//! what the chain expects around it: the payload's SCALE layout, the ciphertext's framing
//! (the runtime's `tle` writes the two 32-byte IBE fields as length-prefixed vectors) and the
//! round, read off the subnet's epoch clock so that its pulse reaches the chain just after
//! the reveal epoch begins.

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use ark_std::rand::{RngCore, SeedableRng, rngs::StdRng};
use parity_scale_codec::{Decode, DecodeAll, Encode};
use rand::Rng;
use timelock::block_ciphers::{AESGCMBlockCipherProvider, BlockCipherProvider};
use timelock::engines::{EngineBLS, drand::TinyBLS381};
use timelock::ibe::fullident::{Ciphertext, Identity};
use timelock::tlock::{TLECiphertext, tld, tle};

use super::ChainError;
use super::calls::Call;
use crate::ledger::keys::AccountId;

/// Public key of drand's quicknet beacon (the one subtensor's drand pallet follows).
pub const QUICKNET_PUBLIC_KEY: &str = "83cf0f2896adee7eb8b5f01fcad3912212c437e0073e911fb90022d3e760183c8c4b450b6a0a6c3ac6a5776a2d1064510d1fec758c921cc22b0e17e63aaf4bcb5ed66304de9cf809bd274ca73bab4af5a6e9c76a4bc09e76eae8991ef5ece45a";
/// Unix time of quicknet's round 0.
pub const QUICKNET_GENESIS_SECS: u64 = 1_692_803_367;
/// Seconds between quicknet rounds.
pub const QUICKNET_PERIOD_SECS: u64 = 3;
/// Longest commitment the runtime takes (`MAX_CRV3_COMMIT_SIZE_BYTES`).
pub const MAX_COMMIT_BYTES: usize = 5000;
/// `CommitRevealWeightsVersion` where the runtime does not store one (its default).
pub const DEFAULT_COMMIT_REVEAL_VERSION: u16 = 4;

/// Blocks into the reveal epoch the round is aimed at (bittensor-drand's margin): its pulse
/// reaches the chain after the epoch begins (the weights stay secret until then) and long
/// before it ends (a commitment not revealed in its epoch expires).
const REVEAL_MARGIN_BLOCKS: u64 = 3;
/// subtensor's `MAX_TEMPO`: a subnet this many blocks without a step runs an epoch at once.
const MAX_TEMPO: u64 = 50_400;
/// Bytes of a compressed G2 point (the IBE header's `U`).
const G2_COMPRESSED_BYTES: usize = 96;
/// Bytes of each of the IBE header's two masked fields.
const MASKED_BYTES: usize = 32;

/// What a timelocked commitment decrypts to: the runtime's `WeightsTlockPayload`, which
/// names the committing hotkey (`commit_timelocked_weights`), or its legacy form without it
/// (`commit_crv3_weights`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsPayload {
    /// The committing hotkey (the chain checks it is the signer); `None` in the legacy form.
    pub hotkey: Option<AccountId>,
    /// Target uids.
    pub uids: Vec<u16>,
    /// Their weights.
    pub values: Vec<u16>,
    /// The subnet's weights version key.
    pub version_key: u64,
}

#[derive(Encode, Decode)]
struct WithHotkey {
    hotkey: Vec<u8>,
    uids: Vec<u16>,
    values: Vec<u16>,
    version_key: u64,
}

#[derive(Encode, Decode)]
struct Legacy {
    uids: Vec<u16>,
    values: Vec<u16>,
    version_key: u64,
}

impl WeightsPayload {
    /// The SCALE bytes the chain decodes after decrypting.
    pub fn encode(&self) -> Vec<u8> {
        let (uids, values, version_key) =
            (self.uids.clone(), self.values.clone(), self.version_key);
        match self.hotkey {
            Some(hotkey) => WithHotkey {
                hotkey: hotkey.0.to_vec(),
                uids,
                values,
                version_key,
            }
            .encode(),
            None => Legacy {
                uids,
                values,
                version_key,
            }
            .encode(),
        }
    }

    /// Reads decrypted bytes back (`with_hotkey`: the newer form); every byte must be used.
    pub fn decode(mut bytes: &[u8], with_hotkey: bool) -> Result<Self, ChainError> {
        let bad = |e: parity_scale_codec::Error| {
            ChainError::Invalid(format!("not a timelocked weights payload: {e}"))
        };
        if !with_hotkey {
            let p = Legacy::decode_all(&mut bytes).map_err(bad)?;
            return Ok(Self {
                hotkey: None,
                uids: p.uids,
                values: p.values,
                version_key: p.version_key,
            });
        }
        let p = WithHotkey::decode_all(&mut bytes).map_err(bad)?;
        let hotkey = <[u8; 32]>::try_from(p.hotkey.as_slice()).map_err(|_| {
            ChainError::Invalid(format!(
                "a timelocked weights payload names a hotkey of {} bytes, not 32",
                p.hotkey.len()
            ))
        })?;
        Ok(Self {
            hotkey: Some(AccountId(hotkey)),
            uids: p.uids,
            values: p.values,
            version_key: p.version_key,
        })
    }
}

fn crypto_error(what: &str, e: impl std::fmt::Debug) -> ChainError {
    ChainError::Invalid(format!("drand timelock: {what}: {e:?}"))
}

/// Encrypts `plaintext` so that only drand's signature of `round` decrypts it; the bytes as
/// the runtime reads a commitment.
pub fn encrypt(plaintext: &[u8], round: u64) -> Result<Vec<u8>, ChainError> {
    let key_bytes = hex::decode(QUICKNET_PUBLIC_KEY).map_err(|e| crypto_error("key", e))?;
    let key = <TinyBLS381 as EngineBLS>::PublicKeyGroup::deserialize_compressed(&key_bytes[..])
        .map_err(|e| crypto_error("quicknet's public key", e))?;
    let identity = Identity::new(b"", &round_identity(round));
    let mut rng = StdRng::from_seed(rand::rng().random());
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let ciphertext =
        tle::<TinyBLS381, AESGCMBlockCipherProvider, _>(key, secret, plaintext, identity, rng)
            .map_err(|e| crypto_error("encrypting", e))?;
    let mut out = Vec::new();
    ciphertext
        .header
        .u
        .serialize_compressed(&mut out)
        .map_err(|e| crypto_error("writing the header", e))?;
    for part in [
        &ciphertext.header.v[..],
        &ciphertext.header.w[..],
        &ciphertext.body,
        &ciphertext.cipher_suite,
    ] {
        write_vec(&mut out, part);
    }
    Ok(out)
}

/// Decrypts a commitment (bytes from anyone: each length is checked against what is there
/// before use) with drand's signature of its round: what the chain does at the reveal.
pub fn decrypt(commit: &[u8], signature: &[u8]) -> Result<Vec<u8>, ChainError> {
    let mut reader = Reader(commit);
    let u = <TinyBLS381 as EngineBLS>::PublicKeyGroup::deserialize_compressed(
        reader.take(G2_COMPRESSED_BYTES)?,
    )
    .map_err(|e| crypto_error("the header's point", e))?;
    let v = reader.masked()?;
    let w = reader.masked()?;
    let body = reader.vec()?.to_vec();
    let cipher_suite = reader.vec()?.to_vec();
    reader.end()?;
    // The body is the cipher's (ciphertext, nonce): checked here, as the crate trusts lengths.
    let mut inner = Reader(&body);
    inner.vec()?;
    inner.vec()?;
    inner.end()?;
    if cipher_suite != AESGCMBlockCipherProvider::CIPHER_SUITE {
        return Err(ChainError::Invalid(format!(
            "a timelocked commitment names cipher suite {:?}, not AES-GCM",
            String::from_utf8_lossy(&cipher_suite)
        )));
    }
    let signature = <TinyBLS381 as EngineBLS>::SignatureGroup::deserialize_compressed(signature)
        .map_err(|e| crypto_error("drand's signature", e))?;
    let ciphertext = TLECiphertext::<TinyBLS381> {
        header: Ciphertext { u, v, w },
        body,
        cipher_suite,
    };
    tld::<TinyBLS381, AESGCMBlockCipherProvider>(ciphertext, signature)
        .map_err(|e| crypto_error("decrypting (the wrong round's signature?)", e))
}

/// The IBE identity of drand round `round`: SHA-256 of its big-endian number.
fn round_identity(round: u64) -> [u8; 32] {
    sp_crypto_hashing::sha2_256(&round.to_be_bytes())
}

/// Appends `bytes` as ark-serialize writes a `Vec<u8>`: its length (u64, little-endian) first.
fn write_vec(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a commitment's parts, never past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChainError> {
        if self.0.len() < n {
            return Err(ChainError::Invalid(format!(
                "a timelocked commitment ends early: {n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn vec(&mut self) -> Result<&'a [u8], ChainError> {
        let declared = u64::from_le_bytes(self.take(8)?.try_into().unwrap_or([0xff; 8]));
        let n = usize::try_from(declared).unwrap_or(usize::MAX);
        self.take(n)
    }

    fn masked(&mut self) -> Result<[u8; MASKED_BYTES], ChainError> {
        let bytes = self.vec()?;
        bytes.try_into().map_err(|_| {
            ChainError::Invalid(format!(
                "a timelocked commitment's header field has {} bytes, not {MASKED_BYTES}",
                bytes.len()
            ))
        })
    }

    fn end(&self) -> Result<(), ChainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ChainError::Invalid(format!(
                "a timelocked commitment has {} bytes too many",
                self.0.len()
            )))
        }
    }
}

/// How a subnet's epochs are scheduled (the chain reveals timelocked weights at the start of
/// the epoch `reveal_period` epochs after the one they were committed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochClock {
    /// Older runtimes: an epoch at each block `b` with `(b + netuid + 1) % (tempo + 1) == 0`.
    Modulo {
        /// The subnet.
        netuid: u16,
        /// Its tempo.
        tempo: u16,
    },
    /// Runtimes counting epochs (`SubnetEpochIndex`): one `tempo` blocks after the last
    /// (`LastEpochBlock`), sooner where its owner triggered one (`PendingEpochAt`).
    Stateful {
        /// The subnet's tempo.
        tempo: u16,
        /// `LastEpochBlock`.
        last_epoch_block: u64,
        /// `PendingEpochAt` (0: none).
        pending_epoch_at: u64,
        /// `BlocksSinceLastStep`.
        blocks_since_last_step: u64,
    },
}

impl EpochClock {
    /// The block at which the chain reveals weights committed now (`head` the newest block),
    /// `reveal_period` epochs on; `None` where the subnet runs no epochs (tempo 0).
    ///
    /// On a counting runtime a commitment belongs to the epoch of the block it lands in
    /// (`head + 1`), the next one if an epoch fires there; the older runtime (and
    /// bittensor-drand for it) counts from `head`.
    pub fn reveal_block(&self, head: u64, reveal_period: u64) -> Option<u64> {
        match *self {
            EpochClock::Modulo { netuid, tempo } => {
                if tempo == 0 {
                    return None;
                }
                let period = u64::from(tempo) + 1;
                let shift = u64::from(netuid) + 1;
                let epoch = head.saturating_add(shift) / period;
                Some(
                    epoch
                        .saturating_add(reveal_period)
                        .saturating_mul(period)
                        .saturating_sub(shift),
                )
            }
            EpochClock::Stateful {
                tempo,
                last_epoch_block,
                pending_epoch_at,
                blocks_since_last_step,
            } => {
                if tempo == 0 {
                    return None;
                }
                let tempo = u64::from(tempo);
                let landing = head.saturating_add(1);
                let pending = (pending_epoch_at > 0).then_some(pending_epoch_at);
                let fires_at_landing = pending.is_some_and(|p| landing >= p)
                    || blocks_since_last_step.saturating_add(1) > MAX_TEMPO
                    || landing.saturating_sub(last_epoch_block) >= tempo;
                let periods = reveal_period.saturating_mul(tempo);
                let reveal = if fires_at_landing {
                    landing.saturating_add(periods)
                } else {
                    let auto = last_epoch_block.saturating_add(tempo);
                    let next = pending.map_or(auto, |p| auto.min(p));
                    next.saturating_add(periods).saturating_sub(tempo)
                };
                Some(reveal.max(landing))
            }
        }
    }
}

/// The newest drand round out by `blocks` blocks of `block_secs` after `now_unix_secs`
/// (rounded down, as bittensor-drand does: its pulse is never later than aimed at).
pub fn round_after(now_unix_secs: f64, blocks: u64, block_secs: f64) -> u64 {
    let at = now_unix_secs + blocks as f64 * block_secs;
    let round = ((at - QUICKNET_GENESIS_SECS as f64) / QUICKNET_PERIOD_SECS as f64).floor();
    if round.is_finite() && round >= 1.0 {
        round as u64
    } else {
        1
    }
}

/// What a subnet needs for timelocked weights, read at one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timelock {
    /// The runtime's call: `commit_timelocked_weights` or `commit_crv3_weights`.
    pub call: &'static str,
    /// `CommitRevealWeightsVersion`, which `commit_timelocked_weights` must name; `None` for
    /// `commit_crv3_weights`.
    pub version: Option<u16>,
    /// The subnet's epoch clock.
    pub clock: EpochClock,
    /// Epochs between a commitment and its reveal.
    pub reveal_period: u64,
    /// The block this was read at.
    pub head: u64,
}

/// A timelocked weights commitment ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelockedCommit {
    /// The call carrying it.
    pub call: Call,
    /// The drand round it is encrypted to.
    pub round: u64,
    /// The block the chain is expected to reveal it at.
    pub reveal_block: u64,
}

impl Timelock {
    /// Encrypts `weights` (from the hotkey it names, left out for `commit_crv3_weights`) for
    /// subnet `netuid`: the round is the one out [`REVEAL_MARGIN_BLOCKS`] blocks into the
    /// reveal epoch, blocks taking `block_secs` from `now_unix_secs` on.
    pub fn commit(
        &self,
        netuid: u16,
        weights: WeightsPayload,
        block_secs: f64,
        now_unix_secs: f64,
    ) -> Result<TimelockedCommit, ChainError> {
        let reveal_block = self
            .clock
            .reveal_block(self.head, self.reveal_period)
            .ok_or_else(|| {
                ChainError::Invalid(format!(
                    "subnet {netuid} has tempo 0: it runs no epochs, so timelocked weights would never be revealed"
                ))
            })?;
        let blocks = reveal_block
            .saturating_add(REVEAL_MARGIN_BLOCKS)
            .saturating_sub(self.head);
        let round = round_after(now_unix_secs, blocks, block_secs);
        let payload = WeightsPayload {
            hotkey: weights.hotkey.filter(|_| self.version.is_some()),
            ..weights
        };
        let commit = encrypt(&payload.encode(), round)?;
        if commit.len() > MAX_COMMIT_BYTES {
            return Err(ChainError::Invalid(format!(
                "{} weights make a timelocked commitment of {} bytes; the chain takes at most {MAX_COMMIT_BYTES}",
                payload.uids.len(),
                commit.len()
            )));
        }
        Ok(TimelockedCommit {
            call: Call::CommitTimelockedWeights {
                netuid,
                commit,
                reveal_round: round,
                version: self.version,
            },
            round,
            reveal_block,
        })
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quicknet's round 1000, as subtensor's drand pallet tests hold it (a real pulse).
    const ROUND: u64 = 1000;
    const SIGNATURE: &str = "b44679b9a59af2ec876b1a6b1ad52ea9b1615fc3982b19576350f93447cb1125e342b73a8dd2bacbe47e4b6b63ed5e39";
    /// Round 1000 with a signature quicknet never made (the pallet's "bad pulse": not even
    /// a point of the curve).
    const FORGED: &str = "b0a8b04e009cf72534321aca0f50048da596a3feec1172a0244d9a4a623a3123d0402da79854d4c705e94bc73224c341";

    fn signature(hex: &str) -> Vec<u8> {
        hex::decode(hex).unwrap()
    }

    #[test]
    fn weights_encrypted_to_a_round_open_with_its_pulse_only() {
        let payload = WeightsPayload {
            hotkey: Some(AccountId([7; 32])),
            uids: vec![0, 3, 7],
            values: vec![65535, 30000, 1],
            version_key: 9,
        };
        let commit = encrypt(&payload.encode(), ROUND).unwrap();
        let opened = decrypt(&commit, &signature(SIGNATURE)).unwrap();
        assert_eq!(WeightsPayload::decode(&opened, true).unwrap(), payload);
        // A point of the curve, but not round 1000's signature: twice it.
        let real = <TinyBLS381 as EngineBLS>::SignatureGroup::deserialize_compressed(
            &signature(SIGNATURE)[..],
        )
        .unwrap();
        let mut wrong = Vec::new();
        (real + real).serialize_compressed(&mut wrong).unwrap();
        let err = decrypt(&commit, &wrong).unwrap_err();
        assert!(err.to_string().contains("decrypting"), "{err}");
        let err = decrypt(&commit, &signature(FORGED)).unwrap_err();
        assert!(err.to_string().contains("drand's signature"), "{err}");
        let other = encrypt(b"x", ROUND + 1).unwrap();
        assert!(decrypt(&other, &signature(SIGNATURE)).is_err());
    }

    #[test]
    fn hostile_commitments_are_refused_by_name_without_panicking() {
        let good = encrypt(b"weights", ROUND).unwrap();
        let sig = signature(SIGNATURE);
        for cut in [0, 10, 96, 104, 150, good.len() - 1] {
            let err = decrypt(&good[..cut], &sig).unwrap_err();
            assert!(err.to_string().contains("ends early"), "{cut}: {err}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(
            decrypt(&long, &sig)
                .unwrap_err()
                .to_string()
                .contains("too many")
        );
        // A length prefix claiming 2^64 − 1 bytes (ark-serialize would try to allocate it).
        let mut huge = good.clone();
        huge[96..104].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decrypt(&huge, &sig).is_err());
        let mut body = good.clone();
        let body_at = 96 + 2 * (8 + 32) + 8;
        body[body_at..body_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decrypt(&body, &sig).is_err());
        let mut point = good;
        point[..96].fill(0xab);
        assert!(
            decrypt(&point, &sig)
                .unwrap_err()
                .to_string()
                .contains("point")
        );
        assert!(decrypt(&[0xff; 300], &sig).is_err());
    }

    #[test]
    fn payloads_decode_only_in_their_own_form() {
        let legacy = WeightsPayload {
            hotkey: None,
            uids: vec![1],
            values: vec![2],
            version_key: 3,
        };
        let bytes = legacy.encode();
        assert_eq!(WeightsPayload::decode(&bytes, false).unwrap(), legacy);
        assert!(WeightsPayload::decode(&bytes[..bytes.len() - 1], false).is_err());
        let short_key = WithHotkey {
            hotkey: vec![1; 5],
            uids: vec![],
            values: vec![],
            version_key: 0,
        }
        .encode();
        let err = WeightsPayload::decode(&short_key, true).unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }

    #[test]
    fn the_modulo_clock_reveals_at_the_first_block_of_the_reveal_epoch() {
        let clock = EpochClock::Modulo {
            netuid: 1,
            tempo: 99,
        };
        // Epochs at blocks b with (b + 2) % 100 == 0: 98, 198, 298, …
        assert_eq!(clock.reveal_block(150, 1), Some(198));
        assert_eq!(clock.reveal_block(150, 2), Some(298));
        assert_eq!(clock.reveal_block(198, 1), Some(298));
        let none = EpochClock::Modulo {
            netuid: 1,
            tempo: 0,
        };
        assert_eq!(none.reveal_block(150, 1), None);
    }

    #[test]
    fn the_stateful_clock_counts_from_the_landing_block() {
        let clock = |last, pending, since| EpochClock::Stateful {
            tempo: 100,
            last_epoch_block: last,
            pending_epoch_at: pending,
            blocks_since_last_step: since,
        };
        assert_eq!(clock(1000, 0, 0).reveal_block(1050, 1), Some(1100));
        assert_eq!(clock(1000, 0, 0).reveal_block(1050, 3), Some(1300));
        // Sent at 1099, it lands in 1100, where an epoch fires: it belongs to that one.
        assert_eq!(clock(1000, 0, 0).reveal_block(1099, 1), Some(1200));
        assert_eq!(clock(1000, 1060, 0).reveal_block(1050, 1), Some(1060));
        assert_eq!(clock(1000, 1040, 0).reveal_block(1050, 1), Some(1151));
        assert_eq!(clock(1000, 0, MAX_TEMPO).reveal_block(1050, 1), Some(1151));
        assert_eq!(
            clock(1000, 0, 0).reveal_block(u64::MAX, u64::MAX),
            Some(u64::MAX)
        );
    }

    #[test]
    fn rounds_are_rounded_down_and_never_zero() {
        let genesis = QUICKNET_GENESIS_SECS as f64;
        assert_eq!(round_after(genesis + 3000.0, 0, 12.0), 1000);
        assert_eq!(round_after(genesis + 2999.9, 0, 12.0), 999);
        assert_eq!(round_after(genesis + 2988.0, 1, 12.0), 1000);
        assert_eq!(round_after(0.0, 0, 12.0), 1);
        assert_eq!(round_after(f64::NAN, 0, 12.0), 1);
    }
}
