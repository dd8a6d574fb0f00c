//! `launch validate`: a validator that pays miners for what their served outputs are worth.
//! Each round it reads the miners' axons from the ledger's metagraph, takes fresh evaluation
//! windows from the config's held-out split (text the miners never trained on), routes each
//! window through the sparse [`gate`] to `k` miners, asks them for the next-token distribution
//! at every position (`CausalLm`, signed both ways, [`query`]), and values each miner by its
//! Shapley value to the mixture's loss ([`value`]), scaled by how often it answered in time.
//! Scores are smoothed over rounds and become weights, committed and revealed through the
//! [`Ledger`]; its epochs turn them into emission. Every round is a line of
//! `OUT/validate.jsonl`.

pub mod gate;
pub mod query;
pub mod value;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sinter_comms::net::{self, NetConfig};
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::interface::{Metagraph, put_weights};
use sinter_mechanism::ledger::keys::Keypair;
use sinter_mechanism::ledger::wallet::Wallet;
use sinter_mechanism::score::{to_u16_row, weight_row};
use sinter_trainer::config::RunConfig;

use crate::ConfigFileError;
use crate::cli::ValidateArgs;
use gate::{Gate, features, softmax};
use query::{Answer, Asking, Miner};

/// Buckets of the gate's features (and one for its bias).
const GATE_FEATURES: usize = 257;
/// How fast a round's scores replace the smoothed ones.
const SMOOTHING: f64 = 0.3;

/// One miner's line in a round's record.
#[derive(Debug, Serialize)]
struct MinerRecord {
    uid: u16,
    hotkey: String,
    asked: u64,
    answered: u64,
    misses: BTreeMap<&'static str, u64>,
    /// What went wrong last, in detail.
    last_miss: Option<String>,
    mean_latency_s: f64,
    /// Its Shapley value summed over the round's examples, per example asked of the round.
    value: f64,
    /// Answers in time over requests.
    availability: f64,
    /// The smoothed score its weight comes from.
    score: f64,
    /// Its mean share of the mixture where it was asked.
    gate_share: f64,
}

/// A round's line of `validate.jsonl`.
#[derive(Debug, Serialize)]
struct RoundRecord {
    round: u64,
    block: u64,
    examples: usize,
    /// The mixture's mean loss (nats per token) over the examples some miner answered.
    mixture_loss: Option<f64>,
    /// A uniform guess's loss, for scale.
    uniform_loss: f64,
    seconds: f64,
    weights_committed: bool,
    miners: Vec<MinerRecord>,
}

/// What a validator keeps between rounds.
struct Validator {
    ledger: Arc<dyn Ledger>,
    hotkey: Keypair,
    gate: Gate,
    scores: BTreeMap<u16, f64>,
    revealing: Option<JoinHandle<()>>,
    vocab: u32,
}

/// Runs `launch validate`.
pub fn run(args: ValidateArgs) -> Result<()> {
    let config = RunConfig::load(&args.config)?;
    let (_, dataset) = config.load_data()?;
    let vocab = u32::try_from(config.model.vocab_size).context("the vocabulary beyond u32")?;
    let context = config.model.context;
    check_args(&args)?;
    let wallet = Wallet::read(&crate::wallet::path(&args.wallet)?, None)?;
    let hotkey = wallet.hotkey.clone();
    let runtime = crate::peer::runtime()?;
    let ledger = runtime
        .block_on(crate::ledger::connect(
            &args.ledger_node,
            wallet,
            args.ledger.as_deref(),
            runtime.handle().clone(),
        ))?
        .ok_or_else(|| {
            ConfigFileError(
                "a validator needs the ledger: pass --ledger-node MULTIADDR --genesis FILE".into(),
            )
        })?;
    let wait = Duration::from_secs_f64(args.ledger_node.block_secs * 5.0 + 10.0);
    if ledger.wait_for_block(ledger.height(), wait).is_none() {
        bail!("no block from the ledger within {wait:?}: is its author's node running?");
    }
    let uid = ledger
        .register()
        .with_context(|| format!("registering the validator's hotkey {}", hotkey.account()))?;
    println!("validating as uid {uid} ({})", hotkey.account());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let log_path = args.out.join("validate.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let client = runtime.block_on(async {
        let mut config = NetConfig::client(net::Keypair::generate_ed25519(), "sinter/axon".into());
        config.request_timeout = Duration::from_secs_f64(args.timeout) + Duration::from_secs(5);
        config.max_response_bytes = 8 << 20;
        let (client, _events, event_loop) = net::start(config).await?;
        tokio::spawn(event_loop.run());
        anyhow::Ok(client)
    })?;
    let mut validator = Validator {
        ledger,
        hotkey,
        gate: Gate::new(GATE_FEATURES, 0.5, 0.1, args.seed),
        scores: BTreeMap::new(),
        revealing: None,
        vocab,
    };
    let mut data = config.data.clone();
    data.validation_batches = 1;
    data.validation_batch_size = args.examples;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    runtime.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut round = 0u64;
    while args.rounds == 0 || round < args.rounds {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let started = Instant::now();
        let windows = dataset.validation_windows(&data, args.seed ^ round.wrapping_mul(0x9e37));
        let windows: Vec<&[u32]> = windows
            .iter()
            .flat_map(|w| w.chunks_exact(context + 1))
            .collect();
        let record = runtime.block_on(validator.round(round, &windows, &client, &args))?;
        writeln!(log, "{}", serde_json::to_string(&record)?)?;
        log.flush()?;
        report(&record);
        round += 1;
        let rest = Duration::from_secs_f64(args.round_secs).saturating_sub(started.elapsed());
        std::thread::sleep(rest);
    }
    if let Some(revealing) = validator.revealing.take() {
        println!("revealing the last weights committed (a few blocks)");
        let _ = revealing.join();
    }
    println!("{round} rounds; what each saw is in {}", log_path.display());
    Ok(())
}

