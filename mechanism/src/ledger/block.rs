//! Blocks: a header (number, parent hash, extrinsics root, state root, author, time) signed by
//! the author, and the extrinsics it included. Hashes are BlakeTwo256 of SCALE, as on the
//! chain.

use parity_scale_codec::{Decode, Encode};

use super::extrinsic::{Extrinsic, Hash, blake2_256};
use super::keys::{AccountId, Keypair, verify};
use super::state::{Genesis, State};
use crate::consensus::Epoch;

/// What the author signs.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Header {
    /// Height: 1 for the first block after genesis.
    pub number: u64,
    /// Hash of the previous header (the genesis hash for block 1).
    pub parent: Hash,
    /// BlakeTwo256 of the SCALE-encoded extrinsics.
    pub extrinsics_root: Hash,
    /// Root of the state after this block.
    pub state_root: Hash,
    /// Who authored it.
    pub author: AccountId,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Header {
    /// The block hash.
    pub fn hash(&self) -> Hash {
        blake2_256(&self.encode())
    }
}

/// A signed block.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// The included extrinsics, in order.
    pub extrinsics: Vec<Extrinsic>,
    /// The author's signature over the header hash.
    pub signature: [u8; 64],
}

/// The extrinsics root of a list of extrinsics.
pub fn extrinsics_root(extrinsics: &[Extrinsic]) -> Hash {
    blake2_256(&extrinsics.encode())
}

impl Block {
    /// Seals a header and its extrinsics with the author's key.
    pub fn seal(header: Header, extrinsics: Vec<Extrinsic>, author: &Keypair) -> Self {
        let signature = author.sign(&header.hash());
        Self {
            header,
            extrinsics,
            signature,
        }
    }

    /// Whether the signature is the header's author's.
    pub fn signature_is_valid(&self) -> bool {
        verify(&self.signature, &self.header.hash(), &self.header.author)
    }
}

/// Checks `block` on top of `state` (at `head`) and returns the state after it.
pub(super) fn check_block(
    genesis: &Genesis,
    genesis_hash: &Hash,
    head: &Hash,
    state: &State,
    block: &Block,
) -> Result<(State, Option<Epoch>), String> {
    let header = &block.header;
    if header.number != state.block + 1 {
        return Err(format!(
            "number {} follows block {}",
            header.number, state.block
        ));
    }
    if header.parent != *head {
        return Err(format!(
            "parent hash {} is not the previous block's {}",
            hex::encode(header.parent),
            hex::encode(head)
        ));
    }
    if header.author != genesis.author {
        return Err(format!(
            "authored by {}, not the ledger's author {}",
            header.author, genesis.author
        ));
    }
    if !block.signature_is_valid() {
        return Err("the author's signature does not match the header".into());
    }
    if extrinsics_root(&block.extrinsics) != header.extrinsics_root {
        return Err("extrinsics do not match the header's extrinsics root".into());
    }
    let mut next = state.clone();
    next.block = header.number;
    for (i, ext) in block.extrinsics.iter().enumerate() {
        next.apply(ext, genesis, genesis_hash).map_err(|reason| {
            format!(
                "extrinsic {i} ({} from {}) is invalid: {reason}",
                ext.call.name(),
                ext.signer
            )
        })?;
    }
    let epoch = next.end_block(genesis);
    if next.root() != header.state_root {
        return Err(format!(
            "state root differs from the replay{}",
            if epoch.is_some() {
                " (this block ends an epoch: its consensus or emission was not what the recorded weights give)"
            } else {
                ""
            }
        ));
    }
    Ok((next, epoch))
}
