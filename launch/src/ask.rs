//! `launch ask`: one signed synapse to a miner's axon, and its signed answer checked as a
//! validator checks it (the miner's signature over this request, then the output's shape,
//! ids and probabilities). What `launch validate` will do for every miner, by hand.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sinter_comms::net::{self, NetConfig};
use sinter_mechanism::ledger::keys::AccountId;
use sinter_trainer::tokenizer::Tokenizer;

use crate::cli::AskArgs;
use crate::synapse::{self, Output, Synapse};

/// Runs `launch ask`.
pub fn run(args: AskArgs) -> Result<()> {
    let (config, _) = crate::checkpoints::load_model::<sinter_trainer::CpuBackend>(
        &args.source,
        &Default::default(),
    )?;
    let tokenizer = Tokenizer::load(&config.data.tokenizer)?;
    let vocab = u32::try_from(config.model.vocab_size).unwrap_or(u32::MAX);
    let dim = u32::try_from(config.model.d_model).unwrap_or(u32::MAX);
    let miner = AccountId::parse(&args.miner).context("--miner")?;
    let wallet = crate::wallet::path(&args.wallet)?;
    let hotkey = sinter_mechanism::ledger::wallet::read_key_file(&wallet.hotkey_file(), None)
        .with_context(|| format!("reading the hotkey {}", wallet.hotkey_file().display()))?;
    let prompt = if args.prompt.is_empty() {
        "\n"
    } else {
        &args.prompt
    };
    let tokens = tokenizer.encode(prompt.as_bytes())?;
    let synapse = match args.next {
        Some(top_k) => Synapse::CausalLmNext { tokens, top_k },
        None => Synapse::TextGeneration {
            tokens,
            max_tokens: args.max_tokens,
            temperature_milli: (args.temperature.max(0.0) * 1000.0).round() as u32,
            seed: args.seed,
        },
    };
    synapse.check(vocab)?;
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!(
            "--timeout must be a positive number of seconds, not {}",
            args.timeout
        );
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let axon = crate::peer::multiaddr(&args.axon, "--axon")?;
    let request = synapse::request(&hotkey, miner, &synapse, timeout);
    let started = std::time::Instant::now();
    let bytes = crate::peer::runtime()?.block_on(async {
        let config = NetConfig::client(net::Keypair::generate_ed25519(), "sinter/axon".into());
        let (client, _events, event_loop) = net::start(config).await?;
        tokio::spawn(event_loop.run());
        let peer = client
            .dial(axon.clone())
            .await
            .with_context(|| format!("dialling the axon at {axon}"))?;
        let call = synapse::call(&client, peer, &request, &synapse, dim);
        tokio::time::timeout(timeout + Duration::from_secs(5), call)
            .await
            .with_context(|| format!("no answer from the axon at {axon} within {timeout:?}"))?
            .with_context(|| format!("asking the axon at {axon}"))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let said = synapse::open_answer(&bytes, &request, &miner, &synapse, vocab, dim)
        .context("the miner's answer")?;
    let output = said.output;
    let text = |ids: &[u32]| tokenizer.decode(ids).unwrap_or_default();
    let shown = match &output {
        Output::Text(ids) => {
            json!({"synapse": "TextGeneration", "tokens": ids, "text": text(ids), "seconds": seconds})
        }
        Output::Distributions(rows) => {
            let top: Vec<_> = rows[0]
                .ids
                .iter()
                .zip(&rows[0].probs)
                .map(|(&id, &p)| json!({"id": id, "text": text(&[id]), "p": half::bf16::from_bits(p).to_f32()}))
                .collect();
            json!({"synapse": "CausalLmNext", "top": top, "rest": rows[0].rest, "seconds": seconds})
        }
        other => json!({"output": format!("{other:?}")}),
    };
    if args.json {
        println!("{shown}");
    } else if let Output::Text(ids) = &output {
        println!("{}", text(ids));
    } else {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    }
    Ok(())
}
