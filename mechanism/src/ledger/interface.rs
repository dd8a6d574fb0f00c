//! [`Ledger`]: everything a run and its validators ask of a chain — register, serve an
//! address, stake, commit contributions, commit and reveal weights, read the metagraph, wait
//! for the next block. The embedded ledger over a run's connections is one implementation
//! (`sinter_trainer::peer::ledger`); Bittensor's subtensor is to be the second. A run and a
//! validator hold a `dyn Ledger` and do not know which one they talk to.
//!
//! Calls return once the chain has accepted the transaction for a coming block; `register`
//! and `serve` return once it is in a block. What is in a block is read back with
//! [`Ledger::metagraph`], [`Ledger::contributions`] and [`Ledger::committed_weights`], and
//! [`wait_until`] waits for it block by block, not by sleeping.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::extrinsic::Hash;
use super::keys::AccountId;
use super::state::State;

/// Why a call to the chain did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The chain's rules refused it (a bad nonce, too little balance, not registered, …).
    #[error("{call} refused: {reason}")]
    Refused {
        /// The call.
        call: &'static str,
        /// The chain's reason.
        reason: String,
    },
    /// The chain could not be reached, or did not answer in time.
    #[error("{call}: {why}")]
    Unavailable {
        /// The call.
        call: &'static str,
        /// What happened.
        why: String,
    },
    /// The call cannot be made with the keys at hand (e.g. registering without a coldkey).
    #[error("{call}: {why}")]
    Keys {
        /// The call.
        call: &'static str,
        /// What is missing.
        why: String,
    },
}

/// One uid as the chain shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeuronInfo {
    /// Its uid.
    pub uid: u16,
    /// The hotkey acting for it.
    pub hotkey: AccountId,
    /// The coldkey owning it.
    pub coldkey: AccountId,
    /// Its stake.
    pub stake: u64,
    /// The address it serves.
    pub address: Option<String>,
    /// Consensus at the last epoch (0–1).
    pub consensus: f64,
    /// Incentive at the last epoch (0–1).
    pub incentive: f64,
    /// Dividends at the last epoch (0–1).
    pub dividends: f64,
    /// Validator trust at the last epoch (0–1).
    pub validator_trust: f64,
    /// Emission credited over its life.
    pub emission: u64,
    /// Whether the last epoch gave it a validator permit.
    pub validator_permit: bool,
    /// Block its weights were last set at.
    pub last_update: u64,
    /// Block its hotkey registered at (of two miners serving one output, the earlier is the
    /// original).
    pub registered_at: u64,
}

/// The subnet's neurons at a block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metagraph {
    /// The block read.
    pub block: u64,
    /// Epochs run so far.
    pub epochs: u64,
    /// Every uid, in uid order.
    pub neurons: Vec<NeuronInfo>,
}

impl Metagraph {
    /// The uid `hotkey` acts for.
    pub fn uid(&self, hotkey: &AccountId) -> Option<u16> {
        self.neurons
            .iter()
            .find(|n| n.hotkey == *hotkey)
            .map(|n| n.uid)
    }

    /// The neuron with `uid`.
    pub fn neuron(&self, uid: u16) -> Option<&NeuronInfo> {
        self.neurons.get(uid as usize).filter(|n| n.uid == uid)
    }

    /// The embedded ledger's state as a metagraph.
    pub fn of_state(state: &State) -> Self {
        let share = |v: u16| f64::from(v) / f64::from(u16::MAX);
        Self {
            block: state.block,
            epochs: state.epochs,
            neurons: state
                .neurons
                .iter()
                .map(|n| NeuronInfo {
                    uid: n.uid,
                    hotkey: n.hotkey,
                    coldkey: n.coldkey,
                    stake: n.stake,
                    address: n.address.clone(),
                    consensus: share(n.consensus),
                    incentive: share(n.incentive),
                    dividends: share(n.dividends),
                    validator_trust: share(n.validator_trust),
                    emission: n.total_emission,
                    validator_permit: n.validator_permit,
                    last_update: n.weights_set_at,
                    registered_at: n.registered_at,
                })
                .collect(),
        }
    }
}

