//! `launch incentives`, `launch ledger show|verify`, `launch wallet …` and `launch bench
//! cabal`: the incentive mechanism from the command line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use sinter_kernels::Kernels;
use sinter_mechanism::cabal;
use sinter_mechanism::consensus::{Consensus, Hyperparams};
use sinter_mechanism::ledger::keys::Keypair;
use sinter_mechanism::ledger::{self, state::State};
use sinter_mechanism::score::ScoreKind;
use sinter_trainer::RunConfig;
use sinter_trainer::contribution::{self, ContributionOptions, ContributionReport, Role};

use crate::ConfigFileError;
use crate::backend::{BackendJob, dispatch};
use crate::cli::{ConsensusArg, IncentivesArgs, KeyArg, ScoreArg, WalletArgs, WalletCommand};

fn consensus(arg: ConsensusArg) -> Consensus {
    match arg {
        ConsensusArg::Subtensor => Consensus::Subtensor,
        ConsensusArg::Papers => Consensus::Papers,
    }
}

/// `launch incentives`.
pub fn run(args: IncentivesArgs) -> Result<()> {
    let mut config = RunConfig::load(&args.config)?;
    let incentives = &mut config.incentives;
    if let Some(c) = args.consensus {
        incentives.consensus.consensus = consensus(c);
    }
    if let Some(w) = args.weights_from {
        incentives.scoring.weights_from = match w {
            ScoreArg::Shapley => ScoreKind::Shapley,
            ScoreArg::Fisher => ScoreKind::Fisher,
        };
    }
    if let Some(b) = args.validator_batches {
        incentives.validator_batches = b;
    }
    if let Some(p) = args.permutations {
        incentives.scoring.permutations = p;
    }
    config
        .validate()
        .map_err(|message| sinter_trainer::config::ConfigError {
            path: args.config.clone(),
            message,
        })
        .context("after applying command-line overrides")?;
    let roles = args
        .roles
        .iter()
        .map(|r| r.parse::<Role>().map_err(ConfigFileError))
        .collect::<Result<Vec<_>, _>>()?;
    let options = ContributionOptions {
        roles,
        warmup_rounds: args.warmup_rounds,
        rounds: args.rounds.max(1),
        ledger: args.out.join("ledger"),
    };
    options.check().map_err(ConfigFileError)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let report = dispatch(config.run.backend, Job { config, options })?;
    let path = args.out.join("incentives.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    print_report(&report);
    println!(
        "wrote {} and {}",
        path.display(),
        args.out.join("ledger").display()
    );
    Ok(())
}

struct Job {
    config: RunConfig,
    options: ContributionOptions,
}

impl BackendJob for Job {
    type Output = ContributionReport;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        kernels: &dyn Kernels,
    ) -> Result<ContributionReport> {
        Ok(contribution::run::<B>(
            &self.config,
            kernels,
            &device,
            &self.options,
        )?)
    }
}

fn print_report(r: &ContributionReport) {
    println!(
        "{} rounds, {} blocks, {} epochs; validator loss {:.4} -> {:.4}",
        r.rounds, r.blocks, r.epochs, r.validator_loss.0, r.validator_loss.1
    );
    println!(
        "{:>3} {:<12} {:>11} {:>11} {:>11} {:>9}  filtered",
        "uid", "role", "shapley", "fisher", "loo", "emission"
    );
    for p in &r.peers {
        let filtered = p.rejected.first().map_or(String::new(), |(round, why)| {
            format!("{}× (round {round}: {why})", p.rejected.len())
        });
        println!(
            "{:>3} {:<12} {:>11.3e} {:>11.3e} {:>11.3e} {:>8.2}%  {filtered}",
            p.uid,
            format!("{:?}", p.role).to_lowercase(),
            p.shapley,
            p.fisher,
            p.leave_one_out,
            100.0 * p.emission_share
        );
    }
    println!(
        "validator's dividends: {:.2}% of emission; lazy + copycat: {:.2}%",
        100.0 * r.validator_emission_share,
        100.0 * r.lazy_and_copycat_share
    );
    println!(
        "rank correlation with leave-one-out: Shapley {:.3}, Fisher {:.3}",
        r.spearman_shapley, r.spearman_fisher
    );
    if !r.monte_carlo_relative_error.is_empty() {
        let worst = r
            .monte_carlo_relative_error
            .iter()
            .cloned()
            .fold(0.0, f64::max);
        println!("Monte-Carlo Shapley vs exact: worst relative error {worst:.4}");
    }
    println!(
        "scoring: {:.1} s ({} coalition values), {:.0}% of the {:.1} s of training; the training thread waited {:.1} s for it",
        r.scoring_secs,
        r.evaluations,
        100.0 * r.scoring_secs / r.training_secs.max(1e-9),
        r.training_secs,
        r.scoring_stall_secs
    );
}

fn metagraph(state: &State) {
    println!(
        "{:>4} {:<50} {:>16} {:>9} {:>9} {:>9} {:>9} {:>16}",
        "uid", "hotkey", "stake", "consensus", "incentive", "dividends", "vtrust", "emission"
    );
    for n in &state.neurons {
        println!(
            "{:>4} {:<50} {:>16} {:>9.5} {:>9.5} {:>9.5} {:>9.5} {:>16}",
            n.uid,
            n.hotkey.ss58(),
            n.stake,
            n.consensus as f64 / 65535.0,
            n.incentive as f64 / 65535.0,
            n.dividends as f64 / 65535.0,
            n.validator_trust as f64 / 65535.0,
            n.total_emission
        );
    }
}

