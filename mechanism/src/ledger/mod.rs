//! The embedded ledger: sinter's default chain. An append-only, hash-chained file of blocks
//! of sr25519-signed extrinsics, authored by the one account the genesis names, replayed and
//! checked by every replica.
//!
//! | module | what |
//! |---|---|
//! | [`keys`] | sr25519 accounts and signatures (`sp-core`), SS58 |
//! | [`extrinsic`] | calls, signed extrinsics, the weights commitment |
//! | [`block`] | headers and sealed blocks |
//! | [`state`] | genesis, state, the transition function and epochs |
//!
//! File format: the magic `SNTRLDG1`, then records of a little-endian `u32` length and its
//! bytes: the genesis (JSON), then one SCALE-encoded [`block::Block`] per record. Each block
//! is appended and `fsync`ed before it counts as committed. On open, every block is checked
//! (number, parent hash, author and signature, extrinsics root, each extrinsic re-applied,
//! state root); the first that fails is named. A record cut short at the end of the file is an
//! unfinished write (a crash while appending): it was never committed, so opening for writing
//! drops it, saying so, and [`verify`] reports it.

pub mod block;
pub mod extrinsic;
pub mod keys;
pub mod state;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parity_scale_codec::{Decode, Encode};
use serde::Serialize;

use crate::consensus::Epoch;
use block::{Block, Header, extrinsics_root};
use extrinsic::{Extrinsic, Hash};
use keys::{AccountId, Keypair, hex};
use state::{Genesis, Rejection, State};

const MAGIC: &[u8; 8] = b"SNTRLDG1";
/// Largest block record the ledger reads or writes.
pub const MAX_BLOCK_BYTES: usize = 8 << 20;

/// What can go wrong with a ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a ledger, or its genesis is unreadable.
    #[error("{path}: {why}")]
    NotALedger {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A block failed a check.
    #[error("block {number}: {why}")]
    BadBlock {
        /// Its number.
        number: u64,
        /// What is wrong.
        why: String,
    },
    /// A key or account could not be read.
    #[error("{0}")]
    Key(String),
    /// A genesis or call that cannot work.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An extrinsic the author left out, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The extrinsic.
    pub extrinsic: Extrinsic,
    /// Why.
    pub reason: Rejection,
}

/// What authoring or importing a block did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The block.
    pub block: Block,
    /// The extrinsics refused (authoring only).
    pub refused: Vec<Refused>,
    /// The epoch this block ended, if any.
    pub epoch: Option<Epoch>,
}

/// A ledger replica on disk.
pub struct Ledger {
    path: PathBuf,
    file: File,
    genesis: Genesis,
    genesis_hash: Hash,
    head: Hash,
    state: State,
    /// Where each committed block's record starts (block `n` at `offsets[n - 1]`), and where
    /// the file ends: a replica's catch-up reads just the blocks it asks for.
    offsets: Vec<u64>,
    end: u64,
}

/// The parsed records of a ledger file.
struct Records {
    genesis: Genesis,
    blocks: Vec<(u64, Result<Block, String>)>,
    /// Where each block's record starts.
    offsets: Vec<u64>,
    /// Where the last whole record ends.
    end: u64,
    /// Offset and block number of a record cut short at the end.
    torn: Option<(u64, u64)>,
}