/// A contribution commitment that is in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContributionRecord {
    /// Who committed.
    pub uid: u16,
    /// Hash of the contribution's bytes.
    pub hash: Hash,
    /// Order among all commitments (earlier is smaller): the first to commit an update wrote it.
    pub sequence: u64,
}

/// How weights went onto the chain ([`Ledger::commit_weights`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsCommitment {
    /// Set at once: the subnet has commit-reveal off.
    Set,
    /// Committed as `hash`: the caller reveals `reveal` once [`Ledger::committed_weights`]
    /// shows the commitment open.
    Hashed {
        /// The commitment.
        hash: Hash,
        /// What it hashed.
        reveal: WeightsReveal,
    },
    /// Encrypted to drand round `round`: the chain reveals them itself, at about
    /// `reveal_block`; there is nothing for the caller to reveal.
    Timelocked {
        /// The drand round that decrypts them.
        round: u64,
        /// The block the chain is expected to reveal them at.
        reveal_block: u64,
    },
}

/// Weights to reveal: what the commitment hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsReveal {
    /// Target uids.
    pub uids: Vec<u16>,
    /// Their weights (`u16`, any scale).
    pub values: Vec<u16>,
    /// The salt hashed into the commitment.
    pub salt: Vec<u16>,
    /// The weights version key.
    pub version_key: u64,
}

impl WeightsReveal {
    /// `values` for `uids` with a fresh random salt.
    pub fn salted(uids: &[u16], values: &[u16], version_key: u64) -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        Self {
            uids: uids.to_vec(),
            values: values.to_vec(),
            salt: (0..4).map(|_| rng.random()).collect(),
            version_key,
        }
    }

    /// The chain's commitment hash of these weights from `hotkey` on `netuid`.
    pub fn commitment(&self, hotkey: &AccountId, netuid: u16) -> Hash {
        super::extrinsic::weights_commitment(
            hotkey,
            netuid,
            &self.uids,
            &self.values,
            &self.salt,
            self.version_key,
        )
    }
}

/// What a run asks of a chain. Every method may block the calling thread for a few blocks at
/// most; none is called from an async task.
pub trait Ledger: Send + Sync {
    /// The hotkey this peer signs with.
    fn hotkey(&self) -> AccountId;
    /// The subnet the run's weights are for.
    fn netuid(&self) -> u16;
    /// The chain's genesis hash: what a peer's identity binding to its hotkey is signed over.
    fn genesis_hash(&self) -> Hash;
    /// About how long a block takes.
    fn block_time(&self) -> Duration;
    /// Registers the hotkey (its coldkey pays), unless it is already; its uid once in a block.
    fn register(&self) -> Result<u16, CallError>;
    /// Publishes the address the hotkey serves at; returns once it is in a block.
    fn serve(&self, address: &str) -> Result<(), CallError>;
    /// Moves `amount` from the coldkey's balance to the hotkey's stake.
    fn add_stake(&self, amount: u64) -> Result<(), CallError>;
    /// Commits to the hash of this peer's contribution to `round`.
    fn commit_contribution(&self, round: u64, hash: Hash) -> Result<(), CallError>;
    /// The contribution commitments to `round` that are in a block, in chain order: on a
    /// ledger that stores only a root per batch of a peer's contributions (subtensor), those
    /// of others once their proofs were accepted.
    fn contributions(&self, round: u64) -> Vec<ContributionRecord>;
    /// This peer's proof that its contribution to `round` is under a commitment in a block,
    /// for validators that cannot read it off the ledger; `None` where the ledger shows
    /// every contribution itself, or before the commitment is in a block.
    fn contribution_proof(&self, _round: u64) -> Option<Vec<u8>> {
        None
    }
    /// Checks the proof (bytes from a peer: hostile) of `uid`'s contribution to `round`
    /// against the ledger; once accepted, [`Ledger::contributions`] lists it. Where the
    /// ledger shows every contribution itself there is nothing to prove.
    fn accept_contribution_proof(
        &self,
        _uid: u16,
        _round: u64,
        _proof: &[u8],
    ) -> Result<(), CallError> {
        Ok(())
    }
    /// Blocks a contribution committed now may take to become checkable by validators: how
    /// long a validator keeps a round waiting for its members' commitments. A chain that
    /// takes one commitment per peer every `RateLimit` blocks (subtensor) batches them.
    fn commitment_delay(&self) -> u64 {
        1
    }
    /// Waits, at most `limit`, until none of this peer's contributions waits to be committed
    /// (a peer about to leave: what it does not commit, no validator can pay for); whether
    /// none does.
    fn settle(&self, _limit: Duration) -> bool {
        true
    }
    /// Blocks after a weights commitment is in a block until it can surely be revealed: how
    /// long a validator about to leave stays to reveal its last weights.
    fn reveal_delay(&self) -> u64 {
        2
    }
    /// Puts `values` for `uids` on the chain as the subnet takes weights: set at once,
    /// committed as a salted hash for the caller to reveal, or timelocked for the chain to.
    fn commit_weights(&self, uids: &[u16], values: &[u16]) -> Result<WeightsCommitment, CallError>;
    /// This hotkey's weights commitment that is in a block and not yet revealed.
    fn committed_weights(&self) -> Option<Hash>;
    /// Reveals committed weights.
    fn reveal_weights(&self, reveal: &WeightsReveal) -> Result<(), CallError>;
    /// The subnet's neurons now.
    fn metagraph(&self) -> Metagraph;
    /// The newest block's number.
    fn height(&self) -> u64;
    /// Waits until a block after `height` arrives (its number), or `limit` passes (`None`).
    fn wait_for_block(&self, height: u64, limit: Duration) -> Option<u64>;
}

