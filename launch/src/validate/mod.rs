//! `launch validate`: a validator that pays miners for what their served outputs are worth.
//! Each round it reads the miners' axons from the ledger's metagraph, takes fresh evaluation
//! windows from the config's held-out split (text the miners never trained on), routes each
//! window through the sparse [`gate`] to `k` miners, asks them for the next-token distribution
//! at every position (`CausalLm`, signed both ways, [`query`]), and values each miner by its
//! Shapley value to the mixture's loss ([`value`]), scaled by how often it answered in time.
//! Every miner is also asked one generation under sampling, alike: a miner whose sample
//! repeats another's relays it, and is paid nothing for the round ([`copies`]); a miner
//! claiming the shared model is checked against the validator's own forward pass
//! ([`claims`]).
//! Scores are smoothed over rounds and become weights, committed and revealed through the
//! [`Ledger`]; its epochs turn them into emission. Every round is a line of
//! `OUT/validate.jsonl`.

pub mod claims;
pub mod copies;
pub mod cost;
pub mod gate;
pub mod query;
pub mod status;
pub mod value;

pub use status::status;

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
use crate::synapse::Synapse;
use gate::{Gate, features, softmax};
use query::{Answers, Asking, Miner, Miss};

/// Buckets of the gate's features (and one for its bias).
pub(crate) const GATE_FEATURES: usize = 1025;
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
    /// The same, by evaluation corpus.
    gate_share_by_corpus: BTreeMap<String, f64>,
    /// The miner whose answers it relays, if its sample repeats one registered earlier.
    copy_of: Option<u16>,
    /// The weights (SHA-256) its answers claim.
    model: Option<String>,
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
    context: usize,
    shared: Option<claims::Shared>,
}

/// Runs `launch validate`.
pub fn run(args: ValidateArgs) -> Result<()> {
    let config = RunConfig::load(&args.config)?;
    let corpora = match args.eval_corpus.is_empty() {
        true => vec![config.data.corpus.clone()],
        false => args.eval_corpus.clone(),
    };
    let datasets = corpora
        .iter()
        .map(|corpus| {
            let mut config = config.clone();
            config.data.corpus = corpus.clone();
            let (_, dataset) = config
                .load_data()
                .with_context(|| format!("loading the evaluation corpus {corpus:?}"))?;
            anyhow::Ok(dataset)
        })
        .collect::<Result<Vec<_>>>()?;
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
        let config = NetConfig::client(net::Keypair::generate_ed25519(), "sinter/axon".into());
        let (client, _events, event_loop) = net::start(config).await?;
        tokio::spawn(event_loop.run());
        anyhow::Ok(client)
    })?;
    let mut validator = Validator {
        ledger,
        hotkey,
        gate: Gate::new(GATE_FEATURES, 2.0, 0.1, args.seed),
        scores: BTreeMap::new(),
        revealing: None,
        vocab,
        context,
        shared: args
            .shared
            .as_deref()
            .map(|path| claims::Shared::load(path, config.model.vocab_size))
            .transpose()?,
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
        let batches: Vec<(usize, Vec<Vec<u32>>)> = datasets
            .iter()
            .enumerate()
            .map(|(c, dataset)| {
                let seed = args.seed ^ round.wrapping_mul(0x9e37) ^ (c as u64).rotate_left(32);
                (c, dataset.validation_windows(&data, seed))
            })
            .collect();
        let (windows, sources): (Vec<&[u32]>, Vec<&str>) = batches
            .iter()
            .flat_map(|(c, batch)| {
                batch
                    .iter()
                    .flat_map(|w| w.chunks_exact(context + 1))
                    .map(|w| (w, corpora[*c].as_str()))
            })
            .unzip();
        let record =
            runtime.block_on(validator.round(round, &windows, &sources, &client, &args))?;
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

/// What a round's answers are worth: each miner's summed Shapley value and gate shares (in
/// all, and by corpus), and the mixture's loss on each example some miner answered.
struct Valued<'a> {
    values: Vec<f64>,
    shares: Vec<Share>,
    by_corpus: Vec<BTreeMap<&'a str, Share>>,
    losses: Vec<f64>,
}

/// A miner's summed share of the mixture and the examples it was summed over.
#[derive(Debug, Clone, Copy, Default)]
struct Share {
    sum: f64,
    count: u64,
}

impl Share {
    fn add(&mut self, share: f64) {
        self.sum += share;
        self.count += 1;
    }

    fn mean(&self) -> f64 {
        match self.count {
            0 => 0.0,
            n => self.sum / n as f64,
        }
    }
}

