//! `launch serve`: a trained model behind OpenAI's HTTP API, so the official clients and the
//! usual tools work unchanged. [`engine`] owns the model on one thread and answers a bounded
//! priority [`queue`]; [`http`] checks and answers requests; [`api`] is OpenAI's request, answer and error
//! shapes. Metrics go to a Prometheus recorder that `/metrics` renders.

pub mod api;
pub mod engine;
pub mod http;
pub mod queue;
pub mod rate;

use std::sync::Arc;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use sinter_kernels::Kernels;

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

    fn run<B: AutodiffBackend>(self, device: B::Device, _: &dyn Kernels) -> Result<()> {
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
        let metadata = json!({
            "checkpoint_root": checkpoints::root_of(&args.source)?,
            "weights_sha256": sinter_trainer::round_state::sha256_hex(&bytes),
            "tokenizer": tokenizer.id(),
            "context_length": context,
        });
        let engine = engine::Engine::start(
            model,
            sinter_trainer::tokenizer::Tokenizer::load(&config.data.tokenizer)?,
            device,
            args.batch,
            args.queue.max(1),
        )?;
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
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
