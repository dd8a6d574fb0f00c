//! The ledger's state and its transition function: genesis from the run config, each
//! extrinsic checked and applied, and every `tempo` blocks an epoch of consensus whose
//! emission is credited to the neurons' coldkey balances.
//!
//! Every replica runs this same code over the same blocks; the block header carries the hash
//! of the resulting state, so a replica (or `ledger verify`) notices an author whose epochs,
//! balances or weights differ from the replay.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::extrinsic::{
    Call, Extrinsic, Hash, MAX_EXTRINSIC_BYTES, blake2_256, weights_commitment,
};
use super::keys::AccountId;
use crate::consensus::{Epoch, Hyperparams, run_epoch};

/// A balance given at genesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisBalance {
    /// The account.
    pub account: AccountId,
    /// Its free balance.
    pub balance: u64,
}

/// A neuron registered at genesis (no burn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisNeuron {
    /// The hotkey acting for the uid.
    pub hotkey: AccountId,
    /// The coldkey owning it (and receiving its emission).
    pub coldkey: AccountId,
    /// Its initial stake.
    #[serde(default)]
    pub stake: u64,
}

fn default_netuid() -> u16 {
    1
}

fn default_tempo() -> u64 {
    10
}

fn default_burn() -> u64 {
    1_000_000_000
}

fn default_emission() -> u64 {
    1_000_000_000
}

fn default_max_validators() -> usize {
    128
}

fn default_max_uids() -> usize {
    4096
}

/// Blocks a contribution commitment stays in the state by default (an hour of one-second
/// blocks; a validator reads a round's commitments within a round or two).
pub const CONTRIBUTION_WINDOW: u64 = 3600;

fn default_contribution_window() -> u64 {
    CONTRIBUTION_WINDOW
}

fn is_default_contribution_window(blocks: &u64) -> bool {
    *blocks == CONTRIBUTION_WINDOW
}

/// Everything the ledger starts from (the run config's `[ledger]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The one account that authors blocks.
    pub author: AccountId,
    /// The subnet id hashed into weight commitments.
    #[serde(default = "default_netuid")]
    pub netuid: u16,
    /// Blocks per epoch.
    #[serde(default = "default_tempo")]
    pub tempo: u64,
    /// Cost of `register`, burned (against Sybils).
    #[serde(default = "default_burn")]
    pub burn: u64,
    /// Emission split by each epoch.
    #[serde(default = "default_emission")]
    pub emission_per_epoch: u64,
    /// Validator permits go to the top this many uids by stake.
    #[serde(default = "default_max_validators")]
    pub max_validators: usize,
    /// Most uids the ledger registers.
    #[serde(default = "default_max_uids")]
    pub max_uids: usize,
    /// Blocks a contribution commitment stays in the state (all stay in the blocks, and the
    /// state root commits to every one through a running digest): keeps each block's cost
    /// from growing with the ledger's length. Must exceed a round's length in blocks.
    #[serde(
        default = "default_contribution_window",
        skip_serializing_if = "is_default_contribution_window"
    )]
    pub contribution_window: u64,
    /// Consensus and its hyperparameters.
    #[serde(default)]
    pub consensus: Hyperparams,
    /// Initial free balances.
    #[serde(default)]
    pub balances: Vec<GenesisBalance>,
    /// Neurons registered from the start.
    #[serde(default)]
    pub neurons: Vec<GenesisNeuron>,
}

