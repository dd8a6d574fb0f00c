//! Tokens for training and validation.
//!
//! Two kinds of source. A text corpus (bundled or a file) is tokenized once into a
//! little-endian `u32` token file in the cache directory, named by the hash of the text and
//! the tokenizer, and memory-mapped from then on; its last `validation_fraction` of tokens is
//! held out. A prepared dataset (a directory written by `launch data prepare`, see
//! [`prepared`]) is memory-mapped shard by shard, its hashes checked, and split by document.
//!
//! Either way the training tokens are cut into windows of `context + 1` tokens, one every
//! `context` tokens, numbered across shards; a run reads them in the order [`order`] fixes,
//! a batch at a time from a position in that order, so groups hand their members disjoint
//! positions and nobody sees a window twice in an epoch.

pub mod bpe;
pub mod order;
pub mod prepare;
pub mod prepared;
mod sources;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::TrainerError;
use crate::config::{DataConfig, RunConfig};
use crate::tokenizer::Tokenizer;
pub use order::DataOrder;
pub use prepared::DatasetError;

const SHAKESPEARE: &[u8] = include_bytes!("../../../data/shakespeare.txt.zst");
const MILTON: &[u8] = include_bytes!("../../../data/milton.txt.zst");
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

/// A memory-mapped token file of a text corpus.
pub struct TokenFile {
    map: Arc<Mmap>,
    path: PathBuf,
    /// SHA-256 of the tokenizer's id and the text.
    key: String,
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
            let mut bytes = Vec::with_capacity(tokens.len() * 4);
            Dtype::U32.encode(&tokens, &mut bytes);
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
        Self::open(&path, key)
    }

    /// Maps an existing token file.
    fn open(path: &Path, key: String) -> Result<Self, TrainerError> {
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
            map: Arc::new(map),
            path: path.to_owned(),
            key,
        })
    }

    /// The tokens.
    pub fn tokens(&self) -> &[u32] {
        #[cfg(not(target_endian = "little"))]
        compile_error!("token files are little-endian u32");
        bytemuck::cast_slice(&self.map)
    }
}

/// How tokens are stored: `u16` where the vocabulary fits, else `u32`; little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Two bytes per token (vocabularies up to 65536).
    U16,
    /// Four bytes per token.
    U32,
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::U16 => "u16",
            Self::U32 => "u32",
        })
    }
}

impl Dtype {
    /// The narrowest type holding every id of a `vocab_size` vocabulary.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    /// Appends `tokens` to `out` in this type (each must fit: below the vocabulary the type
    /// was chosen for).
    pub fn encode(self, tokens: &[u32], out: &mut Vec<u8>) {
        match self {
            Self::U16 => out.extend(tokens.iter().flat_map(|&t| (t as u16).to_le_bytes())),
            Self::U32 => out.extend(tokens.iter().flat_map(|&t| t.to_le_bytes())),
        }
    }

    /// Appends the tokens `bytes` hold (a whole number of them) to `out`.
    pub fn decode(self, bytes: &[u8], out: &mut Vec<u32>) {
        match self {
            Self::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))),
            ),
            Self::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
    }
}

/// A run of tokens in a memory map, named for the summary (a shard's file, a corpus).
#[derive(Debug, Clone)]
struct Segment {
    name: String,
    map: Arc<Mmap>,
    dtype: Dtype,
    tokens: Range<usize>,
}

impl Segment {
    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Appends tokens `range` (relative to the segment) to `out`.
    fn extend(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let (start, end) = (
            self.tokens.start + range.start,
            self.tokens.start + range.end,
        );
        let width = self.dtype.width();
        self.dtype
            .decode(&self.map[start * width..end * width], out);
    }
}

/// Windows of `context + 1` tokens, one every `context` tokens, numbered across segments.
/// Each segment keeps one stride spare, so that an epoch's shift (below `context`) never
/// runs a window past its end: a segment of `len` tokens holds `len / context - 1` windows.
#[derive(Debug)]
struct Windows {
    segments: Vec<Segment>,
    /// Windows in segments `..=i`.
    ends: Vec<u64>,
    context: usize,
}

