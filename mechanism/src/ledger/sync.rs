//! How replicas of the embedded ledger stay in step, without sockets (sans-IO): the author's
//! [`Pool`] of extrinsics for the next block, the [`Request`]s a replica or a signer sends and
//! the [`Response`]s they get ([`answer`]), the block [`Gossip`] the author sends, and what a
//! replica does with a gossiped block ([`follow`], [`import_missed`]). A driver owns the
//! network and the clock: it feeds these functions the bytes that arrived and sends what they
//! return. Every byte they take came from a peer and is checked here, once.
//!
//! Messages are SCALE. A network peer id appears only as opaque bytes, so that this crate
//! does not depend on the network layer.

use parity_scale_codec::{Decode, Encode};

use super::block::Block;
use super::extrinsic::{Extrinsic, Hash};
use super::keys::{AccountId, Keypair, verify};
use super::state::{Genesis, State};
use super::{Applied, LedgerError, MAX_BLOCK_BYTES, Replica};

/// Most blocks one catch-up answer carries.
pub const CATCH_UP_BLOCKS: usize = 64;

/// Largest request a replica or signer sends (one extrinsic, or a few bytes).
pub const MAX_REQUEST_BYTES: usize = MAX_BLOCK_BYTES;

/// Largest answer: a catch-up of [`CATCH_UP_BLOCKS`] blocks of typical size.
pub const MAX_RESPONSE_BYTES: usize = CATCH_UP_BLOCKS * MAX_BLOCK_BYTES / 8;

/// Room a block keeps for its header and seal.
const BLOCK_OVERHEAD: usize = 64 << 10;

/// A block, with the network id of the peer that authored it (where extrinsics go), bound to
/// the genesis author's key by its signature: a relaying peer cannot redirect submissions.
#[derive(Debug, Encode, Decode)]
pub enum Gossip {
    /// The author's newest block.
    Block {
        /// The block.
        block: Block,
        /// The author's network peer id (bytes).
        author_peer: Vec<u8>,
        /// The genesis author's signature over the peer id.
        binding: [u8; 64],
    },
}

/// What the author signs to say which peer id it authors from.
fn binding_message(genesis_hash: &Hash, author_peer: &[u8]) -> Vec<u8> {
    ("sinter-author-peer", genesis_hash, author_peer).encode()
}

impl Gossip {
    /// The gossip of `block`, authored from `author_peer` with `key` (the genesis author's).
    pub fn block(
        block: Block,
        author_peer: Vec<u8>,
        key: &Keypair,
        genesis_hash: &Hash,
    ) -> Vec<u8> {
        Gossip::Block {
            block,
            binding: key.sign(&binding_message(genesis_hash, &author_peer)),
            author_peer,
        }
        .encode()
    }

    /// Decodes gossip, refusing trailing bytes and anything over a block's size.
    pub fn decode_from(data: &[u8]) -> Result<Self, String> {
        decode_exact(data, MAX_BLOCK_BYTES + 1024, "ledger gossip")
    }

    /// The author's peer id (bytes), if its binding verifies against `genesis`'s author.
    pub fn verified_author_peer(&self, genesis: &Genesis, genesis_hash: &Hash) -> Option<&[u8]> {
        let Gossip::Block {
            author_peer,
            binding,
            ..
        } = self;
        verify(
            binding,
            &binding_message(genesis_hash, author_peer),
            &genesis.author,
        )
        .then_some(author_peer.as_slice())
    }
}

/// What a replica or a signer asks of a node.
#[derive(Debug, Encode, Decode)]
pub enum Request {
    /// Take this extrinsic into the next block (the author only).
    Submit(Extrinsic),
    /// The next nonce of this account, counting the pending block.
    Nonce(AccountId),
    /// Committed blocks from this number on (at most [`CATCH_UP_BLOCKS`]).
    BlocksFrom(u64),
}

/// A node's answer.
#[derive(Debug, Encode, Decode)]
pub enum Response {
    /// The extrinsic is in the next block.
    Accepted,
    /// Refused, with the reason.
    Rejected(String),
    /// The next nonce.
    Nonce(u64),
    /// Committed blocks, in order.
    Blocks(Vec<Block>),
}

impl Request {
    /// Decodes a request from a peer (size-checked, no trailing bytes).
    pub fn decode_from(data: &[u8]) -> Result<Self, String> {
        decode_exact(data, MAX_REQUEST_BYTES, "ledger request")
    }
}

