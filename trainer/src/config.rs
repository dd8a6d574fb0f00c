//! The run configuration: one TOML file describes a whole run, so that peers (and a later
//! reader) can agree on exactly what was trained. Unknown fields are errors, and every
//! error names the file, the field and what is allowed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sinter_mechanism::ledger::keys::AccountId;
use sinter_mechanism::ledger::state::{Genesis, GenesisBalance, GenesisNeuron};

use crate::TrainerError;

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The model architecture.
    pub model: ModelConfig,
    /// Corpus, tokenizer and evaluation data.
    pub data: DataConfig,
    /// Each worker's local optimizer.
    pub inner: InnerConfig,
    /// How workers are combined.
    pub outer: OuterConfig,
    /// Evaluation cadence.
    pub eval: EvalConfig,
    /// Seed and compute backend.
    pub run: RunSection,
    /// Checkpoint cadence; not part of the run's identity (peers may checkpoint differently).
    pub checkpoint: CheckpointConfig,
    /// The incentive mechanism (`launch incentives`); not part of the run's identity.
    #[serde(skip_serializing_if = "IncentiveConfig::is_default")]
    pub incentives: IncentiveConfig,
}

/// The incentive mechanism: the ledger's genesis parameters, consensus and the validator's
/// scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncentiveConfig {
    /// Ledger blocks per epoch (a round writes three).
    pub tempo: u64,
    /// Cost of registering a uid, burned.
    pub burn: u64,
    /// Emission each epoch splits.
    pub emission_per_epoch: u64,
    /// Validation batches per corpus (Shakespeare, Milton) the validator evaluates on.
    pub validator_batches: usize,
    /// Consensus: `consensus = "subtensor"` (the chain's Yuma) or `"papers"`, `kappa`,
    /// `bonds_moving_average`, `rho`.
    pub consensus: sinter_mechanism::consensus::Hyperparams,
    /// Scoring: `weights_from = "shapley"` or `"fisher"`, `permutations`, `truncation`, and
    /// `[incentives.scoring.filter]` thresholds.
    pub scoring: sinter_mechanism::score::ScoringConfig,
    /// The ledger of a multi-process run (`launch run`): absent, the run keeps none.
    pub ledger: Option<LedgerConfig>,
    /// Or Bittensor's subtensor as the run's ledger (instead of `[incentives.ledger]`).
    pub chain: Option<ChainConfig>,
}

/// `[incentives.chain]`: a run recorded and paid on a subnet of subtensor. Each peer
/// registers (paying the subnet's burn, at most `max_burn`), serves its address, commits its
/// contributions; peers with a validator permit score the others and set weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The node's websocket endpoint (`ws://HOST:PORT` or `wss://…`).
    pub url: String,
    /// The subnet the run is paid on.
    pub netuid: u16,
    /// The most a registration may burn, in TAO (absent: whatever the subnet asks).
    #[serde(default)]
    pub max_burn: Option<f64>,
    /// Seconds between the chain's blocks (12 on Bittensor; less on a local test chain):
    /// how long waits for inclusion and for the reveal window last.
    #[serde(default = "ChainConfig::default_block_secs")]
    pub block_secs: f64,
}

impl ChainConfig {
    fn default_block_secs() -> f64 {
        12.0
    }

    /// `max_burn` in rao (10⁻⁹ TAO).
    pub fn max_burn_rao(&self) -> Option<u64> {
        self.max_burn.map(|tao| (tao * 1e9).round() as u64)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            return Err(format!(
                "`incentives.chain.url` must be a websocket endpoint (ws://HOST:PORT or wss://…), not {:?}",
                self.url
            ));
        }
        if self
            .max_burn
            .is_some_and(|tao| !(tao.is_finite() && (0.0..=21e6).contains(&tao)))
        {
            return Err("`incentives.chain.max_burn` is in TAO: between 0 and 21000000".into());
        }
        if !(self.block_secs.is_finite() && self.block_secs >= 0.1) {
            return Err("`incentives.chain.block_secs` must be at least 0.1".into());
        }
        Ok(())
    }
}

