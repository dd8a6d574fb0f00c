//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sinter_comms::group::GroupLimits;
use sinter_comms::net::PeerLimits;
use sinter_trainer::config::BackendKind;

/// sinter: many machines train one model. DiLoCo workers take local steps on their own
/// shards and exchange int8 pseudo-gradients a few hundred times less often than
/// data-parallel training would.
#[derive(Debug, Parser)]
#[command(name = "launch", version, propagate_version = true)]
#[command(
    after_help = "Start with: launch sim configs/tiny.toml --out out/tiny\n\
Logs go to stderr; set RUST_LOG=debug for more. Exit codes: 0 success, 1 runtime failure, 2 bad arguments or config."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate N DiLoCo (or data-parallel) workers in this process, through the real
    /// quantize → encode → decode → dequantize path, and report loss and bytes.
    Sim(SimArgs),
    /// Join (or start) a real run as one peer over libp2p: train H local steps, all-reduce
    /// int8 pseudo-gradients with the group, apply the outer step, repeat.
    #[command(after_help = "Example, three peers on one machine:\n  \
launch run configs/tiny.toml --workers 3 --listen /ip4/127.0.0.1/tcp/4001 --key out/p1/peer.key --out out/p1\n  \
launch run configs/tiny.toml --workers 3 --listen /ip4/127.0.0.1/tcp/0 --bootstrap /ip4/127.0.0.1/tcp/4001 --key out/p2/peer.key --out out/p2\n  \
(and a third like the second). Every peer must use the same config and overrides: the run is identified by the config's hash.")]
    Run(Box<RunArgs>),
    /// Ask the peer running on this machine with a key file to leave its run: it finishes
    /// the current round, tells the group and exits 0.
    Leave(LeaveArgs),
    /// Show a run's group as one of its peers sees it: members, rounds, losses, bytes, round
    /// times, and how it reaches each (direct, hole-punched or relayed); or, with
    /// `--validator DIR`, the miners as a validator last saw them: score, latency, answers and
    /// misses.
    Status(StatusArgs),
    /// Run a relay alone (circuit relay v2): peers behind NATs listen through it
    /// (`launch run --relay ADDR`), meet over it and punch holes to each other; where hole
    /// punching fails their traffic goes through it. Runs until Ctrl-C.
    #[command(after_help = "Example, on a machine others can reach at 203.0.113.7:
  launch relay --listen /ip4/0.0.0.0/tcp/4001 --key relay.key --external /ip4/203.0.113.7/tcp/4001
  launch run CONFIG --relay /ip4/203.0.113.7/tcp/4001/p2p/PEER_ID --bootstrap …")]
    Relay(RelayArgs),
    /// Train one worker alone (no DiLoCo): the single-machine baseline.
    Train(TrainArgs),
    /// Datasets: tokenize text, JSON-lines and parquet files into memory-mapped token shards
    /// a run trains from (`data.corpus = "DIR"`), and check one.
    #[command(subcommand)]
    Data(DataCommand),
    /// Print the validation loss of saved weights.
    Eval(EvalArgs),
    /// Sample text from saved weights.
    Generate(GenerateArgs),
    /// Serve saved weights over OpenAI's HTTP API (completions and chat, streamed or not;
    /// /v1/models, /health, Prometheus /metrics): the official OpenAI clients work with
    /// `base_url=http://ADDR/v1`. Temperature 0 gives exactly `launch generate --temperature 0`.
    Serve(ServeArgs),
    /// Ask a miner's axon one signed synapse (a generation, or the next token's likeliest
    /// tokens) and check its signed answer: what a validator does, by hand. Exit 1 if the
    /// miner refuses or its answer does not check.
    #[command(
        after_help = "Example:\n  launch ask --axon /ip4/127.0.0.1/tcp/4010/p2p/PEER_ID --miner MINER_SS58 out/tiny/model.safetensors --name validator --prompt ROMEO:"
    )]
    Ask(AskArgs),
    /// Validate served models: each round, route fresh held-out text through a sparse gate to
    /// the miners whose axons the ledger lists, score each by its Shapley value to the
    /// mixture's loss (times how often it answered in time), and commit and reveal weights
    /// on the ledger, whose epochs pay the miners. Every round is a line of
    /// OUT/validate.jsonl.
    #[command(after_help = "Example:
  launch validate configs/tiny.toml --name validator --ledger-node /ip4/127.0.0.1/tcp/4100/p2p/PEER_ID --genesis genesis.json --out out/validator
The hotkey must be registered (or the wallet's coldkey pays to register it), and needs stake for its weights to count.")]
    Validate(ValidateArgs),
    /// Draw the validation-loss curves of several runs in one picture (SVG).
    Plot(PlotArgs),
    /// Measure the kernels against a memcpy baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The chain's side: the embedded ledger (metagraph, verification) and Yuma epochs.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// sr25519 keys for the ledger: a coldkey (owns stake, receives emission) and a hotkey
    /// (signs a peer's extrinsics), each in a file readable only by you.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Bittensor's chain (subtensor): register a hotkey, serve its address, stake, set or
    /// commit weights, publish a commitment, read a subnet's metagraph.
    #[command(
        subcommand,
        after_help = "Example, against a local node:\n  launch chain register --url ws://127.0.0.1:9944 --netuid 1 --name alice --hotkey miner --max-burn 1\n  launch chain metagraph --url ws://127.0.0.1:9944 --netuid 1 --json"
    )]
    Chain(ChainCommand),
    /// Contributions become emission: peers with roles (honest on Shakespeare or Milton, lazy,
    /// copycat) train a DiLoCo run, a validator scores every round (Byzantine filter,
    /// Shapley, Fisher) and commits weights to the embedded ledger, whose Yuma epochs pay
    /// emission. Writes OUT/ledger and OUT/incentives.json.
    #[command(
        after_help = "Example (experiment 1):\n  launch incentives configs/tiny.toml --rounds 3 --out out/incentives\n  launch ledger show out/incentives/ledger\n  launch ledger verify out/incentives/ledger"
    )]
    Incentives(IncentivesArgs),
    /// Work with checkpoint directories (OUT/checkpoints/round-NNNNNN).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Export a checkpoint for the world outside sinter: Hugging Face LLaMA (loads with
    /// transformers' `LlamaForCausalLM.from_pretrained(OUT)`) or sinter's own safetensors.
    #[command(
        after_help = "Example:\n  launch export out/tiny/checkpoints --format hf --out out/tiny-hf"
    )]
    Export(ExportArgs),
}

