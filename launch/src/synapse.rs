//! The axon's messages: what a validator asks a miner and what the miner answers, each signed
//! by its sender's hotkey (sr25519), after the synapses of the Bittensor paper.
//!
//! A request is a fixed header and a SCALE-encoded [`Synapse`]. The header names the caller
//! and the callee (hotkeys), a nonce (the caller's clock in nanoseconds), a uuid, how long the
//! caller waits, and the SHA-256 of the body; the caller signs all of it. A miner checks, in
//! this order and before it decodes anything of the body: the header's size, a signature that
//! is there at all (Bittensor's axon once skipped the check when the signature was empty), the
//! callee being itself, the signature, the body's hash, then the nonce ([`Nonces`]: newer than
//! the caller's last and near the miner's clock, so a request is never run twice). Only then is
//! the body decoded, whole (no trailing bytes), with every length checked against what it may
//! hold.
//!
//! An answer carries the hash of the request it answers, the weights the miner says it
//! answered with (the SHA-256 of the weights file it serves) and its output, all signed by the
//! miner: a validator knows which miner said what, with which model, and no answer can be
//! replayed for another request. The validator checks every output against the request
//! ([`Output::check`]) before using it, and may check the model claimed against its own
//! forward pass.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parity_scale_codec::{Compact, CompactLen, Decode, DecodeAll, Encode};
use sha2::{Digest, Sha256};
use sinter_comms::net::{Client, NetError, PeerId, StreamProtocol};
use sinter_mechanism::ledger::keys::{AccountId, Keypair, verify};

/// What a request's signature covers first: no signature made for anything else verifies.
const REQUEST_DOMAIN: &[u8] = b"sinter-synapse-request/1";
/// What an answer's signature covers first.
const ANSWER_DOMAIN: &[u8] = b"sinter-synapse-answer/2";
/// Tokens a request may send.
pub const MAX_TOKENS: usize = 8192;
/// The largest request: a header, its signature and at most [`MAX_TOKENS`] tokens fit.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Alternatives per position a request may ask for.
pub const MAX_TOP_K: u32 = 64;
/// Tokens a generation may ask for.
pub const MAX_GENERATED: u32 = 4096;
/// The highest sampling temperature a generation may ask for, in thousandths (OpenAI's 2).
pub const MAX_TEMPERATURE_MILLI: u32 = 2000;
/// How far a nonce may be from the miner's clock: older requests are refused as stale, and a
/// caller's last nonce is forgotten once this old (a replay of it would be stale too).
pub const NONCE_WINDOW: Duration = Duration::from_secs(60);
/// Callers whose nonces are remembered at once (those of the last [`NONCE_WINDOW`]).
pub const MAX_CALLERS: usize = 4096;

/// What a validator asks of a miner.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Synapse {
    /// The last layer's hidden state at every position of `tokens`.
    LastHiddenState {
        /// The text, as the shared model's tokens.
        tokens: Vec<u32>,
    },
    /// The next-token distribution at every position: the `top_k` likeliest tokens and the
    /// probability left over.
    CausalLm {
        /// The text.
        tokens: Vec<u32>,
        /// Alternatives per position.
        top_k: u32,
    },
    /// The distribution of the token after `tokens`.
    CausalLmNext {
        /// The text.
        tokens: Vec<u32>,
        /// Alternatives.
        top_k: u32,
    },
    /// A continuation of `tokens`.
    TextGeneration {
        /// The prompt.
        tokens: Vec<u32>,
        /// Tokens to generate at most.
        max_tokens: u32,
        /// Softmax temperature, in thousandths (0: greedy).
        temperature_milli: u32,
        /// Sampling seed.
        seed: u64,
    },
}

impl Synapse {
    /// The tokens it sends.
    pub fn tokens(&self) -> &[u32] {
        match self {
            Synapse::LastHiddenState { tokens }
            | Synapse::CausalLm { tokens, .. }
            | Synapse::CausalLmNext { tokens, .. }
            | Synapse::TextGeneration { tokens, .. } => tokens,
        }
    }