fn read_records(path: &Path) -> Result<Records, LedgerError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    let not = |why: String| LedgerError::NotALedger {
        path: path.to_owned(),
        why,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(not("not a sinter ledger (no SNTRLDG1 header)".into()));
    }
    let mut offset = MAGIC.len();
    let mut records = Vec::new();
    let mut offsets = Vec::new();
    let mut torn = None;
    while offset < bytes.len() {
        let number = records.len() as u64;
        let Some(len) = bytes
            .get(offset..offset + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        else {
            torn = Some((offset as u64, number));
            break;
        };
        if len > MAX_BLOCK_BYTES {
            records.push(Err(format!(
                "record length {len} is over {MAX_BLOCK_BYTES} bytes"
            )));
            break;
        }
        let Some(body) = bytes.get(offset + 4..offset + 4 + len) else {
            torn = Some((offset as u64, number));
            break;
        };
        records.push(Ok(body));
        offsets.push(offset as u64);
        offset += 4 + len;
    }
    let end = offset.min(bytes.len()) as u64;
    // The first record is the genesis.
    let offsets = offsets.into_iter().skip(1).collect();
    let mut records = records.into_iter();
    let genesis = match records.next() {
        Some(Ok(body)) => serde_json::from_slice::<Genesis>(body)
            .map_err(|e| not(format!("unreadable genesis: {e}")))?,
        Some(Err(why)) => return Err(not(format!("genesis record: {why}"))),
        None => return Err(not("no genesis record".into())),
    };
    let blocks = records
        .enumerate()
        .map(|(i, r)| {
            let number = i as u64 + 1;
            let block = r.and_then(|body| {
                Block::decode(&mut &body[..])
                    .map_err(|e| format!("undecodable ({e})"))
                    .and_then(|b| {
                        if b.encoded_size() == body.len() {
                            Ok(b)
                        } else {
                            Err("trailing bytes after the block".into())
                        }
                    })
            });
            (number, block)
        })
        .collect();
    Ok(Records {
        genesis,
        blocks,
        offsets,
        end,
        torn,
    })
}

/// Checks `block` on top of `state` (at `head`) and returns the state after it.
fn check_block(
    genesis: &Genesis,
    genesis_hash: &Hash,
    head: &Hash,
    state: &State,
    block: &Block,
) -> Result<(State, Option<Epoch>), String> {
    let header = &block.header;
    if header.number != state.block + 1 {
        return Err(format!(
            "number {} follows block {}",
            header.number, state.block
        ));
    }
    if header.parent != *head {
        return Err(format!(
            "parent hash {} is not the previous block's {}",
            hex(&header.parent),
            hex(head)
        ));
    }
    if header.author != genesis.author {
        return Err(format!(
            "authored by {}, not the ledger's author {}",
            header.author, genesis.author
        ));
    }
    if !block.signature_is_valid() {
        return Err("the author's signature does not match the header".into());
    }
    if extrinsics_root(&block.extrinsics) != header.extrinsics_root {
        return Err("extrinsics do not match the header's extrinsics root".into());
    }
    let mut next = state.clone();
    next.block = header.number;
    for (i, ext) in block.extrinsics.iter().enumerate() {
        next.apply(ext, genesis, genesis_hash).map_err(|reason| {
            format!(
                "extrinsic {i} ({} from {}) is invalid: {reason}",
                ext.call.name(),
                ext.signer
            )
        })?;
    }
    let epoch = next.end_block(genesis);
    if next.root() != header.state_root {
        return Err(format!(
            "state root differs from the replay{}",
            if epoch.is_some() {
                " (this block ends an epoch: its consensus or emission was not what the recorded weights give)"
            } else {
                ""
            }
        ));
    }
    Ok((next, epoch))
}

fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// With `SINTER_FAULT_LEDGER=torn@N`, the writer of block N writes half its record, syncs it,
/// and stops there: the kill test's crash in the middle of a block write.
fn fault_torn_write(file: &mut File, bytes: &[u8], number: u64) {
    if std::env::var("SINTER_FAULT_LEDGER").is_ok_and(|p| p == format!("torn@{number}")) {
        let _ = file.write_all(&bytes[..bytes.len() / 2]);
        let _ = file.sync_data();
        eprintln!("injected fault: ledger writer paused in the middle of block {number}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

impl Ledger {
    /// Creates a new ledger file from `genesis` (refusing to overwrite one).
    pub fn create(path: &Path, genesis: Genesis) -> Result<Self, LedgerError> {
        genesis.check().map_err(LedgerError::Invalid)?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let mut bytes = MAGIC.to_vec();
        bytes.extend(record(
            &serde_json::to_vec(&genesis).expect("genesis serialises"),
        ));
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io(path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        let genesis_hash = genesis.hash();
        Ok(Self {
            path: path.to_owned(),
            file,
            state: State::genesis(&genesis),
            head: genesis_hash,
            genesis_hash,
            genesis,
            offsets: Vec::new(),
            end: bytes.len() as u64,
        })
    }

    /// Opens a ledger, checking every block. An unfinished write at the end (a crash while
    /// appending) is cut off, and returned as a warning naming the block.
    pub fn open(path: &Path) -> Result<(Self, Option<String>), LedgerError> {
        let records = read_records(path)?;
        let genesis_hash = records.genesis.hash();
        let mut state = State::genesis(&records.genesis);
        let mut head = genesis_hash;
        for (number, block) in records.blocks {
            let block = block.map_err(|why| LedgerError::BadBlock { number, why })?;
            let (next, _) = check_block(&records.genesis, &genesis_hash, &head, &state, &block)
                .map_err(|why| LedgerError::BadBlock { number, why })?;
            state = next;
            head = block.header.hash();
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let warning = match records.torn {
            Some((offset, number)) => {
                file.set_len(offset)
                    .and_then(|()| file.sync_all())
                    .map_err(io(path))?;
                Some(format!(
                    "{}: block {number} was cut short by a crash while it was written; it was never committed and has been dropped",
                    path.display()
                ))
            }
            None => None,
        };
        let ledger = Self {
            path: path.to_owned(),
            file,
            genesis: records.genesis,
            genesis_hash,
            head,
            state,
            offsets: records.offsets,
            end: records.end,
        };
        Ok((ledger, warning))
    }

    /// Opens the ledger at `path` if it exists (it must have this genesis), else creates it.
    pub fn open_or_create(
        path: &Path,
        genesis: Genesis,
    ) -> Result<(Self, Option<String>), LedgerError> {
        if !path.exists() {
            return Ok((Self::create(path, genesis)?, None));
        }
        let (ledger, warning) = Self::open(path)?;
        if ledger.genesis_hash != genesis.hash() {
            return Err(LedgerError::Invalid(format!(
                "{} was started from another genesis (hash {}): use a new path or the config it was made with",
                path.display(),
                hex(&ledger.genesis_hash)
            )));
        }
        Ok((ledger, warning))
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The genesis hash (what extrinsics are signed for).
    pub fn genesis_hash(&self) -> &Hash {
        &self.genesis_hash
    }

    /// The state after the last block.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last block's hash.
    pub fn head(&self) -> &Hash {
        &self.head
    }

    /// The next nonce of `account`.
    pub fn next_nonce(&self, account: &AccountId) -> u64 {
        self.state.nonces.get(account).copied().unwrap_or(0)
    }

    /// `call` signed by `key` for this ledger with its next nonce.
    pub fn sign(&self, key: &Keypair, call: extrinsic::Call) -> Extrinsic {
        Extrinsic::sign(
            key,
            self.next_nonce(&key.account()),
            call,
            &self.genesis_hash,
        )
    }

    /// Up to `max` committed blocks from number `from` on, read back from the file (for
    /// replicas catching up): only their records are read.
    pub fn blocks_from(&self, from: u64, max: usize) -> Result<Vec<Block>, LedgerError> {
        let from = from.max(1);
        let last = self
            .state
            .block
            .min(from.saturating_add(max as u64).saturating_sub(1));
        if from > last {
            return Ok(Vec::new());
        }
        let start = self.offsets[(from - 1) as usize];
        let stop = self.offsets.get(last as usize).copied().unwrap_or(self.end);
        let mut bytes = vec![0u8; (stop - start) as usize];
        let mut file = File::open(&self.path).map_err(io(&self.path))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(io(&self.path))?;
        let mut rest = &bytes[..];
        (from..=last)
            .map(|number| {
                let bad = |why: String| LedgerError::BadBlock { number, why };
                let len = rest
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(|| bad("record cut short".into()))?;
                let mut body = rest
                    .get(4..4 + len)
                    .ok_or_else(|| bad("record cut short".into()))?;
                rest = &rest[4 + len..];
                Block::decode(&mut body).map_err(|e| bad(format!("undecodable ({e})")))
            })
            .collect()
    }

    fn append(&mut self, block: &Block) -> Result<(), LedgerError> {
        let bytes = record(&block.encode());
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(LedgerError::Invalid(format!(
                "block {} would be {} bytes, over {MAX_BLOCK_BYTES}",
                block.header.number,
                bytes.len()
            )));
        }
        fault_torn_write(&mut self.file, &bytes, block.header.number);
        let committed = self.end;
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A failed write (a full disk) must not leave half a record for the next block to
            // land behind: cut the file back to the last committed block.
            let _ = self.file.set_len(committed);
            return Err(io(&self.path)(e));
        }
        self.offsets.push(committed);
        self.end = committed + bytes.len() as u64;
        Ok(())
    }

    /// Authors the next block from `pending` (the author's key must be the genesis author):
    /// valid extrinsics are included in order, the others refused with their reason. Returns
    /// once the block is on disk.
    pub fn author(
        &mut self,
        key: &Keypair,
        pending: Vec<Extrinsic>,
        timestamp_ms: u64,
    ) -> Result<Applied, LedgerError> {
        if key.account() != self.genesis.author {
            return Err(LedgerError::Invalid(format!(
                "{} cannot author: the ledger's author is {}",
                key.account(),
                self.genesis.author
            )));
        }
        let mut next = self.state.clone();
        next.block += 1;
        let mut included = Vec::new();
        let mut refused = Vec::new();
        for extrinsic in pending {
            match next.apply(&extrinsic, &self.genesis, &self.genesis_hash) {
                Ok(()) => included.push(extrinsic),
                Err(reason) => refused.push(Refused { extrinsic, reason }),
            }
        }
        let epoch = next.end_block(&self.genesis);
        let header = Header {
            number: next.block,
            parent: self.head,
            extrinsics_root: extrinsics_root(&included),
            state_root: next.root(),
            author: key.account(),
            timestamp_ms,
        };
        let block = Block::seal(header, included, key);
        self.append(&block)?;
        self.head = block.header.hash();
        self.state = next;
        Ok(Applied {
            block,
            refused,
            epoch,
        })
    }

    /// Checks a block received from the author and appends it.
    pub fn import(&mut self, block: Block) -> Result<Applied, LedgerError> {
        let number = block.header.number;
        let (next, epoch) = check_block(
            &self.genesis,
            &self.genesis_hash,
            &self.head,
            &self.state,
            &block,
        )
        .map_err(|why| LedgerError::BadBlock { number, why })?;
        self.append(&block)?;
        self.head = block.header.hash();
        self.state = next;
        Ok(Applied {
            block,
            refused: Vec::new(),
            epoch,
        })
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Blocks that passed every check.
    pub blocks: u64,
    /// Epochs recomputed and matched.
    pub epochs: u64,
    /// Extrinsics re-applied.
    pub extrinsics: u64,
    /// The genesis hash (hex).
    pub genesis: String,
    /// The last good block's hash (hex).
    pub head: String,
    /// The first bad block and why.
    pub first_bad: Option<(u64, String)>,
    /// A block cut short at the end by a crash while it was written.
    pub torn_block: Option<u64>,
}

impl Verification {
    /// Whether every block checked out and the file ends cleanly.
    pub fn is_clean(&self) -> bool {
        self.first_bad.is_none() && self.torn_block.is_none()
    }
}

/// Re-checks every hash and signature and recomputes every epoch from the recorded weights,
/// without changing the file.
pub fn verify(path: &Path) -> Result<Verification, LedgerError> {
    inspect(path).map(|(verification, _)| verification)
}

/// [`verify`], also returning the state after the last good block (for `ledger show`).
pub fn inspect(path: &Path) -> Result<(Verification, State), LedgerError> {
    let records = read_records(path)?;
    let genesis_hash = records.genesis.hash();
    let mut state = State::genesis(&records.genesis);
    let mut head = genesis_hash;
    let mut extrinsics = 0;
    let mut first_bad = None;
    for (number, block) in records.blocks {
        let checked = block.and_then(|b| {
            check_block(&records.genesis, &genesis_hash, &head, &state, &b).map(|s| (s, b))
        });
        match checked {
            Ok(((next, _), block)) => {
                extrinsics += block.extrinsics.len() as u64;
                state = next;
                head = block.header.hash();
            }
            Err(why) => {
                first_bad = Some((number, why));
                break;
            }
        }
    }
    let verification = Verification {
        blocks: state.block,
        epochs: state.epochs,
        extrinsics,
        genesis: hex(&genesis_hash),
        head: hex(&head),
        first_bad,
        torn_block: records.torn.map(|(_, number)| number),
    };
    Ok((verification, state))
}

#[cfg(test)]
mod tests {
    use super::extrinsic::{Call, weights_commitment};
    use super::state::{GenesisBalance, GenesisNeuron};
    use super::*;

    struct Net {
        author: Keypair,
        cold: Keypair,
        validator: Keypair,
        miners: Vec<Keypair>,
    }

    fn net() -> Net {
        Net {
            author: Keypair::from_secret("//Author").unwrap(),
            cold: Keypair::from_secret("//Cold").unwrap(),
            validator: Keypair::from_secret("//Validator").unwrap(),
            miners: (0..3)
                .map(|i| Keypair::from_secret(&format!("//Miner{i}")).unwrap())
                .collect(),
        }
    }

    fn genesis(net: &Net) -> Genesis {
        serde_json::from_value(serde_json::json!({
            "author": net.author.account(),
            "tempo": 3,
            "burn": 100,
            "emission_per_epoch": 1_000_000,
            "balances": [GenesisBalance { account: net.cold.account(), balance: 10_000 }],
            "neurons": [GenesisNeuron {
                hotkey: net.validator.account(),
                coldkey: net.cold.account(),
                stake: 1000,
            }],
        }))
        .unwrap()
    }

    /// Registers the miners, commits and reveals the validator's weights, runs to an epoch.
    fn populate(ledger: &mut Ledger, net: &Net) -> Vec<Applied> {
        let mut applied = Vec::new();
        let mut nonce = ledger.next_nonce(&net.cold.account());
        let registrations: Vec<Extrinsic> = net
            .miners
            .iter()
            .map(|m| {
                nonce += 1;
                Extrinsic::sign(
                    &net.cold,
                    nonce - 1,
                    Call::Register {
                        hotkey: m.account(),
                    },
                    ledger.genesis_hash(),
                )
            })
            .collect();
        applied.push(ledger.author(&net.author, registrations, 1).unwrap());
        let (uids, values, salt) = (vec![1u16, 2, 3], vec![10000u16, 30000, 65535], vec![7u16]);
        let hash = weights_commitment(&net.validator.account(), 1, &uids, &values, &salt, 0);
        let commit = ledger.sign(&net.validator, Call::CommitWeights { hash });
        applied.push(ledger.author(&net.author, vec![commit], 2).unwrap());
        let reveal = ledger.sign(
            &net.validator,
            Call::RevealWeights {
                uids,
                values,
                salt,
                version_key: 0,
            },
        );
        applied.push(ledger.author(&net.author, vec![reveal], 3).unwrap());
        applied
    }

    #[test]
    fn weights_committed_and_revealed_become_emission_at_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut ledger = Ledger::create(&dir.path().join("ledger"), genesis(&net)).unwrap();
        let applied = populate(&mut ledger, &net);
        assert!(
            applied.iter().all(|a| a.refused.is_empty()),
            "{:?}",
            applied[0].refused
        );
        let epoch = applied[2]
            .epoch
            .as_ref()
            .expect("block 3 ends the first epoch");
        assert_eq!(epoch.incentive[0], 0);
        assert!(epoch.incentive[3] > epoch.incentive[2] && epoch.incentive[2] > epoch.incentive[1]);
        let state = ledger.state();
        assert_eq!(state.neurons.len(), 4);
        assert_eq!(
            state.balances[&net.cold.account()] - 10_000 + 300,
            { state.neurons.iter().map(|n| n.emission).sum::<u64>() },
            "the burn left the balance and every uid's emission came in (one coldkey owns all)"
        );
        assert!(state.neurons[0].dividends > 60000);
        // A replica that imports the blocks reaches the same state.
        let mut replica = Ledger::create(&dir.path().join("replica"), genesis(&net)).unwrap();
        for a in applied {
            replica.import(a.block).unwrap();
        }
        assert_eq!(replica.state().root(), ledger.state().root());
    }

    #[test]
    fn old_contribution_commitments_leave_the_state_but_stay_in_its_root_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut genesis = genesis(&net);
        genesis.contribution_window = 2;
        let path = dir.path().join("ledger");
        let mut ledger = Ledger::create(&path, genesis.clone()).unwrap();
        populate(&mut ledger, &net);
        let commit = |ledger: &Ledger, miner: &Keypair, round: u64| {
            ledger.sign(
                miner,
                Call::CommitContribution {
                    round,
                    hash: [round as u8; 32],
                },
            )
        };
        let mut roots = Vec::new();
        for round in 0..4u64 {
            let pending = net
                .miners
                .iter()
                .map(|m| commit(&ledger, m, round))
                .collect();
            let applied = ledger.author(&net.author, pending, 10 + round).unwrap();
            assert!(applied.refused.is_empty(), "{:?}", applied.refused);
            roots.push(applied.block.header.state_root);
        }
        let state = ledger.state();
        // Blocks 6 and 7 are inside the window of two blocks at block 7.
        assert_eq!(state.block, 7);
        let kept: Vec<(u64, u64)> = state
            .contributions
            .iter()
            .map(|c| (c.round, c.sequence))
            .collect();
        assert_eq!(kept, vec![(2, 6), (2, 7), (2, 8), (3, 9), (3, 10), (3, 11)]);
        assert_eq!(state.contributions_total, 12);
        assert_eq!(
            roots
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            4
        );
        // Replaying the file reaches the same root; a different early commitment would not.
        let (reopened, warning) = Ledger::open(&path).unwrap();
        assert!(warning.is_none());
        assert_eq!(reopened.state().root(), ledger.state().root());
        // A replica's catch-up reads exactly the blocks asked for, before and after a reopen.
        for source in [&ledger, &reopened] {
            let numbers = |from, max| -> Vec<u64> {
                let blocks = source.blocks_from(from, max).unwrap();
                blocks.iter().map(|b| b.header.number).collect()
            };
            assert_eq!(numbers(0, 100), (1..=7).collect::<Vec<_>>());
            assert_eq!(numbers(3, 2), vec![3, 4]);
            assert_eq!(numbers(7, 5), vec![7]);
            assert!(numbers(8, 5).is_empty());
            let last = source.blocks_from(7, 1).unwrap().remove(0);
            assert_eq!(last.header.hash(), *ledger.head());
        }
        let mut forged = ledger.state().clone();
        forged.contributions_digest = hex(&[1u8; 32]);
        assert_ne!(forged.root(), ledger.state().root());
        // An old round's commitment may not be repeated while it is in the window.
        let again = commit(&ledger, &net.miners[0], 3);
        let applied = ledger.author(&net.author, vec![again], 20).unwrap();
        assert_eq!(applied.refused.len(), 1);
    }

    #[test]
    fn a_replica_refuses_blocks_with_a_forged_outcome_or_author() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut author = Ledger::create(&dir.path().join("author"), genesis(&net)).unwrap();
        let applied = populate(&mut author, &net);
        let mut replica = Ledger::create(&dir.path().join("replica"), genesis(&net)).unwrap();
        replica.import(applied[0].block.clone()).unwrap();
        replica.import(applied[1].block.clone()).unwrap();
        // Block 3 ends an epoch; an author claiming another outcome (state root) is caught.
        let honest = applied[2].block.clone();
        let mut header = honest.header.clone();
        header.state_root[0] ^= 1;
        let lie = Block::seal(header, honest.extrinsics.clone(), &net.author);
        let err = replica.import(lie).unwrap_err().to_string();
        assert!(
            err.contains("block 3: state root differs") && err.contains("epoch"),
            "{err}"
        );
        // The same block sealed by anyone but the genesis author is refused.
        let stranger = Block::seal(
            honest.header.clone(),
            honest.extrinsics.clone(),
            &net.miners[0],
        );
        let err = replica.import(stranger).unwrap_err().to_string();
        assert!(err.contains("signature"), "{err}");
        // A block that skips ahead is refused; the honest one is taken.
        assert!(replica.import(applied[1].block.clone()).is_err());
        replica.import(honest).unwrap();
        assert_eq!(replica.state().root(), author.state().root());
    }

    #[test]
    fn replays_forgeries_strangers_and_oversized_extrinsics_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut ledger = Ledger::create(&dir.path().join("ledger"), genesis(&net)).unwrap();
        let commit = ledger.sign(&net.validator, Call::CommitWeights { hash: [1; 32] });
        ledger.author(&net.author, vec![commit.clone()], 1).unwrap();
        let mut forged = ledger.sign(&net.validator, Call::CommitWeights { hash: [1; 32] });
        forged.call = Call::CommitWeights { hash: [2; 32] };
        let stranger = ledger.sign(
            &net.miners[0],
            Call::Serve {
                address: b"/ip4/10.0.0.1/tcp/1".to_vec(),
            },
        );
        let oversized = ledger.sign(
            &net.validator,
            Call::Serve {
                address: vec![b'a'; 20_000],
            },
        );
        let poor = ledger.sign(
            &net.miners[1],
            Call::Register {
                hotkey: net.miners[1].account(),
            },
        );
        let out = ledger
            .author(
                &net.author,
                vec![commit, forged, stranger, oversized, poor],
                2,
            )
            .unwrap();
        assert!(out.block.extrinsics.is_empty());
        let reasons: Vec<String> = out.refused.iter().map(|r| r.reason.to_string()).collect();
        assert!(reasons[0].contains("nonce 0, expected 1"), "{reasons:?}");
        assert!(reasons[1].contains("bad signature"));
        assert!(reasons[2].contains("not a registered hotkey"));
        assert!(reasons[3].contains("over the limit"));
        assert!(reasons[4].contains("balance 0 is below the 100"));
        // Someone else cannot author.
        assert!(ledger.author(&net.miners[0], vec![], 3).is_err());
    }

    #[test]
    fn a_tampered_block_is_named_and_an_unfinished_write_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let net = net();
        let mut ledger = Ledger::create(&path, genesis(&net)).unwrap();
        populate(&mut ledger, &net);
        drop(ledger);
        let clean = std::fs::read(&path).unwrap();
        assert!(verify(&path).unwrap().is_clean());
        assert_eq!(verify(&path).unwrap().epochs, 1);

        // A torn final record: verify reports it; open drops it and carries on.
        std::fs::write(&path, &clean[..clean.len() - 10]).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!((report.blocks, report.torn_block), (2, Some(3)));
        let (mut reopened, warning) = Ledger::open(&path).unwrap();
        assert!(warning.unwrap().contains("block 3 was cut short"));
        assert_eq!(reopened.state().block, 2);
        reopened.author(&net.author, vec![], 9).unwrap();
        assert!(verify(&path).unwrap().is_clean());

        // One flipped byte in block 2's body (its extrinsic's call): named, and refused.
        let mut tampered = clean.clone();
        let block2 = {
            let mut offset = MAGIC.len();
            for _ in 0..2 {
                let len = u32::from_le_bytes(tampered[offset..offset + 4].try_into().unwrap());
                offset += 4 + len as usize;
            }
            offset
        };
        let at = block2 + 4 + 200;
        tampered[at] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        let report = verify(&path).unwrap();
        let (number, why) = report.first_bad.unwrap();
        assert_eq!(number, 2, "{why}");
        let err = Ledger::open(&path).err().unwrap().to_string();
        assert!(err.starts_with("block 2:"), "{err}");
    }
}
