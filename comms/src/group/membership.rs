//! Who is in the run: introductions (`Hello`, refused with the differing config fields),
//! heartbeats (in [`Group::start`]), connecting to peers heard of, waiting for peers, leaving.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::messages::{Header, Reply, RunProgress, Welcome};
use super::{Group, GroupError, LEAVE_NOTICE, Shared, State};

impl Shared {
    /// A peer introduces itself: welcomed with where the run is and who is in it, or refused
    /// with the fields its config differs in.
    pub(super) fn on_hello(
        &self,
        state: &mut State,
        peer: PeerId,
        run: String,
        config: serde_json::Value,
    ) -> Reply {
        let mut differences = config_differences(&config, &self.settings.config);
        if differences.is_empty() && run != self.settings.run {
            differences.push(format!("run id {run}, the run's {}", self.settings.run));
        }
        if differences.is_empty() {
            state.left.remove(&peer);
            let mut peers: BTreeMap<String, Vec<String>> = self
                .live(state)
                .iter()
                .filter(|p| **p != peer)
                .map(|p| {
                    (
                        p.to_string(),
                        state.addrs.get(p).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            peers.insert(self.me.to_string(), state.my_addrs.clone());
            Reply::json(&Welcome {
                progress: RunProgress {
                    round: state.round,
                    under_way: state.under_way,
                },
                peers,
            })
        } else {
            self.reject(state, peer, &differences.join("; "))
        }
    }

    /// A peer says it leaves: it is gone at once.
    pub(super) fn on_leave(&self, state: &mut State, peer: PeerId) {
        tracing::info!(%peer, "peer left the run");
        state.left.insert(peer);
    }
}

impl Group {
    /// Introduces this peer to `peer`: fails with the differing fields if its config differs.
    /// Returns where the run is, as `peer` sees it.
    pub async fn hello(&self, peer: PeerId) -> Result<RunProgress, GroupError> {
        let header = Header::Hello {
            run: self.shared.settings.run.clone(),
            config: self.shared.settings.config.clone(),
        };
        match self.ask(peer, &header, &[]).await {
            Ok((_, data)) => {
                let welcome: Welcome =
                    serde_json::from_slice(&data).map_err(|e| GroupError::Refused {
                        peer,
                        reason: format!("unreadable answer to hello: {e}"),
                    })?;
                let others: Vec<PeerId> = {
                    let mut state = self.shared.lock();
                    state.last_seen.insert(peer, Instant::now());
                    state.under_way |= welcome.progress.under_way;
                    state.newest_round = state.newest_round.max(welcome.progress.round);
                    let mut others = Vec::new();
                    for (p, addrs) in welcome.peers {
                        if let Ok(p) = p.parse::<PeerId>()
                            && p != self.me()
                        {
                            // Live as the bootstrap peer sees them: connect to them all now,
                            // before any heartbeat of theirs arrives.
                            state.last_seen.entry(p).or_insert_with(Instant::now);
                            if !addrs.is_empty() {
                                state.addrs.insert(p, addrs);
                            }
                            others.push(p);
                        }
                    }
                    others
                };
                for p in others {
                    self.connect(p).await;
                }
                Ok(welcome.progress)
            }
            Err(GroupError::Refused { peer, reason }) => Err(GroupError::ConfigMismatch {
                peer,
                differences: reason,
            }),
            Err(e) => Err(e),
        }
    }

    /// Waits until at least `count` peers (this one included) are live, for at most `limit`.
    /// Returns how many are.
    pub async fn wait_for_peers(&self, count: usize, limit: Duration) -> usize {
        self.wait_for(limit, |shared, state| {
            let n = shared.live(state).len();
            (n >= count).then_some(n)
        })
        .await
        .unwrap_or_else(|| self.live_peers().len())
    }

    /// Tells every live peer that this one leaves (for at most a couple of seconds), so that
    /// the next round forms without waiting for it.
    pub async fn leave(&self) {
        let me = self.me();
        let header = Header::Leave {
            run: self.shared.settings.run.clone(),
        };
        let live = self.live_peers();
        let sends = live
            .iter()
            .filter(|p| **p != me)
            .map(|p| self.ask(*p, &header, &[]));
        let _ = tokio::time::timeout(LEAVE_NOTICE, futures::future::join_all(sends)).await;
    }

    /// Dials `peer` at the addresses it gave, unless connected or dialled in the last
    /// seconds; once the swarm knows them, requests to the peer can dial too.
    pub(super) async fn connect(&self, peer: PeerId) {
        let addrs = {
            let mut state = self.shared.lock();
            let due = state
                .dialled
                .get(&peer)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
            if peer == self.me() || state.connected.contains(&peer) || !due {
                return;
            }
            state.dialled.insert(peer, Instant::now());
            state.addrs.get(&peer).cloned().unwrap_or_default()
        };
        for addr in addrs
            .iter()
            .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
        {
            let _ = self.client.add_address(peer, addr.clone()).await;
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.dial(addr).await {
                    tracing::debug!(%peer, error = %e, "dial failed");
                }
            });
        }
    }
}

/// A JSON value for people: numbers that are f32 values print as such (0.7, not
/// 0.699999988079071).
fn show(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() && f64::from(x as f32) == x => format!("{}", x as f32),
        _ => v.to_string(),
    }
}

/// Dotted paths where a joiner's JSON config differs from the run's, with both values.
pub fn config_differences(yours: &serde_json::Value, run: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: yours {}, the run's {}", show(a), show(b))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", yours, run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_differences_name_the_fields() {
        let yours =
            serde_json::json!({"inner": {"lr": f64::from(0.7f32), "steps": 600}, "seed": 0});
        let run = serde_json::json!({"inner": {"lr": 0.003, "steps": 600}, "seed": 0, "x": 1});
        assert_eq!(
            config_differences(&yours, &run),
            vec![
                "inner.lr: yours 0.7, the run's 0.003",
                "x: yours null, the run's 1"
            ]
        );
        assert!(config_differences(&yours, &yours).is_empty());
    }
}