impl Windows {
    fn new(segments: Vec<Segment>, context: usize) -> Self {
        let mut total = 0u64;
        let ends = segments
            .iter()
            .map(|s| {
                total += (s.len() / context).saturating_sub(1) as u64;
                total
            })
            .collect();
        Self {
            segments,
            ends,
            context,
        }
    }

    fn count(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Appends window `window`, shifted `shift` tokens, to `out`; returns its segment.
    fn extend(&self, window: u64, shift: usize, out: &mut Vec<u32>) -> &Segment {
        let i = self.ends.partition_point(|&end| end <= window);
        let first = if i == 0 { 0 } else { self.ends[i - 1] };
        let start = (window - first) as usize * self.context + shift;
        let segment = &self.segments[i];
        segment.extend(start..start + self.context + 1, out);
        segment
    }

    /// `count` windows from `position` of `order`, concatenated; recorded in `usage`.
    fn read(
        &self,
        order: &DataOrder,
        position: u64,
        count: usize,
        usage: &mut DataUsage,
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(count * (self.context + 1));
        for p in (0..count as u64).map(|i| position.wrapping_add(i)) {
            let at = order.at(p);
            let segment = self.extend(at.window, order.shift(at.epoch, self.context), &mut out);
            usage.record(&segment.name, self.context, p, order);
        }
        out
    }
}

/// What a run (or one peer of it) trained on, for `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DataUsage {
    /// The dataset's fingerprint: SHA-256 of a prepared dataset's manifest, or of a text
    /// corpus and its tokenizer.
    pub dataset: String,
    /// Windows trained on.
    pub windows: u64,
    /// Tokens predicted in them (`context` per window).
    pub tokens: u64,
    /// How far the run has read through its data, in epochs (1.0: every window once).
    pub epochs: f64,
    /// Tokens trained on, by shard (a prepared dataset's file, or the corpus).
    pub shards: BTreeMap<String, u64>,
}

impl DataUsage {
    fn record(&mut self, shard: &str, context: usize, position: u64, order: &DataOrder) {
        self.windows += 1;
        self.tokens += context as u64;
        match self.shards.get_mut(shard) {
            Some(tokens) => *tokens += context as u64,
            None => {
                self.shards.insert(shard.to_owned(), context as u64);
            }
        }
        let read = position.saturating_add(1) as f64 / order.windows_per_epoch() as f64;
        self.epochs = self.epochs.max(read);
    }
}

/// A tokenized corpus with its train/validation split.
#[derive(Debug)]
pub struct Dataset {
    train: Windows,
    validation: Windows,
    fingerprint: String,
}

impl Dataset {
    /// Loads the dataset a config names: a prepared directory, or a text corpus (tokenized
    /// once and cached).
    pub fn load(
        config: &DataConfig,
        tokenizer: &Tokenizer,
        context: usize,
    ) -> Result<Self, TrainerError> {
        let path = Path::new(&config.corpus);
        let dataset = if path.is_dir() {
            let opened = prepared::open(path, tokenizer, config.sha256.as_deref())?;
            Self {
                train: Windows::new(opened.train, context),
                validation: Windows::new(opened.validation, context),
                fingerprint: opened.fingerprint,
            }
        } else {
            Self::from_text(config, tokenizer, context)?
        };
        let too_few = |split: &str, windows: &Windows| {
            TrainerError::Data(format!(
                "corpus {:?}: its {split} split holds {} tokens, too few for one window of {} tokens (each shard needs at least {}): use more text{}",
                config.corpus,
                windows.segments.iter().map(Segment::len).sum::<usize>(),
                context + 1,
                2 * context,
                if split == "validation" {
                    " or a larger `data.validation_fraction`"
                } else {
                    ""
                }
            ))
        };
        if dataset.train.count() == 0 {
            return Err(too_few("training", &dataset.train));
        }
        if dataset.validation.count() == 0 {
            return Err(too_few("validation", &dataset.validation));
        }
        Ok(dataset)
    }

