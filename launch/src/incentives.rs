//! `launch incentives` and `launch bench cabal`: the incentive mechanism's experiments from
//! the command line.

use anyhow::{Context, Result};
use sinter_kernels::Kernels;
use sinter_mechanism::consensus::Consensus;
use sinter_mechanism::score::ScoreKind;
use sinter_trainer::RunConfig;
use sinter_trainer::fused::TrainBackend;

use crate::ConfigFileError;
use crate::backend::{BackendJob, dispatch};
use crate::cli::{ConsensusArg, IncentivesArgs, ScoreArg};
use crate::experiments::contribution::{self, ContributionOptions, ContributionReport, Role};

pub(crate) fn consensus(arg: ConsensusArg) -> Consensus {
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

    fn run<B: TrainBackend>(
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
