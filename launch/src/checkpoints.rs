//! `launch checkpoint verify`, `launch export`, and models read from checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sinter_checkpoints::fetched::FetchedBlob;
use sinter_checkpoints::store::{self, Checkpoint};
use sinter_comms::transfer::Manifest;
use sinter_trainer::checkpoint::{Meta, Snapshot};
use sinter_trainer::model::Llama;
use sinter_trainer::params::{flatten, skeleton};
use sinter_trainer::{CpuBackend, RunConfig, weights};

use crate::cli::{ExportArgs, ExportFormat, WeightsArgs};

const MODEL: &str = "model.safetensors";

/// A checkpoint read and verified, with the directory it came from.
fn read(path: &Path) -> Result<(Checkpoint, PathBuf)> {
    let dir = store::resolve(path)?;
    let (checkpoint, _) = Checkpoint::read(&dir).with_context(|| {
        format!(
            "run `launch checkpoint verify {}` for details",
            dir.display()
        )
    })?;
    Ok((checkpoint, dir))
}

/// The bytes of the weights `source` names, and the path to name in errors.
pub fn weights_bytes(source: &WeightsArgs) -> Result<(Vec<u8>, PathBuf)> {
    match (&source.weights, &source.checkpoint) {
        (Some(path), _) => Ok((
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            path.clone(),
        )),
        (None, Some(dir)) => {
            let (checkpoint, dir) = read(dir)?;
            let bytes = checkpoint.require(MODEL, &dir)?.to_vec();
            Ok((bytes, dir.join(MODEL)))
        }
        (None, None) => bail!("give a weights file or --checkpoint DIR"),
    }
}

/// The parameters of the weights at `from` (a weights file, or a checkpoint directory), flat,
/// for a run of `config` to start from; refused unless they are of `config`'s model.
pub fn start_from(from: &Path, config: &RunConfig) -> Result<Vec<f32>> {
    let source = if from.is_dir() {
        WeightsArgs {
            weights: None,
            checkpoint: Some(from.to_path_buf()),
        }
    } else {
        WeightsArgs {
            weights: Some(from.to_path_buf()),
            checkpoint: None,
        }
    };
    let (theirs, model) = load_model::<CpuBackend>(&source, &Default::default())?;
    if theirs.model != config.model {
        bail!(
            "--from {}: its model ({:?}) is not this config's [model] ({:?}); fine-tune with the config it was trained with",
            from.display(),
            theirs.model,
            config.model
        );
    }
    Ok(flatten(&model).1)
}

/// The Merkle root of the checkpoint `source` names; `None` for a weights file.
pub fn root_of(source: &WeightsArgs) -> Result<Option<String>> {
    match (&source.weights, &source.checkpoint) {
        (None, Some(dir)) => {
            let dir = store::resolve(dir)?;
            let (_, manifest) = Checkpoint::read(&dir)
                .with_context(|| format!("reading the checkpoint in {}", dir.display()))?;
            Ok(Some(manifest.root().to_string()))
        }
        _ => Ok(None),
    }
}

/// The config and model `source` names.
pub fn load_model<B: burn::tensor::backend::Backend>(
    source: &WeightsArgs,
    device: &B::Device,
) -> Result<(RunConfig, Llama<B>)> {
    let (bytes, path) = weights_bytes(source)?;
    Ok(weights::from_bytes(&bytes, &path, device)?)
}

/// The snapshot in a checkpoint, for `--resume`.
pub fn snapshot(path: &Path, config: &RunConfig) -> Result<Snapshot> {
    let (checkpoint, dir) = read(path)?;
    let model: Llama<CpuBackend> = skeleton(&config.model, &Default::default());
    let (layout, _) = flatten(&model);
    tracing::info!(checkpoint = %dir.display(), "resuming from");
    Ok(Snapshot::from_checkpoint(&checkpoint, &dir, &layout)?)
}

/// The config of the run whose checkpoints `dir` holds, from the newest one's meta.json
/// (read, not verified: a server serves what it has and fetchers verify every chunk).
pub fn run_config(dir: &Path) -> Result<RunConfig> {
    let path = store::resolve(dir)?.join("meta.json");
    let meta: Meta = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a checkpoint's meta.json", path.display()))?;
    Ok(RunConfig::parse(&meta.config, &path)?)
}

/// Writes a fetched checkpoint (its blob on disk, checked against its manifest) as
/// `out/checkpoints/round-NNNNNN`, named `latest` there; returns its directory.
pub fn write_fetched(blob: std::fs::File, chunks: &Manifest, out: &Path) -> Result<PathBuf> {
    let fetched = FetchedBlob::open(blob, chunks)?;
    let meta: Meta = serde_json::from_slice(&fetched.read("meta.json", 1 << 20)?)
        .context("the fetched checkpoint's meta.json")?;
    let parent = out.join("checkpoints");
    let name = sinter_trainer::checkpoint::name(meta.round);
    fetched.write(&parent, &name)?;
    Ok(parent.join(name))
}

/// `launch checkpoint verify`: exit code 1 (an error) if anything is wrong.
pub fn verify(path: &Path, json: bool) -> Result<()> {
    let dir = store::resolve(path)?;
    let (manifest, report) = store::verify(&dir)?;
    let problems = report.problems();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: root {}, {} files, {} chunks of {} bytes",
            dir.display(),
            report.root,
            manifest.files.len(),
            manifest.chunks.chunks.len(),
            manifest.chunks.chunk_size
        );
        for problem in &problems {
            println!("  BAD: {problem}");
        }
    }
    if problems.is_empty() {
        if !json {
            println!("  ok: every chunk matches the manifest and the root");
        }
        Ok(())
    } else {
        bail!(
            "{} is damaged ({} problems): fetch it again from a peer or use an older checkpoint",
            dir.display(),
            problems.len()
        )
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `launch export`.
pub fn export(args: &ExportArgs) -> Result<()> {
    let (checkpoint, dir) = read(&args.dir)?;
    let bytes = checkpoint.require(MODEL, &dir)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    match args.format {
        ExportFormat::Safetensors => write(&args.out.join(MODEL), bytes)?,
        ExportFormat::Hf => sinter_trainer::export::hf(bytes, &dir.join(MODEL), &args.out)?,
    }
    println!(
        "exported {} ({:?}) to {}",
        dir.display(),
        args.format,
        args.out.display()
    );
    Ok(())
}
