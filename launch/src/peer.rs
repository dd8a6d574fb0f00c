//! `launch run`: one real peer. Starts the libp2p network and the group protocol on a tokio
//! runtime, introduces itself to the bootstrap peers (a different config is refused with the
//! differing fields), then trains on this thread until the run ends, `--max-rounds` is
//! reached, or Ctrl-C / SIGTERM / `launch leave` asks it to leave after the current round (a
//! second Ctrl-C exits at once). `launch status` asks any peer for its view of the group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sinter_checkpoints::serve::Served;
use sinter_comms::group::{Group, GroupLimits, GroupSettings};
use sinter_comms::net::{self, Multiaddr, NetConfig};
use sinter_kernels::Kernels;
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::wallet::Wallet;
use sinter_mechanism::subtensor::{Chain, ledger::ChainLedger};
use sinter_trainer::RunConfig;
use sinter_trainer::fused::TrainBackend;
use sinter_trainer::ledger_net::{RunLedger, replica_path};
use sinter_trainer::peer::identity::served_address;
use sinter_trainer::peer::validator::IncentiveSummary;
use sinter_trainer::peer::{PeerOptions, run_peer};
use sinter_trainer::simulate::Observer;

use crate::backend::{BackendJob, dispatch};
use crate::cli::{LeaveArgs, RunArgs};
use crate::control;
use crate::progress::Progress;
use crate::report;

/// Parses a multiaddr argument, saying which flag it came from.
pub(crate) fn multiaddr(text: &str, flag: &str) -> Result<Multiaddr> {
    text.parse().with_context(|| {
        format!("{flag} {text:?} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001)")
    })
}

/// Where a peer listens and whom it joins through: the flags `run` and `bench allreduce`
/// share.
pub struct Addresses {
    pub(crate) listen: Vec<Multiaddr>,
    pub(crate) external: Vec<Multiaddr>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    pub(crate) relays: Vec<Multiaddr>,
}

impl Addresses {
    /// Parses the flags, naming the one that is not a multiaddr.
    pub fn parse(listen: &[String], external: &[String], bootstrap: &[String]) -> Result<Self> {
        let parse = |list: &[String], flag: &str| {
            list.iter()
                .map(|a| multiaddr(a, flag))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            listen: parse(listen, "--listen")?,
            external: parse(external, "--external")?,
            bootstrap: parse(bootstrap, "--bootstrap")?,
            relays: Vec::new(),
        })
    }

    /// Adds the `--relay` flags, each of which must name its peer.
    pub fn with_relays(mut self, relays: &[String]) -> Result<Self> {
        for relay in relays {
            let addr = multiaddr(relay, "--relay")?;
            if !matches!(addr.iter().last(), Some(net::Protocol::P2p(_))) {
                anyhow::bail!(
                    "--relay {relay}: a relay address must end in /p2p/PEER_ID (`launch relay` prints its full address)"
                );
            }
            self.relays.push(addr);
        }
        Ok(self)
    }
}

/// The gossip topic of a run's members. Checkpoint servers and fetchers use another, so
/// that their heartbeats never make them look like members.
fn run_topic(settings: &GroupSettings) -> String {
    format!("sinter/run/{}", &settings.run[..16])
}

/// A run's group settings.
fn group_settings(
    config: &RunConfig,
    round_ceiling: Duration,
    limits: GroupLimits,
) -> Result<GroupSettings> {
    Ok(GroupSettings {
        run: config.hash(),
        config: serde_json::to_value(config.agreed())?,
        heartbeat: Duration::from_millis(500),
        peer_timeout: Duration::from_secs(5),
        round_ceiling,
        limits,
    })
}

