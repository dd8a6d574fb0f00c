//! The embedded ledger on a network of its own (`launch ledger node` and `launch ledger
//! submit`): the node holding the genesis author's key collects signed extrinsics by
//! request, authors a block every `block_time` and gossips it; every other node keeps a
//! replica, importing (and so checking) each gossiped block and asking the sender for the
//! blocks it missed. The protocol is [`sinter_mechanism::ledger::sync`]; this is its driver.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use parity_scale_codec::Encode;
use sinter_comms::net::{self, Client, Multiaddr, NetConfig, NetEvent, PeerId};
use sinter_mechanism::ledger::Replica;
use sinter_mechanism::ledger::extrinsic::{Call, Extrinsic};
use sinter_mechanism::ledger::keys::Keypair;
use sinter_mechanism::ledger::state::Genesis;
use sinter_mechanism::ledger::sync::{
    self, Follow, Gossip, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Pool, Request, Response,
};
use tokio::sync::mpsc;

use crate::TrainerError;

/// How a node runs.
pub struct NodeOptions {
    /// The ledger's genesis.
    pub genesis: Genesis,
    /// The replica's file.
    pub path: PathBuf,
    /// The genesis author's key: this node authors.
    pub author: Option<Keypair>,
    /// Where to listen.
    pub listen: Vec<Multiaddr>,
    /// Nodes to connect to.
    pub bootstrap: Vec<Multiaddr>,
    /// Time between blocks (the author's).
    pub block_time: Duration,
}

/// A started node.
pub struct Node {
    replica: Replica,
    pool: Option<Pool>,
    author: Option<Keypair>,
    block_time: Duration,
    client: Client,
    events: mpsc::Receiver<NetEvent>,
    /// Its network peer id.
    pub peer_id: PeerId,
    /// The addresses it listens on.
    pub listening: Vec<Multiaddr>,
    /// A warning from opening the replica (a torn last block dropped).
    pub warning: Option<String>,
}

fn network(e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Network(e.to_string())
}

fn incentive(e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Incentive(e.to_string())
}

/// The gossip topic of a ledger's nodes.
pub(crate) fn topic(genesis: &Genesis) -> String {
    format!("sinter/ledger/{}", &hex::encode(genesis.hash())[..16])
}

impl Node {
    /// Opens the replica, starts the network and connects to the bootstrap nodes.
    pub async fn start(options: NodeOptions) -> Result<Self, TrainerError> {
        if let Some(key) = &options.author
            && key.account() != options.genesis.author
        {
            return Err(TrainerError::Config(crate::config::ConfigError {
                path: options.path.clone(),
                message: format!(
                    "{} is not the genesis author {}: only the author's key authors blocks",
                    key.account(),
                    options.genesis.author
                ),
            }));
        }
        let topic = topic(&options.genesis);
        let (replica, warning) =
            Replica::open_or_create(&options.path, options.genesis).map_err(incentive)?;
        let mut config = NetConfig::new(net::Keypair::generate_ed25519(), topic);
        config.listen = options.listen;
        config.bootstrap = options.bootstrap.clone();
        config.max_request_bytes = MAX_REQUEST_BYTES;
        config.max_response_bytes = MAX_RESPONSE_BYTES;
        let (client, events, event_loop) = net::start(config).await.map_err(network)?;
        tokio::spawn(event_loop.run());
        let listening = client.listen_addrs().await.map_err(network)?;
        for addr in options.bootstrap {
            client
                .dial(addr.clone())
                .await
                .map_err(|e| network(format!("connecting to {addr}: {e}")))?;
        }
        Ok(Self {
            pool: options.author.as_ref().map(|_| Pool::after(&replica)),
            replica,
            author: options.author,
            block_time: options.block_time.max(Duration::from_millis(100)),
            peer_id: client.peer_id(),
            client,
            events,
            listening,
            warning,
        })
    }

    /// Runs until `stop` completes or the network ends; returns the replica's height.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<u64, TrainerError> {
        let mut tick = tokio::time::interval(self.block_time);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick(), if self.author.is_some() => self.author_next().await?,
                event = self.events.recv() => match event {
                    None => break,
                    Some(NetEvent::Gossip { peer, data }) if self.author.is_none() => {
                        self.follow(peer, &data).await;
                    }
                    Some(NetEvent::Request { data, reply, .. }) => {
                        let answer = sync::answer(&self.replica, self.pool.as_mut(), &data);
                        let _ = self.client.respond(reply, answer.encode()).await;
                    }
                    Some(_) => {}
                },
                _ = &mut stop => break,
            }
        }
        Ok(self.replica.state().block)
    }

    async fn author_next(&mut self) -> Result<(), TrainerError> {
        let key = self.author.as_ref().expect("only the author authors");
        let block = sync::author_block(&mut self.replica, &mut self.pool, key, sync::now_ms())
            .map_err(incentive)?;
        tracing::info!(
            block = block.header.number,
            extrinsics = block.extrinsics.len(),
            "authored"
        );
        let message = Gossip::block(
            block,
            self.peer_id.to_bytes(),
            key,
            self.replica.genesis_hash(),
        );
        if let Err(e) = self.client.publish(message).await {
            tracing::debug!(error = %e, "no replica to gossip to yet");
        }
        Ok(())
    }

    async fn follow(&mut self, peer: PeerId, data: &[u8]) {
        let block = match Gossip::decode_from(data) {
            Ok(Gossip::Block { block, .. }) => block,
            Err(why) => return tracing::warn!(%peer, %why, "malformed gossip"),
        };
        if let Follow::CatchUpFirst(first) = sync::follow(&self.replica, block.header.number) {
            let ask = Request::BlocksFrom(first).encode();
            let missed = match self.client.request(peer, ask).await {
                Ok(answer) => sync::import_missed(&mut self.replica, &answer),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = missed {
                return tracing::warn!(%peer, %why, "catching up failed");
            }
        }
        if let Err(e) = sync::import_next(&mut self.replica, block) {
            tracing::warn!(error = %e, %peer, "refused a gossiped block");
        }
    }
}

/// Signs `call` with `key` and submits it to the node at `node` (the author); returns the
/// nonce it was signed with.
pub async fn submit(
    genesis: &Genesis,
    node: Multiaddr,
    key: &Keypair,
    call: Call,
) -> Result<u64, TrainerError> {
    let config = NetConfig::new(
        net::Keypair::generate_ed25519(),
        "sinter/ledger-client".into(),
    );
    let (client, _events, event_loop) = net::start(config).await.map_err(network)?;
    tokio::spawn(event_loop.run());
    let peer = client
        .dial(node.clone())
        .await
        .map_err(|e| network(format!("connecting to {node}: {e}")))?;
    let ask = |request: Request| {
        let client = client.clone();
        async move {
            let bytes = client
                .request(peer, request.encode())
                .await
                .map_err(network)?;
            Response::decode_from(&bytes)
                .map_err(|why| network(format!("the node's answer: {why}")))
        }
    };
    let Response::Nonce(nonce) = ask(Request::Nonce(key.account())).await? else {
        return Err(network("the node did not answer with a nonce"));
    };
    let name = call.name();
    let ext = Extrinsic::sign(key, nonce, call, &genesis.hash());
    match ask(Request::Submit(ext)).await? {
        Response::Accepted => Ok(nonce),
        Response::Rejected(reason) => Err(incentive(format!("{name} refused: {reason}"))),
        _ => Err(network("the node gave an unexpected answer")),
    }
}