/// `[incentives.ledger]`: the genesis of the ledger every peer of a `launch run` keeps a
/// replica of. Peers with stake validate; the author's peer authors the blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// The hotkey (SS58) of the peer that authors blocks.
    pub author: AccountId,
    /// Seconds between blocks.
    #[serde(default = "LedgerConfig::default_block_secs")]
    pub block_secs: f64,
    /// Free balances at genesis (`[[incentives.ledger.balances]]`: `account`, `balance`): what
    /// a coldkey pays a registration's burn and stake with.
    #[serde(default)]
    pub balances: Vec<GenesisBalance>,
    /// Neurons registered at genesis (`[[incentives.ledger.neurons]]`: `hotkey`, `coldkey`,
    /// `stake`); a peer whose hotkey is not among them registers itself, paying the burn.
    #[serde(default)]
    pub neurons: Vec<GenesisNeuron>,
    /// Blocks a contribution commitment stays in the ledger's state: must exceed a round's
    /// length in blocks (default 3600).
    #[serde(default = "LedgerConfig::default_contribution_window")]
    pub contribution_window: u64,
}

impl LedgerConfig {
    fn default_block_secs() -> f64 {
        1.0
    }

    fn default_contribution_window() -> u64 {
        sinter_mechanism::ledger::state::CONTRIBUTION_WINDOW
    }
}

impl IncentiveConfig {
    /// The ledger's genesis, when the config has an `[incentives.ledger]`.
    pub fn genesis(&self) -> Option<Genesis> {
        let ledger = self.ledger.as_ref()?;
        Some(Genesis {
            author: ledger.author,
            netuid: 1,
            tempo: self.tempo,
            burn: self.burn,
            emission_per_epoch: self.emission_per_epoch,
            max_validators: 128,
            max_uids: 4096,
            contribution_window: ledger.contribution_window,
            consensus: self.consensus.clone(),
            balances: ledger.balances.clone(),
            neurons: ledger.neurons.clone(),
        })
    }
}

impl Default for IncentiveConfig {
    fn default() -> Self {
        Self {
            tempo: 3,
            burn: 1_000_000_000,
            emission_per_epoch: 1_000_000_000,
            validator_batches: 2,
            consensus: Default::default(),
            scoring: Default::default(),
            ledger: None,
            chain: None,
        }
    }
}

impl IncentiveConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    fn validate(&self) -> Result<(), String> {
        let f = &self.scoring.filter;
        let checks = [
            (
                self.tempo >= 1,
                "`incentives.tempo` must be at least 1 block",
            ),
            (
                self.validator_batches >= 1,
                "`incentives.validator_batches` must be at least 1",
            ),
            (
                self.scoring.permutations >= 2,
                "`incentives.scoring.permutations` must be at least 2",
            ),
            (
                (0.0..1.0).contains(&self.scoring.truncation),
                "`incentives.scoring.truncation` must be in [0, 1)",
            ),
            (
                f.max_z > 0.0 && f.min_spread >= 0.0 && f.loss_tolerance >= 0.0,
                "`incentives.scoring.filter`: max_z must be positive, min_spread and loss_tolerance non-negative",
            ),
            (
                f.duplicate_cosine > 0.0 && f.duplicate_cosine <= 1.0,
                "`incentives.scoring.filter.duplicate_cosine` must be in (0, 1]",
            ),
            (
                self.consensus.rho.is_finite() && self.consensus.rho > 0.0,
                "`incentives.consensus.rho` must be a positive number",
            ),
            (
                self.consensus.bonds_moving_average <= 1_000_000,
                "`incentives.consensus.bonds_moving_average` is in millionths: at most 1000000",
            ),
            (
                self.emission_per_epoch < 1 << 50,
                "`incentives.emission_per_epoch` must be below 2^50",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*message).to_owned());
        }
        if self.ledger.is_some() && self.chain.is_some() {
            return Err(
                "a run keeps one ledger: `[incentives.ledger]` (embedded) or `[incentives.chain]` (subtensor), not both".into(),
            );
        }
        if let Some(chain) = &self.chain {
            chain.validate()?;
        }
        if let Some(ledger) = &self.ledger {
            if !(ledger.block_secs.is_finite() && ledger.block_secs >= 0.1) {
                return Err("`incentives.ledger.block_secs` must be at least 0.1".into());
            }
            let genesis = self.genesis().expect("a ledger section");
            genesis
                .check()
                .map_err(|e| format!("`incentives.ledger`: {e}"))?;
        }
        Ok(())
    }
}

/// How often checkpoints are written under `OUT/checkpoints/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write one every this many outer rounds (0: never).
    pub every_rounds: usize,
    /// Keep the newest this many.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_rounds: 10,
            keep: 3,
        }
    }
}

