//! Signed extrinsics: what peers submit to the ledger's author.
//!
//! An extrinsic is a [`Call`] with the signer's account, its nonce and an sr25519 signature
//! over `("sinter-extrinsic", genesis hash, signer, nonce, call)` in SCALE. The genesis hash
//! stops replays on another ledger, the nonce replays on this one.

use parity_scale_codec::{Decode, Encode};
use serde::{Deserialize, Serialize};

use super::keys::{AccountId, Keypair, verify};

/// Largest encoded extrinsic the ledger accepts.
pub const MAX_EXTRINSIC_BYTES: usize = 16 * 1024;

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// BlakeTwo256, the chain's hasher.
pub fn blake2_256(bytes: &[u8]) -> Hash {
    sp_crypto_hashing::blake2_256(bytes)
}

/// What an extrinsic does.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// Registers `hotkey` as a new uid, burning the configured cost from the signer (coldkey).
    Register {
        /// The hotkey that will act for the uid.
        hotkey: AccountId,
    },
    /// Moves `amount` from the signer's (coldkey's) balance to the stake of its `hotkey`.
    AddStake {
        /// A hotkey registered by the signer.
        hotkey: AccountId,
        /// Amount in the ledger's smallest unit.
        amount: u64,
    },
    /// Publishes the signer's (hotkey's) peer address.
    Serve {
        /// A libp2p multiaddress, UTF-8.
        address: Vec<u8>,
    },
    /// Commits to the hash of the signer's pseudo-gradient payload for `round`, before any
    /// payload is revealed.
    CommitContribution {
        /// The training round.
        round: u64,
        /// BlakeTwo256 of the payload's bytes.
        hash: Hash,
    },
    /// Commits to weights: BlakeTwo256 of SCALE `(hotkey, netuid, uids, values, salt,
    /// version_key)`, as on the chain.
    CommitWeights {
        /// The commitment.
        hash: Hash,
    },
    /// Reveals the committed weights.
    RevealWeights {
        /// Target uids.
        uids: Vec<u16>,
        /// Weights (`u16`, any scale).
        values: Vec<u16>,
        /// The salt hashed into the commitment.
        salt: Vec<u16>,
        /// The weights version key.
        version_key: u64,
    },
    /// Records the Merkle root of a checkpoint.
    RecordCheckpoint {
        /// The round it was taken before.
        round: u64,
        /// Its manifest root.
        root: Hash,
    },
}

impl Call {
    /// A short name for logs and rejections.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "register",
            Self::AddStake { .. } => "add_stake",
            Self::Serve { .. } => "serve",
            Self::CommitContribution { .. } => "commit_contribution",
            Self::CommitWeights { .. } => "commit_weights",
            Self::RevealWeights { .. } => "reveal_weights",
            Self::RecordCheckpoint { .. } => "record_checkpoint",
        }
    }
}

/// A signed call.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Extrinsic {
    /// Who signed.
    pub signer: AccountId,
    /// The signer's nonce: its number of extrinsics already in the ledger.
    pub nonce: u64,
    /// What to do.
    pub call: Call,
    /// sr25519 signature over [`Extrinsic::signing_payload`].
    pub signature: [u8; 64],
}

impl Extrinsic {
    fn signing_payload(genesis: &Hash, signer: &AccountId, nonce: u64, call: &Call) -> Vec<u8> {
        ("sinter-extrinsic", genesis, signer, nonce, call).encode()
    }

    /// `call` signed by `key` with `nonce`, for the ledger with genesis hash `genesis`.
    pub fn sign(key: &Keypair, nonce: u64, call: Call, genesis: &Hash) -> Self {
        let signer = key.account();
        let signature = key.sign(&Self::signing_payload(genesis, &signer, nonce, &call));
        Self {
            signer,
            nonce,
            call,
            signature,
        }
    }

    /// Whether the signature is the signer's, for this ledger.
    pub fn signature_is_valid(&self, genesis: &Hash) -> bool {
        verify(
            &self.signature,
            &Self::signing_payload(genesis, &self.signer, self.nonce, &self.call),
            &self.signer,
        )
    }

    /// The extrinsic's hash.
    pub fn hash(&self) -> Hash {
        blake2_256(&self.encode())
    }
}

/// The weights commitment the chain checks a reveal against: BlakeTwo256 of SCALE
/// `(hotkey, netuid, uids, values, salt, version_key)`.
pub fn weights_commitment(
    hotkey: &AccountId,
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> Hash {
    blake2_256(&(hotkey.0, netuid, uids, values, salt, version_key).encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_scale_encoded_as_the_chain_encodes_set_weights() {
        // vectors.json: set_weights(netuid=1, dests=[1,2], weights=[40000,20000],
        // version_key=0) = pallet 7, call 0, then the arguments in SCALE.
        let args = (1u16, vec![1u16, 2], vec![40000u16, 20000], 0u64).encode();
        let call = [&[0x07u8, 0x00][..], &args].concat();
        assert_eq!(
            hex::encode(&call),
            "07000100080100020008409c204e0000000000000000"
        );
    }

    #[test]
    fn a_signature_binds_the_ledger_the_nonce_and_the_call() {
        let key = Keypair::from_secret("//Alice").unwrap();
        let genesis = [7u8; 32];
        let ext = Extrinsic::sign(&key, 3, Call::CommitWeights { hash: [1; 32] }, &genesis);
        assert!(ext.signature_is_valid(&genesis));
        assert!(!ext.signature_is_valid(&[8u8; 32]), "another ledger");
        let mut replayed = ext.clone();
        replayed.nonce = 4;
        assert!(!replayed.signature_is_valid(&genesis));
        let mut forged = ext.clone();
        forged.call = Call::CommitWeights { hash: [2; 32] };
        assert!(!forged.signature_is_valid(&genesis));
        let decoded = Extrinsic::decode(&mut &ext.encode()[..]).unwrap();
        assert_eq!(decoded, ext);
    }
}
