//! Peers behind NAT, with what rust-libp2p provides. AutoNAT asks other peers to dial this one
//! back and so learns whether it is reachable; Identify tells it the address others see (its
//! NAT's public address). A peer that finds itself private reserves a slot on relays — the
//! `--relay` addresses at once, its bootstrap peers when AutoNAT says private — and tells the
//! run the relayed address; every reachable peer relays for the others (circuit relay v2,
//! within [`RelayService`]'s limits), and `launch relay` runs a relay alone. Two peers that
//! meet over a relay then punch a hole (DCUtR: both dial each other's observed address at
//! once) and drop the relayed connection once the direct one stands. [`Routes`] records how
//! each peer is reached, for `launch status`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, multiaddr::Protocol, relay};

use super::EventLoop;

/// How a connection to a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// Through a relay (both ends behind NATs, or hole punching not done yet or failed).
    Relayed,
    /// Dialled directly.
    Direct,
    /// Direct, after hole punching through both NATs.
    HolePunched,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Relayed => "relayed",
            Route::Direct => "direct",
            Route::HolePunched => "direct (hole-punched)",
        })
    }
}

/// Whether others can dial this peer, as AutoNAT found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reachability {
    /// Not probed yet (or no peer to probe with).
    #[default]
    Unknown,
    /// Others dialled it back at its address.
    Public,
    /// Behind a NAT or firewall: reached through relays and hole punching.
    Private,
}

impl fmt::Display for Reachability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private (behind a NAT)",
        })
    }
}

/// How this peer is reached and reaches others; shared between the event loop, which
/// writes it, and the application, which reads it (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<Mutex<RouteTable>>);

#[derive(Debug, Default)]
struct RouteTable {
    connections: HashMap<PeerId, Vec<(ConnectionId, Route)>>,
    reachability: Reachability,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The best route to each connected peer (a direct one over a relayed one).
    pub fn best(&self) -> Vec<(PeerId, Route)> {
        self.lock()
            .connections
            .iter()
            .filter_map(|(peer, conns)| Some((*peer, conns.iter().map(|c| c.1).max()?)))
            .collect()
    }

    /// Whether others can dial this peer.
    pub fn reachability(&self) -> Reachability {
        self.lock().reachability
    }

    fn opened(&self, peer: PeerId, id: ConnectionId, route: Route) {
        self.lock()
            .connections
            .entry(peer)
            .or_default()
            .push((id, route));
    }

    fn closed(&self, peer: PeerId, id: ConnectionId) {
        let mut table = self.lock();
        if let Some(conns) = table.connections.get_mut(&peer) {
            conns.retain(|c| c.0 != id);
            if conns.is_empty() {
                table.connections.remove(&peer);
            }
        }
    }

    /// Marks `id` hole-punched; returns the peer's relayed connections (to close).
    fn punched(&self, peer: PeerId, id: ConnectionId) -> Vec<ConnectionId> {
        let mut table = self.lock();
        let conns = table.connections.entry(peer).or_default();
        for c in conns.iter_mut().filter(|c| c.0 == id) {
            c.1 = Route::HolePunched;
        }
        conns
            .iter()
            .filter(|c| c.1 == Route::Relayed)
            .map(|c| c.0)
            .collect()
    }
}

/// What this peer relays for others (circuit relay v2's limits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayService {
    /// Circuits relayed at once; 0: relay nothing.
    pub max_circuits: usize,
    /// Bytes one circuit may carry before the relay closes it; 0: no limit.
    pub max_circuit_bytes: u64,
    /// How long one circuit may stay open.
    pub max_circuit_duration: Duration,
}

impl RelayService {
    /// What a training peer relays by default: enough circuits for a group's NATed peers to
    /// meet and punch holes, and to train through this peer where hole punching fails.
    pub fn peer_default() -> Self {
        Self {
            max_circuits: 16,
            max_circuit_bytes: 0,
            max_circuit_duration: Duration::from_secs(3600),
        }
    }

    pub(super) fn config(&self) -> relay::Config {
        relay::Config {
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits.min(4),
            max_circuit_bytes: self.max_circuit_bytes,
            max_circuit_duration: self.max_circuit_duration,
            max_reservations: self.max_circuits.saturating_mul(8),
            ..relay::Config::default()
        }
    }
}

/// AutoNAT's settings: probe soon after start, and addresses of any kind (a run inside one
/// private network — a lab, a data centre — is as real as one across the internet; a probe is
/// only a libp2p dial back).
pub(super) fn autonat_config() -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(1),
        retry_interval: Duration::from_secs(10),
        refresh_interval: Duration::from_secs(300),
        throttle_server_period: Duration::from_secs(5),
        only_global_ips: false,
        ..autonat::Config::default()
    }
}

/// How long a relayed connection stays open beside the direct one that replaces it.
const RELAYED_GRACE: Duration = Duration::from_secs(5);

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// A relay this peer may listen through.
#[derive(Debug)]
pub(super) struct RelaySlot {
    /// Its address, without `/p2p/…`.
    addr: Multiaddr,
    /// Named with `--relay`: listened through at once, not only when private.
    explicit: bool,
    /// The listener through it, while there is one.
    listener: Option<ListenerId>,
}

