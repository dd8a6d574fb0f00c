//! The axon: `launch serve --axon MULTIADDR` answers validators over libp2p with the signed
//! synapses of [`crate::synapse`], on a protocol of its own ([`synapse::AXON_PROTOCOL`]): a
//! request in one frame, its answer streamed in chunks, so no answer is held to one message's
//! size (`sinter_comms::net::stream`). Each request is checked (signature, callee, body hash,
//! nonce, then what it asks) before it reaches the model; it then waits in the engine's queue
//! with its caller's stake as its priority (from the ledger's metagraph) and its own timeout
//! as its deadline. Callers the ledger does not know wait behind every staked caller, or are
//! refused (`--axon-refuse-unknown`). Every answer, a refusal included, is signed by the
//! miner's hotkey over the request's hash.
//!
//! Every answer claims the model it comes from: the SHA-256 of the weights file served.
//!
//! Served: `TextGeneration`, `CausalLmNext` and `CausalLm` (the likeliest next tokens with
//! their probabilities, as bf16, and the mass left over: after the text, or at each of its
//! positions) and `LastHiddenState` (the final norm's output at each position, as bf16).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sinter_comms::net::IncomingStreams;
use sinter_comms::net::stream::{CallLimits, serve_calls};
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::interface::Metagraph;
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_trainer::generate::Sampling;
use tokio::sync::mpsc;

use super::engine::{Engine, Event, Failure, Request, Score, Scored, TokenLogprob, Want};
use super::hostile::Hostile;
use super::queue::Priority;
use crate::synapse::{self, Nonces, Output, Said, Synapse, TopK};

/// The longest a caller may ask to wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the stakes are read again from the ledger file.
const STAKES_REFRESH: Duration = Duration::from_secs(12);

/// Callers' stakes: the metagraph of an embedded ledger file (kept by `launch ledger node`) or
/// of a ledger this miner follows, read at start and again every [`STAKES_REFRESH`] off the
/// request path; none without either.
#[derive(Default)]
pub struct Stakes {
    source: Option<Source>,
    metagraph: Mutex<Option<Metagraph>>,
}

/// Where [`Stakes`] come from.
#[derive(Clone)]
enum Source {
    File(PathBuf),
    Ledger(Arc<dyn Ledger>),
}

impl Source {
    fn read(&self) -> Result<Metagraph, sinter_mechanism::ledger::LedgerError> {
        match self {
            Source::File(path) => {
                let (_, state) = sinter_mechanism::ledger::inspect(path)?;
                Ok(Metagraph::of_state(&state))
            }
            Source::Ledger(ledger) => Ok(ledger.metagraph()),
        }
    }
}

impl Stakes {
    /// The stakes of the ledger file at `path`, read now: an unreadable file is an error.
    pub fn from_file(path: PathBuf) -> Result<Self, sinter_mechanism::ledger::LedgerError> {
        let source = Source::File(path);
        Ok(Self {
            metagraph: Mutex::new(Some(source.read()?)),
            source: Some(source),
        })
    }

    /// The stakes of the ledger this miner follows.
    pub fn from_ledger(ledger: Arc<dyn Ledger>) -> Self {
        Self {
            metagraph: Mutex::new(Some(ledger.metagraph())),
            source: Some(Source::Ledger(ledger)),
        }
    }

    /// The stake of `caller`'s neuron, or `None` if the ledger does not know it.
    fn of(&self, caller: &AccountId) -> Option<u64> {
        let metagraph = self.metagraph.lock().unwrap_or_else(|p| p.into_inner());
        let metagraph = metagraph.as_ref()?;
        metagraph.neuron(metagraph.uid(caller)?).map(|n| n.stake)
    }

    /// Reads the stakes again every [`STAKES_REFRESH`], keeping those last read while the
    /// ledger cannot be read.
    async fn refresh(&self) {
        let Some(source) = self.source.clone() else {
            return;
        };
        loop {
            tokio::time::sleep(STAKES_REFRESH).await;
            let source = source.clone();
            match tokio::task::spawn_blocking(move || source.read()).await {
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

/// What the axon answers with.
pub struct Axon {
    /// The model's queue.
    pub engine: Engine,
    /// The miner's hotkey: callers address it, answers are signed with it.
    pub hotkey: Keypair,
    /// SHA-256 of the weights file served: the model every answer claims.
    pub model: [u8; 32],
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
    /// How this miner spoils its answers, in a test of hostile miners.
    pub hostile: Option<Hostile>,
}

impl Axon {
    /// The signed answer to `request` (hostile bytes): an output, or a refusal saying why.
    pub async fn answer(&self, request: &[u8]) -> Vec<u8> {
        match &self.hostile {
            Some(hostile) => hostile.answer(self, request).await,
            None => {
                let (hash, output) = self.honest(request).await;
                synapse::answer(&self.hotkey, hash, &self.said(output))
            }
        }
    }

    /// `output`, said with the model this miner serves.
    pub fn said(&self, output: Output) -> Said {
        Said {
            model: self.model,
            output,
        }
    }

    /// What an honest miner answers `request` with (the hash it answers, and its output).
    pub async fn honest(&self, request: &[u8]) -> ([u8; 32], Output) {
        match self.output(request).await {
            Ok(answered) => answered,
            Err(reason) => {
                metrics::counter!("sinter_axon_refused_total").increment(1);
                tracing::debug!(%reason, "axon request refused");
                (synapse::request_hash(request), Output::refused(&reason))
            }
        }
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
        let asked = Asked {
            priority: Priority { stake },
            timeout,
        };
        let output = match *synapse {
            Synapse::LastHiddenState { ref tokens } => {
                self.score(tokens, Want::Hidden, asked).await?
            }
            Synapse::CausalLm { ref tokens, top_k } => {
                self.score(tokens, Want::Top(top_k as usize), asked).await?
            }
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
                    seed: own_seed(seed, &me),
                };
                let generated = self
                    .generate(tokens, max_tokens as usize, sampling, 1, asked)
                    .await?;
                Output::Text(generated.iter().map(|t| t.id).collect())
            }
            Synapse::CausalLmNext { ref tokens, top_k } => {
                let greedy = Sampling {
                    temperature: 0.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed: 0,
                };
                let generated = self
                    .generate(tokens, 1, greedy, top_k as usize, asked)
                    .await?;
                let next = generated
                    .first()
                    .ok_or_else(|| "no token was generated".to_string())?;
                Output::Distributions(vec![distribution(next)])
            }
        };
        metrics::counter!("sinter_axon_answered_total").increment(1);
        Ok((verified.request_hash, output))
    }

    /// Generates up to `max_tokens` after `tokens`, each with its `top` likeliest
    /// alternatives.
    async fn generate(
        &self,
        tokens: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        top: usize,
        asked: Asked,
    ) -> Result<Vec<TokenLogprob>, String> {
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
                prompt: tokens.to_vec(),
                max_tokens,
                sampling,
                stop: Vec::new(),
                logprobs: Some(top),
                events,
                arrived,
                priority: asked.priority,
                deadline: Some(arrived + asked.timeout),
            })
            .map_err(|_| "the queue is full".to_string())?;
        let mut generated = Vec::new();
        loop {
            match receiver.recv().await {
                Some(Event::Logprob(token)) => generated.push(token),
                Some(Event::Text(_)) => {}
                Some(Event::Done { .. }) => return Ok(generated),
                Some(Event::Failed(failure)) => return Err(refusal(failure)),
                None => return Err("the model stopped".into()),
            }
        }
    }
}

