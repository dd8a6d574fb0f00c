//! Asking miners: each round, every miner gets the round's sampling probe, then its examples,
//! one after another (a caller's nonces must reach a miner in order), all miners at once, each
//! request signed by the validator's hotkey, each answer streamed and read no further than the
//! request can be answered with, then checked
//! ([`synapse::open_answer`]) before it counts. A miner gets until the round's deadline; what
//! it has not answered by then is absent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sinter_comms::net::{Client, Multiaddr, NetError, PeerId};
use sinter_mechanism::ledger::keys::{AccountId, Keypair};

use crate::synapse::{self, Output, Said, Synapse, TopK};

/// A miner as the metagraph shows it.
#[derive(Debug, Clone)]
pub struct Miner {
    /// Its uid.
    pub uid: u16,
    /// Its hotkey: requests are addressed to it, answers must be signed by it.
    pub hotkey: AccountId,
    /// The block it registered at.
    pub registered_at: u64,
    /// The axon address it announced (bytes from the ledger: parsed, not trusted).
    pub address: String,
}

/// Why a miner's answer to an example does not count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Miss {
    /// Its address does not parse or cannot be dialled.
    Unreachable,
    /// No answer before the request's timeout or the round's deadline.
    Late,
    /// The miner refused.
    Refused,
    /// An answer that is malformed, unsigned, signed by another key, for another request, or
    /// of the wrong shape or values.
    Bad,
    /// Its sample repeats another miner's, registered earlier: it relays that miner.
    Copied,
    /// It claims the shared model, but its distributions are not the shared model's.
    WrongModel,
}

impl Miss {
    /// Its name in `validate.jsonl`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Miss::Unreachable => "unreachable",
            Miss::Late => "late",
            Miss::Refused => "refused",
            Miss::Bad => "bad_answer",
            Miss::Copied => "copied",
            Miss::WrongModel => "wrong_model",
        }
    }
}

/// A miner's answer to one example: its distributions, or why there are none; and how long it
/// took.
pub struct Answer {
    /// The distributions at each position, or what went wrong (and the detail, for the log).
    pub rows: Result<Vec<TopK>, (Miss, String)>,
    /// The weights it claims answered (their SHA-256), when it answered.
    pub model: Option<[u8; 32]>,
    /// Seconds from sending to the answer (or the failure).
    pub seconds: f64,
}

/// What a miner answered in a round.
pub struct Answers {
    /// Its sample for the round's probe (a generation every miner is asked alike).
    pub sample: Result<Vec<u32>, (Miss, String)>,
    /// Its answers to the examples routed to it, in order.
    pub examples: Vec<Answer>,
}

impl Answers {
    /// Voids every answer of the round: each misses with `miss`.
    pub fn void(&mut self, miss: Miss, why: &str) {
        for answer in &mut self.examples {
            answer.rows = Err((miss.clone(), why.to_string()));
        }
    }
}

/// What every request of a round shares.
pub struct Asking<'a> {
    /// The validator's network client.
    pub client: &'a Client,
    /// The validator's hotkey.
    pub hotkey: &'a Keypair,
    /// Alternatives per position.
    pub top_k: u32,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// When the round stops waiting.
    pub deadline: Instant,
    /// The model's vocabulary.
    pub vocab: u32,
}

impl Asking<'_> {
    /// `miner`'s sample for `probe`, then its answers to `examples` (token windows), in order.
    pub async fn miner(&self, miner: &Miner, probe: &Synapse, examples: &[&[u32]]) -> Answers {
        let started = Instant::now();
        let peer = match self.dial(&miner.address).await {
            Ok(peer) => peer,
            Err(why) => {
                let missed = || Answer {
                    rows: Err((Miss::Unreachable, why.clone())),
                    model: None,
                    seconds: started.elapsed().as_secs_f64(),
                };
                return Answers {
                    sample: Err((Miss::Unreachable, why.clone())),
                    examples: examples.iter().map(|_| missed()).collect(),
                };
            }
        };
        let sample = self
            .ask(peer, miner.hotkey, probe)
            .await
            .and_then(|said| match said.output {
                Output::Text(tokens) => Ok(tokens),
                _ => Err((Miss::Bad, "not text".into())),
            });
        let mut answers = Vec::with_capacity(examples.len());
        for tokens in examples {
            let sent = Instant::now();
            let synapse = Synapse::CausalLm {
                tokens: tokens.to_vec(),
                top_k: self.top_k,
            };
            let (rows, model) = match self.ask(peer, miner.hotkey, &synapse).await {
                Ok(Said {
                    model,
                    output: Output::Distributions(rows),
                }) => (Ok(rows), Some(model)),
                Ok(_) => (Err((Miss::Bad, "not distributions".into())), None),
                Err(missed) => (Err(missed), None),
            };
            answers.push(Answer {
                rows,
                model,
                seconds: sent.elapsed().as_secs_f64(),
            });
        }
        Answers {
            sample,
            examples: answers,
        }
    }

    async fn dial(&self, address: &str) -> Result<PeerId, String> {
        let addr: Multiaddr = address
            .parse()
            .map_err(|e| format!("address {address:?}: {e}"))?;
        let left = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.client.dial(addr)).await {
            Ok(Ok(peer)) => Ok(peer),
            Ok(Err(e)) => Err(format!("dialling {address}: {e}")),
            Err(_) => Err(format!("dialling {address}: no connection by the deadline")),
        }
    }

    /// `miner`'s checked output for `synapse`, or why there is none.
    async fn ask(
        &self,
        peer: PeerId,
        miner: AccountId,
        synapse: &Synapse,
    ) -> Result<Said, (Miss, String)> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = self.timeout.min(left);
        if timeout.is_zero() {
            return Err((Miss::Late, "the round's deadline passed".into()));
        }
        let request = synapse::request(self.hotkey, miner, synapse, timeout);
        let call = synapse::call(self.client, peer, &request, synapse, 0);
        let bytes = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e @ NetError::Answer { .. })) => return Err((Miss::Bad, e.to_string())),
            Ok(Err(e)) => return Err((Miss::Unreachable, e.to_string())),
            Err(_) => return Err((Miss::Late, format!("no answer within {timeout:?}"))),
        };
        synapse::open_answer(&bytes, &request, &miner, synapse, self.vocab, 0).map_err(
            |e| match e {
                synapse::SynapseError::Refused(_) => (Miss::Refused, e.to_string()),
                e => (Miss::Bad, e.to_string()),
            },
        )
    }
}

/// Failures counted by kind.
pub fn count_misses<'a>(answers: impl Iterator<Item = &'a Answer>) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        if let Err((miss, _)) = &answer.rows {
            *counts.entry(miss.as_str()).or_default() += 1;
        }
    }
    counts
}
