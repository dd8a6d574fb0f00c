//! Hostile miners, for the validator's tests (test builds only: the `fault-injection`
//! feature): with `SINTER_FAULT_AXON=KIND` the axon computes each answer honestly, then spoils
//! it the way a cheating or broken miner would, so that a test can show the validator pays it
//! nothing and still ends its rounds on time. Without the feature the variable is ignored.
//!
//! | KIND | the answer |
//! |---|---|
//! | `garbage` | random bytes of the answer's length |
//! | `nan` | probabilities and hidden values that are NaN, properly signed |
//! | `oversized` | thousands of distributions more than the text has positions (about 6 MiB), signed |
//! | `slow` | the honest answer, a minute late |
//! | `replayed` | its previous answer again (the first one signed over another request) |
//! | `unsigned` | the honest answer with its signature zeroed |
//! | `forged` | the honest output signed by a key that is not the miner's |
//! | `claim:SHA256` | its own model's output, claiming the weights hashed `SHA256` (hex) |
//! | `copy:HOTKEY:MULTIADDR` | the output of the miner `HOTKEY` at `MULTIADDR`, asked the same (signed by this one) |

use std::sync::Mutex;
use std::time::Duration;

use parity_scale_codec::DecodeAll;
use sinter_comms::net::{self, Client, Multiaddr, PeerId};
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use tokio::sync::OnceCell;

use super::axon::Axon;
use crate::synapse::{self, Output, Said, Synapse, TopK};

/// The fault hook's variable.
const VAR: &str = "SINTER_FAULT_AXON";
/// How late a `slow` miner answers.
const SLOW: Duration = Duration::from_secs(60);
/// About how many bytes of distributions an `oversized` answer adds: far more than asked,
/// within what the axon sends.
const EXTRA_BYTES: usize = 6 << 20;

/// How this miner spoils its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Garbage,
    Nan,
    Oversized,
    Slow,
    Replayed,
    Unsigned,
    Forged,
    /// Relays every request to this miner (its hotkey and axon).
    Copy(AccountId, Multiaddr),
    /// Claims these weights (their SHA-256) while serving others.
    Claim([u8; 32]),
}

impl Fault {
    /// The fault `SINTER_FAULT_AXON` names, in a test build; `None` otherwise. A name no
    /// fault has is an error.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(kind) = sinter_trainer::fault_for_test(VAR) else {
            return Ok(None);
        };
        let fault = match kind.as_str() {
            "garbage" => Fault::Garbage,
            "nan" => Fault::Nan,
            "oversized" => Fault::Oversized,
            "slow" => Fault::Slow,
            "replayed" => Fault::Replayed,
            "unsigned" => Fault::Unsigned,
            "forged" => Fault::Forged,
            other => {
                let claimed = other
                    .strip_prefix("claim:")
                    .and_then(|hash| Some(Fault::Claim(hex::decode(hash).ok()?.try_into().ok()?)));
                let copied = other.strip_prefix("copy:").and_then(|victim| {
                    let (hotkey, addr) = victim.split_once(':')?;
                    Some(Fault::Copy(
                        AccountId::parse(hotkey).ok()?,
                        addr.parse().ok()?,
                    ))
                });
                claimed
                    .or(copied)
                    .ok_or_else(|| format!("{VAR}={other}: not a fault this axon knows"))?
            }
        };
        tracing::error!(?fault, "{VAR}: this axon answers as a hostile miner");
        Ok(Some(fault))
    }
}

/// A hostile miner's memory: its previous answer, for `replayed`; its connection to the
/// miner it copies.
pub struct Hostile {
    fault: Fault,
    previous: Mutex<Option<Vec<u8>>>,
    relay: OnceCell<(Client, PeerId)>,
}

