//! The ledger inside `launch run`: it rides on the run's own connections (a group extension)
//! instead of a network of its own. The peer whose wallet hotkey is the genesis author
//! authors a block every `block_secs` and gossips it; every other peer imports (re-checks)
//! each block into its replica, catching up from the sender, and submits its extrinsics to
//! the author by request. A peer not in the genesis registers itself with its coldkey
//! (paying the burn); every peer serves its address, signed by its identity key for its
//! hotkey, which is how validators map the run's members to uids.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use parity_scale_codec::{Decode, Encode};
use sinter_comms::group::{Extension, Group};
use sinter_comms::net::PeerId;
use sinter_mechanism::ledger::Ledger;
use sinter_mechanism::ledger::block::Block;
use sinter_mechanism::ledger::extrinsic::{Call, Extrinsic};
use sinter_mechanism::ledger::keys::{AccountId, Keypair, hex};
use sinter_mechanism::ledger::state::{Genesis, State};
use sinter_trainer::run_validator::LedgerLink;
use tokio::sync::mpsc;

use crate::ConfigFileError;
use crate::incentives::read_key;
use crate::ledger_node::{Gossip, Pool, Request, Response, answer, author_block, follow, lock};

/// A run peer's ledger replica (and, on the author's peer, the block author).
pub struct RunLedger {
    ledger: Mutex<Ledger>,
    /// The next block's extrinsics and state: on the author only.
    pool: Mutex<Option<Pool>>,
    hotkey: Keypair,
    /// Where the author was last heard from.
    author_peer: Mutex<Option<PeerId>>,
    blocks: mpsc::UnboundedSender<(PeerId, Block)>,
    group: Group,
    runtime: tokio::runtime::Handle,
    block_secs: f64,
}

/// A wallet's keys for a run: the hotkey signs, the coldkey (if present) pays registration.
pub struct RunWallet {
    hotkey: Keypair,
    coldkey: Option<Keypair>,
}

impl RunWallet {
    /// The hotkey's account.
    pub fn hotkey(&self) -> AccountId {
        self.hotkey.account()
    }

    /// Reads `DIR/hotkey` and, if present, `DIR/coldkey`.
    pub fn read(dir: &Path) -> Result<Self> {
        let hotkey_path = dir.join("hotkey");
        if !hotkey_path.exists() {
            return Err(ConfigFileError(format!(
                "no hotkey in {}: create the wallet with `launch wallet new --name NAME` (or name the wallets directory with --wallets)",
                dir.display()
            ))
            .into());
        }
        let hotkey = read_key(&hotkey_path)?;
        let coldkey_path = dir.join("coldkey");
        let coldkey = coldkey_path
            .exists()
            .then(|| read_key(&coldkey_path))
            .transpose()?;
        Ok(Self { hotkey, coldkey })
    }
}

impl Extension for RunLedger {
    fn request(&self, _peer: PeerId, data: &[u8]) -> Result<Vec<u8>, String> {
        let ledger = lock(&self.ledger);
        Ok(answer(&ledger, &mut lock(&self.pool), data).encode())
    }

    fn gossip(&self, peer: PeerId, data: &[u8]) {
        match Gossip::decode(&mut &data[..]) {
            Ok(Gossip::Block {
                block,
                author_peer,
                binding,
            }) => {
                let author = {
                    let ledger = lock(&self.ledger);
                    Gossip::author_peer(
                        &author_peer,
                        &binding,
                        ledger.genesis(),
                        ledger.genesis_hash(),
                    )
                };
                match author {
                    Some(author) => *lock(&self.author_peer) = Some(author),
                    None => tracing::warn!(%peer, "a block whose author binding does not verify"),
                }
                let _ = self.blocks.send((peer, block));
            }
            Err(e) => tracing::warn!(%peer, error = %e, "malformed ledger gossip"),
        }
    }
}

