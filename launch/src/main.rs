//! `launch`: the sinter command line. Parses arguments, loads the config and wires the
//! trainer's pieces together; everything testable lives in the library crates.

mod ask;
pub(crate) mod backend;
mod bench;
mod chain;
mod checkpoints;
mod cli;
mod control;
mod data;
mod experiments;
mod incentives;
mod ledger;
mod peer;
mod progress;
mod relay;
mod report;
mod serve;
mod synapse;
mod validate;
mod wallet;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use sinter_kernels::Kernels;
use sinter_trainer::config::{Mode, Quant};
use sinter_trainer::fused::TrainBackend;
use sinter_trainer::generate::{Sampling, generate};
use sinter_trainer::simulate::{Observer, SimOptions, Summary, simulate};
use sinter_trainer::{RunConfig, TrainerError, weights};

use backend::{BackendJob, dispatch};
use cli::{BenchCommand, Cli, Command, ModeArg, OutArgs, OuterOverrides, QuantArg};
use progress::Progress;

/// Lets glibc's malloc keep freed memory for the next allocation instead of handing it back
/// to the kernel. A training step allocates and frees about a hundred MiB of activations and
/// gradients in buffers of up to a few MiB; with glibc's adaptive thresholds many of them are
/// fresh `mmap`s or re-grown heap, each page a fault and a zeroing in the kernel (8–10 % of a
/// step in `perf`). Fixed at glibc's own adaptive maximum (32 MiB; larger buffers still map
/// and unmap) and twice that for trimming the heap's top, training runs about 15 % faster
/// (BENCHMARKS.md). Elsewhere than glibc, nothing to do.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` sets two numbers malloc reads; no thread has started yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wgpu=warn,cubecl=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let config_error = e.chain().any(|c| {
                c.downcast_ref::<ConfigFileError>().is_some()
                    || matches!(
                        c.downcast_ref::<TrainerError>(),
                        Some(TrainerError::Config(_))
                    )
                    || c.downcast_ref::<sinter_trainer::config::ConfigError>()
                        .is_some()
                    || matches!(
                        c.downcast_ref::<sinter_comms::group::GroupError>(),
                        Some(sinter_comms::group::GroupError::ConfigMismatch { .. })
                    )
                    || matches!(
                        c.downcast_ref::<sinter_mechanism::ledger::LedgerError>(),
                        Some(sinter_mechanism::ledger::LedgerError::Wallet(_))
                    )
                    || matches!(
                        c.downcast_ref::<sinter_mechanism::subtensor::ChainError>(),
                        Some(sinter_mechanism::subtensor::ChainError::Invalid(_))
                    )
                    || c.downcast_ref::<sinter_trainer::data::DatasetError>()
                        .is_some_and(sinter_trainer::data::DatasetError::is_input)
                    || matches!(
                        c.downcast_ref::<sinter_mechanism::ledger::interface::CallError>(),
                        Some(sinter_mechanism::ledger::interface::CallError::Keys { .. })
                    )
            });
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

/// An input file that is malformed or does not fit together: exit code 2.
#[derive(Debug)]
struct ConfigFileError(String);