    /// The most bytes an answer to it can take for a model of `dim` hidden values: its
    /// largest output (or a refusal) with the answer's hash, signature and model. A caller
    /// reads no further ([`call`]).
    pub fn max_answer_bytes(&self, dim: u32) -> usize {
        let len = |n: usize| Compact::<u64>::compact_len(&(n as u64));
        let list = |n: usize, each: usize| len(n).saturating_add(n.saturating_mul(each));
        let positions = self.tokens().len();
        let row = |top_k: u32| list(top_k as usize, 4) + list(top_k as usize, 2) + 4;
        let output = match *self {
            Synapse::LastHiddenState { .. } => {
                list(positions.saturating_mul(dim as usize), 2).saturating_add(4)
            }
            Synapse::CausalLm { top_k, .. } => list(positions, row(top_k)),
            Synapse::CausalLmNext { top_k, .. } => list(1, row(top_k)),
            Synapse::TextGeneration { max_tokens, .. } => list(max_tokens as usize, 4),
        };
        // The request's hash, the signature, the model and the output's tag.
        (32 + SIGNATURE_BYTES + 32 + 1).saturating_add(output.max(list(MAX_REASON, 1)))
    }

    /// Refuses what no miner should run: no tokens, too many, ids outside `vocab`, too many
    /// alternatives or tokens asked for.
    pub fn check(&self, vocab: u32) -> Result<(), SynapseError> {
        let tokens = self.tokens();
        if tokens.is_empty() || tokens.len() > MAX_TOKENS {
            return Err(SynapseError::Body(format!(
                "{} tokens: 1 to {MAX_TOKENS} are taken",
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(SynapseError::Body(format!(
                "token {bad} is outside the vocabulary of {vocab}"
            )));
        }
        match *self {
            Synapse::CausalLm { top_k, .. } | Synapse::CausalLmNext { top_k, .. }
                if top_k == 0 || top_k > MAX_TOP_K =>
            {
                Err(SynapseError::Body(format!(
                    "top_k {top_k}: 1 to {MAX_TOP_K} are taken"
                )))
            }
            Synapse::TextGeneration { max_tokens, .. } if max_tokens > MAX_GENERATED => Err(
                SynapseError::Body(format!("max_tokens {max_tokens}: at most {MAX_GENERATED}")),
            ),
            Synapse::TextGeneration {
                temperature_milli, ..
            } if temperature_milli > MAX_TEMPERATURE_MILLI => Err(SynapseError::Body(format!(
                "temperature {temperature_milli}/1000: at most {MAX_TEMPERATURE_MILLI}/1000"
            ))),
            _ => Ok(()),
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SynapseError {
    /// The bytes are not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// No signature, or one that does not verify.
    #[error("bad signature: {0}")]
    Signature(&'static str),
    /// Addressed to another hotkey.
    #[error("addressed to {to}, not this miner")]
    Misdirected {
        /// Whom it was for.
        to: AccountId,
    },
    /// A nonce already used, older than the caller's last, or far from this clock.
    #[error("nonce refused: {0}")]
    Nonce(String),
    /// Too many callers at once to remember their nonces.
    #[error("too many callers in the last minute; retry later")]
    Busy,
    /// A body that does not hash to the signed hash, cannot be decoded, or asks too much.
    #[error("bad body: {0}")]
    Body(String),
    /// An answer that does not fit its request.
    #[error("bad output: {0}")]
    Output(String),
    /// The miner refused the request, saying why (its words: shown, never acted on).
    #[error("the miner refused: {0}")]
    Refused(String),
}

/// A request's signed header.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Header {
    /// The validator's hotkey.
    pub caller: AccountId,
    /// The miner's hotkey.
    pub callee: AccountId,
    /// The caller's clock when it signed, in nanoseconds since the Unix epoch.
    pub nonce: u64,
    /// The request's id.
    pub uuid: [u8; 16],
    /// How long the caller waits for the answer, in milliseconds.
    pub timeout_ms: u32,
    /// SHA-256 of the body.
    pub body_hash: [u8; 32],
}

impl Header {
    fn signed_message(&self) -> Vec<u8> {
        let mut message = REQUEST_DOMAIN.to_vec();
        self.encode_to(&mut message);
        message
    }
}

/// The bytes of a request: the header, its signature, then the body.
pub(crate) const HEADER_BYTES: usize = 32 + 32 + 8 + 16 + 4 + 32;
pub(crate) const SIGNATURE_BYTES: usize = 64;

/// A request as sent: `caller` asks `callee` for `synapse`, waiting `timeout`.
pub fn request(
    caller: &Keypair,
    callee: AccountId,
    synapse: &Synapse,
    timeout: Duration,
) -> Vec<u8> {
    let body = synapse.encode();
    let header = Header {
        caller: caller.account(),
        callee,
        nonce: now_nanos(),
        uuid: rand::random(),
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        body_hash: Sha256::digest(&body).into(),
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(&caller.sign(&header.signed_message()));
    bytes.extend_from_slice(&body);
    bytes
}

/// A request that passed every check but the nonce's: who asked what.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The signed header.
    pub header: Header,
    /// What is asked.
    pub synapse: Synapse,
    /// SHA-256 of the whole request: what the answer is signed over.
    pub request_hash: [u8; 32],
}

/// Checks a request addressed to `me` (see the module docs for the order), with `nonces` the
/// miner's memory of its callers. Hostile bytes: nothing is decoded before the signature and
/// the body's hash verify.
pub fn open_request(
    bytes: &[u8],
    me: &AccountId,
    nonces: &mut Nonces,
    now_nanos: u64,
) -> Result<Verified, SynapseError> {
    if bytes.len() < HEADER_BYTES + SIGNATURE_BYTES {
        return Err(SynapseError::Malformed(format!(
            "{} bytes: shorter than a header and its signature",
            bytes.len()
        )));
    }
    let (head, rest) = bytes.split_at(HEADER_BYTES);
    let (signature, body) = rest.split_at(SIGNATURE_BYTES);
    let signature: [u8; 64] = signature.try_into().expect("64 bytes");
    if signature.iter().all(|&b| b == 0) {
        return Err(SynapseError::Signature("the request is not signed"));
    }
    let header = Header::decode_all(&mut &head[..])
        .map_err(|e| SynapseError::Malformed(format!("header: {e}")))?;
    if header.callee != *me {
        return Err(SynapseError::Misdirected { to: header.callee });
    }
    if !verify(&signature, &header.signed_message(), &header.caller) {
        return Err(SynapseError::Signature(
            "it does not verify under the caller's hotkey",
        ));
    }
    if <[u8; 32]>::from(Sha256::digest(body)) != header.body_hash {
        return Err(SynapseError::Body(
            "it does not hash to the signed hash".into(),
        ));
    }
    nonces.accept(&header.caller, header.nonce, now_nanos)?;
    let synapse = Synapse::decode_all(&mut &body[..])
        .map_err(|e| SynapseError::Body(format!("not a synapse: {e}")))?;
    Ok(Verified {
        header,
        synapse,
        request_hash: request_hash(bytes),
    })
}

/// What an answer to the request `bytes` is signed over: the hash of the request as sent.
pub fn request_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Each caller's last nonce, for the last [`NONCE_WINDOW`]: a request is taken once, in the
/// order its caller signed them, and only while fresh. Memory is bounded: callers whose last
/// nonce left the window are forgotten (their old requests are stale anyway), and past
/// [`MAX_CALLERS`] fresh ones new callers are refused until some are forgotten.
#[derive(Debug, Default)]
pub struct Nonces {
    last: HashMap<AccountId, u64>,
}

impl Nonces {
    /// Takes `nonce` from `caller` if it is newer than the caller's last and within the
    /// window of `now` (both nanoseconds).
    pub fn accept(&mut self, caller: &AccountId, nonce: u64, now: u64) -> Result<(), SynapseError> {
        let window = NONCE_WINDOW.as_nanos() as u64;
        if nonce.abs_diff(now) > window {
            return Err(SynapseError::Nonce(format!(
                "{:.1} s from this miner's clock (at most {} s)",
                nonce.abs_diff(now) as f64 / 1e9,
                NONCE_WINDOW.as_secs()
            )));
        }
        if let Some(&last) = self.last.get(caller)
            && nonce <= last
        {
            return Err(SynapseError::Nonce(format!(
                "{nonce} is not newer than the caller's last, {last} (a replay?)"
            )));
        }
        if !self.last.contains_key(caller) && self.last.len() >= MAX_CALLERS {
            self.last
                .retain(|_, last| now.saturating_sub(*last) <= window);
            if self.last.len() >= MAX_CALLERS {
                return Err(SynapseError::Busy);
            }
        }
        self.last.insert(*caller, nonce);
        Ok(())
    }
}

/// The likeliest tokens at one position and the probability left to the others.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct TopK {
    /// Token ids, likeliest first.
    pub ids: Vec<u32>,
    /// Their probabilities, as bf16 bits.
    pub probs: Vec<u16>,
    /// The probability of every other token.
    pub rest: f32,
}

/// What a miner answers.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Output {
    /// Hidden states: `dim` bf16 values per position.
    HiddenState {
        /// Values per position.
        dim: u32,
        /// Row after row, as bf16 bits.
        values: Vec<u16>,
    },
    /// One distribution per position asked for.
    Distributions(Vec<TopK>),
    /// Generated tokens.
    Text(Vec<u32>),
    /// No output, and why (at most [`MAX_REASON`] bytes).
    Refused(String),
}

/// The longest reason a refusal gives.
pub const MAX_REASON: usize = 512;

impl Output {
    /// A refusal for `reason`, cut to [`MAX_REASON`] bytes at a character boundary.
    pub fn refused(reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Output::Refused(reason[..end].to_string())
    }
}

/// Probabilities may sum above one by this much (bf16 rounding).
const SUM_SLACK: f32 = 0.02;

impl Output {
    /// Refuses an output that cannot answer `synapse` for a model of `vocab` tokens and
    /// `dim` hidden values: wrong shapes, ids outside the vocabulary or repeated, probabilities
    /// that are not finite, negative, unordered or sum above one.
    pub fn check(&self, synapse: &Synapse, vocab: u32, dim: u32) -> Result<(), SynapseError> {
        let bad = |why: String| Err(SynapseError::Output(why));
        let positions = synapse.tokens().len();
        match (synapse, self) {
            (Synapse::LastHiddenState { .. }, Output::HiddenState { dim: d, values }) => {
                if *d != dim || values.len() != positions.saturating_mul(dim as usize) {
                    return bad(format!(
                        "{} values of width {d}: {positions} positions of {dim} expected",
                        values.len()
                    ));
                }
                match values.iter().all(|&v| half::bf16::from_bits(v).is_finite()) {
                    true => Ok(()),
                    false => bad("a hidden value is not finite".into()),
                }
            }
            (Synapse::CausalLm { top_k, .. }, Output::Distributions(rows))
                if rows.len() == positions =>
            {
                rows.iter().try_for_each(|row| row.check(*top_k, vocab))
            }
            (Synapse::CausalLmNext { top_k, .. }, Output::Distributions(rows))
                if rows.len() == 1 =>
            {
                rows[0].check(*top_k, vocab)
            }
            (Synapse::TextGeneration { max_tokens, .. }, Output::Text(tokens)) => {
                if tokens.len() > *max_tokens as usize {
                    return bad(format!("{} tokens for at most {max_tokens}", tokens.len()));
                }
                match tokens.iter().find(|&&t| t >= vocab) {
                    Some(t) => bad(format!("token {t} outside the vocabulary of {vocab}")),
                    None => Ok(()),
                }
            }
            (_, Output::Refused(reason)) => {
                let reason: String = reason.chars().take(MAX_REASON).collect();
                Err(SynapseError::Refused(reason))
            }
            _ => bad("not the kind of output the synapse asks for".into()),
        }
    }
}

impl TopK {
    fn check(&self, top_k: u32, vocab: u32) -> Result<(), SynapseError> {
        let bad = |why: String| Err(SynapseError::Output(why));
        if self.ids.len() != self.probs.len() || self.ids.len() > top_k as usize {
            return bad(format!(
                "{} ids and {} probabilities for top_k {top_k}",
                self.ids.len(),
                self.probs.len()
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.ids.len());
        if let Some(id) = self.ids.iter().find(|&&id| id >= vocab || !seen.insert(id)) {
            return bad(format!(
                "token {id} repeated or outside the vocabulary of {vocab}"
            ));
        }
        let probs: Vec<f32> = self
            .probs
            .iter()
            .map(|&p| half::bf16::from_bits(p).to_f32())
            .collect();
        if !probs
            .iter()
            .chain([&self.rest])
            .all(|p| p.is_finite() && *p >= 0.0)
        {
            return bad("a probability is negative or not finite".into());
        }
        if probs.windows(2).any(|w| w[0] < w[1]) {
            return bad("probabilities are not likeliest first".into());
        }
        let total = probs.iter().sum::<f32>() + self.rest;
        if total > 1.0 + SUM_SLACK {
            return bad(format!("probabilities sum to {total}"));
        }
        Ok(())
    }
}

/// What a miner's answer says: the weights it answered with, and its output.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Said {
    /// SHA-256 of the weights file the miner serves: the model it claims answered.
    pub model: [u8; 32],
    /// Its output.
    pub output: Output,
}

/// An answer as sent: the request's hash and what `miner` says, signed by it.
pub fn answer(miner: &Keypair, request_hash: [u8; 32], said: &Said) -> Vec<u8> {
    let body = said.encode();
    let mut bytes = request_hash.to_vec();
    bytes.extend_from_slice(&miner.sign(&answer_message(&request_hash, &body)));
    bytes.extend_from_slice(&body);
    bytes
}

fn answer_message(request_hash: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let mut message = ANSWER_DOMAIN.to_vec();
    message.extend_from_slice(request_hash);
    message.extend_from_slice(&Sha256::digest(body));
    message
}

/// The axon's protocol: a signed request, and its signed answer streamed in chunks.
pub const AXON_PROTOCOL: StreamProtocol = StreamProtocol::new("/sinter/axon/1");

/// Sends `request`, which asks `synapse`, to the axon of `peer` and returns the answer's
/// bytes, refused past the most `synapse` can be answered with for a model of `dim` hidden
/// values. Unchecked: open them with [`open_answer`].
pub async fn call(
    client: &Client,
    peer: PeerId,
    request: &[u8],
    synapse: &Synapse,
    dim: u32,
) -> Result<Vec<u8>, NetError> {
    let limit = synapse.max_answer_bytes(dim);
    client.call(peer, AXON_PROTOCOL, request, limit).await
}

/// Checks an answer from `miner` to the request `request` (its bytes as sent), and that its
/// output fits the synapse asked; what it says.
pub fn open_answer(
    bytes: &[u8],
    request: &[u8],
    miner: &AccountId,
    synapse: &Synapse,
    vocab: u32,
    dim: u32,
) -> Result<Said, SynapseError> {
    if bytes.len() < 32 + SIGNATURE_BYTES {
        return Err(SynapseError::Malformed(format!(
            "{} bytes: shorter than an answer's header",
            bytes.len()
        )));
    }
    let (hash, rest) = bytes.split_at(32);
    let (signature, body) = rest.split_at(SIGNATURE_BYTES);
    let hash: [u8; 32] = hash.try_into().expect("32 bytes");
    if hash != request_hash(request) {
        return Err(SynapseError::Output("it answers another request".into()));
    }
    let signature: [u8; 64] = signature.try_into().expect("64 bytes");
    if !verify(&signature, &answer_message(&hash, body), miner) {
        return Err(SynapseError::Signature(
            "the answer does not verify under the miner's hotkey",
        ));
    }
    let said = Said::decode_all(&mut &body[..])
        .map_err(|e| SynapseError::Output(format!("not an output: {e}")))?;
    said.output.check(synapse, vocab, dim)?;
    Ok(said)
}

/// This machine's clock in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
