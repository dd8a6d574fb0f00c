//! Bittensor's subtensor, reached over JSON-RPC with subxt's dynamic API: calls and storage
//! are looked up by name in the live runtime's metadata (no generated code), so the same
//! binary works across runtime versions, and a runtime without something says so.
//!
//! [`Chain`] is blocking: it owns a small tokio runtime and answers each call once the chain
//! has (a transaction in a block, a read at the newest finalized block). Keys are sinter's
//! sr25519 [`Keypair`]s; the coldkey signs what pays, the hotkey what acts ([`Call::signer`]).
//!
//! | module | what |
//! |---|---|
//! | [`calls`] | the extrinsics sinter sends, checked against the runtime's metadata |
//! | [`drand`] | weights timelocked to drand, for subnets whose chain reveals them itself |
//! | [`errors`] | [`ChainError`], and dispatch errors turned into what to do |
//! | [`metagraph`] | a subnet's neurons read from storage |
//! | [`units`] | TAO and rao |

pub mod calls;
pub mod drand;
pub mod errors;
pub mod ledger;
pub mod metagraph;
pub mod record;
pub mod units;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use subxt::backend::{Backend, BlockRef, CombinedBackend};
use subxt::config::Header;
use subxt::config::polkadot::PolkadotConfig;
use subxt::ext::frame_decode::storage::{IntoDecodableValues, IntoEncodableValues};
use subxt::ext::scale_decode::DecodeAsType;
use subxt::transactions::TransactionStatus;
use subxt::utils::{AccountId32, MultiSignature};
use subxt::{OnlineClient, OnlineClientAtBlock};

use crate::ledger::extrinsic::Hash;
use crate::ledger::keys::{AccountId, Keypair};
pub use calls::{Axon, Call, Signer};
pub use errors::ChainError;
pub use metagraph::Hyperparameters;

/// How long a transaction may take to be in a block.
pub const INCLUSION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting keeps retrying (with backoff) before giving up.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(8);
/// Blocks between two commitments of one hotkey on Bittensor (the `Commitments` pallet's
/// `RateLimit`).
pub const DEFAULT_RATE_LIMIT: u64 = 100;

/// Blocks whose view is kept: reads at a block seen lately do not ask the node again for
/// the runtime's version (a runtime call: a few milliseconds on a node, a fifth of a second
/// in chopsticks, where a peer polling for the next block once took it over whole).
const VIEWS_KEPT: usize = 8;
/// How often [`Chain::wait_for_block`] asks for the newest block.
const POLL: Duration = Duration::from_millis(500);

type At = OnlineClientAtBlock<PolkadotConfig>;
type BlockHash = subxt::config::HashFor<PolkadotConfig>;

/// A connection to a subtensor node.
pub struct Chain {
    client: OnlineClient<PolkadotConfig>,
    backend: Arc<CombinedBackend<PolkadotConfig>>,
    /// The views of the blocks read at lately, newest last.
    views: Mutex<VecDeque<At>>,
    url: String,
    /// Declared last: dropped after the client whose tasks it runs.
    runtime: tokio::runtime::Runtime,
}

/// A transaction in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Included {
    /// The block's number.
    pub block: u64,
    /// The extrinsic's hash.
    pub extrinsic: Hash,
}

/// What [`Chain::submit`] reports while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Signed and sent to the node.
    Submitted {
        /// The extrinsic's hash.
        extrinsic: Hash,
    },
    /// In a block, not yet checked for success.
    InBlock,
}

/// A weights commitment waiting for its reveal (`WeightCommits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightCommit {
    /// The committed hash.
    pub hash: Hash,
    /// Block it was committed at.
    pub committed_at: u64,
    /// First block the reveal is accepted at.
    pub reveal_from: u64,
    /// Last block the reveal is accepted at.
    pub reveal_until: u64,
}

/// A hotkey's commitment (`Commitments.CommitmentOf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    /// Block it was set at.
    pub block: u64,
    /// Its bytes (the first `Raw` field).
    pub data: Vec<u8>,
}

struct ChainSigner<'a>(&'a Keypair);

