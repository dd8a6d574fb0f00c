//! Moving a large blob (a run's state, a checkpoint) from several peers at once.
//!
//! The blob is cut into fixed-size chunks; a [`Manifest`] lists each chunk's SHA-256 and their
//! Merkle root, which is the blob's identity. A fetcher asks every donor for its manifest,
//! keeps the root most donors agree on, then pulls chunks from all donors holding that root in
//! parallel, checking each chunk against the manifest. A chunk that fails its hash, or a donor
//! that stops answering, sends the chunk back to the queue for another donor; the fetch fails
//! only when no donor is left.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What can go wrong fetching a blob.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A manifest is inconsistent with itself.
    #[error("manifest: {0}")]
    BadManifest(String),
    /// A chunk does not match the manifest.
    #[error("chunk {index} from {peer}: {reason}")]
    BadChunk {
        /// The chunk.
        index: usize,
        /// Who sent it.
        peer: PeerId,
        /// How it differs.
        reason: String,
    },
    /// No donor offered the blob.
    #[error("no peer offers {what} (last answer: {last})")]
    NoOffer {
        /// What was asked for: a round's state, a checkpoint.
        what: String,
        /// The last donor's answer.
        last: String,
    },
    /// Every donor failed before the blob was complete.
    #[error("no donor left with {missing} of {chunks} chunks still missing (last error: {last})")]
    NoDonors {
        /// Chunks not fetched.
        missing: usize,
        /// Chunks in all.
        chunks: usize,
        /// The last donor's failure.
        last: String,
    },
}

/// Smallest chunk: small blobs still spread over several donors.
pub const MIN_CHUNK: usize = 64 << 10;
/// Largest chunk: responses stay well under the network's response limit.
pub const MAX_CHUNK: usize = 16 << 20;

/// The chunk size for a blob of `total` bytes: about 64 chunks, a power of two within
/// [`MIN_CHUNK`, `MAX_CHUNK`].
pub fn chunk_size_for(total: usize) -> usize {
    (total / 64).next_power_of_two().clamp(MIN_CHUNK, MAX_CHUNK)
}

/// A blob's chunk hashes and their Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Length of the blob.
    pub total_len: u64,
    /// Length of every chunk but the last.
    pub chunk_size: u64,
    /// SHA-256 of each chunk, hex.
    pub chunks: Vec<String>,
    /// Merkle root over the chunk hashes, hex: the blob's identity.
    pub root: String,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Merkle root of `leaves`: pairs hashed level by level (SHA-256 of left ‖ right), an odd last
/// node carried up unchanged; the root of no leaves is the hash of nothing.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return sha256(&[]);
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => sha256(&[l.as_slice(), r.as_slice()].concat()),
                [one] => *one,
                _ => unreachable!("chunks(2)"),
            })
            .collect();
    }
    level[0]
}

impl Manifest {
    /// The manifest of `blob` in chunks of `chunk_size` bytes.
    pub fn of(blob: &[u8], chunk_size: usize) -> Self {
        let leaves: Vec<[u8; 32]> = blob.chunks(chunk_size.max(1)).map(sha256).collect();
        Self {
            total_len: blob.len() as u64,
            chunk_size: chunk_size as u64,
            chunks: leaves.iter().map(hex::encode).collect(),
            root: hex::encode(merkle_root(&leaves)),
        }
    }

    /// Byte range of chunk `index` in the blob.
    pub fn range(&self, index: usize) -> std::ops::Range<usize> {
        let start = (index as u64)
            .saturating_mul(self.chunk_size)
            .min(self.total_len);
        let end = start.saturating_add(self.chunk_size).min(self.total_len);
        start as usize..end as usize
    }

