//! A prepared dataset: a directory of token shards and the manifest that describes them.
//!
//! ```text
//! DIR/manifest.json          format, tokenizer id, dtype, and every shard with its hash
//! DIR/train-00000.tokens     tokens, little-endian u16 (vocabularies up to 65536) or u32
//! DIR/train-00000.docs       where each document starts in it, little-endian u64
//! DIR/validation-00000.tokens, .docs    the documents held out for validation
//! DIR/tokenizer.json         the tokenizer it was made with (Hugging Face tokenizers only)
//! ```
//!
//! The manifest's SHA-256 is the dataset's fingerprint: it covers every shard's hash, so
//! peers that agree on it train on the same tokens (`data.sha256` pins it in a run's
//! config). A dataset may come from anyone, so opening one trusts nothing in the manifest:
//! file names must be plain names in the directory, sizes are checked against the files
//! and each shard's hash and token range are checked before a window is read from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Dtype, Segment};
use crate::tokenizer::Tokenizer;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// What `format` says in manifests this version writes and reads.
pub const FORMAT: &str = "sinter-tokens/1";
/// Manifests above this size are refused unread (a million shards fit).
const MANIFEST_LIMIT: u64 = 256 << 20;

/// Why a dataset could not be prepared or opened.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// An input file could not be read as documents.
    #[error("{}{}: {why}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Source {
        /// The file.
        path: PathBuf,
        /// The line (JSON lines).
        line: Option<u64>,
        /// What was wrong.
        why: String,
    },
    /// A directory without a manifest: not a prepared dataset, or one whose preparation did
    /// not finish.
    #[error(
        "{}: no {MANIFEST}: not a prepared dataset, or its preparation did not finish; run `launch data prepare INPUT… --out {}`",
        dir.display(),
        dir.display()
    )]
    NotPrepared {
        /// The directory.
        dir: PathBuf,
    },
    /// The manifest is malformed or names something it may not.
    #[error("{}: {why}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A shard differs from what the manifest says of it.
    #[error("{}: {why}", path.display())]
    Shard {
        /// The shard.
        path: PathBuf,
        /// What differs.
        why: String,
    },
    /// The dataset is not the one the config pins.
    #[error(
        "{}: the dataset's fingerprint is {actual} but `data.sha256` pins {expected}: this is not the run's data",
        dir.display()
    )]
    Fingerprint {
        /// The directory.
        dir: PathBuf,
        /// `data.sha256`.
        expected: String,
        /// SHA-256 of its manifest.
        actual: String,
    },
    /// The dataset was tokenized with another tokenizer than the config names.
    #[error(
        "{}: tokenized with {dataset} but `data.tokenizer` is {config}; set `data.tokenizer` to the dataset's own (its tokenizer.json, or \"bytes\")",
        dir.display()
    )]
    Tokenizer {
        /// The directory.
        dir: PathBuf,
        /// The manifest's tokenizer id.
        dataset: String,
        /// The config's tokenizer id.
        config: String,
    },
    /// Preparation cannot use its inputs or output directory as they are.
    #[error("{}: {why}", path.display())]
    Prepare {
        /// The input or output.
        path: PathBuf,
        /// What to change.
        why: String,
    },
    /// Preparation could not write its output.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl DatasetError {
    /// Whether the fix is in what the user gave (inputs, options, config), rather than in
    /// files that are damaged or unwritable.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::Source { .. }
                | Self::NotPrepared { .. }
                | Self::Fingerprint { .. }
                | Self::Tokenizer { .. }
                | Self::Prepare { .. }
        )
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The tokenizer's id ([`Tokenizer::id`]).
    pub tokenizer: String,
    /// Its vocabulary size: every token is below it.
    pub vocab_size: u64,
    /// How tokens are stored.
    pub dtype: Dtype,
    /// The token appended after every document, if any.
    pub eos: Option<u32>,
    /// The fraction of documents held out for validation (by a hash of their text).
    pub validation_fraction: f64,
    /// Training shards, in order.
    pub train: Vec<Shard>,
    /// Validation shards.
    pub validation: Vec<Shard>,
    /// The inputs, in the order read.
    pub sources: Vec<Source>,
}