impl subxt::transactions::Signer<PolkadotConfig> for ChainSigner<'_> {
    fn account_id(&self) -> AccountId32 {
        AccountId32(self.0.account().0)
    }

    fn sign(&self, payload: &[u8]) -> MultiSignature {
        MultiSignature::Sr25519(self.0.sign(payload))
    }
}

fn rpc<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> ChainError {
    let what = what.into();
    move |e| ChainError::Rpc {
        what,
        why: e.to_string(),
    }
}

/// The error for a block the node answered it does not have.
fn not_on_node(what: String) -> ChainError {
    ChainError::Rpc {
        what,
        why: "the node does not have it".into(),
    }
}

impl Chain {
    /// Connects to `url` (`ws://`, `wss://`; plain `ws://` is for local nodes), retrying
    /// with backoff for up to [`CONNECT_PATIENCE`].
    pub fn connect(url: &str) -> Result<Self, ChainError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("subtensor")
            .enable_all()
            .build()
            .map_err(|e| ChainError::Connect {
                url: url.into(),
                why: format!("starting a runtime: {e}"),
            })?;
        let deadline = Instant::now() + CONNECT_PATIENCE;
        let mut backoff = Duration::from_millis(250);
        let (client, backend) = loop {
            let attempt = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(15), Self::open(url)).await
            });
            match attempt {
                Ok(Ok(opened)) => break opened,
                Ok(Err(e)) if Instant::now() + backoff >= deadline => {
                    return Err(ChainError::Connect {
                        url: url.into(),
                        why: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(ChainError::Connect {
                        url: url.into(),
                        why: "no answer in 15 s".into(),
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(url, error = %e, retry_in = ?backoff, "cannot reach the chain");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                }
            }
        };
        Ok(Self {
            client,
            backend,
            views: Mutex::new(VecDeque::with_capacity(VIEWS_KEPT)),
            url: url.into(),
            runtime,
        })
    }

    /// A client on subxt's default backend, which [`Chain`] also keeps to ask for blocks
    /// without a runtime call.
    async fn open(
        url: &str,
    ) -> Result<
        (
            OnlineClient<PolkadotConfig>,
            Arc<CombinedBackend<PolkadotConfig>>,
        ),
        String,
    > {
        let rpc = subxt::rpcs::RpcClient::from_insecure_url(url)
            .await
            .map_err(|e| e.to_string())?;
        let backend = Arc::new(
            CombinedBackend::builder()
                .build_with_background_driver(rpc)
                .await
                .map_err(|e| e.to_string())?,
        );
        let config = PolkadotConfig::builder().use_historic_types(false).build();
        let client = OnlineClient::from_backend_with_config(config, backend.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok((client, backend))
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The chain's genesis hash.
    pub fn genesis_hash(&self) -> Hash {
        self.client.genesis_hash().0
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The newest finalized block and its number, without a runtime call.
    async fn newest(&self) -> Result<(BlockRef<BlockHash>, u64), ChainError> {
        let block = self
            .backend
            .latest_finalized_block_ref()
            .await
            .map_err(rpc("reading the newest block"))?;
        let number = self.number_of(block.hash()).await?;
        Ok((block, number))
    }

    /// The number of the block `hash`.
    async fn number_of(&self, hash: BlockHash) -> Result<u64, ChainError> {
        let what = || format!("reading the header of block {hash:?}");
        let header = self.backend.block_header(hash).await.map_err(rpc(what()))?;
        header
            .map(|h| h.number())
            .ok_or_else(|| not_on_node(what()))
    }

    /// A view of the newest finalized block.
    async fn at(&self) -> Result<At, ChainError> {
        let (block, number) = self.newest().await?;
        self.view(block, number).await
    }

    /// A view of block `number` of the chain.
    async fn at_number(&self, number: u64) -> Result<At, ChainError> {
        let what = || format!("reading block {number}");
        let block = self
            .backend
            .block_number_to_hash(number)
            .await
            .map_err(rpc(what()))?
            .ok_or_else(|| not_on_node(what()))?;
        self.view(block, number).await
    }

    /// The view of `block` (number `number`), kept from an earlier read when there was one.
    async fn view(&self, block: BlockRef<BlockHash>, number: u64) -> Result<At, ChainError> {
        let hash = block.hash();
        let kept = |views: &VecDeque<At>| views.iter().find(|v| v.block_hash() == hash).cloned();
        if let Some(view) = kept(&self.views.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(view);
        }
        let view = self
            .client
            .at_block_hash_and_number(block, number)
            .await
            .map_err(rpc(format!("reading block {number}")))?;
        let mut views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have read the same block meanwhile.
        if kept(&views).is_none() {
            if views.len() == VIEWS_KEPT {
                views.pop_front();
            }
            views.push_back(view.clone());
        }
        Ok(view)
    }

    /// The runtime's spec version now.
    pub fn spec_version(&self) -> Result<u32, ChainError> {
        self.block_on(async { Ok(self.at().await?.spec_version()) })
    }

    /// The newest finalized block's number.
    pub fn height(&self) -> Result<u64, ChainError> {
        self.block_on(async { Ok(self.newest().await?.1) })
    }

    /// Waits until a block after `height` is finalized, or `limit` passes (`None`).
    pub fn wait_for_block(&self, height: u64, limit: Duration) -> Result<Option<u64>, ChainError> {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.height()?;
            if now > height {
                return Ok(Some(now));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(left.min(POLL));
        }
    }

    /// Signs `call` with `key`, submits it and waits until it is in a block and succeeded
    /// there, telling `progress` along the way.
    pub fn submit(
        &self,
        call: &Call,
        key: &Keypair,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Included, ChainError> {
        let (pallet, name) = call.name();
        let label = format!("{pallet}.{name}");
        let submission = async {
            let at = self.at().await?;
            let payload = call.payload(at.metadata_ref(), at.spec_version())?;
            let mut watch = at
                .transactions()
                .sign_and_submit_then_watch_default(&payload, &ChainSigner(key))
                .await
                .map_err(|e| ChainError::Rejected {
                    call: label.clone(),
                    why: e.to_string(),
                })?;
            let extrinsic = watch.extrinsic_hash().0;
            progress(Progress::Submitted { extrinsic });
            while let Some(status) = watch.next().await {
                let status = status.map_err(rpc(format!("watching {label}")))?;
                let in_block = match status {
                    TransactionStatus::InBestBlock(b) | TransactionStatus::InFinalizedBlock(b) => b,
                    TransactionStatus::Invalid { message }
                    | TransactionStatus::Dropped { message }
                    | TransactionStatus::Error { message } => {
                        return Err(ChainError::Rejected {
                            call: label.clone(),
                            why: message,
                        });
                    }
                    _ => continue,
                };
                progress(Progress::InBlock);
                let block = self.number_of(in_block.block_hash()).await?;
                return match in_block.wait_for_success().await {
                    Ok(_) => Ok(Included { block, extrinsic }),
                    Err(subxt::error::TransactionEventsError::ExtrinsicFailed(e)) => {
                        Err(self.dispatch_error(call, &label, &e, key).await)
                    }
                    Err(e) => Err(rpc(format!("reading {label}'s events"))(e)),
                };
            }
            Err(ChainError::Rejected {
                call: label.clone(),
                why: "the node stopped reporting on it".into(),
            })
        };
        let result =
            self.block_on(async { tokio::time::timeout(INCLUSION_TIMEOUT, submission).await });
        result.unwrap_or_else(|_| {
            Err(ChainError::Timeout {
                call: label,
                secs: INCLUSION_TIMEOUT.as_secs(),
            })
        })
    }

    async fn dispatch_error(
        &self,
        call: &Call,
        label: &str,
        error: &subxt::error::DispatchError,
        key: &Keypair,
    ) -> ChainError {
        let (name, netuid) = match error {
            subxt::error::DispatchError::Module(module) => match module.details() {
                Ok(d) => (
                    format!("{}::{}", d.pallet.name(), d.variant.name),
                    call_netuid(call),
                ),
                Err(_) => (module.to_string(), call_netuid(call)),
            },
            other => (other.to_string(), call_netuid(call)),
        };
        let short = name.rsplit("::").next().unwrap_or(&name).to_string();
        let next_block = self
            .next_allowed_block(call, &key.account())
            .await
            .ok()
            .flatten();
        ChainError::Dispatch {
            call: label.into(),
            advice: errors::advice(&short, netuid, next_block),
            error: name,
        }
    }

    /// The next block a rate-limited `call` by `who` is allowed at, where the chain says.
    async fn next_allowed_block(
        &self,
        call: &Call,
        who: &AccountId,
    ) -> Result<Option<u64>, ChainError> {
        let at = self.at().await?;
        let netuid = call_netuid(call);
        let hotkey = (netuid, who.0);
        Ok(match call {
            Call::SetWeights { .. } | Call::CommitWeights { .. } => {
                let Some(uid) = read::<_, u16>(&at, "SubtensorModule", "Uids", hotkey).await?
                else {
                    return Ok(None);
                };
                let last: Vec<u64> = read(&at, "SubtensorModule", "LastUpdate", (netuid,))
                    .await?
                    .unwrap_or_default();
                let limit: u64 = read(&at, "SubtensorModule", "WeightsSetRateLimit", (netuid,))
                    .await?
                    .unwrap_or(0);
                last.get(usize::from(uid)).map(|l| l.saturating_add(limit))
            }
            Call::SetCommitment { .. } => {
                let last: Option<u32> = read(&at, "Commitments", "LastCommitment", hotkey).await?;
                let limit = constant_u64(&at, "Commitments", "RateLimit").unwrap_or(0);
                last.map(|l| u64::from(l).saturating_add(limit))
            }
            Call::RevealWeights { .. } => self
                .weight_commits_at(&at, netuid, who)
                .await?
                .first()
                .map(|c| c.reveal_from),
            _ => None,
        })
    }

    /// Reads `pallet.entry` at `keys` now (`None`: no value and no default).
    pub fn read<K, V>(&self, pallet: &str, entry: &str, keys: K) -> Result<Option<V>, ChainError>
    where
        K: IntoEncodableValues + IntoDecodableValues,
        V: DecodeAsType,
    {
        self.block_on(async { read(&self.at().await?, pallet, entry, keys).await })
    }

    /// The uid `hotkey` holds on `netuid`.
    pub fn uid(&self, netuid: u16, hotkey: &AccountId) -> Result<Option<u16>, ChainError> {
        self.read("SubtensorModule", "Uids", (netuid, hotkey.0))
    }

    /// Whether subnet `netuid` exists.
    pub fn subnet_exists(&self, netuid: u16) -> Result<bool, ChainError> {
        Ok(self
            .read::<_, bool>("SubtensorModule", "NetworksAdded", (netuid,))?
            .unwrap_or(false))
    }

    /// The rao `burned_register` costs on `netuid` now.
    pub fn burn(&self, netuid: u16) -> Result<u64, ChainError> {
        Ok(self
            .read("SubtensorModule", "Burn", (netuid,))?
            .unwrap_or(0))
    }

    /// `account`'s free balance in rao.
    pub fn free_balance(&self, account: &AccountId) -> Result<u64, ChainError> {
        #[derive(DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountInfo {
            data: AccountData,
        }
        #[derive(DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountData {
            free: u64,
        }
        let info: Option<AccountInfo> = self.read("System", "Account", (account.0,))?;
        Ok(info.map_or(0, |i| i.data.free))
    }

    /// The weights commitments of `hotkey` on `netuid` waiting for their reveal, oldest first.
    pub fn weight_commits(
        &self,
        netuid: u16,
        hotkey: &AccountId,
    ) -> Result<Vec<WeightCommit>, ChainError> {
        self.block_on(async {
            self.weight_commits_at(&self.at().await?, netuid, hotkey)
                .await
        })
    }

    async fn weight_commits_at(
        &self,
        at: &At,
        netuid: u16,
        hotkey: &AccountId,
    ) -> Result<Vec<WeightCommit>, ChainError> {
        let commits: Vec<([u8; 32], u64, u64, u64)> =
            read(at, "SubtensorModule", "WeightCommits", (netuid, hotkey.0))
                .await?
                .unwrap_or_default();
        Ok(commits
            .into_iter()
            .map(
                |(hash, committed_at, reveal_from, reveal_until)| WeightCommit {
                    hash,
                    committed_at,
                    reveal_from,
                    reveal_until,
                },
            )
            .collect())
    }

    /// `hotkey`'s commitment on `netuid`.
    pub fn commitment(
        &self,
        netuid: u16,
        hotkey: &AccountId,
    ) -> Result<Option<Commitment>, ChainError> {
        self.block_on(async { commitment_at(&self.at().await?, netuid, hotkey).await })
    }

    /// `hotkey`'s commitment on `netuid` as it stood at block `block`.
    pub fn commitment_at_block(
        &self,
        netuid: u16,
        hotkey: &AccountId,
        block: u64,
    ) -> Result<Option<Commitment>, ChainError> {
        self.block_on(async { commitment_at(&self.at_number(block).await?, netuid, hotkey).await })
    }

    /// The hotkey holding `uid` on `netuid`.
    pub fn hotkey_of(&self, netuid: u16, uid: u16) -> Result<Option<AccountId>, ChainError> {
        let hotkey: Option<AccountId32> = self.read("SubtensorModule", "Keys", (netuid, uid))?;
        Ok(hotkey.map(|h| AccountId(h.0)))
    }

    /// The commitments of `hotkeys` on `netuid`, read together at one block.
    pub fn commitments(
        &self,
        netuid: u16,
        hotkeys: &[AccountId],
    ) -> Result<Vec<Option<Commitment>>, ChainError> {
        self.block_on(async {
            let at = self.at().await?;
            futures::future::try_join_all(hotkeys.iter().map(|h| commitment_at(&at, netuid, h)))
                .await
        })
    }

    /// The block of `hotkey`'s last commitment on `netuid` (what the rate limit counts from).
    pub fn last_commitment(
        &self,
        netuid: u16,
        hotkey: &AccountId,
    ) -> Result<Option<u64>, ChainError> {
        self.read("Commitments", "LastCommitment", (netuid, hotkey.0))
    }

    /// The `Commitments` pallet's rate limit (a runtime constant): blocks between two
    /// commitments of one hotkey ([`DEFAULT_RATE_LIMIT`] where the runtime does not say).
    pub fn commitment_rate_limit(&self) -> Result<u64, ChainError> {
        self.block_on(async {
            Ok(constant_u64(&self.at().await?, "Commitments", "RateLimit")
                .unwrap_or(DEFAULT_RATE_LIMIT))
        })
    }

    /// The subnet's hyperparameters sinter uses.
    pub fn hyperparameters(&self, netuid: u16) -> Result<Hyperparameters, ChainError> {
        self.block_on(async { metagraph::hyperparameters(&self.at().await?, netuid).await })
    }

    /// What subnet `netuid` needs for weights timelocked to drand, read at the newest block;
    /// `None` where its runtime takes no timelocked commitments or commit-reveal is off there
    /// (weights are then committed as a hash and revealed, or set directly).
    pub fn timelock(&self, netuid: u16) -> Result<Option<drand::Timelock>, ChainError> {
        self.block_on(async { metagraph::timelock(&self.at().await?, netuid).await })
    }

    /// The subnet's neurons at the newest finalized block.
    pub fn metagraph(
        &self,
        netuid: u16,
    ) -> Result<crate::ledger::interface::Metagraph, ChainError> {
        self.block_on(async { metagraph::read_metagraph(&self.at().await?, netuid).await })
    }
}

/// `hotkey`'s commitment on `netuid` at `at`.
async fn commitment_at(
    at: &At,
    netuid: u16,
    hotkey: &AccountId,
) -> Result<Option<Commitment>, ChainError> {
    use subxt::ext::scale_value::{Composite, Primitive, ValueDef};
    let Some(registration): Option<subxt::dynamic::Value> =
        read(at, "Commitments", "CommitmentOf", (netuid, hotkey.0)).await?
    else {
        return Ok(None);
    };
    let field = |v: &subxt::dynamic::Value, name: &str| match &v.value {
        ValueDef::Composite(Composite::Named(fields)) => fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    let block = match field(&registration, "block").map(|b| b.value) {
        Some(ValueDef::Primitive(Primitive::U128(b))) => u64::try_from(b).unwrap_or(u64::MAX),
        _ => 0,
    };
    // info.fields is a BoundedVec of `Data`; sinter writes one `RawN` field.
    let data = field(&registration, "info")
        .and_then(|info| field(&info, "fields"))
        .and_then(|fields| first_raw_bytes(&fields));
    Ok(Some(Commitment {
        block,
        data: data.unwrap_or_default(),
    }))
}

fn call_netuid(call: &Call) -> u16 {
    match call {
        Call::BurnedRegister { netuid, .. }
        | Call::ServeAxon { netuid, .. }
        | Call::AddStake { netuid, .. }
        | Call::RemoveStake { netuid, .. }
        | Call::SetWeights { netuid, .. }
        | Call::CommitWeights { netuid, .. }
        | Call::RevealWeights { netuid, .. }
        | Call::CommitTimelockedWeights { netuid, .. }
        | Call::SetCommitment { netuid, .. } => *netuid,
    }
}

/// The bytes of the first `RawN` variant found in `value` (depth-first).
fn first_raw_bytes<C>(value: &subxt::dynamic::Value<C>) -> Option<Vec<u8>> {
    use subxt::ext::scale_value::{Composite, Primitive, ValueDef};
    let bytes_of = |c: &Composite<C>| -> Option<Vec<u8>> {
        c.values()
            .map(|v| match v.value {
                ValueDef::Primitive(Primitive::U128(b)) => u8::try_from(b).ok(),
                _ => None,
            })
            .collect()
    };
    match &value.value {
        ValueDef::Variant(v) if v.name.starts_with("Raw") => {
            let inner = v.values.values().next();
            match inner.map(|i| &i.value) {
                Some(ValueDef::Composite(c)) => bytes_of(c),
                None => Some(Vec::new()),
                _ => bytes_of(&v.values),
            }
        }
        ValueDef::Composite(c) => c.values().find_map(first_raw_bytes),
        ValueDef::Variant(v) => v.values.values().find_map(first_raw_bytes),
        _ => None,
    }
}

/// Reads `pallet.entry` at `keys` at block `at`.
async fn read<K, V>(at: &At, pallet: &str, entry: &str, keys: K) -> Result<Option<V>, ChainError>
where
    K: IntoEncodableValues + IntoDecodableValues,
    V: DecodeAsType,
{
    let what = format!("reading {pallet}.{entry}");
    if !has_storage(at, pallet, entry) {
        return Err(ChainError::Missing {
            spec_version: at.spec_version(),
            what: format!("storage {pallet}.{entry}"),
        });
    }
    let address = subxt::dynamic::storage::<K, V>(pallet, entry);
    let value = at
        .storage()
        .try_fetch(address, keys)
        .await
        .map_err(rpc(what.clone()))?;
    value
        .map(|v| v.decode_as::<V>())
        .transpose()
        .map_err(|e| ChainError::Rpc {
            what,
            why: format!("decoding: {e}"),
        })
}

/// Whether the runtime at `at` has storage `pallet.entry`.
fn has_storage(at: &At, pallet: &str, entry: &str) -> bool {
    at.metadata_ref()
        .pallet_by_name(pallet)
        .and_then(|p| p.storage())
        .and_then(|s| s.entry_by_name(entry))
        .is_some()
}

/// A `u32` or `u64` constant of the runtime, as `u64`.
fn constant_u64(at: &At, pallet: &str, name: &str) -> Option<u64> {
    let bytes = at
        .metadata_ref()
        .pallet_by_name(pallet)?
        .constant_by_name(name)?
        .value()
        .to_vec();
    let mut padded = [0u8; 8];
    let n = bytes.len().min(8);
    padded[..n].copy_from_slice(&bytes[..n]);
    Some(u64::from_le_bytes(padded))
}