impl Genesis {
    /// Refuses a genesis whose numbers the epoch math cannot hold.
    pub fn check(&self) -> Result<(), String> {
        let supply: u128 = self
            .balances
            .iter()
            .map(|b| b.balance as u128)
            .sum::<u128>()
            + self.neurons.iter().map(|n| n.stake as u128).sum::<u128>();
        if supply >= 1 << 61 || self.emission_per_epoch >= 1 << 50 {
            return Err(format!(
                "total supply {supply} (must be below 2^61) or emission_per_epoch {} (below 2^50) too large for the epoch's fixed point",
                self.emission_per_epoch
            ));
        }
        if self.tempo == 0 {
            return Err("tempo must be at least 1 block".into());
        }
        if self.contribution_window == 0 {
            return Err("contribution_window must be at least 1 block".into());
        }
        let mut hotkeys: Vec<_> = self.neurons.iter().map(|n| n.hotkey).collect();
        hotkeys.sort();
        if hotkeys.windows(2).any(|w| w[0] == w[1]) {
            return Err("a hotkey is listed twice in `neurons`".into());
        }
        if self.neurons.len() > self.max_uids.min(u16::MAX as usize) {
            return Err(format!(
                "{} neurons, more than max_uids",
                self.neurons.len()
            ));
        }
        Ok(())
    }

    /// The genesis hash: BlakeTwo256 of the canonical JSON.
    pub fn hash(&self) -> Hash {
        blake2_256(&serde_json::to_vec(self).expect("genesis serialises"))
    }
}

/// One uid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neuron {
    /// Its uid.
    pub uid: u16,
    /// The hotkey acting for it.
    pub hotkey: AccountId,
    /// The coldkey owning it.
    pub coldkey: AccountId,
    /// Its stake.
    pub stake: u64,
    /// Block it registered at.
    pub registered_at: u64,
    /// Its published peer address.
    pub address: Option<String>,
    /// Its revealed weights `(uid, value)`.
    pub weights: Vec<(u16, u16)>,
    /// Block its weights were revealed at.
    pub weights_set_at: u64,
    /// Whether the last epoch gave it a validator permit.
    pub validator_permit: bool,
    /// Last epoch's consensus.
    pub consensus: u16,
    /// Last epoch's incentive.
    pub incentive: u16,
    /// Last epoch's dividends.
    pub dividends: u16,
    /// Last epoch's validator trust.
    pub validator_trust: u16,
    /// Last epoch's emission.
    pub emission: u64,
    /// Emission over all epochs.
    pub total_emission: u64,
}

/// A contribution commitment, in ledger order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// The round.
    pub round: u64,
    /// Who committed.
    pub uid: u16,
    /// Hash of the payload.
    #[serde(with = "crate::ledger::keys::hex32")]
    pub hash: [u8; 32],
    /// Block it was included in.
    pub block: u64,
    /// Position among all commitments (earlier is smaller).
    pub sequence: u64,
}

/// A recorded checkpoint root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The round.
    pub round: u64,
    /// Merkle root (hex).
    pub root: String,
    /// Who recorded it.
    pub uid: u16,
    /// Block.
    pub block: u64,
}

/// A weights commitment waiting for its reveal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCommit {
    /// The commitment (hex).
    pub hash: String,
    /// Block it was included in.
    pub block: u64,
}

/// Why the ledger refused an extrinsic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Encoded size over [`MAX_EXTRINSIC_BYTES`].
    #[error("{bytes} bytes, over the limit of {MAX_EXTRINSIC_BYTES}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The signature is not the signer's over this ledger's payload.
    #[error("bad signature (forged, altered, or signed for another ledger)")]
    BadSignature,
    /// Not the signer's next nonce (a replay, or out of order).
    #[error("nonce {got}, expected {expected} (a replay or out of order)")]
    BadNonce {
        /// The signer's next nonce.
        expected: u64,
        /// The extrinsic's.
        got: u64,
    },
    /// The signer is not a registered hotkey.
    #[error("{0} is not a registered hotkey: register it first")]
    Unregistered(AccountId),
    /// Balance too low.
    #[error("balance {balance} is below the {needed} needed")]
    InsufficientBalance {
        /// What the signer has.
        balance: u64,
        /// What the call needs.
        needed: u64,
    },
    /// Anything else the call's rules forbid.
    #[error("{0}")]
    Invalid(String),
}