/// `launch data …`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Tokenize files into a prepared dataset: shards of u16 (or u32) tokens with document
    /// indexes, a validation split by document, and a manifest of hashes whose SHA-256 (the
    /// dataset's fingerprint, printed at the end) pins it in a run's config.
    #[command(after_help = "Examples:\n  \
launch data prepare corpus/*.txt --out data/prepared/books\n  \
launch data prepare 'web/**/*.parquet' notes.jsonl --text-field content --tokenizer tokenizer.json --out data/prepared/web\n\n\
Then in the run's config:\n  [data]\n  corpus = \"data/prepared/web\"\n  tokenizer = \"data/prepared/web/tokenizer.json\"\n  sha256 = \"<the fingerprint>\"")]
    Prepare(PrepareArgs),
    /// Train a byte-level BPE tokenizer (GPT-2's scheme, with `<|endoftext|>`) on text,
    /// JSON-lines or parquet files and write its Hugging Face `tokenizer.json`.
    #[command(after_help = "Example (the tokenizer configs/125m.toml uses):\n  \
launch data tokenizer data/shakespeare.txt.zst data/milton.txt.zst --txt-documents paragraph --vocab 32000 --out data/prepared/bpe-32k.json")]
    Tokenizer(TokenizerArgs),
    /// Check a prepared dataset: the manifest, every shard's size and hash, every token
    /// against the vocabulary, every document index. Prints its fingerprint; exit code 1 if
    /// anything is wrong.
    Verify {
        /// The prepared dataset's directory.
        dir: PathBuf,
    },
}

/// `launch data prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Input files: `.txt` (a document per file, or per paragraph: `--txt-documents`),
    /// `.jsonl` (a JSON object per line), either of them possibly zstd-compressed (`.txt.zst`,
    /// `.jsonl.zst`), and `.parquet` (Hugging Face datasets' format); directories (walked for
    /// those) and quoted glob patterns (`'data/**/*.parquet'`).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// `bytes`, or a Hugging Face `tokenizer.json` (copied into the dataset).
    #[arg(long, default_value = "bytes")]
    pub tokenizer: String,
    /// The dataset's directory: new, or empty.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The fraction of documents held out for validation (chosen by a hash of their text).
    #[arg(long, default_value_t = 0.01)]
    pub validation_fraction: f64,
    /// A shard closes at the first document boundary past this many tokens.
    #[arg(long, default_value_t = 1 << 27)]
    pub shard_tokens: u64,
    /// A token appended after every document (default: the tokenizer's end-of-text token,
    /// if it has one).
    #[arg(long, value_name = "TOKEN")]
    pub eos: Option<String>,
    /// How the inputs are read.
    #[command(flatten)]
    pub read: ReadArgs,
}

/// How `launch data` reads its inputs.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The JSON field or parquet column holding each document's text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// What one document of a `.txt` file is: the whole file, or each paragraph (text
    /// between blank lines).
    #[arg(long, value_enum, default_value = "file")]
    pub txt_documents: TxtDocumentsArg,
}

/// `--txt-documents`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TxtDocumentsArg {
    /// The whole file.
    File,
    /// Each paragraph.
    Paragraph,
}

/// `launch data tokenizer`.
#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// Input files, directories or quoted glob patterns, as for `launch data prepare`.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Tokens in the vocabulary (256 bytes and `<|endoftext|>` included).
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// Learn from at most this many bytes of text (the first documents read).
    #[arg(long, default_value_t = 1 << 30)]
    pub sample_bytes: usize,
    /// The `tokenizer.json` to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// How the inputs are read.
    #[command(flatten)]
    pub read: ReadArgs,
}