/// A LLaMA-style decoder (Hugging Face `LlamaConfig` conventions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary size; 256 for bytes. With a `tokenizer.json`, at least its vocabulary.
    pub vocab_size: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// SwiGLU hidden width (`intermediate_size`).
    pub ffn_hidden: usize,
    /// Context length in tokens.
    pub context: usize,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RMSNorm ε.
    pub rms_eps: f64,
    /// Share the embedding matrix with the LM head.
    pub tie_embeddings: bool,
    /// Standard deviation of the normal initialisation (`initializer_range`).
    pub init_std: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 256,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 4,
            ffn_hidden: 344,
            context: 128,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            tie_embeddings: false,
            init_std: 0.02,
        }
    }
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `shakespeare`, `milton` (bundled, public domain), a path to a UTF-8 text file, or a
    /// directory written by `launch data prepare`.
    pub corpus: String,
    /// `bytes`, or a path to a Hugging Face `tokenizer.json` (a prepared dataset's must be
    /// the one it was prepared with).
    pub tokenizer: String,
    /// SHA-256 of a prepared dataset's `manifest.json`: every peer checks its copy against
    /// it, and the run's identity holds it instead of the corpus and tokenizer paths, which
    /// may then differ between peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Fraction of a text corpus (its end) held out for validation. (A prepared dataset
    /// held out whole documents when it was prepared.)
    pub validation_fraction: f64,
    /// Validation batches.
    pub validation_batches: usize,
    /// Windows per validation batch.
    pub validation_batch_size: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            corpus: "shakespeare".into(),
            tokenizer: "bytes".into(),
            sha256: None,
            validation_fraction: 0.05,
            validation_batches: 20,
            validation_batch_size: 16,
        }
    }
}

/// Each worker's AdamW with warmup and cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InnerConfig {
    /// Optimizer steps per worker over the whole run.
    pub steps: usize,
    /// Sequences per worker per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Fraction of `steps` spent in linear warmup.
    pub warmup_fraction: f64,
    /// Cosine decay ends at this fraction of the peak.
    pub min_lr_fraction: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f32,
}

impl Default for InnerConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 16,
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_fraction: 0.05,
            min_lr_fraction: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// How workers' progress is combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Local steps, then averaged pseudo-gradients and an outer Nesterov step.
    #[default]
    Diloco,
    /// Data-parallel baseline: gradients averaged every step.
    Ddp,
}

/// How pseudo-gradients travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// Blockwise int8 absmax.
    #[default]
    Int8,
    /// Full-precision f32.
    None,
    /// The top-k entries of each chunk, low-bit, with decayed error feedback (SparseLoCo):
    /// settings in `[outer.sparse]`. The shards' owners relay the members' sets whole, and
    /// every member averages them.
    Sparse,
}

/// The sparse codec's settings (`[outer.sparse]`, used when `outer.quant = "sparse"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparseSettings {
    /// Values per chunk (at most 65536).
    pub chunk: usize,
    /// Entries kept per chunk: `k / chunk` is the density.
    pub k: usize,
    /// Bits per kept value: 2, 4 or 8.
    pub bits: u8,
    /// Error-feedback decay: `e ← decay·e + Δ` before each selection.
    pub error_decay: f32,
}

impl Default for SparseSettings {
    fn default() -> Self {
        Self {
            chunk: 4096,
            k: 64,
            bits: 2,
            error_decay: 0.95,
        }
    }
}

impl SparseSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The kernels' view of these settings.
    pub fn kernel_config(&self) -> sinter_kernels::SparseConfig {
        sinter_kernels::SparseConfig {
            chunk: self.chunk,
            k: self.k,
            bits: self.bits,
        }
    }
}

/// Storage type of quantization scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScaleType {
    /// 4 bytes per block.
    #[default]
    F32,
    /// 2 bytes per block.
    F16,
}

