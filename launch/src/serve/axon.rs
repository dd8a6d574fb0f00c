//! The axon: `launch serve --axon MULTIADDR` answers validators over libp2p with the signed
//! synapses of [`crate::synapse`]. Each request is checked (signature, callee, body hash,
//! nonce, then what it asks) before it reaches the model; it then waits in the engine's queue
//! with its caller's stake as its priority (from the ledger's metagraph) and its own timeout
//! as its deadline. Callers the ledger does not know wait behind every staked caller, or are
//! refused (`--axon-refuse-unknown`). Every answer, a refusal included, is signed by the
//! miner's hotkey over the request's hash.
//!
//! Served: `TextGeneration` and `CausalLmNext` (the likeliest next tokens with their
//! probabilities, as bf16, and the mass left over). `LastHiddenState` and `CausalLm` are
//! refused by name for now.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sinter_mechanism::ledger::interface::Metagraph;
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_trainer::generate::Sampling;
use tokio::sync::mpsc;

use super::engine::{Engine, Event, Failure, Request, TokenLogprob};
use super::queue::Priority;
use crate::synapse::{self, Nonces, Output, Synapse, TopK};

/// The longest a caller may ask to wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the stakes are read again from the ledger file.
const STAKES_REFRESH: Duration = Duration::from_secs(12);

/// Callers' stakes: the metagraph of an embedded ledger file (kept by `launch ledger node`),
/// read at start and again every [`STAKES_REFRESH`] off the request path; none without one.
#[derive(Default)]
pub struct Stakes {
    ledger: Option<PathBuf>,
    metagraph: Mutex<Option<Metagraph>>,
}

impl Stakes {
    /// The stakes of the ledger file at `path`, read now: an unreadable file is an error.
    pub fn from_ledger(path: PathBuf) -> Result<Self, sinter_mechanism::ledger::LedgerError> {
        let stakes = Self {
            metagraph: Mutex::new(Some(read_metagraph(&path)?)),
            ledger: Some(path),
        };
        Ok(stakes)
    }

    /// The stake of `caller`'s neuron, or `None` if the ledger does not know it.
    fn of(&self, caller: &AccountId) -> Option<u64> {
        let metagraph = self.metagraph.lock().unwrap_or_else(|p| p.into_inner());
        let metagraph = metagraph.as_ref()?;
        metagraph.neuron(metagraph.uid(caller)?).map(|n| n.stake)
    }

    /// Reads the ledger file again every [`STAKES_REFRESH`], keeping the stakes last read
    /// while it cannot be read.
    async fn refresh(&self) {
        let Some(path) = self.ledger.clone() else {
            return;
        };
        loop {
            tokio::time::sleep(STAKES_REFRESH).await;
            let path = path.clone();
            match tokio::task::spawn_blocking(move || read_metagraph(&path)).await {
                Ok(Ok(metagraph)) => {
                    *self.metagraph.lock().unwrap_or_else(|p| p.into_inner()) = Some(metagraph)
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the ledger: keeping the stakes last read")
                }
                Err(_) => return,
            }
        }
    }
}

fn read_metagraph(path: &Path) -> Result<Metagraph, sinter_mechanism::ledger::LedgerError> {
    let (_, state) = sinter_mechanism::ledger::inspect(path)?;
    Ok(Metagraph::of_state(&state))
}

/// What the axon answers with.
pub struct Axon {
    /// The model's queue.
    pub engine: Engine,
    /// The miner's hotkey: callers address it, answers are signed with it.
    pub hotkey: Keypair,
    /// The model's vocabulary.
    pub vocab: u32,
    /// Its context, in tokens.
    pub context: usize,
    /// Callers' stakes.
    pub stakes: Stakes,
    /// Whether callers the ledger does not know are refused (else they wait last).
    pub refuse_unknown: bool,
    /// The callers' last nonces.
    pub nonces: Mutex<Nonces>,
}

impl Axon {
    /// The signed answer to `request` (hostile bytes): an output, or a refusal saying why.
    pub async fn answer(&self, request: &[u8]) -> Vec<u8> {
        let (hash, output) = match self.output(request).await {
            Ok(answered) => answered,
            Err(reason) => {
                metrics::counter!("sinter_axon_refused_total").increment(1);
                tracing::debug!(%reason, "axon request refused");
                (synapse::request_hash(request), Output::refused(&reason))
            }
        };
        synapse::answer(&self.hotkey, hash, &output)
    }