/// `launch checkpoint …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Recompute every chunk hash and the Merkle root of a checkpoint and name any bad chunk
    /// and the files it covers. Exit code 1 if anything is wrong.
    Verify {
        /// A checkpoint directory, or a checkpoints directory (its `latest` is checked).
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve a checkpoints directory to peers of its run (newest, and any kept one by
    /// root) until Ctrl-C. Running peers serve their own OUT/checkpoints already.
    Serve {
        /// A checkpoints directory (holding `latest`).
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/0")]
        listen: Vec<String>,
    },
    /// Fetch a checkpoint of a run from several peers at once, each chunk verified against
    /// the manifest most of them agree on (a bad chunk or a vanished peer: asked elsewhere),
    /// and write it as OUT/checkpoints/round-NNNNNN (then: launch run CONFIG --resume OUT/checkpoints).
    Fetch {
        /// The run's configuration (TOML): identifies the run.
        config: PathBuf,
        /// A peer serving the run's checkpoints. Repeatable: chunks come from all at once.
        #[arg(long = "from", value_name = "MULTIADDR", required = true)]
        from: Vec<String>,
        /// The checkpoint's Merkle root (default: the newest most peers agree on).
        #[arg(long)]
        root: Option<String>,
        /// Where to write it.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `--format` of `launch export`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face LLaMA: model.safetensors (HF names), config.json,
    /// generation_config.json, tokenizer.json, tokenizer_config.json.
    Hf,
    /// sinter's own layout: model.safetensors with the run config in its metadata.
    Safetensors,
}

/// `launch export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint directory, or a checkpoints directory (its `latest` is exported).
    pub dir: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: ExportFormat,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Where a command takes a model from: saved weights or a (verified) checkpoint.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct WeightsArgs {
    /// Weights written by `sim` or `train` (OUT/model.safetensors).
    pub weights: Option<PathBuf>,
    /// A checkpoint directory, or a checkpoints directory (its `latest`); verified first.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
}

/// `--backend`, shared by every command that runs a model.
#[derive(Debug, Args)]
pub struct BackendOverride {
    /// Compute backend (overrides `run.backend`). Not part of a run's identity: peers on
    /// different hardware train the same run and agree bit for bit on its parameters.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
}

impl BackendOverride {
    /// The backend to run on: this flag's, else `configured`.
    pub fn or(&self, configured: BackendKind) -> BackendKind {
        self.backend.map_or(configured, Into::into)
    }
}

/// `launch bench` targets.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training speed: one worker trains CONFIG as `launch train` does (evaluations
    /// included) and prints tokens/s and peak memory as one JSON line.
    /// scripts/bench-train.sh runs it beside PyTorch on the same model for the ratio.
    Train {
        /// Run configuration (TOML), e.g. configs/parity.toml.
        config: PathBuf,
        /// Inner steps (overrides `inner.steps`).
        #[arg(long, default_value_t = 60,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        steps: usize,
        /// Compute backend.
        #[command(flatten)]
        backend: BackendOverride,
    },
    /// Rayon kernels' throughput as a ratio to memcpy of the same buffer.
    Kernels {
        /// Values per buffer (default: the parity model's parameter count).
        #[arg(long, default_value_t = 857_216)]
        len: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 50)]
        iters: usize,
    },
    /// One peer of an all-reduce benchmark group (start one per host, e.g. with
    /// scripts/bench-allreduce.sh): the reduce-scatter + all-gather's time against the optimum
    /// 2(N−1)/N · S / B and against a naive exchange of full payloads. Prints JSON.
    Allreduce {
        /// Peers in the group (waits up to 120 s for them).
        #[arg(long, default_value_t = 4)]
        peers: usize,
        /// Payload per peer, in MB.
        #[arg(long, default_value_t = 16.0)]
        mb: f64,
        /// Timed rounds of each exchange (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Each peer's link rate in Mbit/s, for the ratio to the optimum.
        #[arg(long, default_value_t = 50.0)]
        link_mbit: f64,
        /// Address to listen on.
        #[arg(long, value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/0")]
        listen: Vec<String>,
        /// Address to tell other peers instead of the listen address.
        #[arg(long, value_name = "MULTIADDR")]
        external: Vec<String>,
        /// A peer of the benchmark group to join through.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
    },
    /// Experiment 2 (the seed paper's Figure 4): a cabal with 40 % of the stake weighting
    /// only itself against an honest 60 %, emission added to stake each epoch, under both
    /// consensus variants.
    Cabal {
        /// Epochs.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Emission per epoch, as a percentage of the initial total stake.
        #[arg(long, default_value_t = 10.0)]
        emission_percent: f64,
    },
    /// The embedded ledger over a long run: authors BLOCKS blocks, each with one
    /// contribution commitment per peer, and prints the time per block early and late, the
    /// replay of the whole file on open, and a replica's catch-up read (ratios late/early
    /// show whether costs grow with the ledger's length).
    Ledger {
        /// Blocks to author.
        #[arg(long, default_value_t = 3000)]
        blocks: u64,
        /// Peers committing a contribution every block.
        #[arg(long, default_value_t = 8)]
        peers: usize,
    },
    /// A validator's cost per round as the number of miners grows (gate, opening the signed
    /// answers, Shapley values, copy check), against opening the answers alone.
    Validator {
        /// Miner counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
        miners: Vec<usize>,
        /// Examples per round.
        #[arg(long, default_value_t = 8)]
        examples: usize,
        /// Miners per example (the gate's k).
        #[arg(long, default_value_t = 3)]
        k: usize,
        /// Timed rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// One Yuma consensus epoch at network scale (uids × validators, every validator
    /// weighting every uid), against one sparse matrix-vector product over the same weights.
    Yuma {
        /// Uids.
        #[arg(long, default_value_t = 4096)]
        uids: usize,
        /// Validators (the top uids by stake hold permits).
        #[arg(long, default_value_t = 128)]
        validators: usize,
        /// Timed epochs (the median is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

/// `launch incentives` arguments.
#[derive(Debug, Args)]
pub struct IncentivesArgs {
    /// The run config (model, inner and outer settings; `inner.steps` is ignored).
    pub config: PathBuf,
    /// Output directory (must not hold a ledger already).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Scored rounds of H local steps.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Rounds the honest peers train alone first (unscored, no ledger).
    #[arg(long, default_value_t = 2)]
    pub warmup_rounds: usize,
    /// The peers' roles, comma-separated: shakespeare, milton, lazy, copycat.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "shakespeare,shakespeare,shakespeare,milton,lazy,copycat"
    )]
    pub roles: Vec<String>,
    /// Consensus (overrides `incentives.consensus.consensus`): the chain's Yuma (subtensor) or
    /// the papers' (sigmoid, accumulating bonds).
    #[arg(long, value_enum)]
    pub consensus: Option<ConsensusArg>,
    /// The score the validator's weights come from (overrides
    /// `incentives.scoring.weights_from`).
    #[arg(long, value_enum)]
    pub weights_from: Option<ScoreArg>,
    /// Validation batches per corpus the validator evaluates on (overrides
    /// `incentives.validator_batches`).
    #[arg(long)]
    pub validator_batches: Option<usize>,
    /// Monte-Carlo permutations, above eight peers and in the comparison against exact values
    /// (overrides `incentives.scoring.permutations`).
    #[arg(long)]
    pub permutations: Option<usize>,
}

