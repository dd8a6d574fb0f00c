//! The embedded ledger over the network: [`RunLedger`], the [`Ledger`] a run keeps when its
//! config has an `[incentives.ledger]`, and [`node`], the ledger on its own (`launch ledger
//! node|submit`). Both drive the sans-IO protocol of [`sinter_mechanism::ledger::sync`].
//!
//! A run's ledger rides on the run's own connections (a group extension) instead of a network
//! of its own. The peer whose wallet hotkey is the genesis author authors a block every
//! `block_secs` and gossips it; every other peer imports (re-checks) each block into its
//! replica, catching up from the sender, and submits its extrinsics to the author by request.
//! Waiting for a block is waiting on the replica's height, which each import or authored
//! block advances.
//!
//! A miner or a validator outside any run follows the ledger's own network instead
//! ([`RunLedger::connect`]: `launch ledger node`'s protocol, spoken to its nodes directly).

pub mod node;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use parity_scale_codec::Encode;
use sinter_comms::group::{Extension, Group};
use sinter_comms::net::{self, Client, Multiaddr, NetConfig, NetEvent, PeerId};
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::Replica;
use sinter_mechanism::ledger::block::Block;
use sinter_mechanism::ledger::extrinsic::{Call, Extrinsic, Hash};
use sinter_mechanism::ledger::interface::{
    CallError, ContributionRecord, Metagraph, WeightsCommitment, WeightsReveal, wait_until,
};
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_mechanism::ledger::state::{Genesis, State};
use sinter_mechanism::ledger::sync::{self, Follow, Gossip, Pool, Request, Response};
use sinter_mechanism::ledger::wallet::Wallet;
use tokio::sync::{mpsc, watch};

use crate::TrainerError;

/// Gossiped blocks waiting to be imported; more are dropped (a replica that misses one
/// catches up from the next).
const ARRIVALS_QUEUED: usize = 64;

/// Locks a mutex, recovering it if a thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a replica reaches the others: over a run's group (its extension messages), or on the
/// ledger's own network as a client of its nodes.
enum Link {
    Run(Group),
    Node(Client),
}

impl Link {
    fn me(&self) -> PeerId {
        match self {
            Link::Run(group) => group.me(),
            Link::Node(client) => client.peer_id(),
        }
    }