/// `addr` without its `/p2p/…` parts.
pub(super) fn bare(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

impl EventLoop {
    /// Records a new connection's route; remembers a bootstrap peer's id, to reserve a relay
    /// slot on it if this peer turns out to be private.
    pub(super) fn on_connection(&mut self, peer: PeerId, id: ConnectionId, at: &ConnectedPoint) {
        let route = match is_relayed(at.get_remote_address()) {
            true => Route::Relayed,
            false => Route::Direct,
        };
        self.routes.opened(peer, id, route);
        if let ConnectedPoint::Dialer { address, .. } = at {
            let addr = bare(address);
            if self.bootstrap.contains(&addr) {
                self.relays.entry(peer).or_insert(RelaySlot {
                    addr,
                    explicit: false,
                    listener: None,
                });
            }
        }
        if self.relays.contains_key(&peer) {
            self.reserve_relays();
        }
    }

    pub(super) fn on_connection_closed(&mut self, peer: PeerId, id: ConnectionId) {
        self.routes.closed(peer, id);
    }

    /// A listener closed: if it was through a relay, the slot is free to reserve again.
    pub(super) fn on_listener_closed(&mut self, id: ListenerId, reason: &str) {
        for (peer, slot) in &mut self.relays {
            if slot.listener == Some(id) {
                tracing::warn!(relay = %peer, %reason, "listening through the relay stopped; retried when it is reconnected");
                slot.listener = None;
            }
        }
    }

    pub(super) fn on_autonat(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            return;
        };
        let reachability = match new {
            autonat::NatStatus::Public(_) => Reachability::Public,
            autonat::NatStatus::Private => Reachability::Private,
            autonat::NatStatus::Unknown => Reachability::Unknown,
        };
        tracing::info!(was = ?old, now = %reachability, "reachability");
        self.routes.lock().reachability = reachability;
        self.reserve_relays();
    }

    /// Listens through every relay due and not listened through yet: the `--relay` peers
    /// always, the bootstrap peers once this peer is known to be private.
    pub(super) fn reserve_relays(&mut self) {
        let private = self.routes.reachability() == Reachability::Private;
        for (peer, slot) in &mut self.relays {
            if slot.listener.is_some() || !(slot.explicit || private) {
                continue;
            }
            let circuit = slot
                .addr
                .clone()
                .with(Protocol::P2p(*peer))
                .with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    slot.listener = Some(id);
                    tracing::info!(relay = %peer, "reserving a relay slot: others reach this peer through it");
                }
                Err(e) => tracing::warn!(%circuit, error = %e, "cannot listen through relay"),
            }
        }
    }

    /// Adds an explicit relay (`--relay`, naming its peer id): listened through at once.
    pub(super) fn add_relay(&mut self, addr: &Multiaddr) -> Result<(), String> {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(format!(
                "relay address {addr} must end in /p2p/<peer id> (`launch relay` prints it)"
            ));
        };
        self.relays.insert(
            peer,
            RelaySlot {
                addr: bare(addr),
                explicit: true,
                listener: None,
            },
        );
        Ok(())
    }

    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(id) => {
                let peer = event.remote_peer_id;
                tracing::info!(%peer, "hole punched: a direct connection replaces the relayed one");
                // Closed a little later: the other side may not have seen the direct
                // connection yet, and with no connection left it would take this peer for gone.
                let due = Instant::now() + RELAYED_GRACE;
                for relayed in self.routes.punched(peer, id) {
                    self.closing.insert(relayed, Some(due));
                }
            }
            Err(e) => {
                tracing::warn!(peer = %event.remote_peer_id, error = %e, "hole punching failed; the connection stays relayed");
            }
        }
    }

    /// Closes the relayed connections whose grace after hole punching is over.
    pub(super) fn close_replaced(&mut self) {
        let now = Instant::now();
        let due: Vec<ConnectionId> = self
            .closing
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            match self.swarm.close_connection(id) {
                true => self.closing.insert(id, None),
                false => self.closing.remove(&id),
            };
        }
    }

    pub(super) fn on_relay_service(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                tracing::info!(peer = %src_peer_id, "relay: slot reserved")
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => tracing::info!(from = %src_peer_id, to = %dst_peer_id, "relay: circuit opened"),
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                tracing::debug!(from = %src_peer_id, to = %dst_peer_id, ?error, "relay: circuit closed")
            }
            other => tracing::debug!(event = ?other, "relay"),
        }
    }

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        if let relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } = event {
            tracing::info!(relay = %relay_peer_id, "relay slot reserved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_route_prefers_direct_and_punching_closes_relayed() {
        let routes = Routes::default();
        let peer = PeerId::random();
        let (relayed, punched) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        routes.opened(peer, relayed, Route::Relayed);
        assert_eq!(routes.best(), vec![(peer, Route::Relayed)]);
        routes.opened(peer, punched, Route::Direct);
        assert_eq!(routes.punched(peer, punched), vec![relayed]);
        routes.closed(peer, relayed);
        assert_eq!(routes.best(), vec![(peer, Route::HolePunched)]);
        routes.closed(peer, punched);
        assert!(routes.best().is_empty());
    }

    #[test]
    fn relayed_addresses_are_recognised() {
        let relayed: Multiaddr = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE/p2p-circuit"
            .parse()
            .unwrap();
        assert!(is_relayed(&relayed));
        assert!(!is_relayed(&"/ip4/10.0.0.1/tcp/4001".parse().unwrap()));
    }
}
