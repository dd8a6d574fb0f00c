//! What `launch status` shows: a peer's view of the group, asked of any peer by anyone.

use std::collections::BTreeMap;

use libp2p::PeerId;

use super::messages::{GroupStatus, Header, PeerStats, Reply, RunProgress, encode_request};
use super::{Group, GroupError, Shared, State};
use crate::net::Client;

impl Shared {
    pub(super) fn status(&self, state: &State) -> GroupStatus {
        let live = self.live(state);
        let mut peers: BTreeMap<String, PeerStats> = state
            .peer_stats
            .iter()
            .filter(|(p, _)| live.contains(p))
            .map(|(p, s)| (p.to_string(), s.clone()))
            .collect();
        peers.insert(self.me.to_string(), state.stats.clone());
        GroupStatus {
            run: self.settings.run.clone(),
            peer: self.me.to_string(),
            members: state
                .groups
                .values()
                .next_back()
                .map(|g| g.members.iter().map(|m| m.to_string()).collect())
                .unwrap_or_default(),
            peers,
            rejected: state
                .rejected
                .iter()
                .map(|(p, c)| (p.to_string(), *c))
                .collect(),
            banned: state.banned.iter().map(|p| p.to_string()).collect(),
            reachability: self.routes.reachability().to_string(),
            routes: self
                .routes
                .best()
                .into_iter()
                .map(|(p, r)| (p.to_string(), r.to_string()))
                .collect(),
        }
    }
}

impl Group {
    /// Waits until every live peer has reported reaching `round` in its heartbeats, for at
    /// most `limit`; whether all did.
    pub async fn wait_for_reports(&self, round: u64, limit: std::time::Duration) -> bool {
        self.wait_for(limit, |shared, state| {
            shared
                .live(state)
                .iter()
                .all(|p| {
                    *p == shared.me || state.peer_stats.get(p).is_some_and(|s| s.round >= round)
                })
                .then_some(())
        })
        .await
        .is_some()
    }

    /// Records this peer's progress, gossiped with its heartbeats.
    pub fn report(&self, stats: PeerStats) {
        self.shared.lock().stats = stats;
    }

    /// Where the run is, as far as this peer has heard: the newest round and whether a group
    /// has formed.
    pub fn run_progress(&self) -> RunProgress {
        let state = self.shared.lock();
        RunProgress {
            round: state.newest_round.max(state.round),
            under_way: state.under_way,
        }
    }

    /// This peer's view of the group, as `launch status` shows it.
    pub fn status(&self) -> GroupStatus {
        self.shared.status(&self.shared.lock())
    }
}

/// Asks `peer` for its view of the run's group (what `launch status` shows); any peer may ask.
pub async fn query_status(client: &Client, peer: PeerId) -> Result<GroupStatus, GroupError> {
    let answer = client
        .request(peer, encode_request(&Header::Status, &[]))
        .await?;
    let refused = |reason: String| GroupError::Refused { peer, reason };
    match Reply::decode(answer).map_err(refused)? {
        Reply::Data(data) => {
            serde_json::from_slice(&data).map_err(|e| refused(format!("unreadable status: {e}")))
        }
        Reply::Refused(reason) => Err(refused(reason)),
        Reply::Ok => Err(refused("an empty answer to a status request".into())),
    }
}