fn check_args(args: &ValidateArgs) -> Result<()> {
    let positive = |value: f64, flag: &str| -> Result<()> {
        match value > 0.0 && value.is_finite() {
            true => Ok(()),
            false => bail!(ConfigFileError(format!(
                "{flag} must be a positive number of seconds, not {value}"
            ))),
        }
    };
    positive(args.timeout, "--timeout")?;
    if !(args.round_secs >= 0.0 && args.round_secs.is_finite()) {
        bail!(ConfigFileError(format!(
            "--round-secs must be 0 or more seconds, not {}",
            args.round_secs
        )));
    }
    if args.examples == 0 || args.k == 0 {
        bail!(ConfigFileError(
            "--examples and --k must be at least 1".into()
        ));
    }
    if args.top_k == 0 || args.top_k > crate::synapse::MAX_TOP_K {
        bail!(ConfigFileError(format!(
            "--top-k must be 1 to {}",
            crate::synapse::MAX_TOP_K
        )));
    }
    Ok(())
}

impl Validator {
    /// One round over `windows` (each `context + 1` tokens): ask, value, smooth, set weights.
    async fn round(
        &mut self,
        round: u64,
        windows: &[&[u32]],
        client: &net::Client,
        args: &ValidateArgs,
    ) -> Result<RoundRecord> {
        let started = Instant::now();
        let metagraph = self.ledger.metagraph();
        let miners = miners(&metagraph, &self.hotkey);
        self.gate
            .sync(&miners.iter().map(|m| (m.uid, m.hotkey)).collect::<Vec<_>>());
        let xs: Vec<Vec<f32>> = windows.iter().map(|w| features(w, GATE_FEATURES)).collect();
        let chosen: Vec<Vec<u16>> = xs.iter().map(|x| self.gate.choose(x, args.k)).collect();
        // What each miner is asked: the examples routed to it, in order.
        let asked: Vec<Vec<usize>> = miners
            .iter()
            .map(|m| {
                (0..windows.len())
                    .filter(|&e| chosen[e].contains(&m.uid))
                    .collect()
            })
            .collect();
        let asking = Asking {
            client,
            hotkey: &self.hotkey,
            top_k: args.top_k,
            timeout: Duration::from_secs_f64(args.timeout),
            deadline: started + Duration::from_secs_f64(args.timeout),
            vocab: self.vocab,
        };
        let prompts: Vec<Vec<&[u32]>> = asked
            .iter()
            .map(|es| {
                es.iter()
                    .map(|&e| &windows[e][..windows[e].len() - 1])
                    .collect()
            })
            .collect();
        let answers: Vec<Vec<Answer>> = futures::future::join_all(
            miners
                .iter()
                .zip(&prompts)
                .map(|(miner, prompts)| asking.miner(miner, prompts)),
        )
        .await;
        for (miner, answers) in miners.iter().zip(&answers) {
            for answer in answers {
                if let Err((miss, why)) = &answer.rows {
                    tracing::debug!(uid = miner.uid, miss = miss.as_str(), %why, "no answer");
                }
            }
        }
        let mut values = vec![0.0; miners.len()];
        let mut shares = vec![(0.0, 0u64); miners.len()];
        let mut losses = Vec::new();
        for (e, window) in windows.iter().enumerate() {
            let targets = &window[1..];
            // The miners asked this example that answered, their probabilities and gate scores.
            let scores: BTreeMap<u16, f32> = self.gate.scores(&xs[e]).into_iter().collect();
            let mut present = Vec::new();
            for (m, es) in asked.iter().enumerate() {
                let Some(k) = es.iter().position(|&x| x == e) else {
                    continue;
                };
                if let Ok(rows) = &answers[m][k].rows
                    && rows.len() == targets.len()
                {
                    let probs = value::target_probs(rows, targets, self.vocab);
                    let score = f64::from(scores.get(&miners[m].uid).copied().unwrap_or(0.0));
                    present.push((m, probs, score));
                }
            }
            if present.is_empty() {
                continue;
            }
            let probs: Vec<Vec<f64>> = present.iter().map(|(_, p, _)| p.clone()).collect();
            let gate_scores: Vec<f64> = present.iter().map(|(_, _, s)| *s).collect();
            let estimate = value::example_values(
                &probs,
                &gate_scores,
                self.vocab,
                64,
                args.seed ^ round ^ e as u64,
            );
            let weights = softmax(&gate_scores);
            let slices: Vec<&[f64]> = probs.iter().map(Vec::as_slice).collect();
            losses.push(value::mixture_loss(&slices, &weights));
            for (i, (m, _, _)) in present.iter().enumerate() {
                values[*m] += estimate.values[i];
                shares[*m].0 += weights[i];
                shares[*m].1 += 1;
            }
            let uids: Vec<u16> = present.iter().map(|(m, _, _)| miners[*m].uid).collect();
            self.gate
                .learn(&xs[e], &uids, &value::loss_gradient(&slices, &weights));
        }
        let mut records = Vec::with_capacity(miners.len());
        for (m, miner) in miners.iter().enumerate() {
            let asked = answers[m].len() as u64;
            let answered = answers[m].iter().filter(|a| a.rows.is_ok()).count() as u64;
            let availability = if asked == 0 {
                0.0
            } else {
                answered as f64 / asked as f64
            };
            let value = values[m] / windows.len().max(1) as f64;
            let score = self.scores.entry(miner.uid).or_insert(0.0);
            if asked > 0 {
                *score = (1.0 - SMOOTHING) * *score + SMOOTHING * value.max(0.0) * availability;
            }
            records.push(MinerRecord {
                uid: miner.uid,
                hotkey: miner.hotkey.ss58(),
                asked,
                answered,
                misses: query::count_misses(answers[m].iter()),
                last_miss: answers[m]
                    .iter()
                    .rev()
                    .find_map(|a| a.rows.as_ref().err().map(|(_, why)| why.clone())),
                mean_latency_s: mean(answers[m].iter().map(|a| a.seconds)),
                value,
                availability,
                score: *score,
                gate_share: if shares[m].1 == 0 {
                    0.0
                } else {
                    shares[m].0 / shares[m].1 as f64
                },
            });
        }
        self.scores
            .retain(|uid, _| miners.iter().any(|m| m.uid == *uid));
        let weights_committed = tokio::task::block_in_place(|| self.set_weights());
        Ok(RoundRecord {
            round,
            block: metagraph.block,
            examples: windows.len(),
            mixture_loss: (!losses.is_empty()).then(|| mean(losses.iter().copied())),
            uniform_loss: f64::from(self.vocab.max(1)).ln(),
            seconds: started.elapsed().as_secs_f64(),
            weights_committed,
            miners: records,
        })
    }