impl Validator {
    /// One round over `windows` (each `context + 1` tokens, from the corpora `sources`): ask,
    /// check for copies and claims, value, smooth, set weights.
    async fn round(
        &mut self,
        round: u64,
        windows: &[&[u32]],
        sources: &[&str],
        client: &net::Client,
        args: &ValidateArgs,
    ) -> Result<RoundRecord> {
        let started = Instant::now();
        let metagraph = self.ledger.metagraph();
        let miners = miners(&metagraph, &self.hotkey);
        self.gate
            .sync(&miners.iter().map(|m| (m.uid, m.hotkey)).collect::<Vec<_>>());
        let xs: Vec<Vec<f32>> = windows.iter().map(|w| features(w, GATE_FEATURES)).collect();
        xs.iter().for_each(|x| self.gate.observe(x));
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
        let probe = probe(windows, self.context);
        let prompts: Vec<Vec<&[u32]>> = asked
            .iter()
            .map(|es| {
                es.iter()
                    .map(|&e| &windows[e][..windows[e].len() - 1])
                    .collect()
            })
            .collect();
        let mut answers: Vec<Answers> = futures::future::join_all(
            miners
                .iter()
                .zip(&prompts)
                .map(|(miner, prompts)| asking.miner(miner, &probe, prompts)),
        )
        .await;
        let copies = void_unchecked_and_copies(&miners, &mut answers);
        tokio::task::block_in_place(|| self.check_claims(round, &prompts, &mut answers, args.seed));
        for (miner, answers) in miners.iter().zip(&answers) {
            for answer in &answers.examples {
                if let Err((miss, why)) = &answer.rows {
                    tracing::debug!(uid = miner.uid, miss = miss.as_str(), %why, "no answer");
                }
            }
        }
        let valued = self.value(
            round,
            &miners,
            &asked,
            &answers,
            (windows, sources),
            &xs,
            args.seed,
        );
        let records = self.records(&miners, &answers, &valued, &copies, windows.len());
        self.scores
            .retain(|uid, _| miners.iter().any(|m| m.uid == *uid));
        let weights_committed = tokio::task::block_in_place(|| self.set_weights());
        Ok(RoundRecord {
            round,
            block: metagraph.block,
            examples: windows.len(),
            mixture_loss: (!valued.losses.is_empty()).then(|| mean(valued.losses.iter().copied())),
            uniform_loss: f64::from(self.vocab.max(1)).ln(),
            seconds: started.elapsed().as_secs_f64(),
            weights_committed,
            miners: records,
        })
    }