/// `launch ledger show`.
pub fn show(file: &Path, json: bool) -> Result<()> {
    let (verification, state) = ledger::inspect(file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        println!(
            "{}: block {}, {} epochs, {} contributions committed, {} checkpoints recorded",
            file.display(),
            state.block,
            state.epochs,
            state.contributions_total,
            state.checkpoints.len()
        );
        metagraph(&state);
    }
    if !verification.is_clean() {
        eprintln!(
            "warning: this is the state after block {}; run `launch ledger verify {}`",
            verification.blocks,
            file.display()
        );
    }
    Ok(())
}

/// `launch ledger verify`.
pub fn verify(file: &Path, json: bool) -> Result<()> {
    let v = ledger::verify(file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} blocks, {} extrinsics and {} epochs checked (genesis {}, head {})",
            file.display(),
            v.blocks,
            v.extrinsics,
            v.epochs,
            &v.genesis[..16],
            &v.head[..16]
        );
    }
    if let Some((number, why)) = &v.first_bad {
        bail!(
            "{}: block {number} is bad: {why}. Blocks after it were not checked; restore the file from a replica",
            file.display()
        );
    }
    if let Some(number) = v.torn_block {
        bail!(
            "{}: block {number} was cut short while being written (a crash); it was never committed, and the ledger drops it when it next opens for writing",
            file.display()
        );
    }
    if !json {
        println!("  ok: every hash, signature, extrinsic and epoch checks out");
    }
    Ok(())
}

pub(crate) fn wallet_dir(args: &WalletArgs) -> Result<PathBuf> {
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set: pass --dir")?)
            .join(".sinter/wallets"),
    };
    if args.name.is_empty() || args.name.contains(['/', '\\']) || args.name.starts_with('.') {
        return Err(
            ConfigFileError(format!("wallet name {:?} is not a plain name", args.name)).into(),
        );
    }
    Ok(base.join(&args.name))
}

fn key_name(key: KeyArg) -> &'static str {
    match key {
        KeyArg::Coldkey => "coldkey",
        KeyArg::Hotkey => "hotkey",
    }
}

/// Writes a key file readable only by its owner (0600), synced, refusing to overwrite.
fn write_key(path: &Path, phrase: &str, key: &Keypair) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating {} (a key is never overwritten: move the old one away first)",
            path.display()
        )
    })?;
    let body = serde_json::json!({ "secret_phrase": phrase, "account": key.account().ss58() });
    file.write_all(serde_json::to_string_pretty(&body)?.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The key in a wallet key file.
pub(crate) fn read_key(path: &Path) -> Result<Keypair> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a sinter key file", path.display()))?;
    let phrase = value["secret_phrase"]
        .as_str()
        .with_context(|| format!("{} has no secret_phrase", path.display()))?;
    Ok(Keypair::from_secret(phrase)?)
}

/// `launch wallet …`.
pub fn wallet(command: WalletCommand) -> Result<()> {
    match command {
        WalletCommand::New(args) => {
            let dir = wallet_dir(&args)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for key in [KeyArg::Coldkey, KeyArg::Hotkey] {
                let (pair, phrase) = Keypair::generate();
                write_key(&dir.join(key_name(key)), &phrase, &pair)?;
                println!("{}: {}", key_name(key), pair.account().ss58());
                println!("  mnemonic (shown once; anyone holding it holds the key): {phrase}");
            }
            println!("saved in {} (files readable only by you)", dir.display());
            Ok(())
        }
        WalletCommand::Import { wallet, key } => {
            let dir = wallet_dir(&wallet)?;
            let mut phrase = String::new();
            std::io::stdin()
                .read_to_string(&mut phrase)
                .context("reading the mnemonic from stdin")?;
            let phrase = phrase.trim();
            let pair = Keypair::from_secret(phrase).map_err(|e| ConfigFileError(e.to_string()))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_key(&dir.join(key_name(key)), phrase, &pair)?;
            println!("{}: {}", key_name(key), pair.account().ss58());
            Ok(())
        }
        WalletCommand::Show(args) => {
            let dir = wallet_dir(&args)?;
            let mut found = false;
            for key in [KeyArg::Coldkey, KeyArg::Hotkey] {
                let path = dir.join(key_name(key));
                if path.exists() {
                    found = true;
                    println!("{}: {}", key_name(key), read_key(&path)?.account().ss58());
                }
            }
            if !found {
                bail!(
                    "no keys in {}: create them with `launch wallet new --name {}`",
                    dir.display(),
                    args.name
                );
            }
            Ok(())
        }
    }
}

/// `launch bench cabal`.
pub fn bench_cabal(epochs: usize, emission_percent: f64) -> Result<()> {
    for (name, arg) in [
        ("subtensor", ConsensusArg::Subtensor),
        ("papers", ConsensusArg::Papers),
    ] {
        let params = Hyperparams {
            consensus: consensus(arg),
            ..Hyperparams::default()
        };
        let run = cabal::simulate(&params, epochs.max(1), emission_percent)?;
        println!("{name}: epoch, cabal stake share, cabal emission share, ratio");
        for e in &run {
            println!(
                "  {:>3} {:>8.4} {:>8.4} {:>6.3}",
                e.epoch,
                e.stake_share,
                e.emission_share,
                e.emission_share / e.stake_share
            );
        }
    }
    Ok(())
}
