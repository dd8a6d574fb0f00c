//! The libp2p layer: a [`Client`] that application code holds (cloneable, talks over a bounded
//! channel with a reply per command) and an [`EventLoop`] that alone owns the swarm, as in
//! libp2p's file-sharing example. Transport: tcp + noise + yamux (quic with the `quic`
//! feature). Behaviours: identify, ping, Kademlia (seeded with the bootstrap list),
//! gossipsub for small control messages on one topic per run, and request-response for
//! everything that carries tensors, with size limits and timeouts chosen for that; plain
//! streams for calls whose answers stream in chunks ([`stream`]). Each
//! peer's requests are limited ([`PeerLimits`]) and a banned peer is disconnected and refused
//! (libp2p's block list). Peers behind NATs are reached through relays and hole punching
//! ([`nat`]).

mod codec;
pub mod key;
mod limits;
pub mod nat;
pub mod stall;
pub mod stream;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Swarm, Transport, allow_block_list, autonat, dcutr, identify, noise, ping, relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

pub use codec::{FrameCodec, PROTOCOL};
pub use libp2p::identity::Keypair;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use libp2p_stream::IncomingStreams;
pub use limits::PeerLimits;
pub use nat::{Reachability, RelayService, Route, Routes};

/// What can go wrong in the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The peer key file could not be read or written.
    #[error("peer key {path}: {reason}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// Dialling an address failed.
    #[error("cannot dial {addr}: {reason}")]
    Dial {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A request to a peer failed (timeout, closed connection, refused protocol…).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// A peer's streamed answer broke the protocol: larger than the caller takes, or in
    /// frames larger than [`stream::CHUNK`].
    #[error("answer from {peer} refused: {reason}")]
    Answer {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        reason: String,
    },
    /// Building the swarm failed.
    #[error("network setup: {0}")]
    Setup(String),
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// How to start the network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// This peer's identity.
    pub key: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start; with or without a `/p2p/<peer id>` suffix.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to tell others instead of the listen addresses (behind port forwarding, a
    /// NAT or a proxy). Empty: the listen addresses, the relayed ones and those AutoNAT
    /// confirmed.
    pub external: Vec<Multiaddr>,
    /// Relays to listen through at once (each ending in `/p2p/<peer id>`); bootstrap peers
    /// also serve as relays once AutoNAT finds this peer private.
    pub relays: Vec<Multiaddr>,
    /// What this peer relays for others.
    pub relay_service: RelayService,
    /// The gossip topic of the run (one per run).
    pub topic: String,
    /// Largest request (a tensor shard) accepted or sent.
    pub max_request_bytes: usize,
    /// Largest response accepted or sent.
    pub max_response_bytes: usize,
    /// How long a request may take before it fails (tensors over slow links need long).
    pub request_timeout: Duration,
    /// How long an unused connection stays open (libp2p's 10 s default would drop group
    /// members between rounds).
    pub idle_timeout: Duration,
    /// What each peer may ask of this one.
    pub limits: PeerLimits,
}

impl NetConfig {
    /// A configuration with sinter's defaults: 256 MiB requests, 32 MiB responses (state chunks), 10 min
    /// request timeout, 1 h idle timeout.
    pub fn new(key: Keypair, topic: String) -> Self {
        Self {
            key,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external: Vec::new(),
            relays: Vec::new(),
            relay_service: RelayService::peer_default(),
            topic,
            max_request_bytes: 256 << 20,
            max_response_bytes: 32 << 20,
            request_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(3600),
            limits: PeerLimits::default(),
        }
    }

    /// A short-lived client (`launch status`, a checkpoint fetch): sinter's defaults, and
    /// relaying nothing for others.
    pub fn client(key: Keypair, topic: String) -> Self {
        let mut config = Self::new(key, topic);
        config.relay_service.max_circuits = 0;
        config
    }
}

/// Something the network delivers to the application.
#[derive(Debug)]
pub enum NetEvent {
    /// A peer sent a request; answer it with [`Client::respond`].
    Request {
        /// Who sent it (authenticated by noise).
        peer: PeerId,
        /// The bytes.
        data: Vec<u8>,
        /// Where the answer goes.
        reply: Responder,
    },
    /// A gossip message on the run's topic (signed by its author).
    Gossip {
        /// The author.
        peer: PeerId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A peer's request (or gossip) was refused before reaching the application: an
    /// oversized or truncated frame, or over the peer's [`PeerLimits`]. Reported while the
    /// application keeps up; a flood is dropped without a report for each message.
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A connection to a peer opened (first one).
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// The last connection to a peer went [`stall::STALL_LIMIT`] without its data acknowledged
    /// and was dropped: a cut link or a vanished host, not a close (the peer may well be live;
    /// dial it again).
    Stalled(PeerId),
}

/// The channel an incoming request is answered on.
#[derive(Debug)]
pub struct Responder(ResponseChannel<Vec<u8>>, PeerId);

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    frames: request_response::Behaviour<FrameCodec>,
    autonat: autonat::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    streams: libp2p_stream::Behaviour,
}

enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    Publish {
        data: Vec<u8>,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Respond {
        reply: Responder,
        data: Vec<u8>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    Ban {
        peer: PeerId,
    },
}

/// The application's handle on the network. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    max_request: usize,
    peer_id: PeerId,
    routes: Routes,
}

impl Client {
    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Dials `addr` (with or without `/p2p/<peer id>`) and returns the peer found there.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Dial { addr, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Publishes a small control message on the run's gossip topic. Best effort: with no
    /// subscribed peer yet, the message is dropped (and logged at debug level).
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Publish { data }).await
    }

    /// Sends a request and waits for its response.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, data, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Calls `peer` on `protocol` (a plain stream): sends `request` and returns its answer,
    /// streamed in chunks and refused past `limit` bytes ([`stream`]).
    ///
    /// A call whose stream closes before any of the answer arrives is tried once more after
    /// [`stream::RETRY_PAUSE`]: `libp2p-stream` resets a stream that arrives while the
    /// answerer has not yet taken the one before it (rust-libp2p #5651), so a burst of calls
    /// from several callers loses some unread, and an answerer at its limit of calls closes
    /// new ones until a slot frees.
    pub async fn call(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        request: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, NetError> {
        let mut retried = false;
        loop {
            let stream = self.open(peer, protocol.clone()).await?;
            match stream::call_on(peer, stream, request, self.max_request, limit).await {
                Ok(answer) => return Ok(answer),
                Err(failed) if failed.unanswered && !retried => {
                    tracing::debug!(%peer, %protocol, error = %failed.error, "trying the call again");
                    retried = true;
                    tokio::time::sleep(stream::RETRY_PAUSE).await;
                }
                Err(failed) => return Err(failed.error),
            }
        }
    }

    /// A plain stream to `peer` on `protocol` (dialling it if need be).
    pub async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream, NetError> {
        let opened = self.streams.clone().open_stream(peer, protocol).await;
        opened.map_err(|e| NetError::Request {
            peer,
            reason: format!("opening a stream: {e}"),
        })
    }

    /// The calls peers make on `protocol`, to answer with [`stream::serve_calls`]. One
    /// taker per protocol.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, NetError> {
        self.streams
            .clone()
            .accept(protocol.clone())
            .map_err(|_| NetError::Setup(format!("{protocol} is already taken")))
    }

    /// Answers an incoming request.
    pub async fn respond(&self, reply: Responder, data: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Respond { reply, data }).await
    }

    /// The addresses others should dial: the external ones if configured, else the concrete
    /// listen addresses (a wildcard expands to one per interface); each ends in
    /// `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ListenAddrs { reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Tells the swarm where `peer` can be reached, so that a request to it can dial.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::AddAddress { peer, addr }).await
    }

    /// Disconnects `peer` and refuses it from now on (its connections, requests and gossip).
    pub async fn ban(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Ban { peer }).await
    }

    /// How each connected peer is reached, and whether this one is reachable.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }
}