/// How a request waits in the engine's queue.
#[derive(Clone, Copy)]
struct Asked {
    priority: Priority,
    timeout: Duration,
}

/// The seed this miner samples a generation with: the caller's, mixed with the miner's hotkey.
/// Two miners serving one model so answer one request differently, and a miner relaying
/// another's answers gives itself away (the validator's copy check).
fn own_seed(seed: u64, miner: &AccountId) -> u64 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(seed.to_le_bytes());
    hash.update(miner.0);
    let digest = hash.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Axon {
    /// One forward pass over `tokens`: hidden states or top-k distributions at every position.
    async fn score(&self, tokens: &[u32], want: Want, asked: Asked) -> Result<Output, String> {
        if tokens.len() > self.context {
            return Err(format!(
                "{} tokens exceed the context of {}",
                tokens.len(),
                self.context
            ));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let arrived = Instant::now();
        self.engine
            .submit(Score {
                tokens: tokens.to_vec(),
                want,
                arrived,
                priority: asked.priority,
                deadline: Some(arrived + asked.timeout),
                reply,
            })
            .map_err(|_| "the queue is full".to_string())?;
        let scored = answer
            .await
            .map_err(|_| "the model stopped".to_string())?
            .map_err(refusal)?;
        let bf16 = |v: f32| half::bf16::from_f32(v).to_bits();
        Ok(match scored {
            Scored::Hidden { dim, values } => Output::HiddenState {
                dim: u32::try_from(dim).map_err(|_| "hidden size beyond u32".to_string())?,
                values: values.into_iter().map(bf16).collect(),
            },
            Scored::Top(rows) => Output::Distributions(rows.iter().map(|row| top_k(row)).collect()),
        })
    }
}

/// Why a request the engine failed is refused.
fn refusal(failure: Failure) -> String {
    match failure {
        Failure::Deadline => "the request's timeout passed".into(),
        Failure::Displaced => "displaced from the queue by callers with more stake".into(),
    }
}

/// Token ids with their probabilities, as the wire's [`TopK`]: bf16, and the mass left over.
fn top_k(row: &[(u32, f32)]) -> TopK {
    TopK {
        ids: row.iter().map(|&(id, _)| id).collect(),
        probs: row
            .iter()
            .map(|&(_, p)| half::bf16::from_f32(p).to_bits())
            .collect(),
        rest: (1.0 - row.iter().map(|&(_, p)| p).sum::<f32>()).max(0.0),
    }
}

/// The likeliest next tokens of `next` as probabilities (bf16) and the mass left over.
fn distribution(next: &TokenLogprob) -> TopK {
    let row: Vec<(u32, f32)> = next.top.iter().map(|(id, _, l)| (*id, l.exp())).collect();
    top_k(&row)
}

/// Calls the axon answers at once; more wait for a free one or are closed unanswered.
const CONCURRENT_CALLS: usize = 256;

/// Answers the `calls` taken from `client`'s network (kept running by holding it) until it
/// stops.
pub async fn serve(
    axon: Arc<Axon>,
    client: sinter_comms::net::Client,
    calls: IncomingStreams,
    mut events: mpsc::Receiver<sinter_comms::net::NetEvent>,
) {
    let refresher = axon.clone();
    tokio::spawn(async move { refresher.stakes.refresh().await });
    // Calls come on their own protocol; the other events are read so that the network never
    // waits on them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let limits = CallLimits {
        max_request: synapse::MAX_REQUEST_BYTES,
        concurrent: CONCURRENT_CALLS,
        deadline: MAX_TIMEOUT + Duration::from_secs(60),
    };
    serve_calls(calls, limits, move |_, request| {
        let axon = axon.clone();
        async move { axon.answer(&request).await }
    })
    .await;
    drop(client);
}
