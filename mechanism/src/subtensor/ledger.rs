//! [`ChainLedger`]: the [`Ledger`] a run keeps on Bittensor's subtensor instead of the
//! embedded ledger. Registration, the served address, stake and weights are subtensor's own
//! calls; the peer's network identity (the signed binding of the embedded ledger's served
//! address) and its contributions go into its one commitment ([`super::record`]): the
//! binding, and the Merkle root over the contributions since the previous commitment. The
//! pallet takes one commitment per hotkey every `RateLimit` blocks, so contributions are
//! batched: a thread beside the run commits the batch whenever the limit allows.
//!
//! The chain shows a validator only each member's root: a member hands its proof of a
//! contribution ([`ContributionProof`], leaf, path and the block of the commitment holding the
//! root) once that commitment is in a block, and the validator checks it against the
//! commitment as it stood at that block; [`Ledger::contributions`] lists this peer's own
//! contributions and the others' whose proofs it accepted.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::record::{Batch, ContributionProof, Record};
use super::{Axon, Call, Chain, ChainError, DEFAULT_RATE_LIMIT, drand};
use crate::ledger::extrinsic::Hash;
use crate::ledger::interface::{
    CallError, ContributionRecord, Ledger, Metagraph, WeightsCommitment, WeightsReveal, wait_until,
};
use crate::ledger::keys::{AccountId, Keypair};
use crate::ledger::wallet::Wallet;

/// Bittensor's block time.
pub const BLOCK_TIME: Duration = Duration::from_secs(12);

/// A run's ledger on subtensor.
pub struct ChainLedger {
    inner: Arc<Inner>,
}

struct Inner {
    chain: Chain,
    netuid: u16,
    wallet: Wallet,
    max_burn: Option<u64>,
    block_time: Duration,
    batches: Mutex<Batches>,
}

#[derive(Default)]
struct Batches {
    /// The identity's signature over the hotkey, once this peer serves.
    binding: Option<[u8; 64]>,
    /// Contributions not committed yet.
    pending: Batch,
    /// Batches whose commitment is in a block, with the block.
    committed: Vec<(u64, Batch)>,
    /// Others' contributions whose proofs were accepted, per round (the newest rounds only).
    proven: std::collections::BTreeMap<u64, Vec<ContributionRecord>>,
}

/// Rounds of others' proven contributions kept (a validator scores the newest few).
const PROVEN_ROUNDS: usize = 64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A chain error as the interface's: a rule of the chain refused it, or it could not be had.
fn call_error(call: &'static str, error: ChainError) -> CallError {
    match error {
        ChainError::Dispatch { .. } | ChainError::Rejected { .. } | ChainError::Invalid(_) => {
            CallError::Refused {
                call,
                reason: error.to_string(),
            }
        }
        _ => CallError::Unavailable {
            call,
            why: error.to_string(),
        },
    }
}

/// A contribution's place in chain order: its commitment's block, then its leaf.
fn sequence(block: u64, leaf: usize) -> u64 {
    block
        .saturating_mul(1 << 16)
        .saturating_add(leaf.min(u16::MAX as usize) as u64)
}

/// The IPv4 address and TCP port a multiaddr starts with (`/ip4/A.B.C.D/tcp/P…`).
fn axon_of(address: &str) -> Option<Axon> {
    let mut parts = address.split('/').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ip4"), Some(ip), Some("tcp"), Some(port)) => Some(Axon {
            ip: ip.parse().ok()?,
            port: port.parse().ok()?,
        }),
        _ => None,
    }
}