    async fn ask(&self, peer: PeerId, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Link::Run(group) => group
                .ask_extension(peer, data)
                .await
                .map_err(|e| e.to_string()),
            Link::Node(client) => client
                .request(peer, data.to_vec())
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn publish(&self, data: &[u8]) -> Result<(), String> {
        match self {
            Link::Run(group) => group
                .publish_extension(data)
                .await
                .map_err(|e| e.to_string()),
            Link::Node(client) => client
                .publish(data.to_vec())
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// A ledger replica (and, on the genesis author's peer, the block author): a run peer's, or a
/// miner's or validator's on the ledger's own network.
pub struct RunLedger {
    replica: Mutex<Replica>,
    /// The next block's extrinsics and state: on the author only. Locked after `replica`.
    pool: Mutex<Option<Pool>>,
    wallet: Wallet,
    /// Where the author was last heard from.
    author_peer: watch::Sender<Option<PeerId>>,
    /// The replica's height.
    height: watch::Sender<u64>,
    arrivals: mpsc::Sender<(PeerId, Block)>,
    link: Link,
    runtime: tokio::runtime::Handle,
    block_time: Duration,
}

impl Extension for RunLedger {
    fn request(&self, _peer: PeerId, data: &[u8]) -> Result<Vec<u8>, String> {
        let replica = lock(&self.replica);
        Ok(sync::answer(&replica, lock(&self.pool).as_mut(), data).encode())
    }

    fn gossip(&self, peer: PeerId, data: &[u8]) {
        let message = match Gossip::decode_from(data) {
            Ok(message) => message,
            Err(why) => return tracing::warn!(%peer, %why, "malformed ledger gossip"),
        };
        let author = {
            let replica = lock(&self.replica);
            message
                .verified_author_peer(replica.genesis(), replica.genesis_hash())
                .and_then(|bytes| PeerId::from_bytes(bytes).ok())
        };
        match author {
            Some(author) => {
                self.author_peer.send_replace(Some(author));
            }
            None => tracing::warn!(%peer, "a block whose author binding does not verify"),
        }
        let Gossip::Block { block, .. } = message;
        if self.arrivals.try_send((peer, block)).is_err() {
            tracing::debug!(%peer, "ledger blocks arrive faster than they are imported; dropped one");
        }
    }
}

impl RunLedger {
    /// Opens (or creates) the replica at `path` and starts authoring or following on
    /// `runtime`.
    pub fn start(
        path: &Path,
        genesis: Genesis,
        block_time: Duration,
        wallet: Wallet,
        group: Group,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, TrainerError> {
        let this = Self::open(
            path,
            genesis,
            block_time,
            wallet,
            Link::Run(group.clone()),
            runtime,
        )?;
        group.extend(this.clone());
        Ok(this)
    }

    /// Opens (or creates) the replica at `path` and follows the ledger's own network through
    /// its node at `node` (the author's, where extrinsics go): what a miner announcing its
    /// axon or a validator setting weights holds outside any run. Call it within `runtime`.
    pub async fn connect(
        path: &Path,
        genesis: Genesis,
        block_time: Duration,
        wallet: Wallet,
        node: Multiaddr,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, TrainerError> {
        let mut config = NetConfig::client(net::Keypair::generate_ed25519(), node::topic(&genesis));
        config.max_request_bytes = sync::MAX_REQUEST_BYTES;
        config.max_response_bytes = sync::MAX_RESPONSE_BYTES;
        let network = |e: net::NetError| TrainerError::Network(e.to_string());
        let (client, mut events, event_loop) = net::start(config).await.map_err(network)?;
        tokio::spawn(event_loop.run());
        client.dial(node.clone()).await.map_err(|e| {
            TrainerError::Network(format!("connecting to the ledger node at {node}: {e}"))
        })?;
        let this = Self::open(
            path,
            genesis,
            block_time,
            wallet,
            Link::Node(client.clone()),
            runtime,
        )?;
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(this) = weak.upgrade() else { return };
                match event {
                    NetEvent::Gossip { peer, data } => this.gossip(peer, &data),
                    NetEvent::Request { peer, data, reply } => {
                        let answer = match this.request(peer, &data) {
                            Ok(answer) => answer,
                            Err(_) => continue,
                        };
                        let _ = client.respond(reply, answer).await;
                    }
                    _ => {}
                }
            }
        });
        Ok(this)
    }

    fn open(
        path: &Path,
        genesis: Genesis,
        block_time: Duration,
        wallet: Wallet,
        link: Link,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, TrainerError> {
        let author = wallet.hotkey_account() == genesis.author;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TrainerError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let (replica, warning) = Replica::open_or_create(path, genesis).map_err(incentive)?;
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        let pool = author.then(|| Pool::after(&replica));
        let (arrivals, mut arriving) = mpsc::channel(ARRIVALS_QUEUED);
        let this = Arc::new(Self {
            height: watch::Sender::new(replica.state().block),
            replica: Mutex::new(replica),
            pool: Mutex::new(pool),
            wallet,
            author_peer: watch::Sender::new(author.then(|| link.me())),
            arrivals,
            link,
            runtime: runtime.clone(),
            block_time,
        });
        let weak = Arc::downgrade(&this);
        if author {
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(block_time);
                loop {
                    tick.tick().await;
                    let Some(this) = weak.upgrade() else { return };
                    this.author_next().await;
                }
            });
        } else {
            runtime.spawn(async move {
                while let Some((from, block)) = arriving.recv().await {
                    let Some(this) = weak.upgrade() else { return };
                    this.follow(from, block).await;
                }
            });
        }
        Ok(this)
    }

    /// Authors the next block and gossips it.
    async fn author_next(&self) {
        let key = &self.wallet.hotkey;
        let authored = {
            let mut replica = lock(&self.replica);
            let block =
                sync::author_block(&mut replica, &mut lock(&self.pool), key, sync::now_ms());
            block.map(|block| (block, *replica.genesis_hash()))
        };
        match authored {
            Ok((block, genesis_hash)) => {
                self.height.send_replace(block.header.number);
                let message = Gossip::block(block, self.link.me().to_bytes(), key, &genesis_hash);
                if let Err(e) = self.link.publish(&message).await {
                    tracing::debug!(error = %e, "no replica to gossip to yet");
                }
            }
            Err(e) => tracing::error!(error = %e, "authoring a block failed"),
        }
    }

    /// Imports a gossiped block, first fetching any blocks this replica missed from its sender.
    async fn follow(&self, from: PeerId, block: Block) {
        let step = sync::follow(&lock(&self.replica), block.header.number);
        match step {
            Follow::Stale => return,
            Follow::Import => {}
            Follow::CatchUpFirst(first) => {
                let ask = Request::BlocksFrom(first).encode();
                let answer = match self.link.ask(from, &ask).await {
                    Ok(answer) => answer,
                    Err(e) => return tracing::warn!(%from, error = %e, "catching up failed"),
                };
                let imported = sync::import_missed(&mut lock(&self.replica), &answer);
                self.advance();
                if let Err(why) = imported {
                    return tracing::warn!(%from, %why, "catching up failed");
                }
            }
        }
        let number = block.header.number;
        match sync::import_next(&mut lock(&self.replica), block) {
            Ok(Some(applied)) => tracing::debug!(
                block = number,
                extrinsics = applied.block.extrinsics.len(),
                epoch = applied.epoch.is_some(),
                "imported"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, %from, "refused a gossiped block"),
        }
        self.advance();
    }

    /// Tells waiters the replica's height.
    fn advance(&self) {
        let height = lock(&self.replica).state().block;
        self.height
            .send_if_modified(|h| std::mem::replace(h, height) != height);
    }

    fn state(&self) -> State {
        lock(&self.replica).state().clone()
    }

    /// The author's peer id, waiting a few blocks for its first gossip.
    fn author_peer(&self) -> Option<PeerId> {
        let limit = 5 * self.block_time + Duration::from_secs(5);
        let mut heard = self.author_peer.subscribe();
        self.runtime.block_on(async {
            tokio::time::timeout(limit, heard.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|p| p.ok().and_then(|p| *p))
        })
    }

    /// Signs `call` with `key` and hands it to the author (this peer's pool, if it authors).
    fn submit_as(&self, key: &Keypair, call: Call) -> Result<(), CallError> {
        let name = call.name();
        let refused = |reason: String| CallError::Refused { call: name, reason };
        let unavailable = |why: String| CallError::Unavailable { call: name, why };
        {
            let replica = lock(&self.replica);
            if let Some(pool) = lock(&self.pool).as_mut() {
                let nonce = pool.next_nonce(&key.account());
                let ext = Extrinsic::sign(key, nonce, call, replica.genesis_hash());
                return pool.accept(&replica, ext).map_err(refused);
            }
        }
        let genesis_hash = self.genesis_hash();
        let author = self.author_peer().ok_or_else(|| {
            unavailable("no block from the ledger's author yet: is its peer in the run?".into())
        })?;
        let ask = |request: Request| async move {
            let answer = self
                .link
                .ask(author, &request.encode())
                .await
                .map_err(|e| unavailable(format!("asking the ledger's author: {e}")))?;
            Response::decode_from(&answer).map_err(unavailable)
        };
        // Training waits for this: an author that is gone must not hold a round up for long.
        let limit = 2 * self.block_time + Duration::from_secs(2);
        let exchange = async {
            let Response::Nonce(nonce) = ask(Request::Nonce(key.account())).await? else {
                return Err(unavailable("the author did not answer with a nonce".into()));
            };
            let ext = Extrinsic::sign(key, nonce, call, &genesis_hash);
            match ask(Request::Submit(ext)).await? {
                Response::Accepted => Ok(()),
                Response::Rejected(reason) => Err(refused(reason)),
                _ => Err(unavailable("the author gave an unexpected answer".into())),
            }
        };
        self.runtime
            .block_on(async { tokio::time::timeout(limit, exchange).await })
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "the ledger's author ({author}) did not answer within {limit:?}"
                )))
            })
    }

    /// Waits (a few blocks at most) until `done` holds on the replica's state.
    fn wait_for_state(
        &self,
        call: &'static str,
        what: &str,
        done: impl Fn(&State) -> bool,
    ) -> Result<(), CallError> {
        let limit = 5 * self.block_time + Duration::from_secs(10);
        if wait_until(self, limit, || done(lock(&self.replica).state())) {
            return Ok(());
        }
        Err(CallError::Unavailable {
            call,
            why: format!(
                "{what} did not reach the ledger within {limit:?}: is the author's peer in the run?"
            ),
        })
    }

    fn coldkey(&self, call: &'static str) -> Result<&Keypair, CallError> {
        self.wallet.coldkey_for(call)
    }
}

