//! The embedded ledger: sinter's default chain. An append-only, hash-chained file of blocks
//! of sr25519-signed extrinsics, authored by the one account the genesis names, replayed and
//! checked by every replica.
//!
//! | module | what |
//! |---|---|
//! | [`keys`] | sr25519 accounts and signatures (`sp-core`), SS58, wallet key files |
//! | [`extrinsic`] | calls, signed extrinsics, the weights commitment |
//! | [`block`] | headers and sealed blocks |
//! | [`state`] | genesis, state, the transition function and epochs |
//! | `replica` | [`Replica`]: the checked state and the file blocks are appended to |
//! | `file` | the file format, [`verify`] and [`inspect`] |
//! | [`sync`] | the replicas' sync protocol, sans-IO: the author's pool, requests, gossip, catch-up |
//! | [`wallet`] | wallets on disk: a coldkey and a hotkey key file |
//! | [`interface`] | [`Ledger`](interface::Ledger): what a run asks of any chain, this one or subtensor |
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
mod file;
pub mod interface;
pub mod keys;
mod replica;
pub mod state;
pub mod sync;
pub mod wallet;

use std::path::{Path, PathBuf};

use crate::consensus::Epoch;
use block::Block;
use extrinsic::Extrinsic;
use state::Rejection;

pub use file::{Verification, inspect, verify};
pub use interface::Ledger;
pub use replica::Replica;

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
    /// A wallet is missing, misnamed or unreadable.
    #[error("{0}")]
    Wallet(String),
    /// An encrypted key did not open with the password given.
    #[error("{path}: wrong password (or a damaged key file)")]
    WrongPassword {
        /// The key file.
        path: PathBuf,
    },
    /// An encrypted key was needed and no password was given.
    #[error("{path} is encrypted: give its password (SINTER_COLDKEY_PASSWORD, or at the prompt)")]
    Locked {
        /// The key file.
        path: PathBuf,
    },
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