/// `launch ledger node` arguments.
#[derive(Debug, Args)]
pub struct LedgerNodeArgs {
    /// The genesis (JSON).
    #[arg(long)]
    pub genesis: PathBuf,
    /// This node's ledger file (created from the genesis if missing).
    #[arg(long)]
    pub ledger: PathBuf,
    /// The author's wallet key file: this node authors blocks.
    #[arg(long, value_name = "FILE")]
    pub author_key: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/0")]
    pub listen: Vec<String>,
    /// A node to connect to (with its /p2p/ id).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Seconds between blocks (author only).
    #[arg(long, default_value_t = 2.0)]
    pub block_secs: f64,
}

/// `launch ledger submit` arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The genesis (JSON): extrinsics are signed for it.
    #[arg(long)]
    pub genesis: PathBuf,
    /// The author node (with its /p2p/ id).
    #[arg(long, value_name = "MULTIADDR")]
    pub node: String,
    /// The signer's wallet key file (a coldkey for register and add-stake, a hotkey for
    /// serve).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub call: SubmitCall,
}

/// Calls `launch ledger submit` sends.
#[derive(Debug, Subcommand)]
pub enum SubmitCall {
    /// Registers a hotkey as a new uid, burning the genesis `burn` from the signer.
    Register {
        /// The hotkey (SS58).
        #[arg(long)]
        hotkey: String,
    },
    /// Stakes `amount` from the signer's balance on its hotkey.
    AddStake {
        /// The hotkey (SS58).
        #[arg(long)]
        hotkey: String,
        /// Amount.
        #[arg(long)]
        amount: u64,
    },
    /// Publishes the signer's (a hotkey's) peer address.
    Serve {
        /// A multiaddress.
        #[arg(long)]
        address: String,
    },
}

/// `--consensus` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConsensusArg {
    /// Subtensor's Yuma, bit for bit.
    Subtensor,
    /// The papers' Yuma.
    Papers,
}

/// `--weights-from` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScoreArg {
    /// Shapley values.
    Shapley,
    /// Fisher importance.
    Fisher,
}

/// `launch wallet …`.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Creates a wallet in Bittensor's format: a coldkey (encrypted with a password from
    /// SINTER_COLDKEY_PASSWORD or a prompt) and a hotkey; prints their addresses and, once,
    /// their mnemonics: write them down.
    #[command(
        after_help = "Example:\n  launch wallet new --name alice --hotkey miner\n  (files: ~/.bittensor/wallets/alice/coldkey, coldkeypub.txt, hotkeys/miner, hotkeys/minerpub.txt)"
    )]
    New(WalletArgs),
    /// Restores a wallet's key from its mnemonic (read from stdin); a coldkey is encrypted.
    Import {
        #[command(flatten)]
        wallet: WalletArgs,
        /// Which key the mnemonic is.
        #[arg(long, value_enum, default_value = "coldkey")]
        key: KeyArg,
    },
    /// Prints a wallet's addresses (SS58) from its public files, never its secrets.
    Show {
        #[command(flatten)]
        wallet: WalletArgs,
        /// As JSON: {"coldkey": SS58, "hotkey": SS58}.
        #[arg(long)]
        json: bool,
        /// Also decrypt the coldkey (checks the password; exit 1 when wrong).
        #[arg(long)]
        unlock: bool,
    },
    /// Rewrites a wallet of sinter's first format (DIR/coldkey and DIR/hotkey) in Bittensor's,
    /// under --wallet-path, --name and --hotkey; the old files are left as they are.
    Convert {
        #[command(flatten)]
        wallet: WalletArgs,
        /// The old wallet's directory (e.g. ~/.sinter/wallets/NAME).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
}

/// `launch chain …`.
#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Registers the wallet's hotkey on the subnet by burning TAO (`burned_register`, paid
    /// by the coldkey); shows the burn first and refuses above --max-burn. Already registered
    /// is not an error. Prints the uid.
    Register {
        #[command(flatten)]
        chain: ChainArgs,
        /// The most TAO to burn (refuses when the subnet's burn is higher).
        #[arg(long, value_name = "TAO")]
        max_burn: Option<String>,
    },
    /// Publishes the address the hotkey serves at (`serve_axon`): where miners and peers are
    /// found. The chain refuses loopback and private addresses.
    Serve {
        #[command(flatten)]
        chain: ChainArgs,
        /// The IP address (v4 or v6).
        #[arg(long)]
        ip: std::net::IpAddr,
        /// The port.
        #[arg(long)]
        port: u16,
    },
    /// Moves TAO from the coldkey's balance to the hotkey's stake on the subnet (`add_stake`).
    Stake {
        #[command(flatten)]
        chain: ChainArgs,
        /// How much, in TAO (e.g. 1.5).
        #[arg(long, value_name = "TAO")]
        amount: String,
    },
    /// Moves stake from the hotkey back to the coldkey (`remove_stake`).
    Unstake {
        #[command(flatten)]
        chain: ChainArgs,
        /// How much, in TAO.
        #[arg(long, value_name = "TAO")]
        amount: String,
    },
    /// Sets the hotkey's weights on the subnet: `set_weights`, or, when the subnet has
    /// commit-reveal on, `commit_weights` then `reveal_weights` once the reveal window opens
    /// (this waits for it); where the runtime takes weights timelocked to drand
    /// (`commit_timelocked_weights`), they are encrypted to the round that opens the reveal
    /// epoch and the chain reveals them itself. Weights are scaled so the largest is 65535.
    Weights {
        #[command(flatten)]
        chain: ChainArgs,
        /// Target uids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        uids: Vec<u16>,
        /// Their weights (any non-negative scale), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        weights: Vec<f64>,
    },
    /// Publishes up to 128 bytes for the hotkey on the subnet (`Commitments.set_commitment`),
    /// e.g. the Merkle root of a run's contributions. Rate-limited by the pallet.
    Commit {
        #[command(flatten)]
        chain: ChainArgs,
        /// The bytes, in hex (with or without 0x).
        #[arg(long, value_name = "HEX")]
        data: String,
    },
    /// The subnet's neurons: uid, hotkey, coldkey, stake, axon, consensus, incentive,
    /// dividends, emission, validator permit, last update.
    Metagraph {
        /// The node's URL.
        #[arg(long, default_value = "ws://127.0.0.1:9944", env = "SINTER_CHAIN_URL")]
        url: String,
        /// The subnet.
        #[arg(long)]
        netuid: u16,
        /// As JSON: {"block", "netuid", "neurons": [{"uid", "hotkey", …}]}.
        #[arg(long)]
        json: bool,
    },
}

