//! What a run peer keeps in its one commitment on the chain (`Commitments.CommitmentOf`, at
//! most 128 bytes, rewritten at most once per the pallet's rate limit): a [`Record`] holding
//! the signature that binds its network identity to its hotkey and the Merkle root over its
//! contributions since the previous record ([`Batch`]). Whoever holds a contribution proves
//! it against the root with [`Batch::proof`] and [`verify`]; a member hands its proof to the
//! run's validators as a [`ContributionProof`].
//!
//! Layout (117 bytes): `sntr`, version 1, the identity's 64-byte signature, the 32-byte root,
//! the first and last round covered (u64, little-endian; first > last: no contributions).

use crate::ledger::extrinsic::{Hash, blake2_256};

const TAG: &[u8; 4] = b"sntr";
const VERSION: u8 = 1;
/// A record's length in bytes.
pub const RECORD_LEN: usize = 4 + 1 + 64 + 32 + 8 + 8;

/// A peer's commitment on the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The peer's network identity's signature over its hotkey and the chain's genesis.
    pub binding: [u8; 64],
    /// The Merkle root over the contributions it covers (zero: none).
    pub root: Hash,
    /// The first and last round covered, `None` for none.
    pub rounds: Option<(u64, u64)>,
}

/// Why bytes on the chain are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a sinter record at all (another tool's commitment).
    #[error("not a sinter record ({len} bytes, starting {start})")]
    Foreign {
        /// Its length.
        len: usize,
        /// Its first bytes, hex.
        start: String,
    },
    /// A sinter record of a version this build does not read.
    #[error("a sinter record of version {0}; this build reads version {VERSION}")]
    Version(u8),
}

impl Record {
    /// The bytes to commit.
    pub fn encode(&self) -> Vec<u8> {
        let (first, last) = self.rounds.unwrap_or((1, 0));
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(TAG);
        out.push(VERSION);
        out.extend_from_slice(&self.binding);
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&last.to_le_bytes());
        out
    }

    /// Reads a record from a commitment's bytes (anyone's: checked, never trusted).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let foreign = || RecordError::Foreign {
            len: bytes.len(),
            start: hex::encode(&bytes[..bytes.len().min(8)]),
        };
        let rest = bytes.strip_prefix(TAG).ok_or_else(foreign)?;
        let (&version, rest) = rest.split_first().ok_or_else(foreign)?;
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        if rest.len() != RECORD_LEN - TAG.len() - 1 {
            return Err(foreign());
        }
        let (binding, rest) = rest.split_at(64);
        let (root, rest) = rest.split_at(32);
        let (first, last) = rest.split_at(8);
        let round = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let (first, last) = (round(first), round(last));
        Ok(Self {
            binding: binding.try_into().expect("64 bytes"),
            root: root.try_into().expect("32 bytes"),
            rounds: (first <= last).then_some((first, last)),
        })
    }
}

/// One contribution as a leaf: its round and hash.
fn leaf(round: u64, hash: &Hash) -> Hash {
    let mut bytes = round.to_le_bytes().to_vec();
    bytes.extend_from_slice(hash);
    blake2_256(&bytes)
}

fn parent(left: &Hash, right: &Hash) -> Hash {
    blake2_256(&[left.as_slice(), right.as_slice()].concat())
}

/// A step of a Merkle proof: the sibling and whether it is on the left.
pub type Step = (Hash, bool);

/// Contributions committed under one root, in the order committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// `(round, hash)` of each contribution.
    pub leaves: Vec<(u64, Hash)>,
}

impl Batch {
    /// The tree's levels, leaves first; an odd node is carried up as it is.
    fn levels(&self) -> Vec<Vec<Hash>> {
        let mut levels = vec![
            self.leaves
                .iter()
                .map(|(r, h)| leaf(*r, h))
                .collect::<Vec<_>>(),
        ];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("a level");
            let up = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => parent(l, r),
                    [one] => *one,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(up);
        }
        levels
    }

    /// The Merkle root (zero for no contributions).
    pub fn root(&self) -> Hash {
        self.levels()
            .last()
            .and_then(|top| top.first().copied())
            .unwrap_or_default()
    }

    /// The first and last round covered.
    pub fn rounds(&self) -> Option<(u64, u64)> {
        let rounds = self.leaves.iter().map(|(r, _)| *r);
        Some((rounds.clone().min()?, rounds.max()?))
    }

    /// The proof that leaf `index` is under [`Batch::root`].
    pub fn proof(&self, index: usize) -> Option<Vec<Step>> {
        let mut at = index;
        let mut steps = Vec::new();
        let levels = self.levels();
        levels.first()?.get(index)?;
        for level in &levels[..levels.len() - 1] {
            let sibling = at ^ 1;
            if let Some(node) = level.get(sibling) {
                steps.push((*node, sibling < at));
            }
            at /= 2;
        }
        Some(steps)
    }
}

/// Whether `proof` shows the contribution `(round, hash)` under `root`. Bounded: a proof
/// longer than any tree of 2^64 leaves is refused before any hashing.
pub fn verify(root: &Hash, round: u64, hash: &Hash, proof: &[Step]) -> bool {
    if proof.len() > 64 {
        return false;
    }
    let mut node = leaf(round, hash);
    for (sibling, left) in proof {
        node = match left {
            true => parent(sibling, &node),
            false => parent(&node, sibling),
        };
    }
    node == *root
}

/// A member's proof that its contribution `(round, hash)` is leaf `index` under the root of
/// its commitment as it stood at `block`: what a validator checks against the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContributionProof {
    /// The block its commitment holding the root was set at.
    pub block: u64,
    /// The leaf's place in its batch.
    pub index: u32,
    /// The round.
    pub round: u64,
    /// The contribution's hash.
    pub hash: Hash,
    /// The path to the root.
    pub steps: Vec<Step>,
}