/// Starts the network and the group protocol on `runtime`, prints this peer's id and
/// addresses, and introduces it to the bootstrap peers.
fn join_network(
    runtime: &tokio::runtime::Runtime,
    key: net::Keypair,
    settings: GroupSettings,
    addresses: Addresses,
    topic: String,
    relay_circuits: usize,
) -> Result<(Group, Vec<Multiaddr>)> {
    let mut net_config = NetConfig::new(key, topic);
    net_config.limits = settings.limits.requests;
    net_config.listen = addresses.listen;
    net_config.bootstrap = addresses.bootstrap.clone();
    net_config.external = addresses.external.clone();
    net_config.relays = addresses.relays.clone();
    net_config.relay_service.max_circuits = relay_circuits;
    runtime.block_on(async {
        let (client, events, event_loop) = net::start(net_config).await?;
        tokio::spawn(event_loop.run());
        let group = Group::start(client.clone(), events, settings);
        println!("peer id {}", client.peer_id());
        let listening = client.listen_addrs().await?;
        for addr in &listening {
            println!("listening on {addr}");
        }
        for addr in &addresses.bootstrap {
            let peer = client
                .dial(addr.clone())
                .await
                .with_context(|| format!("joining through {addr}"))?;
            group
                .hello(peer)
                .await
                .with_context(|| format!("joining through {addr}"))?;
            tracing::info!(%peer, %addr, "joined through bootstrap peer");
        }
        let mut reachable = addresses.external;
        reachable.extend(listening);
        anyhow::Ok((group, reachable))
    })
}

/// The async runtime the network runs on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `launch run`.
pub fn run(config: RunConfig, args: RunArgs) -> Result<()> {
    let addresses = Addresses::parse(&args.listen, &args.external, &args.bootstrap)?
        .with_relays(&args.relay)?;
    let key_path = args.key.clone().unwrap_or_else(default_key);
    let key = net::key::load_or_create(&key_path)?;
    let runtime = runtime()?;
    // First of all: a second process with this key (the default one, say) stops here, saying
    // so, before it dials the first as itself.
    let stop = Arc::new(AtomicBool::new(false));
    let _control = runtime.block_on(async { control::listen(&key_path, stop.clone()) })?;
    let resume = args
        .resume
        .as_deref()
        .map(|dir| crate::checkpoints::snapshot(dir, &config))
        .transpose()?;
    let settings = group_settings(
        &config,
        Duration::from_secs(args.round_ceiling),
        args.limits.group_limits(),
    )?;
    let topic = run_topic(&settings);
    let wallet = ledger_wallet(&config, &args)?;
    let identity = key.clone();
    let (group, reachable) = join_network(
        &runtime,
        key,
        settings,
        addresses,
        topic,
        args.relay_circuits,
    )?;
    let ledger = wallet
        .map(|wallet| {
            let peer = JoiningPeer {
                identity: &identity,
                group: &group,
                reachable: &reachable,
                runtime: runtime.handle(),
            };
            run_ledger(&config, &args, wallet, &peer)
        })
        .transpose()?;
    let checkpoint_dir = args.out.out.as_ref().map(|d| d.join("checkpoints"));
    if let Some(dir) = &checkpoint_dir {
        group.serve_blobs(Arc::new(Served::new(dir)));
    }

    {
        let stop = stop.clone();
        runtime.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::warn!("leaving after the current round (Ctrl-C again to quit now)");
            stop.store(true, Ordering::Relaxed);
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        });
    }
    let job = PeerJob {
        options: PeerOptions {
            max_rounds: args.max_rounds,
            min_peers: config.outer.workers,
            start_wait: Duration::from_secs(args.start_wait),
            checkpoint_dir,
            resume,
            ledger,
        },
        config,
        group,
        runtime: runtime.handle().clone(),
        stop,
        out: args.out.out,
    };
    let kind = job.config.run.backend;
    dispatch(kind, job)?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The wallet a run with a ledger (`[incentives.ledger]` or `[incentives.chain]`) signs
/// with (none without one).
fn ledger_wallet(config: &RunConfig, args: &RunArgs) -> Result<Option<Wallet>> {
    let section = match (&config.incentives.ledger, &config.incentives.chain) {
        (Some(_), _) => "[incentives.ledger]",
        (None, Some(_)) => "[incentives.chain]",
        (None, None) => {
            if args.wallet.is_some() {
                tracing::warn!(
                    "the config has no [incentives.ledger] or [incentives.chain]: --wallet is not used"
                );
            }
            return Ok(None);
        }
    };
    let name = args.wallet.clone().ok_or_else(|| {
        crate::ConfigFileError(format!(
            "this run keeps a ledger ({section}): pass --wallet NAME (make one with `launch wallet new --name NAME`)"
        ))
    })?;
    let path = crate::wallet::path(&crate::cli::WalletArgs {
        name,
        hotkey: args.wallet_hotkey.clone(),
        dir: args.wallets.clone(),
    })?;
    let password = crate::wallet::coldkey_password_if_set();
    Ok(Some(Wallet::read(&path, password.as_deref())?))
}