/// One shard in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// The token file's name in the directory.
    pub file: String,
    /// Tokens in it.
    pub tokens: u64,
    /// SHA-256 of the token file.
    pub sha256: String,
    /// The document index's name in the directory.
    pub docs: String,
    /// Documents in it.
    pub documents: u64,
    /// SHA-256 of the document index.
    pub docs_sha256: String,
}

/// One input file in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The path it was read from.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Documents taken from it.
    pub documents: u64,
}

/// An opened, checked dataset.
#[derive(Debug)]
pub(super) struct Opened {
    pub train: Vec<Segment>,
    pub validation: Vec<Segment>,
    pub fingerprint: String,
}

/// Reads and checks `dir`'s manifest; returns it and its fingerprint.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String), DatasetError> {
    let path = dir.join(MANIFEST);
    let bad = |why: String| DatasetError::Manifest {
        path: path.clone(),
        why,
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DatasetError::NotPrepared {
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MANIFEST_LIMIT + 1),
        &mut bytes,
    )
    .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MANIFEST_LIMIT {
        return Err(bad(format!("larger than {MANIFEST_LIMIT} bytes")));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("malformed: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, this version reads {FORMAT:?}",
            manifest.format
        )));
    }
    let mut names = std::collections::HashSet::new();
    for shard in manifest.train.iter().chain(&manifest.validation) {
        for name in [&shard.file, &shard.docs] {
            if !plain_name(name) {
                return Err(bad(format!(
                    "shard name {name:?} is not a plain file name in the directory"
                )));
            }
            if !names.insert(name) {
                return Err(bad(format!("{name:?} is named twice")));
            }
        }
    }
    Ok((manifest, hex::encode(Sha256::digest(&bytes))))
}

/// Opens `dir` for training with `tokenizer`; `pin` is `data.sha256`.
pub(super) fn open(
    dir: &Path,
    tokenizer: &Tokenizer,
    pin: Option<&str>,
) -> Result<Opened, DatasetError> {
    let (manifest, fingerprint) = read_manifest(dir)?;
    if let Some(expected) = pin
        && !expected.eq_ignore_ascii_case(&fingerprint)
    {
        return Err(DatasetError::Fingerprint {
            dir: dir.to_owned(),
            expected: expected.to_owned(),
            actual: fingerprint,
        });
    }
    if manifest.tokenizer != tokenizer.id() {
        return Err(DatasetError::Tokenizer {
            dir: dir.to_owned(),
            dataset: manifest.tokenizer,
            config: tokenizer.id(),
        });
    }
    let vocab = (tokenizer.vocab_size() as u64).min(manifest.vocab_size);
    let started = std::time::Instant::now();
    let check = |shards: &[Shard]| -> Result<Vec<Segment>, DatasetError> {
        shards
            .par_iter()
            .map(|shard| open_shard(dir, shard, manifest.dtype, vocab))
            .collect()
    };
    let train = check(&manifest.train)?;
    let validation = check(&manifest.validation)?;
    tracing::info!(
        dir = %dir.display(),
        fingerprint,
        shards = train.len() + validation.len(),
        secs = started.elapsed().as_secs_f64(),
        "dataset checked"
    );
    Ok(Opened {
        train,
        validation,
        fingerprint,
    })
}

/// Checks all of `dir` with the tokenizer it was prepared with (its `tokenizer.json`, or
/// bytes); returns its manifest and fingerprint.
pub fn verify(dir: &Path) -> Result<(Manifest, String), DatasetError> {
    let (manifest, fingerprint) = read_manifest(dir)?;
    let tokenizer = if manifest.tokenizer == "bytes" {
        Tokenizer::Bytes
    } else {
        let path = dir.join("tokenizer.json");
        Tokenizer::load(&path.display().to_string()).map_err(|e| DatasetError::Manifest {
            path: path.clone(),
            why: e.to_string(),
        })?
    };
    open(dir, &tokenizer, Some(&fingerprint))?;
    Ok((manifest, fingerprint))
}