impl std::fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigFileError {}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sim(args) => {
            let config = config_with_overrides(&args.config, &args.outer, &args.out)?;
            let resume = args
                .resume
                .as_deref()
                .map(|dir| checkpoints::snapshot(dir, &config))
                .transpose()?;
            let start = resume.map_or(Start::Fresh, |s| Start::Resume(Box::new(s)));
            train_and_report(config, args.out.out, "sim", start).map(drop)
        }
        Command::Run(args) => {
            let config = config_with_overrides(&args.config, &args.outer, &args.out)?;
            peer::run(config, *args)
        }
        Command::Leave(args) => peer::leave(args),
        Command::Status(args) => match (&args.of.peer, &args.of.validator) {
            (Some(peer), _) => peer::status(peer, args.json),
            (None, Some(dir)) => validate::status(dir, args.json),
            (None, None) => anyhow::bail!("give --peer MULTIADDR or --validator DIR"),
        },
        Command::Relay(args) => relay::run(args),
        Command::Train(args) => {
            let mut config = load_config(&args.config, &args.out)?;
            alone(&mut config);
            if let Some(corpus) = args.corpus {
                config.data.corpus = corpus;
            }
            let start = match &args.from {
                Some(from) => Start::From(checkpoints::start_from(from, &config)?),
                None => Start::Fresh,
            };
            train_and_report(config, args.out.out, "train", start).map(drop)
        }
        Command::Data(cli::DataCommand::Prepare(args)) => data::prepare(&args),
        Command::Data(cli::DataCommand::Verify { dir }) => data::verify(&dir),
        Command::Data(cli::DataCommand::Tokenizer(args)) => data::tokenizer(&args),
        Command::Eval(args) => {
            let config = weights_config(&args.source)?;
            dispatch(
                args.backend.or(config.run.backend),
                EvalJob {
                    source: args.source,
                },
            )
        }
        Command::Generate(args) => {
            let config = weights_config(&args.source)?;
            dispatch(args.backend.or(config.run.backend), GenerateJob { args })
        }
        Command::Ask(args) => ask::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Serve(args) => {
            let config = weights_config(&args.source)?;
            dispatch(
                args.backend.or(config.run.backend),
                serve::ServeJob { args },
            )
        }
        Command::Checkpoint(cli::CheckpointCommand::Verify { dir, json }) => {
            checkpoints::verify(&dir, json)
        }
        Command::Checkpoint(cli::CheckpointCommand::Serve { dir, listen }) => {
            peer::serve_checkpoints(&dir, &listen)
        }
        Command::Checkpoint(cli::CheckpointCommand::Fetch {
            config,
            from,
            root,
            out,
        }) => peer::fetch_checkpoint(&RunConfig::load(&config)?, &from, root, &out),
        Command::Export(args) => checkpoints::export(&args),
        Command::Ledger(cli::LedgerCommand::Epoch { file }) => ledger::epoch(&file),
        Command::Ledger(cli::LedgerCommand::Show { file, json }) => ledger::show(&file, json),
        Command::Ledger(cli::LedgerCommand::Verify { file, json }) => ledger::verify(&file, json),
        Command::Ledger(cli::LedgerCommand::Node(args)) => ledger::node(args),
        Command::Ledger(cli::LedgerCommand::Submit(args)) => ledger::submit(args),
        Command::Wallet(command) => wallet::run(command),
        Command::Chain(command) => chain::run(command),
        Command::Incentives(args) => incentives::run(args),
        Command::Bench(BenchCommand::Train {
            config,
            steps,
            backend,
        }) => {
            let mut config = RunConfig::load(&config)?;
            config.inner.steps = steps;
            config.run.backend = backend.or(config.run.backend);
            alone(&mut config);
            let summary = train_and_report(config, None, "bench", Start::Fresh)?;
            println!("{}", serde_json::to_string(&bench::train_report(&summary))?);
            Ok(())
        }
        Command::Bench(BenchCommand::Cabal {
            epochs,
            emission_percent,
        }) => bench::cabal(epochs, emission_percent),
        Command::Bench(BenchCommand::Ledger { blocks, peers }) => {
            bench::ledger(blocks.max(200), peers.max(1))
        }
        Command::Bench(BenchCommand::Validator {
            miners,
            examples,
            k,
            iters,
        }) => validate::cost::bench(&miners, examples, k, iters),
        Command::Bench(BenchCommand::Yuma {
            uids,
            validators,
            iters,
        }) => bench::yuma(uids, validators, iters.max(1)),
        Command::Plot(args) if args.frontier => {
            let runs = args
                .runs
                .iter()
                .map(|run| report::read_frontier_point(run))
                .collect::<Result<Vec<_>>>()?;
            report::plot_frontier(&args.out, &args.title, &runs)?;
            println!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Plot(args) => {
            let series = args
                .runs
                .iter()
                .map(|dir| {
                    let label = dir.file_name().unwrap_or(dir.as_os_str());
                    Ok((
                        label.to_string_lossy().into_owned(),
                        report::read_metrics(dir)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            report::plot_curves(&args.out, &args.title, &series, args.x)?;
            println!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Bench(BenchCommand::Kernels { len, iters }) => {
            bench::kernels(len, iters.max(1));
            Ok(())
        }
        Command::Bench(BenchCommand::Allreduce {
            peers,
            mb,
            rounds,
            link_mbit,
            listen,
            external,
            bootstrap,
        }) => peer::bench_allreduce(
            peer::Addresses::parse(&listen, &external, &bootstrap)?,
            peers,
            mb,
            rounds.max(1),
            link_mbit,
        ),
    }
}

/// Loads a config and applies the overrides every training command shares.
fn load_config(path: &Path, out: &OutArgs) -> Result<RunConfig> {
    let mut config = RunConfig::load(path)?;
    if let Some(steps) = out.steps {
        config.inner.steps = steps;
    }
    if let Some(seed) = out.seed {
        config.run.seed = seed;
    }
    if let Some(every) = out.checkpoint_every {
        config.checkpoint.every_rounds = every;
    }
    config.run.backend = out.backend.or(config.run.backend);
    Ok(config)
}

/// Loads a config and applies the DiLoCo overrides of `sim` and `run` (`[outer]` and the
/// inner learning rate).
fn config_with_overrides(path: &Path, args: &OuterOverrides, out: &OutArgs) -> Result<RunConfig> {
    let mut config = load_config(path, out)?;
    if let Some(lr) = args.inner_lr {
        config.inner.lr = lr;
    }
    let outer = &mut config.outer;
    if let Some(n) = args.workers {
        outer.workers = n;
    }
    if let Some(h) = args.inner_steps {
        outer.inner_steps = h;
    }
    if let Some(q) = args.quant {
        outer.quant = match q {
            QuantArg::Int8 => Quant::Int8,
            QuantArg::None => Quant::None,
            QuantArg::Sparse => Quant::Sparse,
        };
    }
    let sparse = &mut outer.sparse;
    for (value, field) in [
        (args.sparse_k, &mut sparse.k),
        (args.sparse_chunk, &mut sparse.chunk),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(bits) = args.sparse_bits {
        sparse.bits = bits;
    }
    if let Some(decay) = args.error_decay {
        sparse.error_decay = decay;
    }
    if let Some(m) = args.mode {
        outer.mode = match m {
            ModeArg::Diloco => Mode::Diloco,
            ModeArg::Ddp => Mode::Ddp,
        };
    }
    if let Some(lr) = args.outer_lr {
        outer.lr = lr;
    }
    if let Some(mu) = args.outer_momentum {
        outer.momentum = mu;
    }
    if let Some(ef) = args.error_feedback {
        outer.error_feedback = ef;
    }
    if let Some(w) = args.warmup_ddp_steps {
        outer.warmup_ddp_steps = w;
    }
    if args.delayed_outer_step {
        outer.delayed_outer_step = true;
    }
    config
        .validate()
        .map_err(|message| sinter_trainer::config::ConfigError {
            path: path.to_path_buf(),
            message,
        })
        .context("after applying command-line overrides")?;
    Ok(config)
}

fn weights_config(source: &cli::WeightsArgs) -> Result<RunConfig> {
    let (config, _) =
        checkpoints::load_model::<sinter_trainer::CpuBackend>(source, &Default::default())?;
    Ok(config)
}

/// Where a run's parameters start.
enum Start {
    /// A fresh initialisation.
    Fresh,
    /// A checkpoint of the same run, continued.
    Resume(Box<sinter_trainer::checkpoint::Snapshot>),
    /// Trained weights, fine-tuned from (flat, in the model's layout).
    From(Vec<f32>),
}

/// One worker training alone (`launch train`, `launch bench train`).
fn alone(config: &mut RunConfig) {
    config.outer.workers = 1;
    config.outer.mode = Mode::Ddp;
    config.outer.warmup_ddp_steps = 0;
}

fn train_and_report(
    config: RunConfig,
    out: Option<PathBuf>,
    what: &str,
    start: Start,
) -> Result<Summary> {
    let title = match config.outer.mode {
        Mode::Ddp if config.outer.workers == 1 => "one worker".to_owned(),
        Mode::Ddp => format!("data-parallel, {} workers", config.outer.workers),
        Mode::Diloco => format!(
            "DiLoCo, {} workers, H={}, {}{}",
            config.outer.workers,
            config.outer.inner_steps,
            match config.outer.quant {
                Quant::Int8 => "int8".to_owned(),
                Quant::None => "fp32".to_owned(),
                Quant::Sparse => {
                    let s = config.outer.sparse;
                    format!("top-{}/{} {}-bit", s.k, s.chunk, s.bits)
                }
            },
            if config.outer.delayed_outer_step {
                ", outer step a round late"
            } else {
                ""
            }
        ),
    };
    tracing::info!(%title, config_hash = %&config.hash()[..16], steps = config.inner.steps, "starting {what}");
    dispatch(
        config.run.backend,
        TrainJob {
            config,
            out,
            title,
            start,
        },
    )
}

struct TrainJob {
    config: RunConfig,
    out: Option<PathBuf>,
    title: String,
    start: Start,
}

impl BackendJob for TrainJob {
    type Output = Summary;

    fn run<B: TrainBackend>(self, device: B::Device, kernels: &dyn Kernels) -> Result<Summary> {
        let (_, dataset) = self.config.load_data()?;
        let total = match self.config.outer.mode {
            Mode::Ddp => self.config.inner.steps,
            Mode::Diloco => {
                let w = self.config.outer.warmup_ddp_steps;
                w + (self.config.inner.steps - w) * self.config.outer.workers
            }
        };
        let mut progress = Progress::new(total as u64);
        let (resume, start_from) = match self.start {
            Start::Fresh => (None, None),
            Start::Resume(snapshot) => (Some(*snapshot), None),
            Start::From(values) => (None, Some(values)),
        };
        let result = simulate::<B>(
            &self.config,
            &dataset,
            kernels,
            &device,
            &mut progress as &mut dyn Observer,
            SimOptions {
                checkpoint_dir: self.out.as_ref().map(|d| d.join("checkpoints")),
                resume,
                start_from,
            },
        );
        progress.finish();
        let sinter_trainer::simulate::SimOutcome {
            summary,
            evals,
            model,
        } = result?;
        println!(
            "{}: validation loss {:.4} -> {:.4} in {:.0} s ({:.1}k tokens/s); {} sent per worker ({} data-parallel would)",
            self.title,
            summary.initial_val_loss,
            summary.final_val_loss,
            summary.wall_secs,
            summary.tokens_per_sec / 1000.0,
            report::human_bytes(summary.bytes_sent_per_worker as f64),
            report::human_bytes(summary.ddp_equivalent_bytes_per_worker as f64)
        );
        let c = &summary.checkpoints;
        if c.checkpoints_written > 0 {
            println!(
                "{} checkpoints: the training loop lost {:.3} s to them ({:.2} % of the run; writing took {:.2} s in the background)",
                c.checkpoints_written,
                c.checkpoint_stall_secs,
                100.0 * c.checkpoint_stall_secs / summary.wall_secs,
                c.checkpoint_write_secs
            );
        }
        if let Some(dir) = &self.out {
            report::write_run(dir, &evals, &summary, &self.title)?;
            weights::save(&model, &self.config, &dir.join("model.safetensors"))?;
            println!(
                "wrote {0}/metrics.jsonl, {0}/summary.json, {0}/loss.svg, {0}/model.safetensors",
                dir.display()
            );
        }
        Ok(summary)
    }
}

struct EvalJob {
    source: cli::WeightsArgs,
}

impl BackendJob for EvalJob {
    type Output = ();

    fn run<B: TrainBackend>(self, device: B::Device, _: &dyn Kernels) -> Result<()> {
        let (config, model) = checkpoints::load_model::<B::InnerBackend>(&self.source, &device)?;
        let (_, dataset) = config.load_data()?;
        let windows = dataset.validation_windows(&config.data, config.run.seed);
        let loss = sinter_trainer::eval::validation_loss(
            &model,
            &windows,
            config.data.validation_batch_size,
            &device,
        );
        println!(
            "validation loss {loss:.4} ({} windows of {} tokens)",
            windows.len() * config.data.validation_batch_size,
            config.model.context
        );
        Ok(())
    }
}

struct GenerateJob {
    args: cli::GenerateArgs,
}

impl BackendJob for GenerateJob {
    type Output = ();

    fn run<B: TrainBackend>(self, device: B::Device, _: &dyn Kernels) -> Result<()> {
        let args = self.args;
        let (config, model) = checkpoints::load_model::<B::InnerBackend>(&args.source, &device)?;
        let tokenizer = sinter_trainer::tokenizer::Tokenizer::load(&config.data.tokenizer)?;
        // With no prompt, start from a newline, as a text file would.
        let start = if args.prompt.is_empty() {
            "\n"
        } else {
            args.prompt.as_str()
        };
        let prompt = tokenizer.encode(start.as_bytes())?;
        let sampling = Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        };
        let mut stdout = std::io::stdout().lock();
        write!(stdout, "{}", args.prompt)?;
        let mut text = sinter_trainer::tokenizer::TextStream::new(&tokenizer);
        generate(
            &model,
            &prompt,
            args.max_tokens,
            config.model.context,
            &sampling,
            &device,
            |token| {
                if let Some(piece) = text.push(token) {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                }
                true
            },
        );
        writeln!(stdout)?;
        Ok(())
    }
}