    /// Commits the smoothed scores as weights, unless the last commitment is still being
    /// revealed; whether it committed.
    fn set_weights(&mut self) -> bool {
        if self.revealing.as_ref().is_some_and(|r| !r.is_finished()) {
            return false;
        }
        let (uids, scores): (Vec<u16>, Vec<f64>) =
            self.scores.iter().map(|(u, s)| (*u, *s)).unzip();
        let values = to_u16_row(&weight_row(&scores));
        if values.iter().all(|v| *v == 0) {
            return false;
        }
        match put_weights(&self.ledger, &uids, &values) {
            Ok(revealing) => {
                self.revealing = revealing;
                true
            }
            Err(why) => {
                tracing::warn!(%why, "weights not committed; trying again next round");
                false
            }
        }
    }
}

/// The metagraph's miners: every other neuron with an announced address, in uid order.
fn miners(metagraph: &Metagraph, me: &Keypair) -> Vec<Miner> {
    metagraph
        .neurons
        .iter()
        .filter(|n| n.hotkey != me.account())
        .filter_map(|n| {
            Some(Miner {
                uid: n.uid,
                hotkey: n.hotkey,
                address: n.address.clone()?,
            })
        })
        .collect()
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0u64), |(s, c), v| (s + v, c + 1));
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// One line per round for the person watching.
fn report(record: &RoundRecord) {
    let miners: Vec<String> = record
        .miners
        .iter()
        .map(|m| {
            format!(
                "uid {} score {:.4} ({}/{} answered)",
                m.uid, m.score, m.answered, m.asked
            )
        })
        .collect();
    println!(
        "round {} (block {}): mixture loss {} in {:.1} s; {}",
        record.round,
        record.block,
        record
            .mixture_loss
            .map_or("-".into(), |l| format!("{l:.3}")),
        record.seconds,
        miners.join(", ")
    );
}