impl Response {
    /// Decodes an answer from a peer (size-checked, no trailing bytes).
    pub fn decode_from(data: &[u8]) -> Result<Self, String> {
        decode_exact(data, MAX_RESPONSE_BYTES, "ledger answer")
    }
}

fn decode_exact<T: Decode>(data: &[u8], limit: usize, what: &str) -> Result<T, String> {
    if data.len() > limit {
        return Err(format!("{what} of {} bytes, over {limit}", data.len()));
    }
    let mut rest = data;
    let value = T::decode(&mut rest).map_err(|e| format!("malformed {what}: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("malformed {what}: {} trailing bytes", rest.len()));
    }
    Ok(value)
}

/// The author's view of the next block: the committed state plus the extrinsics accepted
/// since, so that a signer's second extrinsic in one block gets the right nonce.
pub struct Pool {
    pending: Vec<Extrinsic>,
    state: State,
    /// The pending extrinsics' encoded size.
    bytes: usize,
}

impl Pool {
    /// An empty pool for the block after `replica`'s head.
    pub fn after(replica: &Replica) -> Self {
        let mut state = replica.state().clone();
        state.block += 1;
        Self {
            pending: Vec::new(),
            state,
            bytes: 0,
        }
    }

    /// The extrinsics accepted for the next block.
    pub fn pending(&self) -> &[Extrinsic] {
        &self.pending
    }

    /// The next nonce of `account`, counting the accepted extrinsics.
    pub fn next_nonce(&self, account: &AccountId) -> u64 {
        self.state.nonces.get(account).copied().unwrap_or(0)
    }

    /// Takes `ext` into the next block if it applies and the block has room; else the reason
    /// (and the pool is as before).
    pub fn accept(&mut self, replica: &Replica, ext: Extrinsic) -> Result<(), String> {
        let name = ext.call.name();
        let size = ext.encoded_size();
        if self.bytes + size > MAX_BLOCK_BYTES - BLOCK_OVERHEAD {
            return Err(format!(
                "{name}: the next block is full; submit it again after that block"
            ));
        }
        self.state
            .apply(&ext, replica.genesis(), replica.genesis_hash())
            .map_err(|reason| format!("{name}: {reason}"))?;
        tracing::debug!(call = name, signer = %ext.signer, "extrinsic accepted");
        self.bytes += size;
        self.pending.push(ext);
        Ok(())
    }
}

/// A node's answer to `data`, a request from a peer: the author (`pool` is `Some`) takes
/// submissions; every node answers nonces and catch-ups.
pub fn answer(replica: &Replica, pool: Option<&mut Pool>, data: &[u8]) -> Response {
    match Request::decode_from(data) {
        Ok(Request::Submit(ext)) => match pool {
            Some(pool) => match pool.accept(replica, ext) {
                Ok(()) => Response::Accepted,
                Err(reason) => Response::Rejected(reason),
            },
            None => Response::Rejected(
                "this node is a replica: submit to the author named in the genesis".into(),
            ),
        },
        Ok(Request::Nonce(account)) => Response::Nonce(match pool {
            Some(pool) => pool.next_nonce(&account),
            None => replica.next_nonce(&account),
        }),
        Ok(Request::BlocksFrom(from)) => match replica.blocks_from(from, CATCH_UP_BLOCKS) {
            Ok(blocks) => Response::Blocks(blocks),
            Err(e) => Response::Rejected(e.to_string()),
        },
        Err(why) => Response::Rejected(why),
    }
}

/// What a replica does with a gossiped block.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// It has the block already.
    Stale,
    /// It is the next block: import it.
    Import,
    /// Blocks are missing before it: ask the sender for them first, then import it.
    CatchUpFirst(u64),
}

/// What to do with gossiped block number `number`.
pub fn follow(replica: &Replica, number: u64) -> Follow {
    let height = replica.state().block;
    if number <= height {
        Follow::Stale
    } else if number == height + 1 {
        Follow::Import
    } else {
        Follow::CatchUpFirst(height + 1)
    }
}