    /// Checks that the chunk count fits the length and the root fits the chunk hashes.
    pub fn check(&self) -> Result<(), TransferError> {
        let bad = |m: String| Err(TransferError::BadManifest(m));
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK as u64 {
            return bad(format!("chunk size {} out of range", self.chunk_size));
        }
        let expected = self.total_len.div_ceil(self.chunk_size);
        if self.chunks.len() as u64 != expected {
            return bad(format!(
                "{} chunk hashes for {} bytes in chunks of {} (expected {expected})",
                self.chunks.len(),
                self.total_len,
                self.chunk_size
            ));
        }
        let mut leaves = Vec::with_capacity(self.chunks.len());
        for (i, h) in self.chunks.iter().enumerate() {
            match hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                Some(leaf) => leaves.push(leaf),
                None => return bad(format!("chunk {i}: {h:?} is not a SHA-256 in hex")),
            }
        }
        let root = hex::encode(merkle_root(&leaves));
        if root != self.root {
            return bad(format!(
                "root {} does not match the chunk hashes ({root})",
                self.root
            ));
        }
        Ok(())
    }

    /// Checks one chunk against the manifest.
    pub fn verify_chunk(&self, index: usize, data: &[u8]) -> Result<(), String> {
        let range = self.range(index);
        if data.len() != range.len() {
            return Err(format!("{} bytes, expected {}", data.len(), range.len()));
        }
        let expected = self
            .chunks
            .get(index)
            .ok_or_else(|| format!("no chunk {index} of {}", self.chunks.len()))?;
        let got = hex::encode(sha256(data));
        if got != *expected {
            return Err(format!("SHA-256 {got}, the manifest says {expected}"));
        }
        Ok(())
    }
}

/// The manifest most donors agree on (ties broken by root, so every fetcher picks the same),
/// with the donors that hold it. Donors whose manifest is inconsistent are left out.
pub fn agreed_manifest(offers: &[(PeerId, Manifest)]) -> Option<(Manifest, Vec<PeerId>)> {
    let mut by_root: BTreeMap<&str, (Manifest, Vec<PeerId>)> = BTreeMap::new();
    for (peer, manifest) in offers {
        if let Err(e) = manifest.check() {
            tracing::warn!(%peer, error = %e, "donor's manifest rejected");
            continue;
        }
        by_root
            .entry(&manifest.root)
            .or_insert_with(|| (manifest.clone(), Vec::new()))
            .1
            .push(*peer);
    }
    by_root
        .into_values()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.root.cmp(&a.0.root)))
}

/// How many chunk requests each donor has in flight at once.
const IN_FLIGHT_PER_DONOR: usize = 2;