impl ChainLedger {
    /// A ledger on `netuid` of `chain`, signing with `wallet`; registering pays at most
    /// `max_burn` rao. Starts the thread that commits contributions as the rate limit allows.
    pub fn new(
        chain: Chain,
        netuid: u16,
        wallet: Wallet,
        max_burn: Option<u64>,
        block_time: Duration,
    ) -> Result<Self, ChainError> {
        if !chain.subnet_exists(netuid)? {
            return Err(ChainError::Invalid(format!(
                "there is no subnet {netuid} on the chain at {}",
                chain.url()
            )));
        }
        let inner = Arc::new(Inner {
            chain,
            netuid,
            wallet,
            max_burn,
            block_time,
            batches: Mutex::default(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("chain-commits".into())
            .spawn(move || commit_as_allowed(weak))
            .map_err(|e| ChainError::Invalid(format!("starting the commit thread: {e}")))?;
        Ok(Self { inner })
    }
}

/// Commits the pending contributions each time the rate limit allows, until the ledger goes.
fn commit_as_allowed(ledger: Weak<Inner>) {
    loop {
        let Some(inner) = ledger.upgrade() else {
            return;
        };
        let height = match inner.chain.height() {
            Ok(height) => height,
            Err(e) => {
                tracing::warn!(error = %e, "reading the chain's height");
                drop(inner);
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = inner.flush(height) {
            tracing::warn!(error = %e, "contributions not committed yet");
        }
        let limit = inner.block_time * 2;
        drop(inner);
        // Holds no strong reference while waiting: the ledger may go meanwhile.
        match ledger.upgrade() {
            Some(inner) => {
                let chain = &inner.chain;
                let _ = chain.wait_for_block(height, limit);
            }
            None => return,
        }
    }
}

impl Inner {
    fn hotkey(&self) -> &Keypair {
        &self.wallet.hotkey
    }

    fn coldkey(&self, call: &'static str) -> Result<&Keypair, CallError> {
        self.wallet.coldkey_for(call)
    }

    fn submit(&self, name: &'static str, call: Call, key: &Keypair) -> Result<u64, CallError> {
        self.chain
            .submit(&call, key, &mut |_| {})
            .map(|included| included.block)
            .map_err(|e| call_error(name, e))
    }

    /// Commits the record of the pending contributions if the rate limit allows it at
    /// `height` (and this peer serves: the record carries its binding).
    fn flush(&self, height: u64) -> Result<(), CallError> {
        const CALL: &str = "set_commitment";
        let (binding, batch) = {
            let batches = lock(&self.batches);
            match batches.binding {
                Some(binding) if !batches.pending.leaves.is_empty() => {
                    (binding, batches.pending.clone())
                }
                _ => return Ok(()),
            }
        };
        let unavailable = |e| call_error(CALL, e);
        let last = self
            .chain
            .last_commitment(self.netuid, &self.hotkey().account())
            .map_err(unavailable)?;
        let limit = self.chain.commitment_rate_limit().map_err(unavailable)?;
        if let Some(last) = last.filter(|b| height < b.saturating_add(limit)) {
            tracing::debug!(
                height,
                next = last.saturating_add(limit),
                waiting = batch.leaves.len(),
                "contributions wait for the commitments' rate limit"
            );
            return Ok(());
        }
        let block = self.commit_record(binding, &batch)?;
        let mut batches = lock(&self.batches);
        // Contributions committed meanwhile stay pending for the next record.
        batches.pending.leaves.drain(..batch.leaves.len());
        batches.committed.push((block, batch));
        tracing::info!(block, "contributions committed to the chain");
        Ok(())
    }

    fn commit_record(&self, binding: [u8; 64], batch: &Batch) -> Result<u64, CallError> {
        let record = Record {
            binding,
            root: batch.root(),
            rounds: batch.rounds(),
        };
        let call = Call::SetCommitment {
            netuid: self.netuid,
            data: record.encode(),
        };
        self.submit("set_commitment", call, self.hotkey())
    }

    fn uid(&self) -> Option<u16> {
        self.chain
            .uid(self.netuid, &self.hotkey().account())
            .ok()
            .flatten()
    }
}

impl Ledger for ChainLedger {
    fn hotkey(&self) -> AccountId {
        self.inner.hotkey().account()
    }

    fn netuid(&self) -> u16 {
        self.inner.netuid
    }

    fn genesis_hash(&self) -> Hash {
        self.inner.chain.genesis_hash()
    }

    fn block_time(&self) -> Duration {
        self.inner.block_time
    }

    fn register(&self) -> Result<u16, CallError> {
        const CALL: &str = "burned_register";
        let inner = &self.inner;
        let hotkey = self.hotkey();
        let unavailable = |e| call_error(CALL, e);
        if let Some(uid) = inner
            .chain
            .uid(inner.netuid, &hotkey)
            .map_err(unavailable)?
        {
            return Ok(uid);
        }
        let burn = inner.chain.burn(inner.netuid).map_err(unavailable)?;
        if let Some(max) = inner.max_burn.filter(|max| burn > *max) {
            return Err(CallError::Refused {
                call: CALL,
                reason: format!(
                    "registering costs {} now, over max_burn = {}",
                    super::units::format_tao(burn),
                    super::units::format_tao(max)
                ),
            });
        }
        let call = Call::BurnedRegister {
            netuid: inner.netuid,
            hotkey,
        };
        inner.submit(CALL, call, inner.coldkey(CALL)?)?;
        let uid = inner
            .chain
            .uid(inner.netuid, &hotkey)
            .map_err(unavailable)?;
        uid.ok_or_else(|| CallError::Unavailable {
            call: CALL,
            why: "registered, but the uid is not in storage".into(),
        })
    }

    fn serve(&self, address: &str) -> Result<(), CallError> {
        const CALL: &str = "serve";
        let inner = &self.inner;
        let refused = |reason: String| CallError::Refused { call: CALL, reason };
        let binding: [u8; 64] = address
            .rsplit_once('#')
            .and_then(|(_, sig)| hex::decode(sig).ok())
            .and_then(|sig| sig.try_into().ok())
            .ok_or_else(|| {
                refused(format!(
                    "{address} carries no identity signature (`…#<128 hex digits>`)"
                ))
            })?;
        // The chain refuses a loopback axon; the address still goes into the record.
        if let Some(axon) = axon_of(address).filter(|a| !a.ip.is_loopback()) {
            let call = Call::ServeAxon {
                netuid: inner.netuid,
                axon,
            };
            inner.submit("serve_axon", call, inner.hotkey())?;
        }
        let on_chain = inner
            .chain
            .commitment(inner.netuid, &self.hotkey())
            .map_err(|e| call_error(CALL, e))?
            .and_then(|c| Record::decode(&c.data).ok());
        lock(&inner.batches).binding = Some(binding);
        if on_chain.is_some_and(|r| r.binding == binding) {
            return Ok(());
        }
        let pending = lock(&inner.batches).pending.clone();
        let block = inner.commit_record(binding, &pending)?;
        let mut batches = lock(&inner.batches);
        batches.pending.leaves.drain(..pending.leaves.len());
        if !pending.leaves.is_empty() {
            batches.committed.push((block, pending));
        }
        Ok(())
    }

    fn add_stake(&self, amount: u64) -> Result<(), CallError> {
        const CALL: &str = "add_stake";
        let inner = &self.inner;
        let call = Call::AddStake {
            netuid: inner.netuid,
            hotkey: self.hotkey(),
            rao: amount,
        };
        inner.submit(CALL, call, inner.coldkey(CALL)?).map(drop)
    }

    fn commit_contribution(&self, round: u64, hash: Hash) -> Result<(), CallError> {
        lock(&self.inner.batches).pending.leaves.push((round, hash));
        Ok(())
    }

    fn contributions(&self, round: u64) -> Vec<ContributionRecord> {
        let batches = lock(&self.inner.batches);
        let mut records = batches.proven.get(&round).cloned().unwrap_or_default();
        if let Some(uid) = self.inner.uid() {
            records.extend(
                batches
                    .committed
                    .iter()
                    .flat_map(|(block, batch)| {
                        batch
                            .leaves
                            .iter()
                            .enumerate()
                            .filter(|(_, (r, _))| *r == round)
                            .map(move |(i, (_, hash))| ContributionRecord {
                                uid,
                                hash: *hash,
                                sequence: sequence(*block, i),
                            })
                    })
                    .collect::<Vec<_>>(),
            );
        }
        records.sort_by_key(|r| (r.uid, r.sequence));
        records.dedup_by_key(|r| r.uid);
        records.sort_by_key(|r| r.sequence);
        records
    }

    fn contribution_proof(&self, round: u64) -> Option<Vec<u8>> {
        let batches = lock(&self.inner.batches);
        batches.committed.iter().find_map(|(block, batch)| {
            let index = batch.leaves.iter().position(|(r, _)| *r == round)?;
            Some(
                ContributionProof {
                    block: *block,
                    index: u32::try_from(index).ok()?,
                    round,
                    hash: batch.leaves[index].1,
                    steps: batch.proof(index)?,
                }
                .encode(),
            )
        })
    }

    fn accept_contribution_proof(
        &self,
        uid: u16,
        round: u64,
        proof: &[u8],
    ) -> Result<(), CallError> {
        const CALL: &str = "contribution proof";
        let refused = |reason: String| CallError::Refused { call: CALL, reason };
        let inner = &self.inner;
        let proof = ContributionProof::decode(proof).map_err(|e| refused(e.to_string()))?;
        if proof.round != round {
            return Err(refused(format!(
                "it proves round {}, not {round}",
                proof.round
            )));
        }
        let hotkey = inner
            .chain
            .hotkey_of(inner.netuid, uid)
            .map_err(|e| call_error(CALL, e))?
            .ok_or_else(|| refused(format!("no uid {uid} on subnet {}", inner.netuid)))?;
        let record = inner
            .chain
            .commitment_at_block(inner.netuid, &hotkey, proof.block)
            .map_err(|e| call_error(CALL, e))?
            .and_then(|c| Record::decode(&c.data).ok())
            .ok_or_else(|| refused(format!("uid {uid} had no record at block {}", proof.block)))?;
        if !proof.holds_under(&record) {
            return Err(refused(format!(
                "it does not hold under uid {uid}'s root at block {}",
                proof.block
            )));
        }
        let mut batches = lock(&inner.batches);
        let proven = batches.proven.entry(round).or_default();
        if proven.iter().all(|r| r.uid != uid) {
            proven.push(ContributionRecord {
                uid,
                hash: proof.hash,
                sequence: sequence(proof.block, proof.index as usize),
            });
        }
        while batches.proven.len() > PROVEN_ROUNDS {
            batches.proven.pop_first();
        }
        Ok(())
    }

    fn commitment_delay(&self) -> u64 {
        self.inner
            .chain
            .commitment_rate_limit()
            .unwrap_or(DEFAULT_RATE_LIMIT)
            .saturating_add(1)
    }

    fn settle(&self, limit: Duration) -> bool {
        let waiting = || {
            let batches = lock(&self.inner.batches);
            // Without the binding (this peer never served) nothing can be committed.
            match batches.binding {
                Some(_) => batches.pending.leaves.len(),
                None => 0,
            }
        };
        let left = waiting();
        if left > 0 {
            tracing::info!(
                contributions = left,
                "waiting (at most {} s) for the chain's commitment rate limit to commit this peer's last contributions: leaving now would leave them unpaid",
                limit.as_secs()
            );
        }
        wait_until(self, limit, || waiting() == 0)
    }

    /// The reveal window opens `reveal_period_epochs` epochs after the commitment's epoch: at
    /// most one epoch more than that many.
    fn reveal_delay(&self) -> u64 {
        let inner = &self.inner;
        match inner.chain.hyperparameters(inner.netuid) {
            Ok(params) if params.commit_reveal => params
                .reveal_period_epochs
                .saturating_add(1)
                .saturating_mul(u64::from(params.tempo) + 1),
            Ok(_) => 1,
            Err(e) => {
                tracing::warn!(error = %e, "reading the subnet's hyperparameters");
                2
            }
        }
    }

    /// Weights as the subnet takes them: `set_weights` with commit-reveal off; with it on,
    /// timelocked to drand where the runtime reveals them itself, else a salted hash.
    fn commit_weights(&self, uids: &[u16], values: &[u16]) -> Result<WeightsCommitment, CallError> {
        const CALL: &str = "commit_weights";
        let inner = &self.inner;
        let netuid = inner.netuid;
        let unavailable = |e| call_error(CALL, e);
        let params = inner.chain.hyperparameters(netuid).map_err(unavailable)?;
        let version_key = params.weights_version_key;
        if !params.commit_reveal {
            let call = Call::SetWeights {
                netuid,
                uids: uids.to_vec(),
                values: values.to_vec(),
                version_key,
            };
            inner.submit("set_weights", call, inner.hotkey())?;
            return Ok(WeightsCommitment::Set);
        }
        if let Some(timelock) = inner.chain.timelock(netuid).map_err(unavailable)? {
            let commit = timelock
                .commit(
                    netuid,
                    drand::WeightsPayload {
                        hotkey: Some(self.hotkey()),
                        uids: uids.to_vec(),
                        values: values.to_vec(),
                        version_key,
                    },
                    inner.block_time.as_secs_f64(),
                    drand::unix_now(),
                )
                .map_err(|e| call_error(timelock.call, e))?;
            inner.submit(timelock.call, commit.call, inner.hotkey())?;
            return Ok(WeightsCommitment::Timelocked {
                round: commit.round,
                reveal_block: commit.reveal_block,
            });
        }
        let reveal = WeightsReveal::salted(uids, values, version_key);
        let hash = reveal.commitment(&self.hotkey(), netuid);
        inner.submit(CALL, Call::CommitWeights { netuid, hash }, inner.hotkey())?;
        Ok(WeightsCommitment::Hashed { hash, reveal })
    }

    /// The newest commitment once its reveal window is open (the chain refuses a reveal
    /// before).
    fn committed_weights(&self) -> Option<Hash> {
        let inner = &self.inner;
        let commits = inner
            .chain
            .weight_commits(inner.netuid, &self.hotkey())
            .ok()?;
        let height = inner.chain.height().ok()?;
        commits
            .iter()
            .rev()
            .find(|c| c.reveal_from <= height && height <= c.reveal_until)
            .map(|c| c.hash)
    }

    fn reveal_weights(&self, reveal: &WeightsReveal) -> Result<(), CallError> {
        let inner = &self.inner;
        let call = Call::RevealWeights {
            netuid: inner.netuid,
            reveal: reveal.clone(),
        };
        inner
            .submit("reveal_weights", call, inner.hotkey())
            .map(drop)
    }

    /// The subnet's neurons, each address the axon and the identity binding of its record:
    /// `/ip4/IP/tcp/PORT#<signature>` (the peer id is not on the chain; the signature is
    /// checked against each run member's).
    fn metagraph(&self) -> Metagraph {
        let inner = &self.inner;
        let mut metagraph = match inner.chain.metagraph(inner.netuid) {
            Ok(metagraph) => metagraph,
            Err(e) => {
                tracing::warn!(error = %e, "reading the metagraph");
                return Metagraph {
                    block: 0,
                    epochs: 0,
                    neurons: Vec::new(),
                };
            }
        };
        let hotkeys: Vec<AccountId> = metagraph.neurons.iter().map(|n| n.hotkey).collect();
        let records = inner
            .chain
            .commitments(inner.netuid, &hotkeys)
            .unwrap_or_default();
        for (neuron, commitment) in metagraph.neurons.iter_mut().zip(records) {
            let binding = commitment.and_then(|c| Record::decode(&c.data).ok());
            let axon = neuron.address.as_deref().and_then(|a| {
                let (ip, port) = a.rsplit_once(':')?;
                Some(format!("/ip4/{ip}/tcp/{port}"))
            });
            neuron.address = match (axon, binding) {
                (axon, Some(record)) => Some(format!(
                    "{}#{}",
                    axon.unwrap_or_default(),
                    hex::encode(record.binding)
                )),
                (axon, None) => axon,
            };
        }
        metagraph
    }

    fn height(&self) -> u64 {
        self.inner.chain.height().unwrap_or(0)
    }

    fn wait_for_block(&self, height: u64, limit: Duration) -> Option<u64> {
        self.inner
            .chain
            .wait_for_block(height, limit)
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axon_is_the_leading_ip4_and_tcp_port_of_a_served_address() {
        let axon = axon_of("/ip4/10.1.2.3/tcp/4001/p2p/12D3KooW#00").unwrap();
        assert_eq!((axon.ip.to_string(), axon.port), ("10.1.2.3".into(), 4001));
        for none in [
            "",
            "#00",
            "/ip6/::1/tcp/1",
            "/ip4/10.1.2.3/udp/1/quic-v1",
            "/ip4/999.1.2.3/tcp/1",
            "/ip4/10.1.2.3/tcp/70000",
            "/dns4/example.com/tcp/1",
        ] {
            assert!(axon_of(none).is_none(), "{none}");
        }
    }
}