/// Owns the swarm; run it with [`EventLoop::run`] on a task of its own.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    topic: IdentTopic,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    pending_dials: HashMap<libp2p::swarm::ConnectionId, PendingDial>,
    listen_addrs: Vec<Multiaddr>,
    external: Vec<Multiaddr>,
    budgets: limits::Budgets,
    routes: Routes,
    /// Bootstrap addresses without `/p2p/…`: the peers dialled there may serve as relays.
    bootstrap: Vec<Multiaddr>,
    relays: HashMap<PeerId, nat::RelaySlot>,
    /// Relayed connections replaced by punched holes: when each is to be closed (`None`:
    /// being closed), so that their closing is not reported as an error.
    closing: HashMap<libp2p::swarm::ConnectionId, Option<std::time::Instant>>,
}

/// A dial waiting for its connection: the address (for the error message) and the reply.
type PendingDial = (Multiaddr, oneshot::Sender<Result<PeerId, NetError>>);

/// Capacity of the command and event channels (bounded: a slow consumer slows the producer).
const CHANNEL: usize = 256;

/// Builds the swarm and starts listening (waiting until each listen address is bound, so that
/// port 0 resolves); bootstrap addresses that name their peer seed Kademlia (dial them with
/// [`Client::dial`]). Returns the client, the stream of events for the application, and the
/// event loop to spawn.
pub async fn start(
    config: NetConfig,
) -> Result<(Client, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let codec = FrameCodec {
        max_request: config.max_request_bytes,
        max_response: config.max_response_bytes,
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(config.key.clone()).with_tokio();
    #[cfg(feature = "quic")]
    let builder = builder.with_quic();
    // libp2p's `with_tcp`, with each socket's stall limit set.
    let builder = builder
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .map(|stream, _| {
                        stall::limit(&stream.0);
                        stream
                    })
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()),
            )
        })
        .map_err(|e| setup(&e))?;
    let mut swarm = builder
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(gossipsub::ValidationMode::Strict)
                // Control messages only: hashes, manifests, heartbeats.
                .max_transmit_size(64 * 1024)
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                identify: identify::Behaviour::new(
                    identify::Config::new("/sinter/id/1".into(), key.public())
                        .with_hide_listen_addrs(!config.external.is_empty()),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad: kad::Behaviour::new(peer_id, MemoryStore::new(peer_id)),
                gossipsub: gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?,
                frames: request_response::Behaviour::with_codec(
                    codec,
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        .with_max_concurrent_streams(64),
                ),
                autonat: autonat::Behaviour::new(peer_id, nat::autonat_config()),
                relay_client,
                relay: Toggle::from(
                    (config.relay_service.max_circuits > 0)
                        .then(|| relay::Behaviour::new(peer_id, config.relay_service.config())),
                ),
                dcutr: dcutr::Behaviour::new(peer_id),
                streams: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    if let Some(relay) = swarm.behaviour_mut().relay.as_mut() {
        // Fixed now, while there is no connection: libp2p-relay 0.22 re-announces a changed
        // status to every connection, its relayed ones too, whose handler then panics
        // (`either.rs: unreachable`) and leaves the connection hung. The status changes
        // whenever this peer's confirmed external addresses do, as a relay reservation does.
        relay.set_status(Some(relay::Status::Enable));
    }
    let topic = IdentTopic::new(config.topic.clone());
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| setup(&e))?;
    let mut listen_addrs = Vec::new();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    listen_addrs.push(address);
                    break;
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason: error.to_string(),
                    });
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason: format!("{reason:?}"),
                    });
                }
                _ => {}
            }
        }
    }
    let (commands_tx, commands) = mpsc::channel(CHANNEL);
    let (events, events_rx) = mpsc::channel(CHANNEL);
    let mut event_loop = EventLoop {
        swarm,
        commands,
        events,
        topic,
        pending_requests: HashMap::new(),
        pending_dials: HashMap::new(),
        listen_addrs,
        external: config.external.clone(),
        budgets: limits::Budgets::new(config.limits),
        routes: Routes::default(),
        bootstrap: config.bootstrap.iter().map(nat::bare).collect(),
        relays: HashMap::new(),
        closing: Default::default(),
    };
    for addr in &config.relays {
        event_loop.add_relay(addr).map_err(NetError::Setup)?;
    }
    event_loop.reserve_relays();
    for addr in &config.external {
        event_loop.swarm.add_external_address(addr.clone());
    }
    for addr in &config.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            event_loop
                .swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
    }
    let client = Client {
        commands: commands_tx,
        streams: event_loop.swarm.behaviour().streams.new_control(),
        max_request: config.max_request_bytes,
        peer_id: config.key.public().to_peer_id(),
        routes: event_loop.routes.clone(),
    };
    Ok((client, events_rx, event_loop))
}

