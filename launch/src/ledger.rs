//! `launch ledger …`: the embedded ledger from the command line — show and verify a ledger
//! file, one consensus epoch from JSON, and the ledger over libp2p (`node`, `submit`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger;
use sinter_mechanism::ledger::extrinsic::Call;
use sinter_mechanism::ledger::interface::Metagraph;
use sinter_mechanism::ledger::keys::AccountId;
use sinter_mechanism::ledger::state::Genesis;
use sinter_mechanism::ledger::wallet::Wallet;
use sinter_trainer::ledger_net::node::{self, Node, NodeOptions};
use sinter_trainer::ledger_net::{RunLedger, replica_path};

use crate::ConfigFileError;
use crate::cli::{LedgerClientArgs, LedgerNodeArgs, SubmitArgs, SubmitCall};
use crate::peer::{Addresses, multiaddr, runtime};

/// `launch ledger show`.
pub fn show(file: &Path, json: bool) -> Result<()> {
    let (verification, state) = ledger::inspect(file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        println!(
            "{}: block {}, {} epochs, {} contributions committed, {} checkpoints recorded",
            file.display(),
            state.block,
            state.epochs,
            state.contributions_total,
            state.checkpoints.len()
        );
        crate::report::print_neurons(&Metagraph::of_state(&state).neurons);
    }
    if !verification.is_clean() {
        eprintln!(
            "warning: this is the state after block {}; run `launch ledger verify {}`",
            verification.blocks,
            file.display()
        );
    }
    Ok(())
}

/// `launch ledger verify`.
pub fn verify(file: &Path, json: bool) -> Result<()> {
    let v = ledger::verify(file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} blocks, {} extrinsics and {} epochs checked (genesis {}, head {})",
            file.display(),
            v.blocks,
            v.extrinsics,
            v.epochs,
            &v.genesis[..16],
            &v.head[..16]
        );
    }
    if let Some((number, why)) = &v.first_bad {
        bail!(
            "{}: block {number} is bad: {why}. Blocks after it were not checked; restore the file from a replica",
            file.display()
        );
    }
    if let Some(number) = v.torn_block {
        bail!(
            "{}: block {number} was cut short while being written (a crash); it was never committed, and the ledger drops it when it next opens for writing",
            file.display()
        );
    }
    if !json {
        println!("  ok: every hash, signature, extrinsic and epoch checks out");
    }
    Ok(())
}

/// `launch ledger epoch`.
pub fn epoch(file: &Path) -> Result<()> {
    let input: sinter_mechanism::yuma::EpochInput = read_json(file)?;
    let output = input
        .run()
        .map_err(|e| ConfigFileError(format!("{}: {e}", file.display())))?;
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// A JSON input file; malformed is a bad argument (exit 2) naming the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| ConfigFileError(format!("{}: {e}", path.display())).into())
}

/// `launch ledger node`.
pub fn node(args: LedgerNodeArgs) -> Result<()> {
    let genesis: Genesis = read_json(&args.genesis)?;
    let author = args
        .author_key
        .as_deref()
        .map(crate::wallet::read_key)
        .transpose()?;
    let addresses = Addresses::parse(&args.listen, &[], &args.bootstrap)?;
    let options = NodeOptions {
        genesis,
        path: args.ledger,
        author,
        listen: addresses.listen,
        bootstrap: addresses.bootstrap,
        block_time: Duration::from_secs_f64(args.block_secs.max(0.1)),
    };
    let height = runtime()?.block_on(async move {
        let node = Node::start(options).await?;
        if let Some(warning) = &node.warning {
            tracing::warn!("{warning}");
        }
        println!("peer id {}", node.peer_id);
        for addr in &node.listening {
            println!("listening on {addr}");
        }
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        node.run(stop).await
    })?;
    println!("stopped at block {height}");
    Ok(())
}

/// The embedded ledger's network as this process's [`Ledger`], when `args` name a node: a
/// replica at `replica` (default: under the cache directory) that follows it, signing with
/// `wallet`. Call it within `runtime`.
pub async fn connect(
    args: &LedgerClientArgs,
    wallet: Wallet,
    replica: Option<&Path>,
    runtime: tokio::runtime::Handle,
) -> Result<Option<Arc<dyn Ledger>>> {
    let (Some(node), Some(genesis)) = (&args.ledger_node, &args.genesis) else {
        return Ok(None);
    };
    if !(args.block_secs > 0.0 && args.block_secs.is_finite()) {
        return Err(ConfigFileError(format!(
            "--block-secs must be a positive number of seconds, not {}",
            args.block_secs
        ))
        .into());
    }
    let genesis: Genesis = read_json(genesis)?;
    let node = multiaddr(node, "--ledger-node")?;
    let path = match replica {
        Some(path) => path.to_owned(),
        None => replica_path(None, &genesis, &wallet.hotkey_account()),
    };
    let ledger = RunLedger::connect(
        &path,
        genesis,
        Duration::from_secs_f64(args.block_secs),
        wallet,
        node.clone(),
        runtime,
    )
    .await
    .with_context(|| format!("following the ledger at {node}"))?;
    tracing::info!(replica = %path.display(), "following the ledger at {node}");
    Ok(Some(ledger))
}

/// `launch ledger submit`.
pub fn submit(args: SubmitArgs) -> Result<()> {
    let genesis: Genesis = read_json(&args.genesis)?;
    let key = crate::wallet::read_key(&args.key)?;
    let call = match args.call {
        SubmitCall::Register { hotkey } => Call::Register {
            hotkey: AccountId::parse(&hotkey)?,
        },
        SubmitCall::AddStake { hotkey, amount } => Call::AddStake {
            hotkey: AccountId::parse(&hotkey)?,
            amount,
        },
        SubmitCall::Serve { address } => Call::Serve {
            address: address.into_bytes(),
        },
    };
    let name = call.name();
    let node = multiaddr(&args.node, "--node")?;
    let nonce = runtime()?.block_on(node::submit(&genesis, node, &key, call))?;
    println!("{name} accepted (nonce {nonce}): in the next block");
    Ok(())
}
