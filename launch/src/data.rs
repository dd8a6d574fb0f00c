//! `launch data prepare` and `launch data verify`: a progress bar and a report around
//! [`sinter_trainer::data::prepare`].

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sinter_trainer::data::bpe;
use sinter_trainer::data::prepare::{
    PrepareOptions, Progress, TextDocuments, prepare as prepare_dataset,
};
use sinter_trainer::data::prepared::{Manifest, verify as verify_dataset};
use sinter_trainer::tokenizer::Tokenizer;

use crate::cli::{PrepareArgs, ReadArgs, TokenizerArgs, TxtDocumentsArg};

/// The preparation options `read` sets; the rest at their defaults.
fn read_options(read: &ReadArgs) -> PrepareOptions {
    PrepareOptions {
        text_field: read.text_field.clone(),
        text_documents: match read.txt_documents {
            TxtDocumentsArg::File => TextDocuments::File,
            TxtDocumentsArg::Paragraph => TextDocuments::Paragraph,
        },
        ..PrepareOptions::default()
    }
}

/// Tokenizes the inputs into `args.out` and prints what to put in a run's config.
pub fn prepare(args: &PrepareArgs) -> Result<()> {
    let tokenizer = Tokenizer::load(&args.tokenizer)
        .with_context(|| format!("loading the tokenizer {:?}", args.tokenizer))?;
    let options = PrepareOptions {
        validation_fraction: args.validation_fraction,
        shard_tokens: args.shard_tokens,
        eos: args.eos.clone(),
        ..read_options(&args.read)
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {bytes}/{total_bytes} ({bytes_per_sec})  {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut on_progress = |p: &Progress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_read);
        bar.set_message(format!("{} documents, {} tokens", p.documents, p.tokens));
    };
    let result = prepare_dataset(
        &args.inputs,
        &tokenizer,
        &args.out,
        &options,
        &mut on_progress,
    );
    bar.finish_and_clear();
    let (manifest, fingerprint) = result?;
    let secs = started.elapsed().as_secs_f64();
    let tokens = report(&args.out, &manifest, &fingerprint);
    println!(
        "  {:.1} s, {:.0} tokens/s on {} threads",
        secs,
        tokens as f64 / secs.max(1e-9),
        rayon::current_num_threads()
    );
    let tokenizer_line = match tokenizer {
        Tokenizer::Bytes => "\"bytes\"".to_owned(),
        Tokenizer::HuggingFace { .. } => {
            format!(
                "{:?}",
                args.out.join("tokenizer.json").display().to_string()
            )
        }
    };
    println!(
        "\nTrain on it with, in the run's config:\n  [data]\n  corpus = {:?}\n  tokenizer = {tokenizer_line}\n  sha256 = \"{fingerprint}\"",
        args.out.display().to_string()
    );
    Ok(())
}

/// Trains a BPE tokenizer on the inputs and writes its tokenizer.json.
pub fn tokenizer(args: &TokenizerArgs) -> Result<()> {
    let bar = ProgressBar::new_spinner();
    bar.set_message(format!("learning {} tokens", args.vocab));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let started = Instant::now();
    let trained = bpe::train(
        &args.inputs,
        &read_options(&args.read),
        args.vocab,
        args.sample_bytes,
    );
    bar.finish_and_clear();
    let json = trained?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    bpe::save(&args.out, &json)?;
    let loaded = Tokenizer::load(&args.out.display().to_string())?;
    println!(
        "{}: {} tokens ({} is the end of a document), {} in {:.1} s",
        args.out.display(),
        loaded.vocab_size(),
        bpe::END_OF_TEXT,
        loaded.id(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Checks every byte of a prepared dataset and prints its fingerprint.
pub fn verify(dir: &Path) -> Result<()> {
    let (manifest, fingerprint) = verify_dataset(dir)?;
    report(dir, &manifest, &fingerprint);
    println!("  every shard matches its hash; every token is in the vocabulary");
    Ok(())
}

/// Prints a dataset's splits and fingerprint; returns its tokens.
fn report(dir: &Path, manifest: &Manifest, fingerprint: &str) -> u64 {
    let sum = |shards: &[sinter_trainer::data::prepared::Shard]| {
        (
            shards.len(),
            shards.iter().map(|s| s.documents).sum::<u64>(),
            shards.iter().map(|s| s.tokens).sum::<u64>(),
        )
    };
    let (train, validation) = (sum(&manifest.train), sum(&manifest.validation));
    println!("{}: fingerprint {fingerprint}", dir.display());
    println!(
        "  tokenizer {} ({} tokens, stored as {}), inputs: {} files",
        manifest.tokenizer,
        manifest.vocab_size,
        manifest.dtype,
        manifest.sources.len()
    );
    for (name, (shards, documents, tokens)) in [("train", train), ("validation", validation)] {
        println!("  {name:>10}: {tokens} tokens, {documents} documents, {shards} shards");
    }
    train.2 + validation.2
}