/// Which chain, subnet and wallet a chain command uses.
#[derive(Debug, Clone, Args)]
pub struct ChainArgs {
    /// The node's URL (ws:// for a local node, wss:// otherwise).
    #[arg(long, default_value = "ws://127.0.0.1:9944", env = "SINTER_CHAIN_URL")]
    pub url: String,
    /// The subnet.
    #[arg(long)]
    pub netuid: u16,
    #[command(flatten)]
    pub wallet: WalletArgs,
}

/// Which wallet key.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyArg {
    /// Owns stake, receives emission.
    Coldkey,
    /// Signs the peer's extrinsics.
    Hotkey,
}

/// Where a wallet lives (Bittensor's layout: WALLET_PATH/NAME/coldkey,
/// WALLET_PATH/NAME/hotkeys/HOTKEY).
#[derive(Debug, Clone, Args)]
pub struct WalletArgs {
    /// The wallet's name.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The hotkey's name.
    #[arg(long, default_value = "default")]
    pub hotkey: String,
    /// The wallets directory (default: ~/.bittensor/wallets).
    #[arg(
        long = "wallet-path",
        visible_alias = "dir",
        value_name = "DIR",
        env = "SINTER_WALLETS"
    )]
    pub dir: Option<PathBuf>,
}

/// `launch ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// The metagraph after the last good block: uid, hotkey, stake, consensus, incentive,
    /// dividends, emission, validator trust.
    Show {
        /// The ledger file.
        file: PathBuf,
        /// Print JSON (the whole state) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Runs the ledger over libp2p: with `--author-key` (the genesis author's key file) this
    /// node authors a block every `--block-secs` from the extrinsics submitted to it and
    /// gossips it; without, it keeps a replica, checking every block it imports.
    #[command(
        after_help = "Example:\n  launch ledger node --genesis genesis.json --ledger out/author.ledger --author-key ~/.sinter/wallets/author/hotkey --listen /ip4/127.0.0.1/tcp/4100\n  launch ledger node --genesis genesis.json --ledger out/replica.ledger --bootstrap /ip4/127.0.0.1/tcp/4100/p2p/PEER_ID\nGENESIS keys: author (SS58), tempo, burn, emission_per_epoch, balances [{account, balance}], neurons [{hotkey, coldkey, stake}], consensus {...}."
    )]
    Node(LedgerNodeArgs),
    /// Signs an extrinsic with a wallet key and submits it to the author node.
    Submit(SubmitArgs),
    /// Re-checks every block's hash, signature and extrinsics and recomputes every epoch from
    /// the recorded weights. Exit code 1 names the first bad block (or an unfinished write).
    Verify {
        /// The ledger file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One Yuma consensus epoch from given stakes, weights, bonds and permits, printed as
    /// JSON with the values the chain would store: "what would the chain pay if…".
    #[command(
        after_help = "FILE keys: stake (numbers), weights (n×n u16, rows as the chain stores them), validator_permit (bools); optional bonds (n×n u16), active (bools), kappa (u16, default 32767), bonds_moving_average (millionths, default 900000), emission (default 1e9).\nOutput keys: consensus, incentive, dividends, validator_trust (u16 lists), bonds (n×n u16), emission (per uid)."
    )]
    Epoch {
        /// The epoch's inputs as JSON.
        file: PathBuf,
    },
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Local steps, averaged pseudo-gradients, outer Nesterov step.
    Diloco,
    /// Data-parallel: gradients averaged every step.
    Ddp,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// burn's flex backend on the CPU's cores.
    Cpu,
    /// burn's wgpu backend: Vulkan, Metal or DirectX 12 (any GPU; Mesa's lavapipe without one).
    Wgpu,
    /// burn's CUDA backend: NVIDIA GPUs (the driver is loaded when the run starts).
    Cuda,
}

impl From<BackendArg> for BackendKind {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Wgpu => BackendKind::Wgpu,
            BackendArg::Cuda => BackendKind::Cuda,
        }
    }
}

/// `--quant` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum QuantArg {
    /// Blockwise int8 absmax pseudo-gradients.
    Int8,
    /// Full-precision f32 pseudo-gradients.
    None,
    /// The top-k entries of each chunk, 2/4/8-bit, with error feedback (SparseLoCo); see
    /// `--sparse-k`, `--sparse-chunk`, `--sparse-bits`, `--error-decay`.
    Sparse,
}

/// Where a run writes its results.
#[derive(Debug, Args)]
pub struct OutArgs {
    /// Directory for metrics.jsonl, summary.json, loss.svg, model.safetensors and
    /// checkpoints/ (every `checkpoint.every_rounds` rounds).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Cap on inner steps per worker (overrides `inner.steps`, keeping the schedule's shape).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Seed (overrides `run.seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every N outer rounds, 0 for none (overrides
    /// `checkpoint.every_rounds`; not part of the run's identity).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Compute backend.
    #[command(flatten)]
    pub backend: BackendOverride,
}