    async fn output(&self, request: &[u8]) -> Result<([u8; 32], Output), String> {
        let me = self.hotkey.account();
        let verified = {
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            synapse::open_request(request, &me, &mut nonces, synapse::now_nanos())
                .map_err(|e| e.to_string())?
        };
        let synapse = &verified.synapse;
        synapse.check(self.vocab).map_err(|e| e.to_string())?;
        let caller = verified.header.caller;
        let stake = match self.stakes.of(&caller) {
            Some(stake) => stake,
            None if self.refuse_unknown => {
                return Err(format!("{caller} is not registered on this miner's ledger"));
            }
            None => 0,
        };
        let timeout = Duration::from_millis(verified.header.timeout_ms.into()).min(MAX_TIMEOUT);
        let (tokens, max_tokens, sampling, top) = match *synapse {
            Synapse::TextGeneration {
                ref tokens,
                max_tokens,
                temperature_milli,
                seed,
            } => {
                let sampling = Sampling {
                    temperature: temperature_milli as f32 / 1000.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed,
                };
                (tokens, max_tokens as usize, sampling, 1)
            }
            Synapse::CausalLmNext { ref tokens, top_k } => {
                let greedy = Sampling {
                    temperature: 0.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed: 0,
                };
                (tokens, 1, greedy, top_k as usize)
            }
            Synapse::LastHiddenState { .. } | Synapse::CausalLm { .. } => {
                return Err("this miner does not serve LastHiddenState or CausalLm yet".into());
            }
        };
        if tokens.len().saturating_add(max_tokens) > self.context {
            return Err(format!(
                "{} tokens and {max_tokens} to generate exceed the context of {}",
                tokens.len(),
                self.context
            ));
        }
        let (events, mut receiver) = mpsc::unbounded_channel();
        let arrived = Instant::now();
        self.engine
            .submit(Request {
                prompt: tokens.clone(),
                max_tokens,
                sampling,
                stop: Vec::new(),
                logprobs: Some(top),
                events,
                arrived,
                priority: Priority { stake },
                deadline: Some(arrived + timeout),
            })
            .map_err(|_| "the queue is full".to_string())?;
        let mut generated: Vec<TokenLogprob> = Vec::new();
        loop {
            match receiver.recv().await {
                Some(Event::Logprob(token)) => generated.push(token),
                Some(Event::Text(_)) => {}
                Some(Event::Done { .. }) => break,
                Some(Event::Failed(Failure::Deadline)) => {
                    return Err("the request's timeout passed".into());
                }
                Some(Event::Failed(Failure::Displaced)) => {
                    return Err("displaced from the queue by callers with more stake".into());
                }
                None => return Err("the model stopped".into()),
            }
        }
        let output = match synapse {
            Synapse::CausalLmNext { .. } => {
                let next = generated
                    .first()
                    .ok_or_else(|| "no token was generated".to_string())?;
                Output::Distributions(vec![distribution(next)])
            }
            _ => Output::Text(generated.iter().map(|t| t.id).collect()),
        };
        metrics::counter!("sinter_axon_answered_total").increment(1);
        Ok((verified.request_hash, output))
    }
}

/// The likeliest next tokens of `next` as probabilities (bf16) and the mass left over.
fn distribution(next: &TokenLogprob) -> TopK {
    let probs: Vec<f32> = next.top.iter().map(|(_, _, l)| l.exp()).collect();
    TopK {
        ids: next.top.iter().map(|(id, _, _)| *id).collect(),
        probs: probs
            .iter()
            .map(|&p| half::bf16::from_f32(p).to_bits())
            .collect(),
        rest: (1.0 - probs.iter().sum::<f32>()).max(0.0),
    }
}

/// Answers the axon's requests from `events` until the network stops.
pub async fn serve(
    axon: Arc<Axon>,
    client: sinter_comms::net::Client,
    mut events: mpsc::Receiver<sinter_comms::net::NetEvent>,
) {
    let refresher = axon.clone();
    tokio::spawn(async move { refresher.stakes.refresh().await });
    while let Some(event) = events.recv().await {
        if let sinter_comms::net::NetEvent::Request { data, reply, .. } = event {
            let (axon, client) = (axon.clone(), client.clone());
            tokio::spawn(async move {
                let answer = axon.answer(&data).await;
                if let Err(e) = client.respond(reply, answer).await {
                    tracing::debug!(error = %e, "axon answer not sent");
                }
            });
        }
    }
}