/// A name that stays in the directory: no separators, no `..`, not hidden.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Maps a shard and checks its size, hash, tokens and document index.
fn open_shard(
    dir: &Path,
    shard: &Shard,
    dtype: Dtype,
    vocab: u64,
) -> Result<Segment, DatasetError> {
    let path = dir.join(&shard.file);
    let map = map_file(&path)?;
    let bad = |why: String| DatasetError::Shard {
        path: path.clone(),
        why,
    };
    let expected = shard.tokens.checked_mul(dtype.width() as u64);
    if expected != Some(map.len() as u64) {
        return Err(bad(format!(
            "{} bytes, but the manifest says {} {dtype:?} tokens",
            map.len(),
            shard.tokens
        )));
    }
    check_hash(&path, &map, &shard.sha256)?;
    let segment = Segment {
        name: shard.file.clone(),
        map: Arc::new(map),
        dtype,
        tokens: 0..shard.tokens as usize,
    };
    let mut tokens = Vec::new();
    let chunk = 1 << 20;
    for start in (0..segment.len()).step_by(chunk) {
        tokens.clear();
        segment.extend(start..(start + chunk).min(segment.len()), &mut tokens);
        if let Some(t) = tokens.iter().find(|&&t| u64::from(t) >= vocab) {
            return Err(bad(format!(
                "token {t} is outside the vocabulary of {vocab}"
            )));
        }
    }
    let docs_path = dir.join(&shard.docs);
    let docs = map_file(&docs_path)?;
    check_hash(&docs_path, &docs, &shard.docs_sha256)?;
    let bad_docs = |why: String| DatasetError::Shard {
        path: docs_path.clone(),
        why,
    };
    if shard.documents.checked_mul(8) != Some(docs.len() as u64) {
        return Err(bad_docs(format!(
            "{} bytes, but the manifest says {} documents",
            docs.len(),
            shard.documents
        )));
    }
    let mut previous = None;
    for start in docs.chunks_exact(8) {
        let start = u64::from_le_bytes(start.try_into().expect("8 bytes"));
        if start >= shard.tokens || previous.is_some_and(|p| start <= p) {
            return Err(bad_docs(format!(
                "document start {start} is out of order or past the shard's {} tokens",
                shard.tokens
            )));
        }
        previous = Some(start);
    }
    Ok(segment)
}