/// The ledger's state after some block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last block applied.
    pub block: u64,
    /// Free balances.
    pub balances: BTreeMap<AccountId, u64>,
    /// Each account's next nonce.
    pub nonces: BTreeMap<AccountId, u64>,
    /// Registered uids.
    pub neurons: Vec<Neuron>,
    /// Weight commitments awaiting reveal, by uid.
    pub commits: BTreeMap<u16, PendingCommit>,
    /// Contribution commitments of the last `contribution_window` blocks, in ledger order.
    pub contributions: Vec<Contribution>,
    /// Contribution commitments ever made.
    #[serde(default)]
    pub contributions_total: u64,
    /// BlakeTwo256 chain over every contribution commitment ever made (hex).
    #[serde(default)]
    pub contributions_digest: String,
    /// Recorded checkpoints.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Bonds (n × n; `u16` values for the chain's consensus, stake units for the papers').
    pub bonds: Vec<Vec<f64>>,
    /// Epochs run.
    pub epochs: u64,
}

fn neuron(uid: usize, hotkey: AccountId, coldkey: AccountId, stake: u64, block: u64) -> Neuron {
    Neuron {
        uid: uid as u16,
        hotkey,
        coldkey,
        stake,
        registered_at: block,
        address: None,
        weights: Vec::new(),
        weights_set_at: 0,
        validator_permit: false,
        consensus: 0,
        incentive: 0,
        dividends: 0,
        validator_trust: 0,
        emission: 0,
        total_emission: 0,
    }
}

impl State {
    /// The state at genesis.
    pub fn genesis(genesis: &Genesis) -> Self {
        let mut balances = BTreeMap::new();
        for b in &genesis.balances {
            *balances.entry(b.account).or_insert(0u64) += b.balance;
        }
        let neurons = genesis
            .neurons
            .iter()
            .enumerate()
            .map(|(uid, n)| neuron(uid, n.hotkey, n.coldkey, n.stake, 0))
            .collect();
        Self {
            block: 0,
            balances,
            nonces: BTreeMap::new(),
            neurons,
            commits: BTreeMap::new(),
            contributions: Vec::new(),
            contributions_total: 0,
            contributions_digest: hex::encode([0u8; 32]),
            checkpoints: Vec::new(),
            bonds: Vec::new(),
            epochs: 0,
        }
    }