/// DiLoCo's outer loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OuterConfig {
    /// `diloco` or `ddp`.
    pub mode: Mode,
    /// Number of workers.
    pub workers: usize,
    /// Local steps per round (H).
    pub inner_steps: usize,
    /// Outer SGD learning rate.
    pub lr: f32,
    /// Outer Nesterov momentum.
    pub momentum: f32,
    /// `int8` or `none`.
    pub quant: Quant,
    /// Values per quantization block.
    pub block: usize,
    /// `f32` or `f16` scales.
    pub scale: ScaleType,
    /// Carry each worker's quantization residual into its next pseudo-gradient.
    pub error_feedback: bool,
    /// Data-parallel steps before DiLoCo starts (a warm start; 0 for none).
    pub warmup_ddp_steps: usize,
    /// Outer learning rate schedule: `constant` or `cosine` (to 10 % over the run).
    pub lr_schedule: OuterSchedule,
    /// The sparse codec's settings (`quant = "sparse"`).
    #[serde(skip_serializing_if = "SparseSettings::is_default")]
    pub sparse: SparseSettings,
    /// Apply each round's mean one round late, so that a round's exchange could overlap the
    /// next round's local steps: a worker goes on from its own parameters and, once the
    /// late mean is applied, keeps its latest round's progress on top of the new global
    /// parameters. `sim` only for now (it measures what the delay costs in loss).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delayed_outer_step: bool,
}

/// Outer learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OuterSchedule {
    /// The same rate every round.
    #[default]
    Constant,
    /// Cosine decay from `lr` to `lr / 10` over the rounds.
    Cosine,
}

impl Default for OuterConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Diloco,
            workers: 4,
            inner_steps: 50,
            lr: 0.7,
            momentum: 0.9,
            quant: Quant::Int8,
            block: 256,
            scale: ScaleType::F32,
            error_feedback: false,
            warmup_ddp_steps: 0,
            lr_schedule: OuterSchedule::Constant,
            sparse: SparseSettings::default(),
            delayed_outer_step: false,
        }
    }
}

/// Evaluation cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate when the per-worker step count passes a multiple of this (and at the end).
    pub every_steps: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every_steps: 50 }
    }
}

/// Compute backend for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's `flex` CPU backend.
    #[default]
    Cpu,
    /// burn's wgpu backend (build with `--features wgpu`).
    Wgpu,
    /// burn's CUDA backend (build with `--features cuda`).
    Cuda,
}

/// Seed and backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Seeds initialisation, shards' sampling and validation windows.
    pub seed: u64,
    /// `cpu`, `wgpu` or `cuda`.
    pub backend: BackendKind,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            seed: 0,
            backend: BackendKind::Cpu,
        }
    }
}

/// A configuration error: which file, which field, what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The field and what is allowed.
    pub message: String,
}

