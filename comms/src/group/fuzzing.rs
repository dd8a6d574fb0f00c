//! The group's request handler without sockets, for fuzz targets and property tests (the
//! `fuzzing` feature): a peer in round 4 of a run whose round 3 had four members, offering
//! its state and a contribution, answering whatever bytes a chosen peer sends.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::formation::Formed;
use super::messages::Reply;
use super::{GroupSettings, Shared};

/// The run the handler belongs to (requests naming another are refused early).
pub const RUN: &str = "fuzz-run";

/// A group in the middle of a run, taking requests.
pub struct Handler {
    shared: Shared,
    peers: Vec<PeerId>,
}

impl Default for Handler {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler {
    /// A group whose round 3 had this peer and three others, all live, now in round 4.
    pub fn new() -> Self {
        let mut peers: Vec<PeerId> = (0..5u8)
            .map(|i| {
                libp2p::identity::Keypair::ed25519_from_bytes([i + 1; 32])
                    .expect("32 bytes")
                    .public()
                    .to_peer_id()
            })
            .collect();
        peers.sort();
        let shared = Shared::detached(
            peers[2],
            GroupSettings {
                run: RUN.into(),
                config: serde_json::json!({"model": {"d_model": 64}}),
                heartbeat: Duration::from_millis(500),
                peer_timeout: Duration::from_secs(3600),
                round_ceiling: Duration::from_secs(60),
                limits: Default::default(),
            },
        );
        {
            let mut state = shared.lock();
            state.round = 4;
            state.groups.insert(
                3,
                Formed {
                    round: 3,
                    members: peers[..4].to_vec(),
                    states: vec![Some("s".into()); 4],
                },
            );
            for p in &peers[..4] {
                state.last_seen.insert(*p, Instant::now());
            }
            state.offer = Some(super::transfers::Offer::new(4, vec![7; 5000]));
            state
                .contributions
                .insert(3, super::transfers::Offer::new(3, vec![9; 3000]));
        }
        Self { shared, peers }
    }

    /// Handles `data` as a request from peer `sender` (modulo the five peers: four members
    /// of round 3, this one among them, and an outsider); whether it was accepted.
    pub fn handle(&self, sender: u8, data: &[u8]) -> bool {
        let peer = self.peers[usize::from(sender) % self.peers.len()];
        !matches!(self.shared.on_request(peer, data), Reply::Refused(_))
    }

    /// Encodes a request as peers send it, whatever bytes its header holds: the header's
    /// length, the header, the frame.
    pub fn request(header: &[u8], frame: &[u8]) -> Vec<u8> {
        super::messages::frame_request(header, frame)
    }
}
