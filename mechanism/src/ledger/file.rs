//! The ledger file: the magic `SNTRLDG1`, then records of a little-endian `u32` length and
//! its bytes (the genesis as JSON, then one SCALE-encoded block each), read back whole for
//! [`verify`] and [`super::Replica::open`].

use std::fs::File;
use std::io::Read;
#[cfg(feature = "fault-injection")]
use std::io::Write;
use std::path::Path;

use parity_scale_codec::{Decode, Encode};
use serde::Serialize;

use super::block::{Block, check_block};
use super::state::{Genesis, State};
use super::{LedgerError, MAX_BLOCK_BYTES, io};

pub(super) const MAGIC: &[u8; 8] = b"SNTRLDG1";

/// The parsed records of a ledger file.
pub(super) struct Records {
    pub(super) genesis: Genesis,
    pub(super) blocks: Vec<(u64, Result<Block, String>)>,
    /// Where each block's record starts.
    pub(super) offsets: Vec<u64>,
    /// Where the last whole record ends.
    pub(super) end: u64,
    /// Offset and block number of a record cut short at the end.
    pub(super) torn: Option<(u64, u64)>,
}

pub(super) fn read_records(path: &Path) -> Result<Records, LedgerError> {
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

pub(super) fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// With `SINTER_FAULT_LEDGER=torn@N`, the writer of block N writes half its record, syncs it,
/// and stops there: the kill test's crash in the middle of a block write.
#[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
pub(super) fn fault_torn_write(file: &mut File, bytes: &[u8], number: u64) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("SINTER_FAULT_LEDGER").is_ok_and(|p| p == format!("torn@{number}")) {
        let _ = file.write_all(&bytes[..bytes.len() / 2]);
        let _ = file.sync_data();
        eprintln!("injected fault: ledger writer paused in the middle of block {number}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
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
        genesis: hex::encode(genesis_hash),
        head: hex::encode(head),
        first_bad,
        torn_block: records.torn.map(|(_, number)| number),
    };
    Ok((verification, state))
}
