//! What a peer offers others to fetch, and fetching it: the run's state (for joiners), its
//! own contributions (for validators) and checkpoints (blobs served from disk). Each is a
//! blob with a Merkle manifest, fetched in verified chunks from every holder at once
//! ([`crate::transfer`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;

use super::messages::{Header, Reply};
use super::{Group, GroupError, Shared, State};
use crate::transfer::{self, Manifest, chunk_size_for};

/// The state this peer offers to joiners: the run's state at the start of `round`.
pub(super) struct Offer {
    round: u64,
    blob: Arc<Vec<u8>>,
    manifest: std::sync::OnceLock<Manifest>,
    /// The chunks each peer fetched.
    fetched: Mutex<BTreeMap<PeerId, BTreeSet<u32>>>,
}

impl Offer {
    pub(super) fn new(round: u64, blob: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            round,
            blob: Arc::new(blob),
            manifest: std::sync::OnceLock::new(),
            fetched: Mutex::new(BTreeMap::new()),
        })
    }

    fn manifest(&self) -> &Manifest {
        self.manifest
            .get_or_init(|| Manifest::of(&self.blob, chunk_size_for(self.blob.len())))
    }
}

/// Answers for an offered blob of `round` (`what`: the state, a contribution): its manifest,
/// or chunk `index`.
pub(super) fn serve_offer(
    offer: Option<&Arc<Offer>>,
    round: u64,
    index: Option<u32>,
    what: &str,
) -> Reply {
    match offer {
        Some(offer) if offer.round == round => {
            let manifest = offer.manifest();
            match index {
                None => Reply::json(manifest),
                Some(i) if (i as usize) < manifest.chunks.len() => {
                    Reply::Data(offer.blob[manifest.range(i as usize)].to_vec())
                }
                Some(i) => Reply::Refused(format!("no chunk {i} of the {what} of round {round}")),
            }
        }
        other => Reply::Refused(format!(
            "no {what} for round {round} here (offering {})",
            other.map_or("none".into(), |o| format!("round {}", o.round))
        )),
    }
}

/// Rounds of this peer's own contributions kept for validators.
pub(super) const CONTRIBUTIONS_KEPT: usize = 4;

/// The largest contribution proof taken from a peer (a leaf, 64 steps of a path, a header).
const MAX_PROOF_BYTES: usize = 4096;

/// What of its contribution a peer hands validators ([`Group::wait_handed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// The contribution itself, every chunk.
    Contribution,
    /// Its proof of being under a commitment on the ledger.
    Proof,
}

/// What proves this peer's contribution to a round (`None`: nothing to prove, or not yet).
pub type ContributionProofs = Arc<dyn Fn(u64) -> Option<Vec<u8>> + Send + Sync>;

/// How long the other donors' manifests are waited for once one usable offer is in.
const OFFER_GRACE: Duration = Duration::from_secs(2);

/// Blobs (checkpoints) a peer serves by Merkle root, from disk.
pub trait BlobSource: Send + Sync {
    /// The manifest of the blob with `root`, or of the newest one when `root` is `None`.
    fn manifest(&self, root: Option<&str>) -> Option<Manifest>;
    /// Chunk `index` of the blob with `root`.
    fn chunk(&self, root: &str, index: usize) -> Option<Vec<u8>>;
}

pub(super) fn serve_blob(source: Option<&dyn BlobSource>, header: Header) -> Reply {
    let Some(source) = source else {
        return Reply::Refused("this peer serves no checkpoints".into());
    };
    match header {
        Header::BlobManifest { root, .. } => match source.manifest(root.as_deref()) {
            Some(manifest) => Reply::json(&manifest),
            None => Reply::Refused(match root {
                Some(root) => format!("no checkpoint with root {root} here"),
                None => "no checkpoint here yet".into(),
            }),
        },
        Header::BlobChunk { root, index, .. } => {
            // With `SINTER_FAULT_ABORT_SERVING_BLOB=1`, a donor dies in the middle of a transfer.
            #[cfg(feature = "fault-injection")]
            super::faults::fault_point(
                "SINTER_FAULT_ABORT_SERVING_BLOB",
                "1",
                "serving a checkpoint chunk",
            );
            match source.chunk(&root, index as usize) {
                Some(data) => Reply::Data(data),
                None => Reply::Refused(format!("no chunk {index} of {root} here")),
            }
        }
        _ => unreachable!("only blob requests come here"),
    }
}