    /// Checks one answer a round of each miner claiming the shared model against this
    /// validator's own forward pass, at [`claims::POSITIONS`] positions; voids the round of a
    /// miner whose distributions are not the shared model's.
    fn check_claims(
        &self,
        round: u64,
        prompts: &[Vec<&[u32]>],
        answers: &mut [Answers],
        seed: u64,
    ) {
        use rand::{Rng, SeedableRng};
        let Some(shared) = &self.shared else {
            return;
        };
        let mut own: BTreeMap<&[u32], Vec<Vec<f32>>> = BTreeMap::new();
        for (m, answers) in answers.iter_mut().enumerate() {
            let claiming: Vec<usize> = (0..answers.examples.len())
                .filter(|&k| {
                    let answer = &answers.examples[k];
                    answer.rows.is_ok() && answer.model == Some(shared.hash)
                })
                .collect();
            if claiming.is_empty() {
                continue;
            }
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ round.rotate_left(17) ^ m as u64);
            let k = claiming[rng.random_range(0..claiming.len())];
            let tokens = prompts[m][k];
            let Ok(rows) = &answers.examples[k].rows else {
                continue;
            };
            let own = own.entry(tokens).or_insert_with(|| shared.probs(tokens));
            let wrong = (0..claims::POSITIONS)
                .map(|_| rng.random_range(0..tokens.len()))
                .find_map(|p| {
                    let why = claims::matches(&rows[p], &own[p]).err()?;
                    Some(format!(
                        "it claims the shared model, but at position {p} {why}"
                    ))
                });
            if let Some(why) = wrong {
                answers.void(Miss::WrongModel, &why);
            }
        }
    }

    /// Values the answers: each example's Shapley values among the miners asked that
    /// answered, and the gate's step on the mixture's loss.
    #[allow(clippy::too_many_arguments)]
    fn value<'a>(
        &mut self,
        round: u64,
        miners: &[Miner],
        asked: &[Vec<usize>],
        answers: &[Answers],
        (windows, sources): (&[&[u32]], &[&'a str]),
        xs: &[Vec<f32>],
        seed: u64,
    ) -> Valued<'a> {
        let mut valued = Valued {
            values: vec![0.0; miners.len()],
            shares: vec![Share::default(); miners.len()],
            by_corpus: vec![BTreeMap::new(); miners.len()],
            losses: Vec::new(),
        };
        for (e, window) in windows.iter().enumerate() {
            let targets = &window[1..];
            // The miners asked this example that answered, their probabilities and gate scores.
            let scores: BTreeMap<u16, f32> = self.gate.scores(&xs[e]).into_iter().collect();
            let mut present = Vec::new();
            for (m, es) in asked.iter().enumerate() {
                let Some(k) = es.iter().position(|&x| x == e) else {
                    continue;
                };
                if let Ok(rows) = &answers[m].examples[k].rows
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
                seed ^ round ^ e as u64,
            );
            let weights = softmax(&gate_scores);
            let slices: Vec<&[f64]> = probs.iter().map(Vec::as_slice).collect();
            valued.losses.push(value::mixture_loss(&slices, &weights));
            for (i, (m, _, _)) in present.iter().enumerate() {
                valued.values[*m] += estimate.values[i];
                valued.shares[*m].add(weights[i]);
                valued.by_corpus[*m]
                    .entry(sources[e])
                    .or_default()
                    .add(weights[i]);
            }
            let uids: Vec<u16> = present.iter().map(|(m, _, _)| miners[*m].uid).collect();
            self.gate.remember(xs[e].clone(), &uids, probs);
        }
        self.gate.replay();
        valued
    }

    /// Smooths each miner's score with this round's value times availability; its record.
    fn records(
        &mut self,
        miners: &[Miner],
        answers: &[Answers],
        valued: &Valued,
        copies: &[Option<u16>],
        examples: usize,
    ) -> Vec<MinerRecord> {
        let mut records = Vec::with_capacity(miners.len());
        for (m, miner) in miners.iter().enumerate() {
            let examples_asked = &answers[m].examples;
            let asked = examples_asked.len() as u64;
            let answered = examples_asked.iter().filter(|a| a.rows.is_ok()).count() as u64;
            let availability = if asked == 0 {
                0.0
            } else {
                answered as f64 / asked as f64
            };
            let value = valued.values[m] / examples.max(1) as f64;
            let score = self.scores.entry(miner.uid).or_insert(0.0);
            if asked > 0 {
                *score = (1.0 - SMOOTHING) * *score + SMOOTHING * value.max(0.0) * availability;
            }
            records.push(MinerRecord {
                uid: miner.uid,
                hotkey: miner.hotkey.ss58(),
                asked,
                answered,
                misses: query::count_misses(examples_asked.iter()),
                last_miss: examples_asked
                    .iter()
                    .rev()
                    .find_map(|a| a.rows.as_ref().err().map(|(_, why)| why.clone())),
                mean_latency_s: mean(examples_asked.iter().map(|a| a.seconds)),
                value,
                availability,
                score: *score,
                gate_share: valued.shares[m].mean(),
                gate_share_by_corpus: valued.by_corpus[m]
                    .iter()
                    .map(|(corpus, share)| (corpus.to_string(), share.mean()))
                    .collect(),
                copy_of: copies[m],
                model: examples_asked.iter().find_map(|a| a.model).map(hex::encode),
            });
        }
        records
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
                registered_at: n.registered_at,
                address: n.address.clone()?,
            })
        })
        .collect()
}

/// Tokens of the round's probe prompt, and tokens it asks to sample, at most.
const PROBE_TOKENS: usize = 16;

/// The round's sampling probe: the start of its first window, continued under sampling with a
/// fresh seed, asked alike of every miner.
fn probe(windows: &[&[u32]], context: usize) -> Synapse {
    let prompt = PROBE_TOKENS.min(context / 2).max(1);
    let tokens = windows
        .first()
        .map_or(&[0][..], |w| &w[..prompt.min(w.len())]);
    Synapse::TextGeneration {
        tokens: tokens.to_vec(),
        max_tokens: PROBE_TOKENS.min(context.saturating_sub(tokens.len())) as u32,
        temperature_milli: 1000,
        seed: rand::random(),
    }
}

/// Voids the round's answers of a miner that missed the probe (its answers cannot be checked
/// for copying) and of a miner whose sample repeats one registered earlier; for each miner,
/// the uid it copies.
fn void_unchecked_and_copies(miners: &[Miner], answers: &mut [Answers]) -> Vec<Option<u16>> {
    let samples: Vec<copies::Sample> = miners
        .iter()
        .zip(answers.iter())
        .map(|(miner, answers)| copies::Sample {
            uid: miner.uid,
            registered_at: miner.registered_at,
            tokens: answers.sample.as_ref().ok().map(Vec::as_slice),
        })
        .collect();
    let copied = copies::copied(&samples);
    for (answers, original) in answers.iter_mut().zip(&copied) {
        if let Some(original) = original {
            let why = format!("its sample repeats that of uid {original}, registered earlier");
            answers.void(Miss::Copied, &why);
        } else if let Err((miss, why)) = answers.sample.clone() {
            answers.void(miss, &format!("the sampling probe: {why}"));
        }
    }
    copied
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