/// Overrides of the DiLoCo settings shared by `sim` and `run`: the config's `[outer]`
/// section and the inner learning rate.
#[derive(Debug, Args)]
pub struct OuterOverrides {
    /// Inner AdamW peak learning rate (overrides `inner.lr`).
    #[arg(long, value_name = "LR")]
    pub inner_lr: Option<f64>,
    /// Number of workers (overrides `outer.workers`; for `run`, the peers to wait for).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Local steps per round, H (overrides `outer.inner_steps`).
    #[arg(long, value_name = "H")]
    pub inner_steps: Option<usize>,
    /// Pseudo-gradient encoding (overrides `outer.quant`).
    #[arg(long, visible_alias = "codec", value_enum)]
    pub quant: Option<QuantArg>,
    /// Sparse codec: entries kept per chunk (overrides `outer.sparse.k`).
    #[arg(long, value_name = "K")]
    pub sparse_k: Option<usize>,
    /// Sparse codec: values per chunk, at most 65536 (overrides `outer.sparse.chunk`).
    #[arg(long, value_name = "N")]
    pub sparse_chunk: Option<usize>,
    /// Sparse codec: bits per kept value, 2, 4 or 8 (overrides `outer.sparse.bits`).
    #[arg(long, value_name = "BITS")]
    pub sparse_bits: Option<u8>,
    /// Sparse codec: error-feedback decay, 0–1 (overrides `outer.sparse.error_decay`).
    #[arg(long, value_name = "DECAY")]
    pub error_decay: Option<f32>,
    /// DiLoCo or data-parallel (overrides `outer.mode`).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Outer learning rate (overrides `outer.lr`).
    #[arg(long)]
    pub outer_lr: Option<f32>,
    /// Outer Nesterov momentum (overrides `outer.momentum`).
    #[arg(long)]
    pub outer_momentum: Option<f32>,
    /// Carry quantization residuals into the next round (overrides `outer.error_feedback`).
    #[arg(long)]
    pub error_feedback: Option<bool>,
    /// Data-parallel warm-start steps before DiLoCo (overrides `outer.warmup_ddp_steps`).
    #[arg(long, value_name = "N")]
    pub warmup_ddp_steps: Option<usize>,
    /// Apply each round's mean one round late, as an exchange overlapped with the next
    /// round's steps would (sets `outer.delayed_outer_step`; `sim` only, with
    /// `--checkpoint-every 0`).
    #[arg(long)]
    pub delayed_outer_step: bool,
}

/// `launch sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Run configuration (TOML), e.g. configs/tiny.toml.
    pub config: PathBuf,
    /// Continue from a checkpoint written by a run of this config (a checkpoint directory,
    /// or a checkpoints directory: its `latest`). Deterministic on CPU: the losses and
    /// parameters equal the uninterrupted run's.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Config overrides.
    #[command(flatten)]
    pub outer: OuterOverrides,
    /// Output options.
    #[command(flatten)]
    pub out: OutArgs,
}

/// `launch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run configuration (TOML), the same file (and overrides) on every peer.
    pub config: PathBuf,
    /// Address to listen on, e.g. /ip4/0.0.0.0/tcp/4001 (port 0: any free port), or
    /// /ip4/0.0.0.0/udp/4001/quic-v1 for QUIC (faster on shared links: see BENCHMARKS.md).
    /// Repeatable.
    #[arg(long, value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/0")]
    pub listen: Vec<String>,
    /// A peer of the run to join through, e.g. /ip4/127.0.0.1/tcp/4001 or
    /// /ip4/127.0.0.1/udp/4001/quic-v1 (with or without /p2p/PEER_ID). Repeatable; without it
    /// this peer starts a new group.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// This peer's key file (ed25519), created on first start: the same file is the same
    /// peer id across restarts.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Address to tell other peers instead of the listen address (behind port forwarding,
    /// a NAT or a proxy). Rarely needed: a peer behind a NAT finds out by itself (AutoNAT)
    /// and is reached through relays and hole punching. Repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub external: Vec<String>,
    /// A relay to be reached through, e.g. one that `launch relay` runs
    /// (/ip4/IP/tcp/PORT/p2p/PEER_ID); listened through at once. Without it, a peer that
    /// finds itself behind a NAT uses its bootstrap peers as relays. Repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub relay: Vec<String>,
    /// Circuits this peer relays at once for NATed peers of the run until they connect
    /// directly (0: relay nothing).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub relay_circuits: usize,
    /// Stop after the run's round N (counted from the run's start).
    #[arg(long, value_name = "N")]
    pub max_rounds: Option<usize>,
    /// Seconds to wait for `outer.workers` peers before starting with fewer.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub start_wait: u64,
    /// Longest wait for other peers at any point of a round, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub round_ceiling: u64,
    /// Start from a checkpoint of this run (a checkpoint directory, or a checkpoints
    /// directory: its `latest`), e.g. one fetched with `launch checkpoint fetch`. If the
    /// group has moved on, the peer takes the group's state as a joiner would.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// The wallet (Bittensor's format, from `launch wallet new` or Bittensor's tools) whose
    /// hotkey this peer signs ledger extrinsics with; needed when the config has an
    /// `[incentives.ledger]` or `[incentives.chain]`. A hotkey not in the ledger's genesis (or
    /// not on the subnet) is registered with the wallet's coldkey, which pays the burn (its
    /// password from SINTER_COLDKEY_PASSWORD).
    #[arg(long, value_name = "NAME")]
    pub wallet: Option<String>,
    /// The wallet's hotkey.
    #[arg(long = "hotkey", value_name = "HOTKEY", default_value = "default")]
    pub wallet_hotkey: String,
    /// The wallets directory (default: ~/.bittensor/wallets).
    #[arg(
        long = "wallet-path",
        visible_alias = "wallets",
        value_name = "DIR",
        env = "SINTER_WALLETS"
    )]
    pub wallets: Option<PathBuf>,
    /// Limits on other peers.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Config overrides.
    #[command(flatten)]
    pub outer: OuterOverrides,
    /// Output options.
    #[command(flatten)]
    pub out: OutArgs,
}