    /// The state root: BlakeTwo256 of the canonical JSON, with the contribution commitments
    /// standing in by their digest (so that the root costs the same in every block).
    pub fn root(&self) -> Hash {
        #[derive(Serialize)]
        struct Rooted<'a> {
            block: u64,
            balances: &'a BTreeMap<AccountId, u64>,
            nonces: &'a BTreeMap<AccountId, u64>,
            neurons: &'a [Neuron],
            commits: &'a BTreeMap<u16, PendingCommit>,
            contributions_total: u64,
            contributions_digest: &'a str,
            checkpoints: &'a [CheckpointRecord],
            bonds: &'a [Vec<f64>],
            epochs: u64,
        }
        let rooted = Rooted {
            block: self.block,
            balances: &self.balances,
            nonces: &self.nonces,
            neurons: &self.neurons,
            commits: &self.commits,
            contributions_total: self.contributions_total,
            contributions_digest: &self.contributions_digest,
            checkpoints: &self.checkpoints,
            bonds: &self.bonds,
            epochs: self.epochs,
        };
        blake2_256(&serde_json::to_vec(&rooted).expect("state serialises"))
    }

    /// The uid of `hotkey`.
    pub fn uid(&self, hotkey: &AccountId) -> Option<u16> {
        self.neurons
            .iter()
            .find(|n| n.hotkey == *hotkey)
            .map(|n| n.uid)
    }

    fn balance(&self, account: &AccountId) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    fn registered(&self, who: &AccountId) -> Result<u16, Rejection> {
        self.uid(who).ok_or(Rejection::Unregistered(*who))
    }

    fn staked(&self, who: &AccountId, call: &str) -> Result<u16, Rejection> {
        let uid = self.registered(who)?;
        if self.neurons[uid as usize].stake == 0 {
            return Err(Rejection::Invalid(format!(
                "{call} needs stake: uid {uid} has none (add_stake first)"
            )));
        }
        Ok(uid)
    }

    /// Checks and applies one extrinsic in block `self.block` (the block being built).
    pub fn apply(
        &mut self,
        ext: &Extrinsic,
        genesis: &Genesis,
        genesis_hash: &Hash,
    ) -> Result<(), Rejection> {
        let bytes = parity_scale_codec::Encode::encoded_size(ext);
        if bytes > MAX_EXTRINSIC_BYTES {
            return Err(Rejection::TooLarge { bytes });
        }
        if !ext.signature_is_valid(genesis_hash) {
            return Err(Rejection::BadSignature);
        }
        let expected = self.nonces.get(&ext.signer).copied().unwrap_or(0);
        if ext.nonce != expected {
            return Err(Rejection::BadNonce {
                expected,
                got: ext.nonce,
            });
        }
        self.dispatch(&ext.signer, &ext.call, genesis)?;
        self.nonces.insert(ext.signer, expected + 1);
        Ok(())
    }

    fn dispatch(
        &mut self,
        signer: &AccountId,
        call: &Call,
        genesis: &Genesis,
    ) -> Result<(), Rejection> {
        let invalid = |m: String| Err(Rejection::Invalid(m));
        match call {
            Call::Register { hotkey } => {
                if self.uid(hotkey).is_some() {
                    return invalid(format!("hotkey {hotkey} is already registered"));
                }
                if self.neurons.len() >= genesis.max_uids {
                    return invalid(format!("all {} uids are taken", genesis.max_uids));
                }
                let balance = self.balance(signer);
                if balance < genesis.burn {
                    return Err(Rejection::InsufficientBalance {
                        balance,
                        needed: genesis.burn,
                    });
                }
                self.balances.insert(*signer, balance - genesis.burn);
                let uid = self.neurons.len();
                self.neurons
                    .push(neuron(uid, *hotkey, *signer, 0, self.block));
            }
            Call::AddStake { hotkey, amount } => {
                let uid = self.registered(hotkey)? as usize;
                if self.neurons[uid].coldkey != *signer {
                    return invalid(format!(
                        "hotkey {hotkey} belongs to coldkey {}, not the signer",
                        self.neurons[uid].coldkey
                    ));
                }
                let balance = self.balance(signer);
                if balance < *amount {
                    return Err(Rejection::InsufficientBalance {
                        balance,
                        needed: *amount,
                    });
                }
                self.balances.insert(*signer, balance - amount);
                self.neurons[uid].stake = self.neurons[uid].stake.saturating_add(*amount);
            }
            Call::Serve { address } => {
                let uid = self.registered(signer)? as usize;
                let address = match std::str::from_utf8(address) {
                    Ok(a) if !a.is_empty() && a.len() <= 512 => a,
                    _ => return invalid("address must be 1–512 bytes of UTF-8".into()),
                };
                self.neurons[uid].address = Some(address.to_owned());
            }
            Call::CommitContribution { round, hash } => {
                let uid = self.registered(signer)?;
                if self
                    .contributions
                    .iter()
                    .any(|c| c.round == *round && c.uid == uid)
                {
                    return invalid(format!("uid {uid} already committed to round {round}"));
                }
                let contribution = Contribution {
                    round: *round,
                    uid,
                    hash: *hash,
                    block: self.block,
                    sequence: self.contributions_total,
                };
                let link = (
                    &self.contributions_digest,
                    contribution.round,
                    uid,
                    hash,
                    contribution.block,
                    contribution.sequence,
                );
                self.contributions_digest =
                    hex::encode(blake2_256(&parity_scale_codec::Encode::encode(&link)));
                self.contributions_total += 1;
                self.contributions.push(contribution);
            }
            Call::CommitWeights { hash } => {
                let uid = self.staked(signer, "commit_weights")?;
                self.commits.insert(
                    uid,
                    PendingCommit {
                        hash: hex::encode(hash),
                        block: self.block,
                    },
                );
            }
            Call::RevealWeights {
                uids,
                values,
                salt,
                version_key,
            } => {
                let uid = self.staked(signer, "reveal_weights")?;
                let Some(pending) = self.commits.get(&uid) else {
                    return invalid(format!("uid {uid} has no weights commitment to reveal"));
                };
                if pending.block >= self.block {
                    return invalid("a reveal must come in a later block than its commit".into());
                }
                let expected =
                    weights_commitment(signer, genesis.netuid, uids, values, salt, *version_key);
                if hex::encode(expected) != pending.hash {
                    return invalid(format!(
                        "revealed weights do not hash to uid {uid}'s commitment"
                    ));
                }
                if uids.len() != values.len() {
                    return invalid(format!("{} uids but {} values", uids.len(), values.len()));
                }
                let n = self.neurons.len();
                let mut seen = vec![false; n];
                for &u in uids {
                    if u as usize >= n || std::mem::replace(&mut seen[u as usize], true) {
                        return invalid(format!("uid {u} is unknown or repeated"));
                    }
                }
                self.commits.remove(&uid);
                let neuron = &mut self.neurons[uid as usize];
                neuron.weights = uids.iter().copied().zip(values.iter().copied()).collect();
                neuron.weights_set_at = self.block;
            }
            Call::RecordCheckpoint { round, root } => {
                let uid = self.staked(signer, "record_checkpoint")?;
                self.checkpoints.push(CheckpointRecord {
                    round: *round,
                    root: hex::encode(root),
                    uid,
                    block: self.block,
                });
            }
        }
        Ok(())
    }

    /// Ends the block: every `tempo` blocks, runs an epoch and credits its emission.
    pub fn end_block(&mut self, genesis: &Genesis) -> Option<Epoch> {
        let window = genesis.contribution_window;
        let kept = self
            .contributions
            .partition_point(|c| c.block + window <= self.block);
        self.contributions.drain(..kept);
        if genesis.tempo == 0
            || !self.block.is_multiple_of(genesis.tempo)
            || self.neurons.is_empty()
        {
            return None;
        }
        let n = self.neurons.len();
        let stake: Vec<f64> = self.neurons.iter().map(|x| x.stake as f64).collect();
        let mut by_stake: Vec<usize> = (0..n).filter(|u| self.neurons[*u].stake > 0).collect();
        by_stake.sort_by(|a, b| {
            self.neurons[*b]
                .stake
                .cmp(&self.neurons[*a].stake)
                .then(a.cmp(b))
        });
        let mut permits = vec![false; n];
        for u in by_stake.into_iter().take(genesis.max_validators) {
            permits[u] = true;
        }
        // Weights set before their target registered do not count (the target is not who
        // the validator scored).
        let weights: Vec<Vec<u16>> = self
            .neurons
            .iter()
            .map(|v| {
                let mut row = vec![0u16; n];
                for &(j, w) in &v.weights {
                    if self.neurons[j as usize].registered_at <= v.weights_set_at {
                        row[j as usize] = w;
                    }
                }
                row
            })
            .collect();
        self.bonds.resize(n, Vec::new());
        for row in &mut self.bonds {
            row.resize(n, 0.0);
        }
        // Genesis::check keeps the total supply inside the epoch's fixed-point range, so this
        // fails only for a state no checked genesis can reach; every replica skips alike.
        let epoch = run_epoch(
            &genesis.consensus,
            &stake,
            &permits,
            &weights,
            &mut self.bonds,
            genesis.emission_per_epoch as f64,
        )
        .ok()?;
        for (u, neuron) in self.neurons.iter_mut().enumerate() {
            neuron.validator_permit = permits[u];
            neuron.consensus = epoch.consensus[u];
            neuron.incentive = epoch.incentive[u];
            neuron.dividends = epoch.dividends[u];
            neuron.validator_trust = epoch.validator_trust[u];
            neuron.emission = epoch.emission[u];
            neuron.total_emission += epoch.emission[u];
            *self.balances.entry(neuron.coldkey).or_insert(0) += epoch.emission[u];
        }
        self.epochs += 1;
        Some(epoch)
    }
}