    fn from_text(
        config: &DataConfig,
        tokenizer: &Tokenizer,
        context: usize,
    ) -> Result<Self, TrainerError> {
        let text = corpus_bytes(&config.corpus)?;
        let file = TokenFile::build_or_open(&text, tokenizer, &cache_dir())?;
        let tokens = file.tokens();
        if let Some(tok) = tokens
            .iter()
            .find(|&&t| t as usize >= tokenizer.vocab_size())
        {
            return Err(TrainerError::Data(format!(
                "token {tok} is outside the vocabulary of {}",
                tokenizer.vocab_size()
            )));
        }
        let n = tokens.len();
        let split = n - ((n as f64) * config.validation_fraction) as usize;
        let name = Path::new(&config.corpus).file_name().map_or_else(
            || config.corpus.clone(),
            |f| f.to_string_lossy().into_owned(),
        );
        let segment = |tokens| Segment {
            name: name.clone(),
            map: file.map.clone(),
            dtype: Dtype::U32,
            tokens,
        };
        Ok(Self {
            train: Windows::new(vec![segment(0..split)], context),
            validation: Windows::new(vec![segment(split..n)], context),
            fingerprint: file.key.clone(),
        })
    }

    /// Training windows per epoch.
    pub fn train_windows(&self) -> u64 {
        self.train.count()
    }

    /// The run's order over all training windows.
    pub fn order(&self, seed: u64) -> DataOrder {
        DataOrder::new(0..self.train.count(), seed)
    }

    /// An order over part `part` of `parts` equal, contiguous parts of the training windows:
    /// data of one's own, for experiments that give a peer a fixed share.
    pub fn part(&self, part: usize, parts: usize, seed: u64) -> Result<DataOrder, TrainerError> {
        let n = self.train.count();
        let range = part as u64 * n / parts as u64..(part as u64 + 1) * n / parts as u64;
        if range.is_empty() {
            return Err(TrainerError::Data(format!(
                "{n} training windows cannot be split into {parts} parts: use fewer or a bigger corpus"
            )));
        }
        Ok(DataOrder::new(range, seed))
    }

    /// An empty usage record for this dataset.
    pub fn usage(&self) -> DataUsage {
        DataUsage {
            dataset: self.fingerprint.clone(),
            ..DataUsage::default()
        }
    }

    /// `count` training windows from `position` of `order`, concatenated.
    pub fn batch(
        &self,
        order: &DataOrder,
        position: u64,
        count: usize,
        usage: &mut DataUsage,
    ) -> Vec<u32> {
        self.train.read(order, position, count, usage)
    }

    /// The fixed validation windows: `batches × batch_size` distinct windows (while the split
    /// holds that many), in an order drawn with `seed`.
    pub fn validation_windows(&self, config: &DataConfig, seed: u64) -> Vec<Vec<u32>> {
        let order = DataOrder::new(0..self.validation.count(), seed ^ 0x5641_4c49_4441_5445);
        let size = config.validation_batch_size;
        let mut ignored = DataUsage::default();
        (0..config.validation_batches)
            .map(|b| {
                self.validation
                    .read(&order, (b * size) as u64, size, &mut ignored)
            })
            .collect()
    }
}