fn map_file(path: &Path) -> Result<Mmap, DatasetError> {
    let io = |source| DatasetError::Shard {
        path: path.to_owned(),
        why: format!("cannot be read: {source}"),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: a prepared dataset is written once and then only read; its hashes are checked
    // here, after mapping, so a file changed before this point is refused.
    unsafe { Mmap::map(&file) }.map_err(io)
}

fn check_hash(path: &Path, bytes: &[u8], expected: &str) -> Result<(), DatasetError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(DatasetError::Shard {
            path: path.to_owned(),
            why: format!(
                "SHA-256 is {actual}, the manifest says {expected}: the file changed or is corrupt"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::prepare::{PrepareOptions, prepare};

    /// A small prepared dataset in a temporary directory.
    fn prepared() -> (tempfile::TempDir, PathBuf, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("docs.jsonl");
        let lines: String = (0..200)
            .map(|i| {
                format!(
                    "{{\"text\": \"document {i}: {}\"}}\n",
                    "words ".repeat(i % 7 + 3)
                )
            })
            .collect();
        std::fs::write(&input, lines).unwrap();
        let out = dir.path().join("set");
        let options = PrepareOptions {
            validation_fraction: 0.2,
            shard_tokens: 2000,
            ..PrepareOptions::default()
        };
        let (manifest, _) = prepare(
            &[input.display().to_string()],
            &Tokenizer::Bytes,
            &out,
            &options,
            &mut |_| {},
        )
        .unwrap();
        (dir, out, manifest)
    }

    /// Writes `manifest` over `dir`'s and opens it.
    fn open_with(dir: &Path, manifest: &Manifest) -> Result<Opened, DatasetError> {
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(manifest).unwrap()).unwrap();
        open(dir, &Tokenizer::Bytes, None)
    }

    fn refused(dir: &Path, manifest: &Manifest, says: &str) {
        match open_with(dir, manifest) {
            Ok(_) => panic!("accepted a manifest that should say {says:?}"),
            Err(e) => assert!(e.to_string().contains(says), "{e} (wanted {says:?})"),
        }
    }

    #[test]
    fn a_prepared_dataset_opens_and_keeps_its_documents_whole() {
        let (_tmp, dir, manifest) = prepared();
        assert!(manifest.train.len() > 1, "several shards");
        let opened = open_with(&dir, &manifest).unwrap();
        let documents: u64 = manifest
            .train
            .iter()
            .chain(&manifest.validation)
            .map(|s| s.documents)
            .sum();
        assert_eq!(documents, 200);
        assert_eq!(opened.train.len(), manifest.train.len());
        assert!(!opened.validation.is_empty());
    }

    #[test]
    fn hostile_manifests_are_refused_with_what_is_wrong() {
        let (_tmp, dir, manifest) = prepared();
        let with = |change: &dyn Fn(&mut Manifest)| {
            let mut m = manifest.clone();
            change(&mut m);
            m
        };
        refused(
            &dir,
            &with(&|m| m.train[0].tokens += 1),
            "bytes, but the manifest says",
        );
        refused(
            &dir,
            &with(&|m| m.train[0].tokens = u64::MAX),
            "bytes, but the manifest says",
        );
        refused(&dir, &with(&|m| m.train[0].documents += 1), "documents");
        refused(
            &dir,
            &with(&|m| m.train[0].sha256 = "00".repeat(32)),
            "SHA-256",
        );
        refused(
            &dir,
            &with(&|m| m.train[0].file = "../set/train-00000.tokens".into()),
            "plain file name",
        );
        refused(
            &dir,
            &with(&|m| m.train[0].docs = "/etc/hostname".into()),
            "plain file name",
        );
        refused(
            &dir,
            &with(&|m| m.train[1] = m.train[0].clone()),
            "named twice",
        );
        refused(
            &dir,
            &with(&|m| m.format = "sinter-tokens/9".into()),
            "this version reads",
        );
        refused(
            &dir,
            &with(&|m| m.tokenizer = "hf:00".into()),
            "data.tokenizer",
        );
        refused(
            &dir,
            &with(&|m| m.train[0].file = "missing.tokens".into()),
            "cannot be read",
        );
        // The vocabulary a manifest claims never widens the tokenizer's.
        let narrow = with(&|m| m.vocab_size = 100);
        refused(&dir, &narrow, "outside the vocabulary of 100");

        // Unknown fields and oversized manifests are refused unread.
        std::fs::write(dir.join(MANIFEST), b"{\"format\": 1, \"extra\": true}").unwrap();
        assert!(
            open(&dir, &Tokenizer::Bytes, None)
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        let big = std::fs::File::create(dir.join(MANIFEST)).unwrap();
        big.set_len(MANIFEST_LIMIT + 1).unwrap();
        assert!(
            open(&dir, &Tokenizer::Bytes, None)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }

    #[test]
    fn a_document_index_out_of_order_is_refused() {
        let (_tmp, dir, manifest) = prepared();
        let docs = dir.join(&manifest.train[0].docs);
        let mut index = std::fs::read(&docs).unwrap();
        index[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&docs, &index).unwrap();
        let mut m = manifest.clone();
        m.train[0].docs_sha256 = hex::encode(Sha256::digest(&index));
        refused(&dir, &m, "out of order or past");
    }

    #[test]
    fn only_plain_names_stay_in_the_directory() {
        for ok in ["train-00000.tokens", "a.b_c-1"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a\\b",
            "a\0b",
            "é",
        ] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}