impl RunLedger {
    /// Opens (or creates) the replica at `path` and starts authoring or following on
    /// `runtime`.
    pub fn start(
        path: &Path,
        genesis: Genesis,
        block_secs: f64,
        wallet: &RunWallet,
        group: Group,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>> {
        let author = wallet.hotkey.account() == genesis.author;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (ledger, warning) = Ledger::open_or_create(path, genesis)?;
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        let pool = author.then(|| Pool::after(&ledger));
        let (blocks, mut arrivals) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            ledger: Mutex::new(ledger),
            pool: Mutex::new(pool),
            hotkey: wallet.hotkey.clone(),
            author_peer: Mutex::new(author.then(|| group.me())),
            blocks,
            group: group.clone(),
            runtime: runtime.clone(),
            block_secs,
        });
        group.extend(this.clone());
        let weak = Arc::downgrade(&this);
        if author {
            let key = wallet.hotkey.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(block_secs));
                loop {
                    tick.tick().await;
                    let Some(this) = weak.upgrade() else { return };
                    let block = {
                        let mut ledger = lock(&this.ledger);
                        author_block(&mut ledger, &mut lock(&this.pool), &key)
                    };
                    match block {
                        Ok(block) => {
                            let genesis_hash = *lock(&this.ledger).genesis_hash();
                            let message =
                                Gossip::block(block, this.group.me(), &key, &genesis_hash);
                            if let Err(e) = this.group.publish_extension(&message).await {
                                tracing::debug!(error = %e, "no replica to gossip to yet");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "authoring a block failed"),
                    }
                }
            });
        } else {
            runtime.spawn(async move {
                while let Some((from, block)) = arrivals.recv().await {
                    let Some(this) = weak.upgrade() else { return };
                    let group = this.group.clone();
                    let ask = |request: Vec<u8>| async move {
                        Ok(group.ask_extension(from, &request).await?)
                    };
                    follow(&this.ledger, from, block, ask).await;
                }
            });
        }
        Ok(this)
    }

    /// Signs `call` with `key` and hands it to the author.
    fn submit_as(&self, key: &Keypair, call: Call) -> Result<(), String> {
        // Locks in the order every other path takes them: the ledger, then the pool.
        let ledger = lock(&self.ledger);
        if let Some(pool) = lock(&self.pool).as_mut() {
            let nonce = pool.state.nonces.get(&key.account()).copied().unwrap_or(0);
            let ext = Extrinsic::sign(key, nonce, call, ledger.genesis_hash());
            return pool.accept(&ledger, ext);
        }
        let genesis_hash = *ledger.genesis_hash();
        drop(ledger);
        let author = self
            .author_peer()
            .ok_or("no block from the ledger's author yet: is its peer in the run?")?;
        let ask = |request: Request| async move {
            let answer = self
                .group
                .ask_extension(author, &request.encode())
                .await
                .map_err(|e| format!("asking the ledger's author: {e}"))?;
            Response::decode(&mut &answer[..]).map_err(|e| format!("malformed answer: {e}"))
        };
        // Training waits for this: an author that is gone must not hold a round up for long.
        let limit = Duration::from_secs_f64(2.0 * self.block_secs + 2.0);
        let exchange = async {
            let Response::Nonce(nonce) = ask(Request::Nonce(key.account())).await? else {
                return Err("the author did not answer with a nonce".to_owned());
            };
            match ask(Request::Submit(Extrinsic::sign(
                key,
                nonce,
                call,
                &genesis_hash,
            )))
            .await?
            {
                Response::Accepted => Ok(()),
                Response::Rejected(reason) => Err(reason),
                _ => Err("the author gave an unexpected answer".into()),
            }
        };
        self.runtime
            .block_on(async { tokio::time::timeout(limit, exchange).await })
            .unwrap_or_else(|_| {
                Err(format!(
                    "the ledger's author ({author}) did not answer within {limit:?}"
                ))
            })
    }

    /// The author's peer id, waiting a few blocks for its first gossip.
    fn author_peer(&self) -> Option<PeerId> {
        let deadline = Instant::now() + Duration::from_secs_f64(5.0 * self.block_secs + 5.0);
        loop {
            if let Some(peer) = *lock(&self.author_peer) {
                return Some(peer);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `done` holds on the replica (a few blocks at most).
    fn wait_for(&self, what: &str, done: impl Fn(&State) -> bool) -> Result<()> {
        let limit = Duration::from_secs_f64(5.0 * self.block_secs + 10.0);
        let deadline = Instant::now() + limit;
        while !done(lock(&self.ledger).state()) {
            if Instant::now() >= deadline {
                bail!(
                    "{what} did not reach the ledger within {limit:?}: is the author's peer in the run?"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Registers this peer's hotkey if the genesis did not (its coldkey pays the burn) and
    /// serves `address`, waiting until both are in a block.
    pub fn join(&self, wallet: &RunWallet, address: &str) -> Result<()> {
        let hotkey = self.hotkey.account();
        if lock(&self.ledger).state().uid(&hotkey).is_none() {
            let Some(coldkey) = &wallet.coldkey else {
                return Err(ConfigFileError(format!(
                    "hotkey {hotkey} is not in the ledger's genesis and the wallet has no coldkey to register it with"
                ))
                .into());
            };
            self.submit_as(coldkey, Call::Register { hotkey })
                .map_err(|why| anyhow::anyhow!("registering {hotkey}: {why}"))?;
            self.wait_for("the registration", |s| s.uid(&hotkey).is_some())?;
            tracing::info!(%hotkey, "registered on the run's ledger");
        }
        self.submit_as(
            &self.hotkey,
            Call::Serve {
                address: address.as_bytes().to_vec(),
            },
        )
        .map_err(|why| anyhow::anyhow!("serving {address}: {why}"))?;
        self.wait_for("this peer's address", |s| {
            s.uid(&hotkey)
                .is_some_and(|u| s.neurons[u as usize].address.as_deref() == Some(address))
        })?;
        let state = lock(&self.ledger).state().clone();
        let uid = state.uid(&hotkey).expect("registered above");
        tracing::info!(
            uid,
            %hotkey,
            stake = state.neurons[uid as usize].stake,
            block = state.block,
            "on the run's ledger"
        );
        Ok(())
    }
}

impl LedgerLink for RunLedger {
    fn hotkey(&self) -> AccountId {
        self.hotkey.account()
    }

    fn submit(&self, call: Call) -> Result<(), String> {
        self.submit_as(&self.hotkey, call)
    }

    fn state(&self) -> State {
        lock(&self.ledger).state().clone()
    }

    fn block_secs(&self) -> f64 {
        self.block_secs
    }

    fn netuid(&self) -> u16 {
        lock(&self.ledger).genesis().netuid
    }

    fn genesis_hash(&self) -> [u8; 32] {
        *lock(&self.ledger).genesis_hash()
    }
}

/// Where a peer keeps its replica: `OUT/ledger.sntr`, or under the cache directory by genesis
/// and hotkey.
pub fn replica_path(out: Option<&Path>, genesis: &Genesis, hotkey: &AccountId) -> PathBuf {
    match out {
        Some(dir) => dir.join("ledger.sntr"),
        None => sinter_trainer::data::cache_dir()
            .join("ledgers")
            .join(format!(
                "{}-{}.sntr",
                &hex(&genesis.hash())[..16],
                &hotkey.ss58()[..12]
            )),
    }
}
