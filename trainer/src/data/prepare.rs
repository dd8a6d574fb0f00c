//! `launch data prepare`: text, JSON-lines and parquet files into a prepared dataset (the
//! layout is in [`super::prepared`]).
//!
//! Files are read in a fixed order and tokenized in parallel a batch of documents at a time;
//! each document goes whole to the training or the validation split, chosen by a hash of its
//! text (so the split does not depend on file order, and duplicated documents land on the
//! same side). Shards close at a document boundary once they pass `shard_tokens`. The
//! manifest is written last, after every shard is synced: a directory without one is an
//! unfinished preparation and is never trained on.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::prepared::{FORMAT, MANIFEST, Manifest, Shard, Source};
pub use super::sources::TextDocuments;
use super::{DatasetError, Dtype, sources};
use crate::tokenizer::Tokenizer;

/// How to prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The JSON field or parquet column holding the text.
    pub text_field: String,
    /// The fraction of documents held out for validation.
    pub validation_fraction: f64,
    /// A shard closes at the first document boundary past this many tokens.
    pub shard_tokens: u64,
    /// The token appended after every document; `None`: the tokenizer's own end-of-text
    /// token if it has one.
    pub eos: Option<String>,
    /// What a document is in a text file.
    pub text_documents: TextDocuments,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            validation_fraction: 0.01,
            shard_tokens: 1 << 27,
            eos: None,
            text_documents: TextDocuments::File,
        }
    }
}

/// Where a preparation has got to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Input bytes read (whole files).
    pub bytes_read: u64,
    /// Input bytes in all.
    pub bytes_total: u64,
    /// Documents tokenized.
    pub documents: u64,
    /// Tokens written.
    pub tokens: u64,
}

/// Text read per batch, tokenized in parallel.
const BATCH_BYTES: usize = 4 << 20;

/// Tokenizes `inputs` into `out`, which must not exist or be empty. Returns the manifest
/// and the dataset's fingerprint.
pub fn prepare(
    inputs: &[String],
    tokenizer: &Tokenizer,
    out: &Path,
    options: &PrepareOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Manifest, String), DatasetError> {
    let refuse = |path: &Path, why: String| DatasetError::Prepare {
        path: path.to_owned(),
        why,
    };
    if !(options.validation_fraction > 0.0 && options.validation_fraction < 1.0) {
        return Err(refuse(
            out,
            format!(
                "the validation fraction is {}; it must lie in (0, 1)",
                options.validation_fraction
            ),
        ));
    }
    let files = sources::expand(inputs)?;
    if files.is_empty() {
        return Err(refuse(
            out,
            "no .txt, .jsonl or .parquet file among the inputs".into(),
        ));
    }
    let eos = match &options.eos {
        Some(token) => Some(tokenizer.token_id(token).ok_or_else(|| {
            refuse(
                out,
                format!("the tokenizer has no token {token:?} to end documents with"),
            )
        })?),
        None => tokenizer.end_of_document(),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DatasetError::Io { path, source }
    };
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(refuse(
            out,
            "exists and is not empty: name a new directory (a dataset is never overwritten)".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;

    let vocab = tokenizer.vocab_size();
    let dtype = Dtype::for_vocab(vocab);
    let mut train = ShardWriter::new(out, "train", dtype, options.shard_tokens);
    let mut validation = ShardWriter::new(out, "validation", dtype, options.shard_tokens);
    let mut state = Progress {
        bytes_total: files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum(),
        ..Progress::default()
    };
    let threshold = (options.validation_fraction * 2f64.powi(64)) as u64;
    let mut sources = Vec::new();
    for path in &files {
        let mut documents = 0u64;
        let (field, text) = (&options.text_field, options.text_documents);
        sources::read(path, field, text, BATCH_BYTES, &mut |batch| {
            let encoded = batch
                .par_iter()
                .map(|text| {
                    let held_out = held_out(text, threshold);
                    let mut tokens = tokenizer.encode(text.as_bytes())?;
                    tokens.extend(eos);
                    // The shards' type holds ids below the vocabulary size, nothing above.
                    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
                        return Err(crate::TrainerError::Data(format!(
                            "the tokenizer gave id {t}, outside its own vocabulary of {vocab}"
                        )));
                    }
                    Ok((held_out, tokens))
                })
                .collect::<Result<Vec<_>, crate::TrainerError>>()
                .map_err(|e| DatasetError::Source {
                    path: path.clone(),
                    line: None,
                    why: e.to_string(),
                })?;
            for (held_out, tokens) in encoded {
                let split = if held_out {
                    &mut validation
                } else {
                    &mut train
                };
                split.push(&tokens)?;
                state.tokens += tokens.len() as u64;
            }
            documents += batch.len() as u64;
            state.documents += batch.len() as u64;
            progress(&state);
            Ok(())
        })?;
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        state.bytes_read += bytes;
        progress(&state);
        sources.push(Source {
            path: path.display().to_string(),
            bytes,
            documents,
        });
    }
    let (train, validation) = (train.finish()?, validation.finish()?);
    if train.is_empty() || validation.is_empty() {
        return Err(refuse(
            out,
            format!(
                "{} documents gave {} for training and {} for validation: a dataset needs both; give more documents or change --validation-fraction",
                state.documents,
                train.iter().map(|s| s.documents).sum::<u64>(),
                validation.iter().map(|s| s.documents).sum::<u64>(),
            ),
        ));
    }
    if let Tokenizer::HuggingFace { .. } = tokenizer {
        let json = tokenizer
            .hf_json()
            .map_err(|e| refuse(out, e.to_string()))?;
        write_synced(&out.join("tokenizer.json"), json.as_bytes())?;
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        tokenizer: tokenizer.id(),
        vocab_size: vocab as u64,
        dtype,
        eos,
        validation_fraction: options.validation_fraction,
        train,
        validation,
        sources,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");
    let tmp = out.join(format!(".{MANIFEST}.tmp"));
    write_synced(&tmp, &bytes)?;
    std::fs::rename(&tmp, out.join(MANIFEST)).map_err(io(out))?;
    File::open(out)
        .and_then(|d| d.sync_all())
        .map_err(io(out))?;
    Ok((manifest, hex::encode(Sha256::digest(&bytes))))
}

/// Whether a document goes to validation: the first 8 bytes of its SHA-256 below
/// `threshold` (the fraction of 2⁶⁴).
fn held_out(text: &str, threshold: u64) -> bool {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) < threshold
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let write = || -> std::io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })
}