impl RunConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, TrainerError> {
        // A config that cannot be read is a bad argument, like one that does not parse.
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: format!("cannot read the config ({e})"),
        })?;
        Self::parse(&text, path).map_err(TrainerError::Config)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the relations between fields. The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let m = &self.model;
        let positive = [
            ("model.vocab_size", m.vocab_size),
            ("model.d_model", m.d_model),
            ("model.n_layers", m.n_layers),
            ("model.n_heads", m.n_heads),
            ("model.n_kv_heads", m.n_kv_heads),
            ("model.ffn_hidden", m.ffn_hidden),
            ("model.context", m.context),
            ("data.validation_batches", self.data.validation_batches),
            (
                "data.validation_batch_size",
                self.data.validation_batch_size,
            ),
            ("inner.steps", self.inner.steps),
            ("inner.batch_size", self.inner.batch_size),
            ("outer.workers", self.outer.workers),
            ("outer.inner_steps", self.outer.inner_steps),
            ("eval.every_steps", self.eval.every_steps),
            ("checkpoint.keep", self.checkpoint.keep),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("`{field}` must be at least 1"));
            }
        }
        if !m.d_model.is_multiple_of(m.n_heads) || !(m.d_model / m.n_heads).is_multiple_of(2) {
            return Err(format!(
                "`model.d_model` ({}) must be divisible by `model.n_heads` ({}) into an even head size (RoPE rotates pairs)",
                m.d_model, m.n_heads
            ));
        }
        if !m.n_heads.is_multiple_of(m.n_kv_heads) {
            return Err(format!(
                "`model.n_heads` ({}) must be a multiple of `model.n_kv_heads` ({})",
                m.n_heads, m.n_kv_heads
            ));
        }
        let unit = |field: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{field}` is {v}; allowed: 0 ≤ value < 1"))
            }
        };
        unit("data.validation_fraction", self.data.validation_fraction)?;
        unit("inner.warmup_fraction", self.inner.warmup_fraction)?;
        unit("inner.min_lr_fraction", self.inner.min_lr_fraction)?;
        if self.data.validation_fraction == 0.0 {
            return Err(
                "`data.validation_fraction` must be above 0: validation needs held-out text".into(),
            );
        }
        if let Some(pin) = &self.data.sha256
            && !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "`data.sha256` is {pin:?}; allowed: 64 hex digits, the dataset's fingerprint (`launch data prepare` prints it)"
            ));
        }
        if !(self.inner.lr > 0.0 && self.inner.lr.is_finite()) {
            return Err(format!(
                "`inner.lr` is {}; allowed: a positive number",
                self.inner.lr
            ));
        }
        if !(self.outer.lr > 0.0 && self.outer.lr.is_finite()) {
            return Err(format!(
                "`outer.lr` is {}; allowed: a positive number",
                self.outer.lr
            ));
        }
        if !(0.0..1.0).contains(&self.outer.momentum) {
            return Err(format!(
                "`outer.momentum` is {}; allowed: 0 ≤ value < 1",
                self.outer.momentum
            ));
        }
        let quant = sinter_kernels::QuantConfig {
            block: self.outer.block,
            scale: sinter_kernels::ScaleDtype::F32,
        };
        quant
            .validate()
            .map_err(|e| format!("`outer.block`: {e}"))?;
        self.outer
            .sparse
            .kernel_config()
            .validate()
            .map_err(|e| format!("`outer.sparse`: {e}"))?;
        if !(0.0..=1.0).contains(&self.outer.sparse.error_decay) {
            return Err(format!(
                "`outer.sparse.error_decay` is {}; allowed: 0 ≤ value ≤ 1",
                self.outer.sparse.error_decay
            ));
        }
        self.incentives.validate()?;
        if self.outer.delayed_outer_step && self.checkpoint.every_rounds > 0 {
            return Err(
                "`outer.delayed_outer_step` runs write no checkpoints yet (a late mean is not part of one): set `checkpoint.every_rounds = 0`".into(),
            );
        }
        if self.outer.warmup_ddp_steps >= self.inner.steps {
            return Err(format!(
                "`outer.warmup_ddp_steps` ({}) must be below `inner.steps` ({})",
                self.outer.warmup_ddp_steps, self.inner.steps
            ));
        }
        Ok(())
    }

    /// What every peer of a run must hold the same: this config without the peer's own
    /// hardware (`run.backend`) and, where `data.sha256` pins the dataset, without the paths
    /// to its copy. Peers compare it when one joins.
    pub fn agreed(&self) -> RunConfig {
        let data = match self.data.sha256 {
            Some(_) => DataConfig {
                corpus: String::new(),
                tokenizer: String::new(),
                ..self.data.clone()
            },
            None => self.data.clone(),
        };
        RunConfig {
            run: RunSection {
                backend: BackendKind::default(),
                ..self.run.clone()
            },
            data,
            ..self.clone()
        }
    }

    /// SHA-256 of the canonical (re-serialised) config without `[checkpoint]`,
    /// `[incentives]` and `run.backend` (a peer's hardware): the run's identity.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let identity = RunConfig {
            checkpoint: CheckpointConfig::default(),
            incentives: IncentiveConfig::default(),
            ..self.agreed()
        };
        let canonical = toml::to_string(&identity).expect("a RunConfig always serialises");
        let digest = sha2::Sha256::digest(canonical.as_bytes());
        hex::encode(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunConfig, ConfigError> {
        RunConfig::parse(text, Path::new("configs/x.toml"))
    }

    #[test]
    fn the_backend_is_not_part_of_the_runs_identity() {
        let cpu = parse("[run]\nbackend = \"cpu\"\n").unwrap();
        let gpu = parse("[run]\nbackend = \"cuda\"\n").unwrap();
        let other_seed = parse("[run]\nbackend = \"cuda\"\nseed = 1\n").unwrap();
        assert_eq!(cpu.hash(), gpu.hash());
        assert_ne!(gpu.hash(), other_seed.hash());
    }

    #[test]
    fn a_pinned_dataset_is_the_identity_not_its_path() {
        let pin = "ab".repeat(32);
        let here = parse(&format!(
            "[data]\ncorpus = \"/data/web\"\ntokenizer = \"/data/web/tokenizer.json\"\nsha256 = \"{pin}\"\n"
        ))
        .unwrap();
        let there = parse(&format!(
            "[data]\ncorpus = \"../web\"\ntokenizer = \"../web/tokenizer.json\"\nsha256 = \"{pin}\"\n"
        ))
        .unwrap();
        let other = parse(&format!(
            "[data]\ncorpus = \"../web\"\nsha256 = \"{}\"\n",
            "cd".repeat(32)
        ))
        .unwrap();
        assert_eq!(here.hash(), there.hash());
        assert_ne!(here.hash(), other.hash());
        let unpinned = parse("[data]\ncorpus = \"/data/web\"\n").unwrap();
        let moved = parse("[data]\ncorpus = \"../web\"\n").unwrap();
        assert_ne!(
            unpinned.hash(),
            moved.hash(),
            "without a pin the path is all there is"
        );
        let err = parse("[data]\nsha256 = \"abc\"\n").unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn a_typo_names_the_file_the_field_and_the_choices() {
        let err = parse("[inner]\nlearning_rate = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("configs/x.toml: "), "{err}");
        assert!(
            err.contains("learning_rate") && err.contains("`lr`"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_enum_value_lists_the_allowed_ones() {
        let err = parse("[outer]\nmode = \"allreduce\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("diloco") && err.contains("ddp"), "{err}");
    }

    #[test]
    fn relations_between_fields_are_checked() {
        let err = parse("[model]\nd_model = 100\nn_heads = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.d_model"), "{err}");
        let err = parse("[outer]\nblock = 6\n").unwrap_err().to_string();
        assert!(err.contains("outer.block"), "{err}");
        for bad in [
            "k = 0",
            "k = 5000",
            "bits = 3",
            "chunk = 70000",
            "error_decay = 1.5",
        ] {
            let err = parse(&format!(
                "[outer]\nquant = \"sparse\"\n[outer.sparse]\n{bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("outer.sparse"), "{bad}: {err}");
        }
        let sparse = parse("[outer]\nquant = \"sparse\"\n[outer.sparse]\nk = 32\n").unwrap();
        assert_eq!(sparse.outer.sparse.k, 32);
        assert_ne!(sparse.hash(), RunConfig::default().hash());
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "expected tiny, parity, 125m and 1b configs");
    }

    #[test]
    fn the_hash_changes_with_any_field() {
        let a = RunConfig::default();
        let mut b = a.clone();
        b.inner.lr *= 2.0;
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), RunConfig::default().hash());
    }

    #[test]
    fn the_incentives_section_selects_the_mechanism_without_changing_the_run() {
        let config = parse(
            "[incentives]\ntempo = 6\n[incentives.consensus]\nconsensus = \"papers\"\n[incentives.scoring]\nweights_from = \"fisher\"\n",
        )
        .unwrap();
        assert_eq!(config.incentives.tempo, 6);
        assert_eq!(
            config.incentives.consensus.consensus,
            sinter_mechanism::consensus::Consensus::Papers
        );
        assert_eq!(config.hash(), RunConfig::default().hash());
        let typo = parse("[incentives.consensus]\nconsensus = \"yuma2\"\n").unwrap_err();
        assert!(typo.to_string().contains("yuma2"), "{typo}");
        let zero = parse("[incentives]\ntempo = 0\n").unwrap_err();
        assert!(zero.to_string().contains("incentives.tempo"), "{zero}");
    }

    #[test]
    fn a_chain_section_names_its_endpoint_subnet_and_burn_and_excludes_the_embedded_ledger() {
        let chain =
            "[incentives.chain]\nurl = \"ws://127.0.0.1:9944\"\nnetuid = 3\nmax_burn = 0.5\n";
        let config = parse(chain).unwrap();
        let section = config.incentives.chain.as_ref().unwrap();
        assert_eq!(
            (section.netuid, section.max_burn_rao()),
            (3, Some(500_000_000))
        );
        assert_eq!(section.block_secs, 12.0);
        let http = parse(&chain.replace("ws://", "http://")).unwrap_err();
        assert!(http.to_string().contains("websocket endpoint"), "{http}");
        let negative = parse(&chain.replace("0.5", "-1")).unwrap_err();
        assert!(negative.to_string().contains("max_burn"), "{negative}");
        let typo = parse(&chain.replace("netuid", "net_uid")).unwrap_err();
        assert!(typo.to_string().contains("net_uid"), "{typo}");
        let author = sinter_mechanism::ledger::keys::Keypair::generate()
            .0
            .account();
        let both = parse(&format!(
            "{chain}[incentives.ledger]\nauthor = \"{author}\"\n"
        ))
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
    }
}