/// This peer as the ledger sees it when it joins.
struct JoiningPeer<'a> {
    identity: &'a net::Keypair,
    group: &'a Group,
    reachable: &'a [Multiaddr],
    runtime: &'a tokio::runtime::Handle,
}

/// The run's ledger: its replica of the embedded ledger, or subtensor; with this peer
/// registered (if the genesis did not) and serving its address, signed by its identity key
/// for its hotkey.
fn run_ledger(
    config: &RunConfig,
    args: &RunArgs,
    wallet: Wallet,
    peer: &JoiningPeer<'_>,
) -> Result<Arc<dyn Ledger>> {
    let hotkey = wallet.hotkey_account();
    let incentives = &config.incentives;
    let (ledger, place): (Arc<dyn Ledger>, String) =
        match (&incentives.chain, incentives.genesis(), &incentives.ledger) {
            (Some(chain), _, _) => {
                let connected = Chain::connect(&chain.url)
                    .with_context(|| format!("connecting to the chain at {}", chain.url))?;
                let ledger = ChainLedger::new(
                    connected,
                    chain.netuid,
                    wallet,
                    chain.max_burn_rao(),
                    Duration::from_secs_f64(chain.block_secs),
                )?;
                let place = format!("subnet {} of the chain at {}", chain.netuid, chain.url);
                (Arc::new(ledger), place)
            }
            (None, Some(genesis), Some(settings)) => {
                let path = replica_path(args.out.out.as_deref(), &genesis, &hotkey);
                let ledger = RunLedger::start(
                    &path,
                    genesis,
                    Duration::from_secs_f64(settings.block_secs),
                    wallet,
                    peer.group.clone(),
                    peer.runtime.clone(),
                )?;
                (ledger, format!("ledger replica {}", path.display()))
            }
            _ => bail!("the config has no [incentives.ledger] or [incentives.chain]"),
        };
    let address = served_address(
        peer.identity,
        peer.reachable.first(),
        &ledger.genesis_hash(),
        &hotkey,
    );
    let uid = ledger
        .register()
        .with_context(|| format!("registering {hotkey}"))?;
    ledger
        .serve(&address)
        .with_context(|| format!("serving {address}"))?;
    let metagraph = ledger.metagraph();
    tracing::info!(
        uid,
        %hotkey,
        stake = metagraph.neuron(uid).map_or(0, |n| n.stake),
        block = metagraph.block,
        "on the run's ledger"
    );
    println!("{place}");
    Ok(ledger)
}

/// Where a peer's key lives unless `--key` says otherwise.
fn default_key() -> std::path::PathBuf {
    sinter_trainer::data::cache_dir()
        .join("keys")
        .join("peer.key")
}

