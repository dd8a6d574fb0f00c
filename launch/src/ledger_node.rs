//! `launch ledger node` and `launch ledger submit`: the embedded ledger over libp2p. The node
//! named by the genesis as author collects signed extrinsics (requests), authors a block every
//! `--block-secs` and gossips it; every other node keeps a replica, importing (and so checking)
//! each gossiped block, and asks the sender for the blocks it missed. Messages are SCALE.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use parity_scale_codec::{Decode, Encode};
use sinter_comms::net::{self, NetConfig, NetEvent, PeerId};
use sinter_mechanism::ledger::block::Block;
use sinter_mechanism::ledger::extrinsic::{Call, Extrinsic};
use sinter_mechanism::ledger::keys::{AccountId, Keypair, hex};
use sinter_mechanism::ledger::state::{Genesis, State};
use sinter_mechanism::ledger::{Ledger, MAX_BLOCK_BYTES};

use crate::ConfigFileError;
use crate::cli::{LedgerNodeArgs, SubmitArgs, SubmitCall};
use crate::incentives::read_key;
use crate::peer::{Addresses, runtime};

/// Most blocks one catch-up answer carries.
const CATCH_UP_BLOCKS: usize = 64;

/// A block, with the libp2p id of the peer that authored it (where extrinsics go), bound to
/// the genesis author's key by its signature: a relaying peer cannot redirect submissions.
#[derive(Encode, Decode)]
pub(crate) enum Gossip {
    Block {
        block: Block,
        author_peer: Vec<u8>,
        binding: [u8; 64],
    },
}

/// What the author signs to say which peer id it authors from.
fn binding_message(genesis_hash: &[u8; 32], author_peer: &[u8]) -> Vec<u8> {
    ("sinter-author-peer", genesis_hash, author_peer).encode()
}

impl Gossip {
    pub(crate) fn block(
        block: Block,
        author_peer: PeerId,
        key: &Keypair,
        genesis_hash: &[u8; 32],
    ) -> Vec<u8> {
        let author_peer = author_peer.to_bytes();
        Gossip::Block {
            block,
            binding: key.sign(&binding_message(genesis_hash, &author_peer)),
            author_peer,
        }
        .encode()
    }

    /// The author's peer id, if its binding verifies against `genesis`'s author.
    pub(crate) fn author_peer(
        author_peer: &[u8],
        binding: &[u8; 64],
        genesis: &Genesis,
        genesis_hash: &[u8; 32],
    ) -> Option<PeerId> {
        let message = binding_message(genesis_hash, author_peer);
        sinter_mechanism::ledger::keys::verify(binding, &message, &genesis.author)
            .then(|| PeerId::from_bytes(author_peer).ok())
            .flatten()
    }
}

#[derive(Encode, Decode)]
pub(crate) enum Request {
    Submit(Extrinsic),
    Nonce(AccountId),
    BlocksFrom(u64),
}

#[derive(Encode, Decode)]
pub(crate) enum Response {
    Accepted,
    Rejected(String),
    Nonce(u64),
    Blocks(Vec<Block>),
}

fn read_genesis(path: &Path) -> Result<Genesis> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| ConfigFileError(format!("{}: {e}", path.display())).into())
}