/// Imports the blocks in a catch-up answer (bytes from the peer asked) that follow this
/// replica's head, in order; returns how many it imported, or why it stopped.
pub fn import_missed(replica: &mut Replica, answer: &[u8]) -> Result<usize, String> {
    let blocks = match Response::decode_from(answer)? {
        Response::Blocks(blocks) => blocks,
        Response::Rejected(why) => return Err(format!("catching up refused: {why}")),
        _ => return Err("catching up: an unexpected answer".into()),
    };
    let mut imported = 0;
    for block in blocks {
        if block.header.number != replica.state().block + 1 {
            continue;
        }
        replica
            .import(block)
            .map_err(|e| format!("refused a block while catching up: {e}"))?;
        imported += 1;
    }
    Ok(imported)
}

/// Imports `block` if it is the replica's next (a gossiped block after any catch-up).
pub fn import_next(replica: &mut Replica, block: Block) -> Result<Option<Applied>, LedgerError> {
    if block.header.number != replica.state().block + 1 {
        return Ok(None);
    }
    replica.import(block).map(Some)
}

/// Authors the next block from the pool (starting the next pool), logging what was left out.
pub fn author_block(
    replica: &mut Replica,
    pool: &mut Option<Pool>,
    key: &Keypair,
    timestamp_ms: u64,
) -> Result<Block, LedgerError> {
    let pending = pool.take().map(|p| p.pending).unwrap_or_default();
    let applied = replica.author(key, pending, timestamp_ms);
    *pool = Some(Pool::after(replica));
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

/// Milliseconds since the Unix epoch (a block's timestamp).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::extrinsic::Call;
    use crate::ledger::state::GenesisNeuron;

    struct Net {
        author: Keypair,
        miner: Keypair,
        dir: tempfile::TempDir,
        genesis: Genesis,
    }

    fn net() -> Net {
        let author = Keypair::from_secret("//Author").unwrap();
        let miner = Keypair::from_secret("//Miner").unwrap();
        let genesis: Genesis = serde_json::from_value(serde_json::json!({
            "author": author.account(),
            "neurons": [GenesisNeuron { hotkey: miner.account(), coldkey: author.account(), stake: 0 }],
        }))
        .unwrap();
        Net {
            author,
            miner,
            dir: tempfile::tempdir().unwrap(),
            genesis,
        }
    }

    impl Net {
        fn replica(&self, name: &str) -> Replica {
            Replica::create(&self.dir.path().join(name), self.genesis.clone()).unwrap()
        }

        fn serve(&self, replica: &Replica, nonce: u64, address: &str) -> Extrinsic {
            Extrinsic::sign(
                &self.miner,
                nonce,
                Call::Serve {
                    address: address.as_bytes().to_vec(),
                },
                replica.genesis_hash(),
            )
        }
    }

    #[test]
    fn a_full_next_block_refuses_more_extrinsics_with_a_reason_and_keeps_its_state() {
        let net = net();
        let replica = net.replica("ledger");
        let mut pool = Pool::after(&replica);
        let address = format!("/dns/{}.example/tcp/4001", "a".repeat(200));
        let mut nonce = 0;
        let refusal = loop {
            match pool.accept(&replica, net.serve(&replica, nonce, &address)) {
                Ok(()) => nonce += 1,
                Err(reason) => break reason,
            }
        };
        assert!(refusal.contains("the next block is full"), "{refusal}");
        assert_eq!(pool.pending().len() as u64, nonce);
        // The refused extrinsic left no trace: its nonce is still the next one.
        assert_eq!(pool.next_nonce(&net.miner.account()), nonce);
        let mut replica = replica;
        let block = author_block(&mut replica, &mut Some(pool), &net.author, 1).unwrap();
        assert_eq!(block.extrinsics.len() as u64, nonce);
    }

    #[test]
    fn hostile_requests_get_a_reason_and_change_nothing() {
        let net = net();
        let replica = net.replica("ledger");
        let mut pool = Pool::after(&replica);
        let rejected = |r: Response| match r {
            Response::Rejected(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        // Garbage, a request with trailing bytes, an oversized one.
        assert!(rejected(answer(&replica, Some(&mut pool), &[0xff, 1, 2])).contains("malformed"));
        let mut trailing = Request::Nonce(net.miner.account()).encode();
        trailing.push(0);
        assert!(rejected(answer(&replica, Some(&mut pool), &trailing)).contains("trailing"));
        let huge = vec![0u8; MAX_REQUEST_BYTES + 1];
        assert!(rejected(answer(&replica, Some(&mut pool), &huge)).contains("over"));
        // A submission to a replica, a forged one, a replay.
        let ext = net.serve(&replica, 0, "/ip4/127.0.0.1/tcp/1");
        let submit = Request::Submit(ext.clone()).encode();
        assert!(rejected(answer(&replica, None, &submit)).contains("replica"));
        let mut forged = ext.clone();
        forged.nonce = 1;
        let forged = Request::Submit(forged).encode();
        assert!(rejected(answer(&replica, Some(&mut pool), &forged)).contains("signature"));
        assert!(matches!(
            answer(&replica, Some(&mut pool), &submit),
            Response::Accepted
        ));
        assert!(rejected(answer(&replica, Some(&mut pool), &submit)).contains("nonce"));
        assert_eq!(pool.pending().len(), 1);
        // Catch-up from beyond the head, or from u64::MAX, is an empty answer, not a panic.
        for from in [5, u64::MAX] {
            let ask = Request::BlocksFrom(from).encode();
            assert!(matches!(
                answer(&replica, None, &ask),
                Response::Blocks(b) if b.is_empty()
            ));
        }
    }

    #[test]
    fn a_replica_that_missed_blocks_catches_up_from_the_sender_and_refuses_forgeries() {
        let net = net();
        let mut author = net.replica("author");
        let mut replica = net.replica("replica");
        let mut pool = Some(Pool::after(&author));
        let mut gossip = Vec::new();
        for i in 0..5 {
            let ext = net.serve(&author, i, &format!("/ip4/127.0.0.1/tcp/{i}"));
            pool.as_mut().unwrap().accept(&author, ext).unwrap();
            let block = author_block(&mut author, &mut pool, &net.author, i + 1).unwrap();
            gossip.push(Gossip::block(
                block,
                b"author-peer".to_vec(),
                &net.author,
                author.genesis_hash(),
            ));
        }
        // Only block 5's gossip reaches the replica: it asks for 1..=4 first.
        let message = Gossip::decode_from(&gossip[4]).unwrap();
        assert_eq!(
            message.verified_author_peer(replica.genesis(), replica.genesis_hash()),
            Some(&b"author-peer"[..])
        );
        let Gossip::Block { block, .. } = message;
        let from = match follow(&replica, block.header.number) {
            Follow::CatchUpFirst(from) => from,
            other => panic!("expected a catch-up, got {other:?}"),
        };
        // A sender answering garbage or a forged block changes nothing.
        assert!(import_missed(&mut replica, b"\x03garbage").is_err());
        let mut forged = author.blocks_from(1, 1).unwrap();
        forged[0].header.timestamp_ms += 1;
        let forged = Response::Blocks(forged).encode();
        assert!(import_missed(&mut replica, &forged).is_err());
        assert_eq!(replica.state().block, 0);
        let catch_up = answer(&author, None, &Request::BlocksFrom(from).encode()).encode();
        // The answer runs to the sender's head, the gossiped block included.
        assert_eq!(import_missed(&mut replica, &catch_up), Ok(5));
        assert_eq!(follow(&replica, block.header.number), Follow::Stale);
        assert!(import_next(&mut replica, block).unwrap().is_none());
        assert_eq!(replica.state(), author.state());
        // The next gossiped block is imported directly.
        pool.as_mut()
            .unwrap()
            .accept(&author, net.serve(&author, 5, "/ip4/127.0.0.1/tcp/5"))
            .unwrap();
        let sixth = author_block(&mut author, &mut pool, &net.author, 6).unwrap();
        assert_eq!(follow(&replica, sixth.header.number), Follow::Import);
        assert!(import_next(&mut replica, sixth).unwrap().is_some());
        assert_eq!(replica.state(), author.state());
        // A binding not signed by the genesis author, or for another peer, does not verify.
        let Gossip::Block { block, .. } = Gossip::decode_from(&gossip[0]).unwrap();
        let stranger = Keypair::from_secret("//Stranger").unwrap();
        let relayed = Gossip::decode_from(&Gossip::block(
            block,
            b"relay".to_vec(),
            &stranger,
            author.genesis_hash(),
        ))
        .unwrap();
        assert_eq!(
            relayed.verified_author_peer(replica.genesis(), replica.genesis_hash()),
            None
        );
    }
}