/// Waits, block by block, until `done` holds or `limit` passes; whether it held.
pub fn wait_until(ledger: &dyn Ledger, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let height = ledger.height();
        if done() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || ledger.wait_for_block(height, left).is_none() {
            return done();
        }
    }
}

/// `count` of the ledger's blocks.
pub fn blocks(ledger: &dyn Ledger, count: u64) -> Duration {
    ledger
        .block_time()
        .saturating_mul(u32::try_from(count).unwrap_or(u32::MAX))
}

/// How long a validator waits for its weights commitment's reveal window.
pub fn reveal_wait(ledger: &dyn Ledger) -> Duration {
    blocks(ledger, ledger.reveal_delay().saturating_add(2)) + Duration::from_secs(2)
}

/// Puts a validator's weights on the ledger ([`Ledger::commit_weights`]); where they were
/// committed as a hash, the thread that reveals them once the commitment is open (join it
/// before leaving, or they are never revealed).
pub fn put_weights(
    ledger: &Arc<dyn Ledger>,
    uids: &[u16],
    values: &[u16],
) -> Result<Option<JoinHandle<()>>, CallError> {
    Ok(match ledger.commit_weights(uids, values)? {
        WeightsCommitment::Set => {
            tracing::info!(?uids, ?values, "weights set");
            None
        }
        WeightsCommitment::Timelocked {
            round,
            reveal_block,
        } => {
            tracing::info!(
                ?uids,
                ?values,
                round,
                reveal_block,
                "weights committed, timelocked to drand: the chain reveals them itself"
            );
            None
        }
        WeightsCommitment::Hashed { hash, reveal } => {
            tracing::info!(?uids, ?values, "weights committed");
            let ledger = ledger.clone();
            Some(std::thread::spawn(move || {
                reveal_when_open(ledger.as_ref(), hash, &reveal)
            }))
        }
    })
}

/// Reveals the weights committed as `hash` once the ledger shows the commitment open for its
/// reveal, waiting at most [`reveal_wait`].
pub fn reveal_when_open(ledger: &dyn Ledger, hash: Hash, reveal: &WeightsReveal) {
    if !wait_until(ledger, reveal_wait(ledger), || {
        ledger.committed_weights() == Some(hash)
    }) {
        tracing::warn!("the weights commitment's reveal window did not open in time: not revealed");
        return;
    }
    match ledger.reveal_weights(reveal) {
        Ok(()) => tracing::info!(uids = ?reveal.uids, values = ?reveal.values, "weights revealed"),
        Err(why) => tracing::warn!(%why, "weights not revealed"),
    }
}