/// One split's shards, written one after another.
struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    dtype: Dtype,
    limit: u64,
    open: Option<OpenShard>,
    done: Vec<Shard>,
}

struct OpenShard {
    file: String,
    writer: BufWriter<File>,
    hasher: Sha256,
    tokens: u64,
    starts: Vec<u64>,
    bytes: Vec<u8>,
}

impl ShardWriter {
    fn new(dir: &Path, prefix: &'static str, dtype: Dtype, limit: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            prefix,
            dtype,
            limit: limit.max(1),
            open: None,
            done: Vec::new(),
        }
    }

    fn io(&self, file: &str) -> impl FnOnce(std::io::Error) -> DatasetError + use<> {
        let path = self.dir.join(file);
        move |source| DatasetError::Io { path, source }
    }

    /// Appends one document's tokens.
    fn push(&mut self, tokens: &[u32]) -> Result<(), DatasetError> {
        if self.open.is_none() {
            let file = format!("{}-{:05}.tokens", self.prefix, self.done.len());
            let handle = File::create(self.dir.join(&file)).map_err(self.io(&file))?;
            self.open = Some(OpenShard {
                file,
                writer: BufWriter::with_capacity(1 << 20, handle),
                hasher: Sha256::new(),
                tokens: 0,
                starts: Vec::new(),
                bytes: Vec::new(),
            });
        }
        let shard = self.open.as_mut().expect("opened above");
        shard.starts.push(shard.tokens);
        shard.bytes.clear();
        self.dtype.encode(tokens, &mut shard.bytes);
        shard.hasher.update(&shard.bytes);
        if let Err(source) = shard.writer.write_all(&shard.bytes) {
            let path = self.dir.join(&shard.file);
            return Err(DatasetError::Io { path, source });
        }
        shard.tokens += tokens.len() as u64;
        if shard.tokens >= self.limit {
            self.close()?;
        }
        Ok(())
    }

    /// Syncs the open shard and writes its document index.
    fn close(&mut self) -> Result<(), DatasetError> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        let file = shard.file;
        let handle = shard
            .writer
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(self.io(&file))?;
        handle.sync_all().map_err(self.io(&file))?;
        let docs = file.replace(".tokens", ".docs");
        let index: Vec<u8> = shard.starts.iter().flat_map(|s| s.to_le_bytes()).collect();
        write_synced(&self.dir.join(&docs), &index)?;
        self.done.push(Shard {
            tokens: shard.tokens,
            sha256: hex::encode(shard.hasher.finalize()),
            documents: shard.starts.len() as u64,
            docs_sha256: hex::encode(Sha256::digest(&index)),
            file,
            docs,
        });
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Shard>, DatasetError> {
        self.close()?;
        Ok(self.done)
    }
}