/// The position in a run's order of the first window of the step whose group has trained on
/// `tokens` tokens before it (each window predicts `context` tokens), for member `index`.
/// (`tokens` comes from the group's state: positions wrap rather than overflow.)
pub fn position(tokens: u64, context: usize, index: usize, batch: usize) -> u64 {
    (tokens / context.max(1) as u64).wrapping_add(index.saturating_mul(batch) as u64)
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

    fn small_corpus(context: usize) -> (tempfile::TempDir, Dataset) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("numbers.txt");
        let text: String = (0..3000).map(|i| format!("{i} ")).collect();
        std::fs::write(&path, text).unwrap();
        let config = DataConfig {
            corpus: path.display().to_string(),
            validation_fraction: 0.1,
            ..DataConfig::default()
        };
        let dataset = Dataset::load(&config, &Tokenizer::Bytes, context).unwrap();
        (dir, dataset)
    }

    #[test]
    fn a_changing_group_reads_every_window_once_per_epoch() {
        let context = 16;
        let (_dir, dataset) = small_corpus(context);
        let order = dataset.order(5);
        let batch = 3;
        let mut usage = dataset.usage();
        let mut seen = std::collections::HashMap::<Vec<u32>, usize>::new();
        // Members come and go between steps; each step's members take disjoint positions.
        let mut tokens = 0u64;
        let sizes = [1usize, 3, 2, 4, 4, 1, 2];
        while usage.windows + 4 * batch as u64 <= dataset.train_windows() {
            let n = sizes[(tokens as usize / context) % sizes.len()];
            for index in 0..n {
                let first = position(tokens, context, index, batch);
                let windows = dataset.batch(&order, first, batch, &mut usage);
                for w in windows.chunks(context + 1) {
                    *seen.entry(w.to_vec()).or_default() += 1;
                }
            }
            tokens += (n * batch * context) as u64;
        }
        assert!(usage.windows > dataset.train_windows() / 2);
        assert!(
            seen.values().all(|&c| c == 1),
            "a window repeated within the epoch"
        );
        assert_eq!(usage.tokens, usage.windows * context as u64);
        assert_eq!(usage.shards["numbers.txt"], usage.tokens);
        assert!(usage.epochs <= 1.0);
    }

    #[test]
    fn any_position_a_group_state_names_reads_without_panicking() {
        let (_dir, dataset) = small_corpus(16);
        let order = dataset.order(1);
        let mut usage = dataset.usage();
        let first = position(u64::MAX, 1, usize::MAX, usize::MAX);
        let windows = dataset.batch(&order, first, 3, &mut usage);
        assert_eq!(windows.len(), 3 * 17);
    }

    #[test]
    fn windows_are_contiguous_runs_of_the_corpus() {
        let context = 16;
        let (_dir, dataset) = small_corpus(context);
        let text: String = (0..3000).map(|i| format!("{i} ")).collect();
        let order = dataset.order(9);
        let mut usage = dataset.usage();
        let n = dataset.train_windows();
        // Two epochs: the second starts its windows elsewhere.
        let first = dataset.batch(&order, 0, 1, &mut usage);
        let mut starts = std::collections::HashSet::new();
        for p in [0, 1, n - 1, n, n + 1] {
            let w = dataset.batch(&order, p, 1, &mut usage);
            let w: Vec<u8> = w.iter().map(|&t| t as u8).collect();
            let at = text
                .as_bytes()
                .windows(context + 1)
                .position(|x| x == w.as_slice());
            starts.insert(at.expect("a window is a slice of the text") % context);
        }
        assert_eq!(first.len(), context + 1);
        assert!(usage.epochs > 1.0);
        assert!(starts.len() > 1, "every epoch shifted the same");
    }

    #[test]
    fn validation_windows_are_fixed_and_distinct() {
        let (_dir, dataset) = small_corpus(16);
        let config = DataConfig {
            validation_batches: 2,
            validation_batch_size: 4,
            ..DataConfig::default()
        };
        let a = dataset.validation_windows(&config, 1);
        assert_eq!(a, dataset.validation_windows(&config, 1));
        let all: std::collections::HashSet<_> =
            a.concat().chunks(17).map(<[u32]>::to_vec).collect();
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn a_corpus_too_small_for_its_context_names_the_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.txt");
        std::fs::write(&path, "x".repeat(1000)).unwrap();
        let config = DataConfig {
            corpus: path.display().to_string(),
            ..DataConfig::default()
        };
        let err = Dataset::load(&config, &Tokenizer::Bytes, 128).unwrap_err();
        assert!(err.to_string().contains("validation split"), "{err}");
    }
}