/// Runs `launch bench allreduce`: one peer of a benchmark group; prints its report as JSON.
pub fn bench_allreduce(
    addresses: Addresses,
    peers: usize,
    megabytes: f64,
    rounds: usize,
    link_mbit: f64,
) -> Result<()> {
    let runtime = runtime()?;
    let payload_bytes = (megabytes * 1e6) as usize;
    let settings = GroupSettings {
        run: format!("{:0>16}", format!("bench{payload_bytes}x{peers}")),
        config: serde_json::json!({"bench": "allreduce", "bytes": payload_bytes}),
        heartbeat: Duration::from_millis(500),
        peer_timeout: Duration::from_secs(5),
        round_ceiling: Duration::from_secs(600),
        limits: GroupLimits::default(),
    };
    let topic = run_topic(&settings);
    let (group, _) = join_network(
        &runtime,
        net::Keypair::generate_ed25519(),
        settings,
        addresses,
        topic,
        net::RelayService::peer_default().max_circuits,
    )?;
    let report = runtime.block_on(async {
        let live = group.wait_for_peers(peers, Duration::from_secs(120)).await;
        anyhow::ensure!(
            live >= peers,
            "only {live} of {peers} peers showed up within 120 s"
        );
        let report = crate::bench::allreduce(&group, payload_bytes, rounds, link_mbit).await?;
        // Stay until every other peer has finished too (its answers to their last requests
        // have arrived then).
        if !group
            .wait_for_reports(2 * rounds as u64, Duration::from_secs(60))
            .await
        {
            tracing::warn!("not every peer reported finishing; leaving anyway");
        }
        group.leave().await;
        anyhow::Ok(report)
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The topic checkpoint servers and fetchers gossip on (none of a run's members listen).
const CHECKPOINT_TOPIC: &str = "sinter/checkpoints";

/// Runs `launch checkpoint serve`: serves a checkpoints directory until Ctrl-C.
pub fn serve_checkpoints(dir: &std::path::Path, listen: &[String]) -> Result<()> {
    let config = crate::checkpoints::run_config(dir)?;
    let runtime = runtime()?;
    let settings = group_settings(&config, Duration::from_secs(600), GroupLimits::default())?;
    let (group, _) = join_network(
        &runtime,
        net::Keypair::generate_ed25519(),
        settings,
        Addresses::parse(listen, &[], &[])?,
        CHECKPOINT_TOPIC.into(),
        0,
    )?;
    group.serve_blobs(Arc::new(Served::new(dir)));
    tracing::info!(dir = %dir.display(), "serving checkpoints; Ctrl-C to stop");
    runtime.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}

/// Runs `launch checkpoint fetch`.
pub fn fetch_checkpoint(
    config: &RunConfig,
    from: &[String],
    root: Option<String>,
    out: &std::path::Path,
) -> Result<()> {
    let runtime = runtime()?;
    let settings = group_settings(config, Duration::from_secs(600), GroupLimits::default())?;
    let addrs = Addresses::parse(&[], &[], from)?;
    // The chunks go to a file beside the output, never all into memory; it is removed
    // once the checkpoint is written out of it (or the fetch fails).
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let blob_path = out.join("checkpoint-fetch.partial");
    let blob = PartialFile::create(&blob_path)?;
    let (manifest, delivered, secs) = runtime.block_on(async {
        let (client, events, event_loop) = net::start(NetConfig::client(
            net::Keypair::generate_ed25519(),
            CHECKPOINT_TOPIC.into(),
        ))
        .await?;
        tokio::spawn(event_loop.run());
        let group = Group::start(client.clone(), events, settings);
        let mut donors = Vec::new();
        for addr in &addrs.bootstrap {
            match client.dial(addr.clone()).await {
                Ok(peer) => donors.push(peer),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot reach; fetching from the others")
                }
            }
        }
        anyhow::ensure!(
            !donors.is_empty(),
            "none of the --from peers could be reached"
        );
        let started = std::time::Instant::now();
        let (manifest, delivered) = group
            .fetch_blob(
                &donors,
                root,
                sinter_trainer::checkpoint::max_len(config),
                &blob.file,
            )
            .await?;
        anyhow::Ok((manifest, delivered, started.elapsed().as_secs_f64()))
    })?;
    let file = blob.file.try_clone().context("the fetched blob's file")?;
    let written = crate::checkpoints::write_fetched(file, &manifest, out)?;
    drop(blob);
    let bytes = manifest.total_len;
    println!(
        "fetched checkpoint {} ({bytes} bytes in {secs:.3} s, {:.1} Mbit/s) into {}",
        manifest.root,
        bytes as f64 * 8.0 / secs / 1e6,
        written.display()
    );
    for (peer, chunks) in delivered {
        println!("  {chunks:>4} chunks from {peer}");
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Runs `launch leave`.
pub fn leave(args: LeaveArgs) -> Result<()> {
    let key = args.key.unwrap_or_else(default_key);
    println!("{}", control::request_leave(&key)?);
    Ok(())
}

/// Runs `launch status`: dials the peer with a throwaway identity and prints its answer.
pub fn status(peer: &str, json: bool) -> Result<()> {
    let addr = multiaddr(peer, "--peer")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = runtime.block_on(async {
        let key = net::Keypair::generate_ed25519();
        let (client, mut events, event_loop) =
            net::start(NetConfig::client(key, "sinter/status".into())).await?;
        tokio::spawn(event_loop.run());
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let peer = client
            .dial(addr.clone())
            .await
            .with_context(|| format!("reaching {addr}"))?;
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            sinter_comms::group::query_status(&client, peer),
        )
        .await
        .with_context(|| format!("{addr} did not answer within 30 s"))??;
        anyhow::Ok(status)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let round = status.peers.values().map(|p| p.round).max().unwrap_or(0);
    println!(
        "run {} as seen by {} (reachable: {}): {} members, round {round}",
        status.run.chars().take(16).collect::<String>(),
        status.peer,
        status.reachability,
        status.members.len()
    );
    println!(
        "{:<54} {:<21} {:>6} {:>7} {:>9} {:>10} {:>10} {:>8} {:>7} {:>9} {:>14}",
        "peer (* member)",
        "connection",
        "round",
        "step",
        "val loss",
        "sent kB",
        "recv kB",
        "round s",
        "refused",
        "incentive",
        "emission"
    );
    for (peer, p) in &status.peers {
        let member = if status.members.contains(peer) {
            "*"
        } else {
            " "
        };
        let connection = match status.routes.get(peer) {
            Some(route) => route.as_str(),
            None if *peer == status.peer => "(answering)",
            None => "-",
        };
        println!(
            "{:<54} {:<21} {:>6} {:>7} {:>9} {:>10} {:>10} {:>8.2} {:>7} {:>9} {:>14}",
            format!("{peer} {member}"),
            connection,
            p.round,
            p.step,
            p.val_loss.map_or("-".into(), |l| format!("{l:.4}")),
            p.bytes_sent / 1000,
            p.bytes_received / 1000,
            p.last_round_secs,
            status.rejected.get(peer).copied().unwrap_or(0),
            p.incentive.map_or("-".into(), |i| format!("{i:.4}")),
            p.emission.map_or("-".into(), |e| e.to_string()),
        );
    }
    for peer in &status.banned {
        println!(
            "banned: {peer} ({} requests refused)",
            status.rejected.get(peer).copied().unwrap_or(0)
        );
    }
    Ok(())
}

/// The metagraph of this peer's replica at the end of a run, and what its scoring cost.
fn print_incentives(i: &IncentiveSummary) {
    println!(
        "ledger: block {}, {} epochs; this peer is uid {} ({}){}",
        i.blocks,
        i.epochs,
        i.uid.map_or("-".into(), |u| u.to_string()),
        i.hotkey,
        if i.validator {
            format!(
                ", a validator: scored {} rounds in {:.1} s beside {:.1} s of training ({:.0} %), waited {:.1} s",
                i.rounds_scored,
                i.scoring_secs,
                i.training_secs,
                100.0 * i.scoring_cost,
                i.scoring_stall_secs
            )
        } else {
            String::new()
        }
    );
    crate::report::print_neurons(&i.neurons);
}

struct PeerJob {
    config: RunConfig,
    group: Group,
    runtime: tokio::runtime::Handle,
    options: PeerOptions,
    stop: Arc<AtomicBool>,
    out: Option<std::path::PathBuf>,
}

impl BackendJob for PeerJob {
    type Output = ();

    fn run<B: TrainBackend>(self, device: B::Device, kernels: &dyn Kernels) -> Result<()> {
        let (_, dataset) = self.config.load_data()?;
        let mut progress = Progress::new(self.config.inner.steps as u64);
        let result = run_peer::<B>(
            &self.config,
            &dataset,
            kernels,
            &device,
            &self.group,
            &self.runtime,
            &self.options,
            &self.stop,
            &mut progress as &mut dyn Observer,
        );
        progress.finish();
        let outcome = result?;
        let s = &outcome.summary;
        // A peer that arrived as the run ended holds its final state without training.
        if s.summary.rounds == 0 && s.state_fetches.is_empty() {
            bail!("left before completing a round");
        }
        println!(
            "peer {}: {} rounds with {} peers, validation loss {:.4} -> {:.4} in {:.0} s; {} kB sent; params {}",
            &s.peer_id,
            s.summary.rounds,
            s.peers_seen.len(),
            s.summary.initial_val_loss,
            s.summary.final_val_loss,
            s.summary.wall_secs,
            s.summary.bytes_sent_per_worker / 1000,
            &s.summary.params_sha256[..16],
        );
        if let Some(incentives) = &s.incentives {
            print_incentives(incentives);
        }
        if let Some(dir) = &self.out {
            let title = format!("peer {}", &s.peer_id[s.peer_id.len() - 8..]);
            report::write_run(dir, &outcome.evals, s, &title)?;
            sinter_trainer::weights::save(
                &outcome.model,
                &self.config,
                &dir.join("model.safetensors"),
            )?;
            println!(
                "wrote {0}/metrics.jsonl, {0}/summary.json, {0}/loss.svg, {0}/model.safetensors",
                dir.display()
            );
        }
        Ok(())
    }
}

/// A scratch file removed when dropped, whatever happened.
struct PartialFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl PartialFile {
    fn create(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
