//! Tokens for training and validation.
//!
//! A corpus (bundled or a file) is tokenized once into a little-endian `u32` token file in
//! the cache directory, named by the hash of the text and the tokenizer, and memory-mapped
//! from then on. The last `validation_fraction` of tokens is held out; the rest is cut into
//! one contiguous shard per worker. Each worker draws random windows from its own shard
//! with its own seeded generator, so runs are reproducible and shards disjoint.

use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::TrainerError;
use crate::config::{DataConfig, RunConfig};
use crate::tokenizer::Tokenizer;

const SHAKESPEARE: &[u8] = include_bytes!("../../data/shakespeare.txt.zst");
const MILTON: &[u8] = include_bytes!("../../data/milton.txt.zst");
const SHAKESPEARE_SHA256: &str = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387";
const MILTON_SHA256: &str = "2469c4dbe954145d386f223870e0fecc509dfda78ec4bbe3daddb4f9282cd98d";

/// The bytes of a corpus: `shakespeare` or `milton` (bundled), or a path to a text file.
pub fn corpus_bytes(spec: &str) -> Result<Vec<u8>, TrainerError> {
    let (packed, expected) = match spec {
        "shakespeare" => (SHAKESPEARE, SHAKESPEARE_SHA256),
        "milton" => (MILTON, MILTON_SHA256),
        path => {
            let path = PathBuf::from(path);
            return std::fs::read(&path).map_err(|source| TrainerError::Io { path, source });
        }
    };
    let text = zstd::decode_all(packed)
        .map_err(|e| TrainerError::Data(format!("bundled corpus {spec}: {e}")))?;
    let actual = hex::encode(Sha256::digest(&text));
    if actual != expected {
        return Err(TrainerError::Data(format!(
            "bundled corpus {spec} has sha256 {actual}, expected {expected}"
        )));
    }
    Ok(text)
}

/// Where token files are cached: `$SINTER_CACHE_DIR`, else `$XDG_CACHE_HOME/sinter`, else
/// `~/.cache/sinter`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SINTER_CACHE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("sinter");
    }
    std::env::var_os("HOME")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(".cache/sinter")
}

/// A memory-mapped token file.
pub struct TokenFile {
    map: Mmap,
    path: PathBuf,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("tokens", &self.tokens().len())
            .finish()
    }
}

impl TokenFile {
    /// Tokenizes `text` into `dir` unless a file for the same text and tokenizer is there.
    pub fn build_or_open(
        text: &[u8],
        tokenizer: &Tokenizer,
        dir: &Path,
    ) -> Result<Self, TrainerError> {
        let key = {
            let mut h = Sha256::new();
            h.update(tokenizer.id().as_bytes());
            h.update([0]);
            h.update(text);
            hex::encode(h.finalize())
        };
        let path = dir.join(format!("tokens-{}.u32", &key[..32]));
        if !path.exists() {
            let tokens = tokenizer.encode(text)?;
            let io = |source| TrainerError::Io {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            // Write to a unique temporary name, fsync, then rename: a crash or a concurrent
            // writer never leaves a half-written token file under the final name.
            let tmp = dir.join(format!(".tokens-{}.{}.tmp", &key[..32], std::process::id()));
            let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(io)?;
            tracing::info!(tokens = tokens.len(), path = %path.display(), "tokenized corpus");
        }
        Self::open(&path)
    }

    /// Maps an existing token file.
    pub fn open(path: &Path) -> Result<Self, TrainerError> {
        let io = |source| TrainerError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: token files are written once under a temporary name and renamed into place;
        // nothing writes to them after that.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        if !map.len().is_multiple_of(4) {
            return Err(TrainerError::Data(format!(
                "{}: length {} is not a whole number of u32 tokens",
                path.display(),
                map.len()
            )));
        }
        Ok(Self {
            map,
            path: path.to_owned(),
        })
    }

    /// The tokens.
    pub fn tokens(&self) -> &[u32] {
        #[cfg(not(target_endian = "little"))]
        compile_error!("token files are little-endian u32");
        bytemuck::cast_slice(&self.map)
    }
}

/// A tokenized corpus with its train/validation split.
#[derive(Debug)]
pub struct Dataset {
    file: TokenFile,
    train: Range<usize>,
    validation: Range<usize>,
}

impl Dataset {
    /// Loads (tokenizing once) the corpus a config names.
    pub fn load(
        config: &DataConfig,
        tokenizer: &Tokenizer,
        context: usize,
    ) -> Result<Self, TrainerError> {
        let text = corpus_bytes(&config.corpus)?;
        let file = TokenFile::build_or_open(&text, tokenizer, &cache_dir())?;
        let n = file.tokens().len();
        let split = n - ((n as f64) * config.validation_fraction) as usize;
        let dataset = Self {
            file,
            train: 0..split,
            validation: split..n,
        };
        if dataset.validation.len() <= context + 1 {
            return Err(TrainerError::Data(format!(
                "corpus {:?} holds {n} tokens: too few for validation windows of {} tokens",
                config.corpus,
                context + 1
            )));
        }
        if let Some(tok) = dataset
            .file
            .tokens()
            .iter()
            .find(|&&t| t as usize >= tokenizer.vocab_size())
        {
            return Err(TrainerError::Data(format!(
                "token {tok} is outside the vocabulary of {}",
                tokenizer.vocab_size()
            )));
        }
        Ok(dataset)
    }