/// Fetches the blob described by `manifest` from `donors`: `get(peer, index)` asks one donor
/// for one chunk. Chunks are spread over the donors, each verified; a failing donor is
/// dropped and its chunks go to the others. Returns the blob and, per donor, the chunks it
/// delivered.
pub async fn fetch<F, Fut, E>(
    manifest: &Manifest,
    donors: &[PeerId],
    get: F,
) -> Result<(Vec<u8>, BTreeMap<PeerId, usize>), TransferError>
where
    F: Fn(PeerId, usize) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, E>>,
    E: std::fmt::Display,
{
    manifest.check()?;
    let chunks = manifest.chunks.len();
    let queue = Mutex::new((0..chunks).collect::<VecDeque<usize>>());
    let blob = Mutex::new(vec![0u8; manifest.total_len as usize]);
    let done = Mutex::new(0usize);
    let delivered = Mutex::new(BTreeMap::<PeerId, usize>::new());
    let last_error = Mutex::new(String::from("none"));
    // Told whenever a chunk is done or given back.
    let changed = tokio::sync::Notify::new();
    // One worker per (donor, slot): takes chunks from the queue until it is empty or the
    // donor fails. A worker that finds the queue empty while others still hold chunks waits
    // for them, so that a chunk given back by a failing donor is picked up.
    let worker = |donor: PeerId| {
        let (queue, blob, done, delivered, last_error, changed) =
            (&queue, &blob, &done, &delivered, &last_error, &changed);
        let get = &get;
        async move {
            loop {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(index) = next else {
                    if *done.lock().unwrap_or_else(|p| p.into_inner()) == chunks {
                        return;
                    }
                    notified.await;
                    continue;
                };
                let outcome = match get(donor, index).await {
                    Ok(data) => manifest.verify_chunk(index, &data).map(|()| data),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(data) => {
                        blob.lock().unwrap_or_else(|p| p.into_inner())[manifest.range(index)]
                            .copy_from_slice(&data);
                        *done.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                        changed.notify_waiters();
                        *delivered
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(donor)
                            .or_default() += 1;
                    }
                    Err(reason) => {
                        let error = TransferError::BadChunk {
                            index,
                            peer: donor,
                            reason,
                        };
                        tracing::warn!(error = %error, "dropping the donor; its chunk goes to another");
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = error.to_string();
                        queue
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_back(index);
                        changed.notify_waiters();
                        return;
                    }
                }
            }
        }
    };
    // Workers of a failed donor return; the others keep going. When every worker has
    // returned, either all chunks are in or no donor is left.
    let workers = donors
        .iter()
        .flat_map(|d| std::iter::repeat_n(*d, IN_FLIGHT_PER_DONOR))
        .map(|d| Box::pin(worker(d)));
    let mut workers: futures::stream::FuturesUnordered<_> = workers.collect();
    use futures::StreamExt;
    while workers.next().await.is_some() {}
    drop(workers);
    let missing = chunks - *done.lock().unwrap_or_else(|p| p.into_inner());
    if missing > 0 {
        return Err(TransferError::NoDonors {
            missing,
            chunks,
            last: last_error.into_inner().unwrap_or_else(|p| p.into_inner()),
        });
    }
    Ok((
        blob.into_inner().unwrap_or_else(|p| p.into_inner()),
        delivered.into_inner().unwrap_or_else(|p| p.into_inner()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::peer;

    #[test]
    fn merkle_root_pairs_and_carries_odd_nodes() {
        let leaves: Vec<[u8; 32]> = (0..3u8).map(|i| sha256(&[i])).collect();
        let left = sha256(&[leaves[0], leaves[1]].concat());
        assert_eq!(merkle_root(&leaves), sha256(&[left, leaves[2]].concat()));
        assert_eq!(merkle_root(&leaves[..1]), leaves[0]);
    }

    #[test]
    fn manifest_checks_itself_and_chunks() {
        let blob: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let m = Manifest::of(&blob, 300);
        assert_eq!(m.chunks.len(), 4);
        assert_eq!(m.range(3), 900..1000);
        m.check().unwrap();
        m.verify_chunk(1, &blob[300..600]).unwrap();
        let mut bad = blob[300..600].to_vec();
        bad[10] ^= 1;
        assert!(m.verify_chunk(1, &bad).unwrap_err().contains("SHA-256"));
        assert!(
            m.verify_chunk(3, &blob[..10])
                .unwrap_err()
                .contains("10 bytes")
        );
        let mut lying = m.clone();
        lying.chunks[0] = lying.chunks[1].clone();
        assert!(lying.check().unwrap_err().to_string().contains("root"));
        let mut short = m.clone();
        short.chunks.pop();
        assert!(
            short
                .check()
                .unwrap_err()
                .to_string()
                .contains("expected 4")
        );
    }

    #[test]
    fn the_majority_root_wins() {
        let (a, b, c) = (peer(), peer(), peer());
        let good = Manifest::of(b"hello world", 4);
        let other = Manifest::of(b"hello there", 4);
        let (m, donors) =
            agreed_manifest(&[(a, good.clone()), (b, other), (c, good.clone())]).unwrap();
        assert_eq!(m, good);
        assert_eq!(donors, vec![a, c]);
    }

    #[tokio::test]
    async fn a_lying_and_a_vanishing_donor_do_not_stop_the_fetch() {
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = Manifest::of(&blob, 1000);
        let (honest, liar, gone) = (peer(), peer(), peer());
        let get = |donor: PeerId, index: usize| {
            let mut data = blob[manifest.range(index)].to_vec();
            async move {
                if donor == gone {
                    return Err("connection closed");
                }
                if donor == liar {
                    data[0] ^= 0xff;
                }
                Ok(data)
            }
        };
        let (got, delivered) = fetch(&manifest, &[liar, gone, honest], get).await.unwrap();
        assert_eq!(got, blob);
        assert_eq!(delivered.get(&honest), Some(&10));
        assert!(!delivered.contains_key(&liar));

        let err = fetch(&manifest, &[liar, gone], get).await.unwrap_err();
        assert!(
            matches!(err, TransferError::NoDonors { missing: 10, .. }),
            "{err}"
        );
    }
}