impl Offer {
    /// Whether `peer` has fetched every chunk.
    fn fetched_by(&self, peer: &PeerId) -> bool {
        let chunks = self.manifest().chunks.len();
        self.fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|got| got.len() >= chunks)
    }
}

impl Shared {
    /// Serves this peer's own contribution to `round` (its manifest, or chunk `index`),
    /// noting which chunks `peer` fetched.
    pub(super) fn serve_contribution(
        &self,
        state: &State,
        peer: PeerId,
        round: u64,
        index: Option<u32>,
    ) -> Reply {
        let offer = state.contributions.get(&round);
        let reply = serve_offer(offer, round, index, "contribution");
        if let (Some(offer), Some(index), Reply::Data(_)) = (offer, index, &reply) {
            offer
                .fetched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(peer)
                .or_default()
                .insert(index);
        }
        reply
    }
}

impl Shared {
    /// Notes that `peer` was handed this peer's proof of its contribution to `round`.
    pub(super) fn proof_served(&self, peer: PeerId, round: u64) {
        let mut state = self.lock();
        state.proofs_served.entry(round).or_default().insert(peer);
        while state.proofs_served.len() > CONTRIBUTIONS_KEPT {
            state.proofs_served.pop_first();
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

impl Group {
    /// Offers the run's state at the start of `round` to peers that fetch it (replacing the
    /// previous offer).
    pub fn offer_state(&self, round: u64, blob: Vec<u8>) {
        self.shared.lock().offer = Some(Offer::new(round, blob));
    }

    /// Offers this peer's own contribution to `round` to validators (the last few rounds are
    /// kept).
    pub fn offer_contribution(&self, round: u64, blob: Vec<u8>) {
        let mut state = self.shared.lock();
        state.contributions.insert(round, Offer::new(round, blob));
        while state.contributions.len() > CONTRIBUTIONS_KEPT {
            state.contributions.pop_first();
        }
    }

    /// Fetches `peer`'s own contribution to `round`, chunk by chunk, each chunk verified; an
    /// offer of more than `max_bytes` is refused before anything is allocated for it.
    pub async fn fetch_contribution(
        &self,
        round: u64,
        peer: PeerId,
        max_bytes: u64,
    ) -> Result<Vec<u8>, GroupError> {
        let run = &self.shared.settings.run;
        let (blob, _) = self
            .fetch_to_memory(
                &[peer],
                &format!("{peer}'s contribution to round {round}"),
                Header::ContributionManifest {
                    run: run.clone(),
                    round,
                },
                |_, index| Header::ContributionChunk {
                    run: run.clone(),
                    round,
                    index,
                },
                max_bytes,
            )
            .await?;
        Ok(blob)
    }

    /// Waits until each of `peers` has been handed `what` of this peer's contribution to
    /// `round` (all of it fetched, or its proof), for at most `limit`; whether they all were.
    pub async fn wait_handed(
        &self,
        what: Handed,
        round: u64,
        peers: &[PeerId],
        limit: Duration,
    ) -> bool {
        self.wait_for(limit, |_, state| {
            let handed = |peer: &PeerId| match what {
                Handed::Contribution => state
                    .contributions
                    .get(&round)
                    .is_some_and(|offer| offer.fetched_by(peer)),
                Handed::Proof => state
                    .proofs_served
                    .get(&round)
                    .is_some_and(|served| served.contains(peer)),
            };
            peers.iter().all(handed).then_some(())
        })
        .await
        .is_some()
    }

    /// Answers validators asking for this peer's proof that its contribution to a round is on
    /// the ledger (on a chain that stores only a root per batch of contributions).
    pub fn serve_contribution_proofs(&self, proofs: ContributionProofs) {
        self.shared.lock().proofs = Some(proofs);
    }

    /// Asks `peer` for its proof that its contribution to `round` is on the ledger.
    pub async fn fetch_contribution_proof(
        &self,
        round: u64,
        peer: PeerId,
    ) -> Result<Vec<u8>, GroupError> {
        let header = Header::ContributionProof {
            run: self.shared.settings.run.clone(),
            round,
        };
        let (_, proof) = self.ask(peer, &header, &[]).await?;
        if proof.len() > MAX_PROOF_BYTES {
            return Err(GroupError::Refused {
                peer,
                reason: format!(
                    "a proof of {} bytes (at most {MAX_PROOF_BYTES})",
                    proof.len()
                ),
            });
        }
        Ok(proof)
    }

    /// Serves blobs (checkpoints) from `source` to peers that ask.
    pub fn serve_blobs(&self, source: Arc<dyn BlobSource>) {
        self.shared.lock().blobs = Some(source);
    }

    /// Fetches the state of `round` from `donors`: each is asked for its manifest, the one most
    /// agree on is fetched in chunks from all of them at once, each chunk verified. Returns
    /// the blob and how many chunks each donor delivered. Offers of more than `max_bytes` are
    /// ignored.
    pub async fn fetch_state(
        &self,
        round: u64,
        donors: &[PeerId],
        max_bytes: u64,
    ) -> Result<(Vec<u8>, BTreeMap<PeerId, usize>), GroupError> {
        let run = &self.shared.settings.run;
        self.fetch_to_memory(
            donors,
            &format!("the state of round {round}"),
            Header::StateManifest {
                run: run.clone(),
                round,
            },
            |_, index| Header::StateChunk {
                run: run.clone(),
                round,
                index,
            },
            max_bytes,
        )
        .await
    }

    /// The agreed offer of `donors` ([`Group::agreed_offer`]), fetched into memory.
    async fn fetch_to_memory(
        &self,
        donors: &[PeerId],
        what: &str,
        ask_manifest: Header,
        ask_chunk: impl Fn(&str, u32) -> Header,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, BTreeMap<PeerId, usize>), GroupError> {
        let (manifest, holders) = self
            .agreed_offer(donors, what, ask_manifest, None, max_bytes)
            .await?;
        let blob = Mutex::new(vec![0u8; manifest.total_len as usize]);
        let delivered = self
            .fetch_chunks(&manifest, &holders, ask_chunk, &blob)
            .await?;
        Ok((
            blob.into_inner().unwrap_or_else(|p| p.into_inner()),
            delivered,
        ))
    }

    /// Fetches a served blob (a checkpoint) from `donors` the same way, into `sink` (a file:
    /// a checkpoint may be larger than memory): the one with `root` (a donor offering another
    /// is ignored), or the newest most donors agree on, of at most `max_bytes`. Returns its
    /// manifest and who delivered what.
    pub async fn fetch_blob(
        &self,
        donors: &[PeerId],
        root: Option<String>,
        max_bytes: u64,
        sink: &dyn transfer::Sink,
    ) -> Result<(Manifest, BTreeMap<PeerId, usize>), GroupError> {
        let run = &self.shared.settings.run;
        let what = root
            .as_ref()
            .map_or("a checkpoint".to_owned(), |r| format!("checkpoint {r}"));
        let ask_manifest = Header::BlobManifest {
            run: run.clone(),
            root: root.clone(),
        };
        let (manifest, holders) = self
            .agreed_offer(donors, &what, ask_manifest, root.as_deref(), max_bytes)
            .await?;
        let ask_chunk = |root: &str, index| Header::BlobChunk {
            run: run.clone(),
            root: root.to_owned(),
            index,
        };
        let delivered = self
            .fetch_chunks(&manifest, &holders, ask_chunk, sink)
            .await?;
        Ok((manifest, delivered))
    }

    /// Asks every donor for a manifest and returns the one most agree on (with `expected_root`
    /// if given, of at most `max_bytes` and this peer's limit per transfer) and its holders.
    async fn agreed_offer(
        &self,
        donors: &[PeerId],
        what: &str,
        ask_manifest: Header,
        expected_root: Option<&str>,
        max_bytes: u64,
    ) -> Result<(Manifest, Vec<PeerId>), GroupError> {
        let asks = donors.iter().map(|d| {
            let header = &ask_manifest;
            async move {
                let manifest = self.ask(*d, header, &[]).await.and_then(|(_, data)| {
                    serde_json::from_slice::<Manifest>(&data).map_err(|e| GroupError::Refused {
                        peer: *d,
                        reason: format!("unreadable manifest: {e}"),
                    })
                });
                (*d, manifest)
            }
        });
        let mut offers = Vec::new();
        let mut last = String::from("no donors");
        let cap = self.shared.settings.limits.max_transfer_bytes;
        let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
        // Once one offer is usable the others get a moment more, not their request timeout:
        // a donor that is slow, silent or trickling its answer holds no fetch up.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = pending.next();
            let answer = match deadline {
                None => next.await,
                Some(at) => tokio::time::timeout_at(at, next).await.unwrap_or_else(|_| {
                    tracing::info!(
                        waiting = pending.len(),
                        what,
                        "going on without the slowest donors' manifests"
                    );
                    None
                }),
            };
            let Some((donor, manifest)) = answer else {
                break;
            };
            match manifest {
                Ok(m) if expected_root.is_some_and(|r| r != m.root) => {
                    tracing::warn!(%donor, offered = %m.root, what, "donor offers another root than asked; ignored");
                    last = format!("{donor} offered root {} instead", m.root);
                }
                Ok(m) if m.total_len > cap => {
                    tracing::warn!(%donor, bytes = m.total_len, cap, what, "offer over this peer's limit per transfer; ignored");
                    last = format!(
                        "{donor} offered {} bytes, over this peer's limit of {cap} bytes per transfer (raise --max-transfer-mib)",
                        m.total_len
                    );
                }
                Ok(m) if m.total_len > max_bytes => {
                    tracing::warn!(%donor, bytes = m.total_len, max_bytes, what, "donor offers more bytes than this can need; ignored");
                    last = format!(
                        "{donor} offered {} bytes, over the {max_bytes} {what} can take",
                        m.total_len
                    );
                }
                Ok(m) => {
                    offers.push((donor, m));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + OFFER_GRACE);
                }
                Err(e) => {
                    tracing::warn!(%donor, error = %e, what, "no manifest from donor");
                    last = e.to_string();
                }
            }
        }
        let (manifest, holders) =
            transfer::agreed_manifest(&offers).ok_or(transfer::TransferError::NoOffer {
                what: what.to_owned(),
                last,
            })?;
        tracing::info!(
            what,
            bytes = manifest.total_len,
            chunks = manifest.chunks.len(),
            donors = holders.len(),
            root = %&manifest.root[..16],
            "fetching"
        );
        Ok((manifest, holders))
    }

    /// Fetches `manifest`'s chunks from `holders` into `sink`, each verified
    /// (`transfer::fetch_into`).
    async fn fetch_chunks(
        &self,
        manifest: &Manifest,
        holders: &[PeerId],
        ask_chunk: impl Fn(&str, u32) -> Header,
        sink: &dyn transfer::Sink,
    ) -> Result<BTreeMap<PeerId, usize>, GroupError> {
        let get = |peer: PeerId, index: usize| {
            let header = ask_chunk(&manifest.root, index as u32);
            async move { self.ask(peer, &header, &[]).await.map(|(_, data)| data) }
        };
        let delivered = transfer::fetch_into(manifest, holders, get, sink).await?;
        self.shared.lock().bytes_received += manifest.total_len;
        Ok(delivered)
    }
}