/// What a peer puts up with from others (README, "Security model"). Requests over a limit
/// are refused; a peer with `--ban-after` offences (requests no honest peer sends: malformed,
/// forged, oversized, over a limit) within a minute is disconnected and refused for the rest
/// of the run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits on other peers")]
pub struct LimitArgs {
    /// Requests (and gossip messages) one peer may send per second; twice as many pass in a
    /// burst.
    #[arg(long, value_name = "N", default_value_t = PeerLimits::default().requests_per_sec,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_per_sec: u32,
    /// Requests of one peer being answered at once.
    #[arg(long, value_name = "N", default_value_t = PeerLimits::default().max_in_flight,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_in_flight: u32,
    /// Offences of one peer within a minute after which it is banned (stale requests, such as
    /// an old round's, are refused but are not offences).
    #[arg(long, value_name = "N", default_value_t = GroupLimits::default().ban_after,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ban_after: u32,
    /// Largest state, contribution or checkpoint one fetch may bring into memory, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = GroupLimits::default().max_transfer_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_transfer_mib: u64,
}

impl LimitArgs {
    /// The limits these flags set.
    pub fn group_limits(&self) -> GroupLimits {
        GroupLimits {
            requests: PeerLimits {
                requests_per_sec: self.max_requests_per_sec,
                max_in_flight: self.max_requests_in_flight,
            },
            ban_after: self.ban_after,
            max_transfer_bytes: self.max_transfer_mib.saturating_mul(1 << 20),
        }
    }
}

/// `launch leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The key file of the peer to stop (as given to `launch run --key`; default: the
    /// default key).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// `launch status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Whose status.
    #[command(flatten)]
    pub of: StatusOf,
    /// Print the status as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `launch status` reports on: a run's peer or a validator's output.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct StatusOf {
    /// Any peer of the run, e.g. /ip4/127.0.0.1/tcp/4001 (with or without /p2p/PEER_ID).
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Option<String>,
    /// A validator's output directory (`launch validate --out DIR`): its last round.
    #[arg(long, value_name = "DIR")]
    pub validator: Option<PathBuf>,
}

/// `launch train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run configuration (TOML).
    pub config: PathBuf,
    /// Start from these weights (a model.safetensors, or a checkpoint directory) instead of
    /// a fresh model: fine-tune the shared model into a specialist. Their model must be the
    /// config's `[model]`.
    #[arg(long, value_name = "WEIGHTS|DIR")]
    pub from: Option<PathBuf>,
    /// Train on this corpus (overrides `data.corpus`): `shakespeare`, `milton`, a UTF-8 file
    /// or a prepared dataset's directory.
    #[arg(long)]
    pub corpus: Option<String>,
    /// Output options.
    #[command(flatten)]
    pub out: OutArgs,
}

/// `launch plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Output directories of `sim`, `train` or `run` (each holds metrics.jsonl); the
    /// directory name labels the curve.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The picture to write.
    #[arg(long, value_name = "FILE", default_value = "loss.svg")]
    pub out: PathBuf,
    /// Title of the picture.
    #[arg(long, default_value = "validation loss")]
    pub title: String,
    /// Horizontal axis: training tokens of all workers, or inner steps per worker.
    #[arg(long, value_enum, default_value = "tokens")]
    pub x: XAxis,
    /// Plot the loss/bytes frontier instead of curves: each run's final loss against the
    /// bytes each worker sent (log scale), from its summary.json (a run's directory, or the
    /// summary file itself, labelled by its `label` field or its name: `docs/frontier/*.json`
    /// keeps the frontier's points); data-parallel runs and runs that sent nothing become
    /// labelled reference lines.
    #[arg(long, conflicts_with = "x")]
    pub frontier: bool,
}

/// `launch plot --x` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XAxis {
    /// Training tokens consumed by all workers together.
    Tokens,
    /// Inner steps per worker (compares runs with different numbers of workers).
    Steps,
}

/// `launch eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model.
    #[command(flatten)]
    pub source: WeightsArgs,
    /// Compute backend.
    #[command(flatten)]
    pub backend: BackendOverride,
}

/// `launch generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model.
    #[command(flatten)]
    pub source: WeightsArgs,
    /// Compute backend.
    #[command(flatten)]
    pub backend: BackendOverride,
    /// Text to continue.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy and deterministic.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens reaching this probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `launch serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model.
    #[command(flatten)]
    pub source: WeightsArgs,
    /// Compute backend.
    #[command(flatten)]
    pub backend: BackendOverride,
    /// Address the HTTP API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub http: String,
    /// The model's name in the API (`model` in requests, `id` in /v1/models).
    #[arg(long, default_value = "sinter")]
    pub model: String,
    /// Requests generated at once (continuous batching: a request joins the running batch
    /// between steps).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Requests that may wait for a place in the batch; more are refused with 429 and
    /// Retry-After (a caller with stake displaces the last one waiting instead). A request
    /// may set a deadline with the X-Request-Timeout header (seconds; OpenAI's Python client's
    /// timeout counts for answers in one piece): past it, it gets 504 and the model stops on it.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Requests a minute each caller may make (its API key, else its address); more get 429
    /// with Retry-After. 0: no limit.
    #[arg(long, value_name = "PER_MINUTE", default_value_t = 0)]
    pub rate_limit: u32,
    /// Also answer validators over libp2p on this address: the axon, taking synapses signed
    /// by the caller's hotkey and signing its answers with the wallet's hotkey.
    #[arg(long, value_name = "MULTIADDR")]
    pub axon: Option<String>,
    /// The axon's libp2p key file (ed25519), created on first start: the same file keeps the
    /// same peer id.
    #[arg(long, value_name = "FILE", default_value = "axon.key")]
    pub axon_key: PathBuf,
    /// The miner's wallet, whose hotkey answers on the axon.
    #[command(flatten)]
    pub wallet: WalletArgs,
    /// An embedded ledger file: its metagraph gives each caller's stake, which orders the
    /// queue (validators by stake first). Without --ledger-node, a file a local `launch
    /// ledger node` keeps, read every 12 s; with it, where this miner keeps its own replica.
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// The ledger's network: the axon's address is announced on it (`serve`, signed by the
    /// wallet's hotkey, which must be registered), and callers' stakes are read from it.
    #[command(flatten)]
    pub ledger_node: LedgerClientArgs,
    /// Refuse axon callers the ledger does not know, instead of serving them after every
    /// caller with stake.
    #[arg(long)]
    pub axon_refuse_unknown: bool,
}