impl EventLoop {
    /// Runs until every [`Client`] is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                _ = tick.tick() => self.close_replaced(),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
            }
        }
    }

    async fn deliver(&mut self, event: NetEvent) {
        if self.events.send(event).await.is_err() {
            tracing::debug!("application stopped listening to network events");
        }
    }

    /// Tells the application about a refusal if it has room; never waits, so that a flood
    /// cannot stall the swarm on a full queue.
    fn report_refusal(&mut self, peer: PeerId, reason: String) {
        tracing::debug!(%peer, %reason, "refused before the application");
        let _ = self.events.try_send(NetEvent::Refused { peer, reason });
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour()
            .blocked
            .blocked_peers()
            .contains(peer)
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let reason = match reason {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                self.on_listener_closed(listener_id, &reason);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                if let Some((_, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.on_connection(peer_id, connection_id, &endpoint);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .add_explicit_peer(&peer_id);
                if num_established.get() == 1 {
                    self.deliver(NetEvent::Connected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.on_connection_closed(peer_id, connection_id);
                let on_purpose = self.closing.remove(&connection_id).is_some();
                let stalled = cause.as_ref().is_some_and(stall::is_stall);
                if stalled {
                    tracing::info!(peer = %peer_id, limit = ?stall::STALL_LIMIT, "connection stalled (a cut link?): dropped");
                } else if let Some(cause) = cause.filter(|_| !on_purpose) {
                    tracing::warn!(peer = %peer_id, %cause, "connection closed by an error");
                }
                if num_established == 0 {
                    self.budgets.forget_idle();
                    let event = match stalled {
                        true => NetEvent::Stalled(peer_id),
                        false => NetEvent::Disconnected(peer_id),
                    };
                    self.deliver(event).await;
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: addr.to_string(),
                        reason: error.to_string(),
                    }));
                } else {
                    tracing::debug!(%error, "outgoing connection failed");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                if let Some(peer) = message.source {
                    if self.is_banned(&peer) {
                        return;
                    }
                    if let Err(reason) = self.budgets.admit_gossip(peer) {
                        return self.report_refusal(peer, format!("gossip {reason}"));
                    }
                    self.deliver(NetEvent::Gossip {
                        peer,
                        data: message.data,
                    })
                    .await;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Frames(event)) => self.on_frames(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => self.on_autonat(event),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => self.on_dcutr(event),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => self.on_relay_service(event),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                self.on_relay_client(event)
            }
            _ => {}
        }
    }

    async fn on_frames(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if self.is_banned(&peer) {
                    return;
                }
                // Dropping the channel fails the request at the requester.
                if let Err(reason) = self.budgets.admit_request(peer) {
                    return self.report_refusal(peer, reason);
                }
                self.deliver(NetEvent::Request {
                    peer,
                    data: request,
                    reply: Responder(channel, peer),
                })
                .await;
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(error),
                ..
            } => {
                // Our codec's refusal of an oversized or truncated frame.
                tracing::warn!(%peer, %error, "incoming request refused");
                self.deliver(NetEvent::Refused {
                    peer,
                    reason: error.to_string(),
                })
                .await;
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "incoming request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { addr, reply } => {
                let opts = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
                    .address(addr.clone())
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::Publish { data } => {
                let topic = self.topic.clone();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
                    tracing::debug!(error = %e, "gossip message not sent");
                }
            }
            Command::Request { peer, data, reply } => {
                let id = self.swarm.behaviour_mut().frames.send_request(&peer, data);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { reply, data } => {
                self.budgets.answered(reply.1);
                if self
                    .swarm
                    .behaviour_mut()
                    .frames
                    .send_response(reply.0, data)
                    .is_err()
                {
                    tracing::debug!("response not sent: the requester has gone");
                }
            }
            Command::ListenAddrs { reply } => {
                let me = *self.swarm.local_peer_id();
                let told: Vec<Multiaddr> = match self.external.is_empty() {
                    true => self
                        .listen_addrs
                        .iter()
                        .chain(self.swarm.external_addresses())
                        .cloned()
                        .collect(),
                    false => self.external.clone(),
                };
                let mut addrs: Vec<Multiaddr> = Vec::new();
                for addr in told {
                    let addr = match addr.iter().last() {
                        Some(Protocol::P2p(_)) => addr,
                        _ => addr.with(Protocol::P2p(me)),
                    };
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                let _ = reply.send(addrs);
            }
            Command::AddAddress { peer, addr } => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                self.swarm.add_peer_address(peer, addr);
            }
            Command::Ban { peer } => {
                if self.swarm.behaviour_mut().blocked.block_peer(peer) {
                    tracing::warn!(%peer, "peer banned: disconnected and refused from now on");
                }
            }
        }
    }
}