    /// All tokens.
    pub fn tokens(&self) -> &[u32] {
        self.file.tokens()
    }

    /// Training tokens.
    pub fn train(&self) -> &[u32] {
        &self.tokens()[self.train.clone()]
    }

    /// Range of worker `worker`'s shard within the training tokens, for `workers` workers.
    pub fn shard(&self, worker: usize, workers: usize) -> Range<usize> {
        let n = self.train.len();
        worker * n / workers..(worker + 1) * n / workers
    }

    /// The fixed validation windows: `batches × batch_size` windows of `context + 1` tokens,
    /// drawn with `seed`.
    pub fn validation_windows(
        &self,
        config: &DataConfig,
        context: usize,
        seed: u64,
    ) -> Vec<Vec<u32>> {
        let tokens = &self.tokens()[self.validation.clone()];
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5641_4c49_4441_5445);
        (0..config.validation_batches)
            .map(|_| sample_windows(tokens, config.validation_batch_size, context, &mut rng))
            .collect()
    }
}

/// `count` random windows of `context + 1` tokens from `tokens`, concatenated.
fn sample_windows(tokens: &[u32], count: usize, context: usize, rng: &mut StdRng) -> Vec<u32> {
    let span = tokens.len() - context - 1;
    let mut out = Vec::with_capacity(count * (context + 1));
    for _ in 0..count {
        let start = rng.random_range(0..=span);
        out.extend_from_slice(&tokens[start..start + context + 1]);
    }
    out
}

/// Draws training windows from one worker's shard.
#[derive(Debug)]
pub struct ShardSampler {
    range: Range<usize>,
    rng: StdRng,
    context: usize,
    drawn: u64,
}

impl ShardSampler {
    /// A sampler over `range` of the training tokens for worker `worker`.
    pub fn new(
        range: Range<usize>,
        context: usize,
        seed: u64,
        worker: usize,
    ) -> Result<Self, TrainerError> {
        if range.len() <= context + 1 {
            return Err(TrainerError::Data(format!(
                "worker {worker}'s shard holds {} tokens, fewer than one window of {}: use fewer workers or a bigger corpus",
                range.len(),
                context + 1
            )));
        }
        let rng = StdRng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(worker as u64 + 1),
        );
        Ok(Self {
            range,
            rng,
            context,
            drawn: 0,
        })
    }

    /// Batches drawn so far: the sampler's position, as a checkpoint records it.
    pub fn cursor(&self) -> u64 {
        self.drawn
    }

    /// Moves to `cursor` by drawing (and dropping) the batches before it, so that the next
    /// batch is the one an uninterrupted run would draw.
    pub fn seek(&mut self, dataset: &Dataset, batch: usize, cursor: u64) {
        while self.drawn < cursor {
            self.next_batch(dataset, batch);
        }
    }

    /// The next batch of `batch` windows.
    pub fn next_batch(&mut self, dataset: &Dataset, batch: usize) -> Vec<u32> {
        self.drawn += 1;
        sample_windows(
            &dataset.train()[self.range.clone()],
            batch,
            self.context,
            &mut self.rng,
        )
    }
}

impl RunConfig {
    /// The tokenizer and dataset this config names; the model's vocabulary must hold the
    /// tokenizer's.
    pub fn load_data(&self) -> Result<(Tokenizer, Dataset), TrainerError> {
        let tokenizer = Tokenizer::load(&self.data.tokenizer)?;
        if tokenizer.vocab_size() > self.model.vocab_size {
            return Err(TrainerError::Data(format!(
                "tokenizer {:?} has {} tokens but `model.vocab_size` is {}",
                self.data.tokenizer,
                tokenizer.vocab_size(),
                self.model.vocab_size
            )));
        }
        let dataset = Dataset::load(&self.data, &tokenizer, self.model.context)?;
        Ok((tokenizer, dataset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_corpora_decompress_to_their_pinned_hashes() {
        assert_eq!(corpus_bytes("shakespeare").unwrap().len(), 5_057_198);
        assert_eq!(corpus_bytes("milton").unwrap().len(), 1_403_192);
    }

    #[test]
    fn token_files_are_built_once_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"to be or not to be".repeat(20);
        let a = TokenFile::build_or_open(&text, &Tokenizer::Bytes, dir.path()).unwrap();
        assert_eq!(a.tokens().len(), text.len());
        let b = TokenFile::build_or_open(&text, &Tokenizer::Bytes, dir.path()).unwrap();
        assert_eq!(a.tokens(), b.tokens());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_training_split() {
        let dataset = Dataset::load(&DataConfig::default(), &Tokenizer::Bytes, 128).unwrap();
        let shards: Vec<_> = (0..4).map(|w| dataset.shard(w, 4)).collect();
        assert_eq!(shards[0].start, 0);
        assert_eq!(shards[3].end, dataset.train().len());
        assert!(shards.windows(2).all(|p| p[0].end == p[1].start));
        let mut a = ShardSampler::new(shards[1].clone(), 128, 7, 1).unwrap();
        let mut b = ShardSampler::new(shards[1].clone(), 128, 7, 1).unwrap();
        assert_eq!(
            a.next_batch(&dataset, 4),
            b.next_batch(&dataset, 4),
            "same seed, same windows"
        );
    }
}