impl Ledger for RunLedger {
    fn hotkey(&self) -> AccountId {
        self.wallet.hotkey_account()
    }

    fn netuid(&self) -> u16 {
        lock(&self.replica).genesis().netuid
    }

    fn genesis_hash(&self) -> Hash {
        *lock(&self.replica).genesis_hash()
    }

    fn block_time(&self) -> Duration {
        self.block_time
    }

    fn register(&self) -> Result<u16, CallError> {
        let hotkey = self.hotkey();
        if let Some(uid) = self.state().uid(&hotkey) {
            return Ok(uid);
        }
        self.submit_as(self.coldkey("register")?, Call::Register { hotkey })?;
        self.wait_for_state("register", "the registration", |s| s.uid(&hotkey).is_some())?;
        tracing::info!(%hotkey, "registered on the run's ledger");
        Ok(self.state().uid(&hotkey).expect("waited for it"))
    }

    fn serve(&self, address: &str) -> Result<(), CallError> {
        let hotkey = self.hotkey();
        let call = Call::Serve {
            address: address.as_bytes().to_vec(),
        };
        self.submit_as(&self.wallet.hotkey, call)?;
        self.wait_for_state("serve", "this peer's address", |s| {
            s.uid(&hotkey)
                .is_some_and(|u| s.neurons[u as usize].address.as_deref() == Some(address))
        })
    }