pub(crate) fn topic(genesis: &Genesis) -> String {
    format!("sinter/ledger/{}", &hex(&genesis.hash())[..16])
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The author's view of the next block: the committed state plus the extrinsics accepted
/// since, so that a signer's second extrinsic in one block gets the right nonce.
pub(crate) struct Pool {
    pub(crate) pending: Vec<Extrinsic>,
    pub(crate) state: State,
    /// The pending extrinsics' encoded size.
    bytes: usize,
}

/// Room a block keeps for its header and seal.
const BLOCK_OVERHEAD: usize = 64 << 10;

impl Pool {
    pub(crate) fn after(ledger: &Ledger) -> Self {
        let mut state = ledger.state().clone();
        state.block += 1;
        Self {
            pending: Vec::new(),
            state,
            bytes: 0,
        }
    }

    /// Takes `ext` into the next block if it applies and the block has room; else the reason.
    pub(crate) fn accept(&mut self, ledger: &Ledger, ext: Extrinsic) -> Result<(), String> {
        let name = ext.call.name();
        let size = ext.encoded_size();
        if self.bytes + size > MAX_BLOCK_BYTES - BLOCK_OVERHEAD {
            return Err(format!(
                "{name}: the next block is full; submit it again after that block"
            ));
        }
        self.state
            .apply(&ext, ledger.genesis(), ledger.genesis_hash())
            .map_err(|reason| format!("{name}: {reason}"))?;
        tracing::debug!(call = name, signer = %ext.signer, "extrinsic accepted");
        self.bytes += size;
        self.pending.push(ext);
        Ok(())
    }
}

pub(crate) fn answer(ledger: &Ledger, pool: &mut Option<Pool>, data: &[u8]) -> Response {
    match Request::decode(&mut &data[..]) {
        Ok(Request::Submit(ext)) => match pool {
            Some(pool) => match pool.accept(ledger, ext) {
                Ok(()) => Response::Accepted,
                Err(reason) => Response::Rejected(reason),
            },
            None => Response::Rejected(
                "this node is a replica: submit to the author named in the genesis".into(),
            ),
        },
        Ok(Request::Nonce(account)) => Response::Nonce(match pool {
            Some(pool) => pool.state.nonces.get(&account).copied().unwrap_or(0),
            None => ledger.next_nonce(&account),
        }),
        Ok(Request::BlocksFrom(from)) => match ledger.blocks_from(from, CATCH_UP_BLOCKS) {
            Ok(blocks) => Response::Blocks(blocks),
            Err(e) => Response::Rejected(e.to_string()),
        },
        Err(e) => Response::Rejected(format!("malformed request: {e}")),
    }
}

/// Imports a gossiped block, first fetching any blocks this replica missed from its sender
/// (`ask` sends it a request and returns the answer).
pub(crate) async fn follow<F, Fut>(ledger: &Mutex<Ledger>, from: PeerId, block: Block, ask: F)
where
    F: FnOnce(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let height = lock(ledger).state().block;
    let number = block.header.number;
    if number <= height {
        return;
    }
    if number > height + 1 {
        match ask(Request::BlocksFrom(height + 1).encode())
            .await
            .map(|r| Response::decode(&mut &r[..]))
        {
            Ok(Ok(Response::Blocks(blocks))) => {
                let mut ledger = lock(ledger);
                for missed in blocks {
                    if missed.header.number == ledger.state().block + 1
                        && let Err(e) = ledger.import(missed)
                    {
                        tracing::warn!(error = %e, %from, "refused a block while catching up");
                        return;
                    }
                }
            }
            Ok(Ok(Response::Rejected(why))) => {
                tracing::warn!(%from, %why, "catching up refused");
                return;
            }
            Ok(Ok(_)) | Ok(Err(_)) => {
                tracing::warn!(%from, "catching up failed: a malformed or unexpected answer");
                return;
            }
            Err(e) => {
                tracing::warn!(%from, error = %e, "catching up failed");
                return;
            }
        }
    }
    let mut ledger = lock(ledger);
    if block.header.number == ledger.state().block + 1 {
        match ledger.import(block) {
            Ok(applied) => tracing::debug!(
                block = number,
                extrinsics = applied.block.extrinsics.len(),
                epoch = applied.epoch.is_some(),
                "imported"
            ),
            Err(e) => tracing::warn!(error = %e, %from, "refused a gossiped block"),
        }
    }
}

/// Locks a mutex, recovering it if a thread panicked while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Authors the next block from the pool (starting the next pool), logging what was left out.
pub(crate) fn author_block(
    ledger: &mut Ledger,
    pool: &mut Option<Pool>,
    key: &Keypair,
) -> Result<Block> {
    let pending = pool.take().map(|p| p.pending).unwrap_or_default();
    let applied = ledger.author(key, pending, now_ms());
    *pool = Some(Pool::after(ledger));
    let applied = applied?;
    for refused in &applied.refused {
        tracing::warn!(call = refused.extrinsic.call.name(), reason = %refused.reason, "extrinsic left out");
    }
    tracing::debug!(
        block = applied.block.header.number,
        extrinsics = applied.block.extrinsics.len(),
        epoch = applied.epoch.is_some(),
        "authored"
    );
    Ok(applied.block)
}

/// `launch ledger node`.
pub fn node(args: LedgerNodeArgs) -> Result<()> {
    let genesis = read_genesis(&args.genesis)?;
    let topic = topic(&genesis);
    let author = args.author_key.as_deref().map(read_key).transpose()?;
    if let Some(key) = &author
        && key.account() != genesis.author
    {
        return Err(ConfigFileError(format!(
            "{} is not the genesis author {}: only the author's key authors blocks",
            key.account(),
            genesis.author
        ))
        .into());
    }
    let (ledger, warning) = Ledger::open_or_create(&args.ledger, genesis)?;
    let ledger = Mutex::new(ledger);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let addresses = Addresses::parse(&args.listen, &[], &args.bootstrap)?;
    let block_every = Duration::from_secs_f64(args.block_secs.max(0.1));
    runtime()?.block_on(async move {
        let mut config = NetConfig::new(net::Keypair::generate_ed25519(), topic);
        config.listen = addresses.listen.clone();
        config.bootstrap = addresses.bootstrap.clone();
        config.max_request_bytes = MAX_BLOCK_BYTES;
        config.max_response_bytes = CATCH_UP_BLOCKS * MAX_BLOCK_BYTES / 8;
        let (client, mut events, event_loop) = net::start(config).await?;
        tokio::spawn(event_loop.run());
        println!("peer id {}", client.peer_id());
        for addr in client.listen_addrs().await? {
            println!("listening on {addr}");
        }
        for addr in addresses.bootstrap {
            client
                .dial(addr.clone())
                .await
                .with_context(|| format!("connecting to {addr}"))?;
        }
        let mut pool = author.as_ref().map(|_| Pool::after(&lock(&ledger)));
        let mut tick = tokio::time::interval(block_every);
        loop {
            tokio::select! {
                _ = tick.tick(), if author.is_some() => {
                    let key = author.as_ref().expect("authoring needs the key");
                    let block = author_block(&mut lock(&ledger), &mut pool, key)?;
                    tracing::info!(block = block.header.number, extrinsics = block.extrinsics.len(), "authored");
                    let genesis_hash = *lock(&ledger).genesis_hash();
                    let message = Gossip::block(block, client.peer_id(), key, &genesis_hash);
                    if let Err(e) = client.publish(message).await {
                        tracing::debug!(error = %e, "no replica to gossip to yet");
                    }
                }
                event = events.recv() => match event {
                    None => break,
                    Some(NetEvent::Gossip { peer, data }) if author.is_none() => {
                        match Gossip::decode(&mut &data[..]) {
                            Ok(Gossip::Block { block, .. }) => {
                                let ask = |request| {
                                    let client = client.clone();
                                    async move { Ok(client.request(peer, request).await?) }
                                };
                                follow(&ledger, peer, block, ask).await;
                            }
                            Err(e) => tracing::warn!(%peer, error = %e, "malformed gossip"),
                        }
                    }
                    Some(NetEvent::Request { data, reply, .. }) => {
                        let response = answer(&lock(&ledger), &mut pool, &data);
                        let _ = client.respond(reply, response.encode()).await;
                    }
                    Some(_) => {}
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        println!("stopped at block {}", lock(&ledger).state().block);
        anyhow::Ok(())
    })
}

/// `launch ledger submit`.
pub fn submit(args: SubmitArgs) -> Result<()> {
    let genesis = read_genesis(&args.genesis)?;
    let key = read_key(&args.key)?;
    let call = match args.call {
        SubmitCall::Register { hotkey } => Call::Register {
            hotkey: AccountId::parse(&hotkey)?,
        },
        SubmitCall::AddStake { hotkey, amount } => Call::AddStake {
            hotkey: AccountId::parse(&hotkey)?,
            amount,
        },
        SubmitCall::Serve { address } => Call::Serve {
            address: address.into_bytes(),
        },
    };
    let node = crate::peer::multiaddr(&args.node, "--node")?;
    let genesis_hash = genesis.hash();
    runtime()?.block_on(async move {
        let config = NetConfig::new(
            net::Keypair::generate_ed25519(),
            "sinter/ledger-client".into(),
        );
        let (client, _events, event_loop) = net::start(config).await?;
        tokio::spawn(event_loop.run());
        let peer = client
            .dial(node.clone())
            .await
            .with_context(|| format!("connecting to {node}"))?;
        let ask = |request: Request| {
            let client = client.clone();
            async move {
                let bytes = client.request(peer, request.encode()).await?;
                Response::decode(&mut &bytes[..]).context("malformed answer from the node")
            }
        };
        let Response::Nonce(nonce) = ask(Request::Nonce(key.account())).await? else {
            bail!("the node did not answer with a nonce");
        };
        let name = call.name();
        let ext = Extrinsic::sign(&key, nonce, call, &genesis_hash);
        match ask(Request::Submit(ext)).await? {
            Response::Accepted => {
                println!("{name} accepted (nonce {nonce}): in the next block");
                Ok(())
            }
            Response::Rejected(reason) => bail!("refused: {reason}"),
            _ => bail!("the node gave an unexpected answer"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinter_mechanism::ledger::state::GenesisNeuron;

    #[test]
    fn a_full_next_block_refuses_more_extrinsics_with_a_reason_and_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let author = Keypair::from_secret("//Author").unwrap();
        let miner = Keypair::from_secret("//Miner").unwrap();
        let genesis: Genesis = serde_json::from_value(serde_json::json!({
            "author": author.account(),
            "neurons": [GenesisNeuron { hotkey: miner.account(), coldkey: author.account(), stake: 0 }],
        }))
        .unwrap();
        let ledger = Ledger::create(&dir.path().join("ledger"), genesis).unwrap();
        let mut pool = Pool::after(&ledger);
        let serve = |nonce| {
            let address = format!("/dns/{}.example/tcp/4001", "a".repeat(200)).into_bytes();
            Extrinsic::sign(
                &miner,
                nonce,
                Call::Serve { address },
                ledger.genesis_hash(),
            )
        };
        let mut nonce = 0;
        let refusal = loop {
            match pool.accept(&ledger, serve(nonce)) {
                Ok(()) => nonce += 1,
                Err(reason) => break reason,
            }
        };
        assert!(refusal.contains("the next block is full"), "{refusal}");
        assert_eq!(pool.pending.len() as u64, nonce);
        // The refused extrinsic left no trace: its nonce is still the next one.
        assert_eq!(pool.state.nonces[&miner.account()], nonce);
        let mut ledger = ledger;
        let block = author_block(&mut ledger, &mut Some(pool), &author).unwrap();
        assert_eq!(block.extrinsics.len() as u64, nonce);
    }
}
