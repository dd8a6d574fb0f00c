//! Moving a large blob (a run's state, a checkpoint) from several peers at once.
//!
//! The blob is cut into fixed-size chunks; a [`Manifest`] lists each chunk's SHA-256 and their
//! Merkle root, which is the blob's identity. A fetcher asks every donor for its manifest,
//! keeps the root most donors agree on, then pulls chunks from all donors holding that root in
//! parallel, checking each chunk against the manifest. A chunk that fails its hash, or a donor
//! that stops answering, sends the chunk back to the queue for another donor; a donor slow to
//! answer has its last chunks asked of the others too; the fetch fails only when no donor is
//! left.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// A verified chunk could not be stored (a full disk, say).
    #[error("storing the fetched bytes: {0}")]
    Write(String),
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

/// Where a fetch puts verified chunks: memory for a run's state, a file for a checkpoint (so
/// that a large one never sits in memory whole).
pub trait Sink: Sync {
    /// Stores `data` at `offset` of the blob.
    fn put(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

impl Sink for Mutex<Vec<u8>> {
    fn put(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut blob = self.lock().unwrap_or_else(|p| p.into_inner());
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        blob.get_mut(at..at.saturating_add(data.len()))
            .ok_or_else(|| std::io::Error::other("a chunk past the blob's end"))?
            .copy_from_slice(data);
        Ok(())
    }
}

impl Sink for std::fs::File {
    fn put(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
}

/// How many chunk requests each donor has in flight at once.
const IN_FLIGHT_PER_DONOR: usize = 2;

/// Where a fetch stands, shared by its workers.
struct Progress {
    /// Chunks nobody is fetching.
    queue: VecDeque<usize>,
    /// Chunks being fetched, and from whom.
    in_flight: BTreeMap<usize, BTreeSet<PeerId>>,
    /// Chunks in the blob.
    completed: Vec<bool>,
    done: usize,
    delivered: BTreeMap<PeerId, usize>,
    last_error: String,
    /// Why storing a chunk failed, which ends the fetch.
    write_error: Option<String>,
}

impl Progress {
    /// The next chunk for `donor`: a queued one, or else — the queue empty — one another
    /// donor is still fetching and this one has not tried (a slow or stalling donor, say one
    /// that trickles its answer, then delays the fetch by one chunk's time, not its timeout).
    fn next_for(&mut self, donor: PeerId) -> Option<usize> {
        let index = self.queue.pop_front().or_else(|| {
            self.in_flight
                .iter()
                .filter(|(_, holders)| !holders.contains(&donor))
                .min_by_key(|(_, holders)| holders.len())
                .map(|(index, _)| *index)
        })?;
        self.in_flight.entry(index).or_default().insert(donor);
        Some(index)
    }

    /// `donor` is no longer fetching `index`.
    fn release(&mut self, index: usize, donor: &PeerId) {
        if let Some(holders) = self.in_flight.get_mut(&index) {
            holders.remove(donor);
            if holders.is_empty() {
                self.in_flight.remove(&index);
            }
        }
    }
}

/// Fetches the blob described by `manifest` from `donors` into memory ([`fetch_into`]).
/// Returns the blob and, per donor, the chunks it delivered.
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
    let blob = Mutex::new(vec![0u8; manifest.total_len as usize]);
    let delivered = fetch_into(manifest, donors, get, &blob).await?;
    Ok((
        blob.into_inner().unwrap_or_else(|p| p.into_inner()),
        delivered,
    ))
}

/// Fetches the blob described by `manifest` from `donors` into `sink`: `get(peer, index)`
/// asks one donor for one chunk. Chunks are spread over the donors, each verified; a failing
/// donor is dropped and its chunks go to the others; once every chunk is asked for, idle
/// donors also ask for those still outstanding elsewhere, and the first verified answer
/// counts. Returns, per donor, the chunks it delivered.
pub async fn fetch_into<F, Fut, E>(
    manifest: &Manifest,
    donors: &[PeerId],
    get: F,
    sink: &dyn Sink,
) -> Result<BTreeMap<PeerId, usize>, TransferError>
where
    F: Fn(PeerId, usize) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, E>>,
    E: std::fmt::Display,
{
    manifest.check()?;
    let chunks = manifest.chunks.len();
    let progress = Mutex::new(Progress {
        queue: (0..chunks).collect(),
        in_flight: BTreeMap::new(),
        completed: vec![false; chunks],
        done: 0,
        delivered: BTreeMap::new(),
        last_error: String::from("none"),
        write_error: None,
    });
    let lock = || progress.lock().unwrap_or_else(|p| p.into_inner());
    let over = |p: &Progress| p.done == chunks || p.write_error.is_some();
    // Told whenever a chunk is done or given back.
    let changed = tokio::sync::Notify::new();
    // One worker per (donor, slot): takes chunks until all are done or the donor fails. A
    // worker with nothing to take waits for a change (a chunk given back by a failing donor).
    let worker = |donor: PeerId| {
        let (changed, get, lock, over) = (&changed, &get, &lock, &over);
        async move {
            loop {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = {
                    let mut progress = lock();
                    if over(&progress) {
                        return;
                    }
                    progress.next_for(donor)
                };
                let Some(index) = next else {
                    notified.await;
                    continue;
                };
                let outcome = match get(donor, index).await {
                    Ok(data) => manifest.verify_chunk(index, &data).map(|()| data),
                    Err(e) => Err(e.to_string()),
                };
                let mut progress = lock();
                progress.release(index, &donor);
                match outcome {
                    Ok(data) => {
                        if !progress.completed[index] {
                            let offset = manifest.range(index).start as u64;
                            match sink.put(offset, &data) {
                                Ok(()) => {
                                    progress.completed[index] = true;
                                    progress.done += 1;
                                    *progress.delivered.entry(donor).or_default() += 1;
                                }
                                Err(e) => progress.write_error = Some(e.to_string()),
                            }
                        }
                        drop(progress);
                        changed.notify_waiters();
                    }
                    Err(reason) => {
                        let error = TransferError::BadChunk {
                            index,
                            peer: donor,
                            reason,
                        };
                        tracing::warn!(error = %error, "dropping the donor; its chunk goes to another");
                        progress.last_error = error.to_string();
                        if !progress.completed[index] && !progress.in_flight.contains_key(&index) {
                            progress.queue.push_back(index);
                        }
                        drop(progress);
                        changed.notify_waiters();
                        return;
                    }
                }
            }
        }
    };
    let workers = donors
        .iter()
        .flat_map(|d| std::iter::repeat_n(*d, IN_FLIGHT_PER_DONOR))
        .map(|d| Box::pin(worker(d)));
    let mut workers: futures::stream::FuturesUnordered<_> = workers.collect();
    // Until every chunk is in (the workers still waiting on a slow donor are then dropped,
    // and their requests with them) or every worker has returned (no donor left).
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if over(&lock()) {
            break;
        }
        use futures::StreamExt;
        tokio::select! {
            finished = workers.next() => if finished.is_none() { break },
            _ = notified => {}
        }
    }
    drop(workers);
    let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = progress.write_error {
        return Err(TransferError::Write(e));
    }
    if progress.done < chunks {
        return Err(TransferError::NoDonors {
            missing: chunks - progress.done,
            chunks,
            last: progress.last_error,
        });
    }
    Ok(progress.delivered)
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

    /// A donor that trickles its answers (here: one chunk in ten minutes, the request
    /// timeout) costs the fetch one chunk's time: the others ask for its chunks too.
    #[tokio::test]
    async fn a_stalling_donor_does_not_hold_the_fetch_until_its_timeout() {
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = Manifest::of(&blob, 1000);
        let (honest, staller) = (peer(), peer());
        let get = |donor: PeerId, index: usize| {
            let data = blob[manifest.range(index)].to_vec();
            async move {
                let delay = match donor == staller {
                    true => std::time::Duration::from_secs(600),
                    false => std::time::Duration::from_millis(10),
                };
                tokio::time::sleep(delay).await;
                Ok::<_, &str>(data)
            }
        };
        let started = std::time::Instant::now();
        let (got, delivered) = fetch(&manifest, &[staller, honest], get).await.unwrap();
        assert_eq!(got, blob);
        assert_eq!(delivered.get(&honest), Some(&10));
        assert!(!delivered.contains_key(&staller));
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    }
}
