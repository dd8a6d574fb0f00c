//! `launch serve`: a trained model behind OpenAI's HTTP API, so the official clients and the
//! usual tools work unchanged. [`engine`] owns the model on one thread and answers a bounded
//! priority [`queue`]; [`http`] checks and answers requests; [`api`] is OpenAI's request,
//! answer and error shapes. Metrics go to a Prometheus recorder that `/metrics` renders. With
//! `--axon`, [`axon`] also answers validators' signed synapses over libp2p from the same queue.

pub mod api;
pub mod axon;
pub mod engine;
pub mod hostile;
pub mod http;
pub mod queue;
pub mod rate;

use std::sync::Arc;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use sha2::Digest;
use sinter_kernels::Kernels;
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::wallet::Wallet;
use sinter_trainer::fused::TrainBackend;

use crate::backend::BackendJob;
use crate::checkpoints;
use crate::cli::ServeArgs;

/// Histogram buckets (seconds) of the latency metrics.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the batch-size histogram.
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// `launch serve` on one backend.
pub struct ServeJob {
    /// The command's arguments.
    pub args: ServeArgs,
}

impl BackendJob for ServeJob {
    type Output = ();

    fn run<B: TrainBackend>(self, device: B::Device, _: &dyn Kernels) -> Result<()> {
        let args = self.args;
        let metrics = PrometheusBuilder::new()
            .set_buckets(&SECONDS_BUCKETS)?
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("sinter_batch_size".into()),
                &BATCH_BUCKETS,
            )?
            .install_recorder()
            .context("installing the metrics recorder")?;
        let (bytes, path) = checkpoints::weights_bytes(&args.source)?;
        let (config, model) =
            sinter_trainer::weights::from_bytes::<B::InnerBackend>(&bytes, &path, &device)?;
        let tokenizer = sinter_trainer::tokenizer::Tokenizer::load(&config.data.tokenizer)?;
        let context = config.model.context;
        let weights_sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let metadata = json!({
            "checkpoint_root": checkpoints::root_of(&args.source)?,
            "weights_sha256": hex::encode(weights_sha256),
            "tokenizer": tokenizer.id(),
            "context_length": context,
        });
        let vocab = u32::try_from(config.model.vocab_size).unwrap_or(u32::MAX);
        let engine = engine::Engine::start(
            model,
            sinter_trainer::tokenizer::Tokenizer::load(&config.data.tokenizer)?,
            device,
            args.batch,
            args.queue.max(1),
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let ledger = match (&args.axon, &args.ledger_node.ledger_node) {
            (Some(_), Some(_)) => runtime.block_on(crate::ledger::connect(
                &args.ledger_node,
                Wallet::read(&crate::wallet::path(&args.wallet)?, None)?,
                args.ledger.as_deref(),
                runtime.handle().clone(),
            ))?,
            _ => None,
        };
        let axon = args
            .axon
            .as_deref()
            .map(|listen| {
                axon_setup(
                    &args,
                    listen,
                    engine.clone(),
                    weights_sha256,
                    vocab,
                    context,
                    ledger.clone(),
                )
            })
            .transpose()?;
        let served = Arc::new(http::Served {
            engine,
            tokenizer,
            context,
            model: args.model.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            metadata,
            rate_limits: (args.rate_limit > 0).then(|| rate::RateLimits::new(args.rate_limit)),
            metrics,
        });
        runtime.block_on(async move {
            if let Some((axon, config)) = axon {
                let (client, events, event_loop) = sinter_comms::net::start(config)
                    .await
                    .context("starting the axon")?;
                tokio::spawn(event_loop.run());
                let calls = client.accept(crate::synapse::AXON_PROTOCOL)?;
                let addresses: Vec<String> = client
                    .listen_addrs()
                    .await?
                    .iter()
                    .map(|addr| match addr.to_string() {
                        a if a.contains("/p2p/") => a,
                        a => format!("{a}/p2p/{}", client.peer_id()),
                    })
                    .collect();
                for addr in &addresses {
                    println!("axon at {addr} for hotkey {}", axon.hotkey.account());
                }
                if let (Some(ledger), Some(address)) = (ledger, addresses.first().cloned()) {
                    announce(ledger, address).await?;
                }
                tokio::spawn(axon::serve(axon, client, calls, events));
            }
            let listener = tokio::net::TcpListener::bind(&args.http)
                .await
                .with_context(|| format!("listening on {} (is it in use?)", args.http))?;
            let address = listener.local_addr()?;
            println!(
                "serving model {:?} at http://{address}/v1 (OpenAI API: /v1/completions, /v1/chat/completions, /v1/models; /health, /metrics); Ctrl-C stops",
                args.model
            );
            axum::serve(
                listener,
                http::router(served)
                    .into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .context("serving HTTP")
        })
    }
}

/// Publishes the axon's `address` on `ledger` (`serve`), where validators read it.
async fn announce(ledger: Arc<dyn Ledger>, address: String) -> Result<()> {
    let hotkey = ledger.hotkey();
    let shown = address.clone();
    tokio::task::spawn_blocking(move || ledger.serve(&address))
        .await?
        .with_context(|| {
            format!("announcing the axon for {hotkey} on the ledger (is the hotkey registered?)")
        })?;
    println!("axon announced on the ledger: {shown}");
    Ok(())
}

/// The axon of `args` answering from `engine`, and the network it listens on (`listen`).
fn axon_setup(
    args: &ServeArgs,
    listen: &str,
    engine: engine::Engine,
    model: [u8; 32],
    vocab: u32,
    context: usize,
    ledger: Option<Arc<dyn Ledger>>,
) -> Result<(Arc<axon::Axon>, sinter_comms::net::NetConfig)> {
    let wallet = crate::wallet::path(&args.wallet)?;
    let hotkey = sinter_mechanism::ledger::wallet::read_key_file(&wallet.hotkey_file(), None)
        .with_context(|| {
            format!(
                "reading the miner's hotkey {} (create one with `launch wallet create`)",
                wallet.hotkey_file().display()
            )
        })?;
    let key = sinter_comms::net::key::load_or_create(&args.axon_key)?;
    let mut config = sinter_comms::net::NetConfig::new(key, "sinter/axon".into());
    config.listen = vec![crate::peer::multiaddr(listen, "--axon")?];
    // Calls come on the axon's own protocol; request-response carries nothing here.
    config.max_request_bytes = 1 << 16;
    config.max_response_bytes = 1 << 16;
    let stakes = match (ledger, &args.ledger) {
        (Some(ledger), _) => axon::Stakes::from_ledger(ledger),
        (None, Some(path)) => axon::Stakes::from_file(path.clone())
            .with_context(|| format!("reading the ledger {} (--ledger)", path.display()))?,
        (None, None) => axon::Stakes::default(),
    };
    let axon = axon::Axon {
        engine,
        hotkey,
        model,
        vocab,
        context,
        stakes,
        refuse_unknown: args.axon_refuse_unknown,
        nonces: Default::default(),
        hostile: hostile::Fault::from_env()
            .map_err(anyhow::Error::msg)?
            .map(hostile::Hostile::new),
    };
    Ok((Arc::new(axon), config))
}