/// Why bytes from a peer are not a contribution proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a contribution proof: {0}")]
pub struct ProofError(&'static str);

/// Steps of a proof at most: a tree of 2^64 leaves.
const MAX_STEPS: usize = 64;

impl ContributionProof {
    /// `block`, `index`, `round`, `hash`, the number of steps (one byte), then each step's
    /// sibling and side (one byte, 1: left).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(53 + 33 * self.steps.len());
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.push(self.steps.len().min(MAX_STEPS) as u8);
        for (sibling, left) in self.steps.iter().take(MAX_STEPS) {
            out.extend_from_slice(sibling);
            out.push(u8::from(*left));
        }
        out
    }

    /// Reads a proof from a peer's bytes: exact length, at most 64 steps.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProofError> {
        let (head, steps) = bytes
            .split_at_checked(53)
            .ok_or(ProofError("shorter than its header"))?;
        let count = usize::from(head[52]);
        if count > MAX_STEPS {
            return Err(ProofError("more steps than any tree needs"));
        }
        if steps.len() != count * 33 {
            return Err(ProofError("its length does not match its steps"));
        }
        let steps = steps
            .chunks_exact(33)
            .map(|step| match step[32] {
                0 | 1 => Ok((step[..32].try_into().expect("32 bytes"), step[32] == 1)),
                _ => Err(ProofError("a step's side is neither 0 nor 1")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            block: u64::from_le_bytes(head[..8].try_into().expect("8 bytes")),
            index: u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")),
            round: u64::from_le_bytes(head[12..20].try_into().expect("8 bytes")),
            hash: head[20..52].try_into().expect("32 bytes"),
            steps,
        })
    }

    /// Whether it shows its contribution under `record`'s root, within the rounds it covers.
    pub fn holds_under(&self, record: &Record) -> bool {
        record
            .rounds
            .is_some_and(|(first, last)| (first..=last).contains(&self.round))
            && verify(&record.root, self.round, &self.hash, &self.steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u64) -> Batch {
        Batch {
            leaves: (0..n).map(|r| (r + 10, [r as u8; 32])).collect(),
        }
    }

    #[test]
    fn a_record_round_trips_and_fits_a_commitment() {
        let record = Record {
            binding: [9; 64],
            root: batch(5).root(),
            rounds: batch(5).rounds(),
        };
        let bytes = record.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert!(bytes.len() <= 128, "Commitments' largest field is Raw128");
        assert_eq!(Record::decode(&bytes).unwrap(), record);
        let empty = Record {
            rounds: None,
            root: [0; 32],
            ..record
        };
        assert_eq!(Record::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn foreign_truncated_padded_and_future_bytes_are_refused() {
        let good = Record {
            binding: [1; 64],
            root: [2; 32],
            rounds: Some((3, 4)),
        }
        .encode();
        for bad in [
            Vec::new(),
            b"sntr".to_vec(),
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            [b"xxxx".as_slice(), &good[4..]].concat(),
            vec![0xff; 128],
        ] {
            assert!(
                matches!(Record::decode(&bad), Err(RecordError::Foreign { .. })),
                "{bad:?}"
            );
        }
        let mut future = good;
        future[4] = 2;
        assert_eq!(Record::decode(&future), Err(RecordError::Version(2)));
    }

    #[test]
    fn every_leaf_proves_against_the_root_and_nothing_else_does() {
        for n in 1..=9 {
            let batch = batch(n);
            let root = batch.root();
            for (i, (round, hash)) in batch.leaves.iter().enumerate() {
                let proof = batch.proof(i).unwrap();
                assert!(verify(&root, *round, hash, &proof), "{n} leaves, leaf {i}");
                assert!(!verify(&root, round + 1, hash, &proof));
                assert!(!verify(&root, *round, &[0xee; 32], &proof));
                assert!(!verify(&[0; 32], *round, hash, &proof));
            }
            assert_eq!(batch.proof(n as usize), None);
        }
        assert_eq!(Batch::default().root(), [0; 32]);
        let too_long = vec![([0u8; 32], true); 65];
        assert!(!verify(&[0; 32], 0, &[0; 32], &too_long));
    }

    #[test]
    fn a_proof_round_trips_holds_under_its_record_and_hostile_bytes_are_refused() {
        let batch = batch(5);
        let record = Record {
            binding: [1; 64],
            root: batch.root(),
            rounds: batch.rounds(),
        };
        let proof = ContributionProof {
            block: 77,
            index: 3,
            round: batch.leaves[3].0,
            hash: batch.leaves[3].1,
            steps: batch.proof(3).unwrap(),
        };
        let bytes = proof.encode();
        assert_eq!(ContributionProof::decode(&bytes).unwrap(), proof);
        assert!(proof.holds_under(&record));
        // Another round, another hash, a record covering other rounds: no.
        let lie = ContributionProof {
            round: proof.round + 1,
            ..proof.clone()
        };
        assert!(!lie.holds_under(&record));
        let outside = Record {
            rounds: Some((0, 5)),
            ..record.clone()
        };
        assert!(!proof.holds_under(&outside));
        for bad in [
            Vec::new(),
            bytes[..52].to_vec(),
            bytes[..bytes.len() - 1].to_vec(),
            [bytes.clone(), vec![0]].concat(),
        ] {
            assert!(ContributionProof::decode(&bad).is_err(), "{bad:?}");
        }
        let mut many = bytes.clone();
        many[52] = 65;
        assert!(ContributionProof::decode(&many).is_err());
        let mut side = bytes;
        let last = side.len() - 1;
        side[last] = 7;
        assert!(ContributionProof::decode(&side).is_err());
    }
}