impl Hostile {
    /// A miner spoiling its answers with `fault`.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            previous: Mutex::new(None),
            relay: OnceCell::new(),
        }
    }

    /// The spoiled answer of `axon` to `request`.
    pub async fn answer(&self, axon: &Axon, request: &[u8]) -> Vec<u8> {
        let miner = &axon.hotkey;
        let (hash, output) = match &self.fault {
            Fault::Copy(victim, addr) => {
                let relayed = self.relayed(miner, *victim, addr, request).await;
                let output = relayed.unwrap_or_else(|why| Output::refused(&why));
                (synapse::request_hash(request), output)
            }
            _ => axon.honest(request).await,
        };
        let said = |output| match self.fault {
            Fault::Claim(model) => Said { model, output },
            _ => axon.said(output),
        };
        let signed = synapse::answer(miner, hash, &said(output.clone()));
        match self.fault {
            Fault::Garbage => (0..signed.len()).map(|_| rand::random::<u8>()).collect(),
            Fault::Nan => synapse::answer(miner, hash, &said(poisoned(output))),
            Fault::Oversized => synapse::answer(miner, hash, &said(padded(output))),
            Fault::Slow => {
                tokio::time::sleep(SLOW).await;
                signed
            }
            Fault::Replayed => {
                let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
                let first = || synapse::answer(miner, [0; 32], &said(output));
                previous.replace(signed).unwrap_or_else(first)
            }
            Fault::Unsigned => {
                let mut bytes = signed;
                bytes[32..96].fill(0);
                bytes
            }
            Fault::Forged => synapse::answer(&Keypair::generate().0, hash, &said(output)),
            Fault::Copy(..) | Fault::Claim(_) => signed,
        }
    }

    /// `victim`'s output for what `request` asks, asked by this miner in its own name.
    async fn relayed(
        &self,
        miner: &Keypair,
        victim: AccountId,
        addr: &Multiaddr,
        request: &[u8],
    ) -> Result<Output, String> {
        let body =
            &request[(synapse::HEADER_BYTES + synapse::SIGNATURE_BYTES).min(request.len())..];
        let asked = Synapse::decode_all(&mut &body[..]).map_err(|e| e.to_string())?;
        let (client, peer) = self
            .relay
            .get_or_try_init(|| async {
                let config =
                    net::NetConfig::client(net::Keypair::generate_ed25519(), "sinter/axon".into());
                let (client, _events, event_loop) =
                    net::start(config).await.map_err(|e| e.to_string())?;
                tokio::spawn(event_loop.run());
                let peer = client.dial(addr.clone()).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((client, peer))
            })
            .await?;
        let timeout = Duration::from_secs(10);
        let relayed = synapse::request(miner, victim, &asked, timeout);
        let bytes = synapse::call(client, *peer, &relayed, &asked, u32::MAX)
            .await
            .map_err(|e| e.to_string())?;
        synapse::open_answer(&bytes, &relayed, &victim, &asked, u32::MAX, 0)
            .map(|said| said.output)
            .map_err(|e| e.to_string())
    }
}

/// `output` with every probability and hidden value NaN.
fn poisoned(output: Output) -> Output {
    let nan = half::bf16::NAN.to_bits();
    match output {
        Output::Distributions(rows) => Output::Distributions(
            rows.into_iter()
                .map(|row| TopK {
                    probs: vec![nan; row.ids.len()],
                    rest: f32::NAN,
                    ..row
                })
                .collect(),
        ),
        Output::HiddenState { dim, values } => Output::HiddenState {
            dim,
            values: vec![nan; values.len()],
        },
        other => other,
    }
}

/// `output` with about [`EXTRA_BYTES`] of distributions more than were asked for.
fn padded(output: Output) -> Output {
    match output {
        Output::Distributions(mut rows) => {
            let row = rows.first().cloned().unwrap_or(TopK {
                ids: vec![0],
                probs: vec![0],
                rest: 1.0,
            });
            // A row's encoding: 4 bytes per id, 2 per probability, 4 for the rest, 2 of lengths.
            let extra = EXTRA_BYTES / (6 * row.ids.len() + 6);
            rows.extend(std::iter::repeat_n(row, extra));
            Output::Distributions(rows)
        }
        other => other,
    }
}