/// `launch validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The run's config: the model's vocabulary and context, and the data whose held-out
    /// validation split (text the miners never trained on) is the evaluation text.
    pub config: PathBuf,
    /// The validator's wallet: its hotkey signs requests and weights.
    #[command(flatten)]
    pub wallet: WalletArgs,
    /// The ledger the miners announce their axons on and the weights go to.
    #[command(flatten)]
    pub ledger_node: LedgerClientArgs,
    /// Where this validator keeps its replica of the ledger (default: under the cache
    /// directory).
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Output directory: validate.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Rounds to run (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub rounds: u64,
    /// Evaluation windows per round (from each evaluation corpus).
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
    /// Evaluate on the held-out split of this corpus instead of the config's
    /// (`shakespeare`, `milton`, a text file or a prepared dataset). Repeatable: each round
    /// takes windows from each, and validate.jsonl shows where the gate sends each corpus.
    #[arg(long, value_name = "CORPUS")]
    pub eval_corpus: Vec<String>,
    /// Miners each window goes to (the gate's k).
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Likeliest tokens each miner sends per position.
    #[arg(long, default_value_t = 16)]
    pub top_k: u32,
    /// Seconds a round waits for answers: a miner's answers after it count as absent.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Shortest round, in seconds (rounds run back to back at 0).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub round_secs: f64,
    /// Seed of the evaluation windows and the gate's exploration.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The shared model (a weights file, or a checkpoint directory): a miner whose answers
    /// claim it is checked against this validator's own forward pass, on a few positions each
    /// round, and paid nothing for a round it sent other distributions.
    #[arg(long, value_name = "WEIGHTS|DIR")]
    pub shared: Option<PathBuf>,
}

/// The embedded ledger's own network, for a miner or a validator outside any run.
#[derive(Debug, Args)]
pub struct LedgerClientArgs {
    /// A node of the embedded ledger (`launch ledger node`), ending in /p2p/PEER_ID: the
    /// author's, to which this process's extrinsics go.
    #[arg(long, value_name = "MULTIADDR", requires = "genesis")]
    pub ledger_node: Option<String>,
    /// The ledger's genesis: the JSON its nodes started from.
    #[arg(long, value_name = "FILE", requires = "ledger_node")]
    pub genesis: Option<PathBuf>,
    /// Seconds between the ledger's blocks: how long calls wait to see their effect.
    #[arg(long, value_name = "SECONDS", default_value_t = 12.0)]
    pub block_secs: f64,
}

/// `launch ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The miner's axon, ending in /p2p/PEER_ID.
    #[arg(long, value_name = "MULTIADDR")]
    pub axon: String,
    /// The miner's hotkey (SS58): whom the request is addressed and signed to.
    #[arg(long, value_name = "SS58")]
    pub miner: String,
    /// The model asked about (its tokenizer turns the prompt into tokens).
    #[command(flatten)]
    pub source: WeightsArgs,
    /// The asking validator's wallet: its hotkey signs the request.
    #[command(flatten)]
    pub wallet: WalletArgs,
    /// Text to send.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate (TextGeneration).
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// Softmax temperature of the generation; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ask for the K likeliest next tokens and their probabilities (CausalLmNext) instead.
    #[arg(long, value_name = "K")]
    pub next: Option<u32>,
    /// Seconds to wait for the answer (the miner is told, and stops when it passes).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `launch relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on. Repeatable.
    #[arg(
        long,
        value_name = "MULTIADDR",
        default_value = "/ip4/0.0.0.0/tcp/4001"
    )]
    pub listen: Vec<String>,
    /// The relay's key file (ed25519), created on first start: the same file keeps the same
    /// peer id, so the address peers were given stays valid across restarts.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Address to tell peers instead of the listen address (a public address of this
    /// machine). Repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub external: Vec<String>,
    /// Circuits relayed at once.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_circuits: usize,
    /// MiB one circuit may carry before it is closed (0: no limit).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub max_circuit_mib: u64,
    /// Minutes one circuit may stay open (peers open a new one when it closes).
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub max_circuit_minutes: u64,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn every_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_takes_json_with_either_a_peer_or_a_validator_but_not_both() {
        for of in [
            ["--peer", "/ip4/127.0.0.1/tcp/4001"],
            ["--validator", "out/v"],
        ] {
            let cli = Cli::try_parse_from(["launch", "status", of[0], of[1], "--json"])
                .unwrap_or_else(|e| panic!("status {of:?} --json: {e}"));
            let Command::Status(args) = cli.command else {
                panic!("not status")
            };
            assert!(args.json);
        }
        let peer = "/ip4/127.0.0.1/tcp/4001";
        let both = ["launch", "status", "--peer", peer, "--validator", "out/v"];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(Cli::try_parse_from(["launch", "status", "--json"]).is_err());
    }
}