    fn add_stake(&self, amount: u64) -> Result<(), CallError> {
        let hotkey = self.hotkey();
        self.submit_as(
            self.coldkey("add_stake")?,
            Call::AddStake { hotkey, amount },
        )
    }

    fn commit_contribution(&self, round: u64, hash: Hash) -> Result<(), CallError> {
        self.submit_as(
            &self.wallet.hotkey,
            Call::CommitContribution { round, hash },
        )
    }

    fn contributions(&self, round: u64) -> Vec<ContributionRecord> {
        lock(&self.replica)
            .state()
            .contributions
            .iter()
            .filter(|c| c.round == round)
            .map(|c| ContributionRecord {
                uid: c.uid,
                hash: c.hash,
                sequence: c.sequence,
            })
            .collect()
    }

    fn commit_weights(&self, uids: &[u16], values: &[u16]) -> Result<WeightsCommitment, CallError> {
        let reveal = WeightsReveal::salted(uids, values, 0);
        let hash = reveal.commitment(&self.hotkey(), self.netuid());
        self.submit_as(&self.wallet.hotkey, Call::CommitWeights { hash })?;
        Ok(WeightsCommitment::Hashed { hash, reveal })
    }

    fn committed_weights(&self) -> Option<Hash> {
        let replica = lock(&self.replica);
        let state = replica.state();
        let pending = state.commits.get(&state.uid(&self.hotkey())?)?;
        hex::decode(&pending.hash).ok()?.try_into().ok()
    }

    fn reveal_weights(&self, reveal: &WeightsReveal) -> Result<(), CallError> {
        let call = Call::RevealWeights {
            uids: reveal.uids.clone(),
            values: reveal.values.clone(),
            salt: reveal.salt.clone(),
            version_key: reveal.version_key,
        };
        self.submit_as(&self.wallet.hotkey, call)
    }

    fn metagraph(&self) -> Metagraph {
        Metagraph::of_state(lock(&self.replica).state())
    }

    fn height(&self) -> u64 {
        *self.height.borrow()
    }

    fn wait_for_block(&self, height: u64, limit: Duration) -> Option<u64> {
        let mut heights = self.height.subscribe();
        self.runtime.block_on(async {
            tokio::time::timeout(limit, heights.wait_for(|h| *h > height))
                .await
                .ok()
                .and_then(|h| h.ok().map(|h| *h))
        })
    }
}

fn incentive(e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Incentive(e.to_string())
}

/// Where a peer keeps its replica: `OUT/ledger.sntr`, or under the cache directory by genesis
/// and hotkey.
pub fn replica_path(out: Option<&Path>, genesis: &Genesis, hotkey: &AccountId) -> PathBuf {
    match out {
        Some(dir) => dir.join("ledger.sntr"),
        None => crate::data::cache_dir().join("ledgers").join(format!(
            "{}-{}.sntr",
            &hex::encode(genesis.hash())[..16],
            &hotkey.ss58()[..12]
        )),
    }
}
