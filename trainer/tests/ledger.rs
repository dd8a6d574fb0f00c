//! The `Ledger` interface's behaviour, checked through the trait alone, against the embedded
//! ledger of a run: two real libp2p peers on loopback in one process, one authoring blocks,
//! the other a replica that registers, serves, stakes, commits a contribution and commits and
//! reveals weights through the author. `suite::behaves_as_a_ledger` is the suite that
//! subtensor's implementation runs too (`launch/tests/chain.rs`).

use std::sync::Arc;
use std::time::Duration;

use sinter_comms::group::{Group, GroupSettings};
use sinter_comms::net::{self, NetConfig};
#[path = "suite/ledger.rs"]
mod suite;

use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::interface::CallError;
use sinter_mechanism::ledger::keys::Keypair;
use sinter_mechanism::ledger::state::Genesis;
use sinter_mechanism::ledger::wallet::Wallet;
use sinter_trainer::ledger_net::RunLedger;

const BLOCK: Duration = Duration::from_millis(200);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A peer of a run: network, group, and its ledger replica with `wallet`.
fn peer(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    name: &str,
    genesis: &Genesis,
    wallet: Wallet,
    bootstrap: Option<net::Multiaddr>,
) -> (Arc<RunLedger>, net::Multiaddr) {
    let settings = GroupSettings {
        run: "ledger-test-run-0000".into(),
        config: serde_json::json!({}),
        heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_secs(5),
        round_ceiling: Duration::from_secs(30),
        limits: Default::default(),
    };
    let (group, addr) = runtime.block_on(async {
        let mut config = NetConfig::new(
            net::Keypair::generate_ed25519(),
            "sinter/run/ledger-test".into(),
        );
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        let (client, events, event_loop) = net::start(config).await.unwrap();
        tokio::spawn(event_loop.run());
        let group = Group::start(client.clone(), events, settings);
        if let Some(addr) = bootstrap {
            let other = client.dial(addr).await.unwrap();
            group.hello(other).await.unwrap();
        }
        let addr = client.listen_addrs().await.unwrap().remove(0);
        (group, addr)
    });
    let path = dir.join(format!("{name}.sntr"));
    let ledger = RunLedger::start(
        &path,
        genesis.clone(),
        BLOCK,
        wallet,
        group,
        runtime.handle().clone(),
    )
    .unwrap();
    (ledger, addr)
}

#[test]
fn the_embedded_ledger_of_a_run_behaves_as_a_ledger() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let author = Keypair::from_secret("//Author").unwrap();
    let (cold, hot) = (
        Keypair::from_secret("//MinerCold").unwrap(),
        Keypair::from_secret("//MinerHot").unwrap(),
    );
    let genesis: Genesis = serde_json::from_value(serde_json::json!({
        "author": author.account(),
        "tempo": 1000,
        "burn": 100,
        "balances": [{"account": cold.account(), "balance": 1000}],
        "neurons": [{"hotkey": author.account(), "coldkey": author.account(), "stake": 1000}],
    }))
    .unwrap();
    let (_author, author_addr) = peer(
        &runtime,
        dir.path(),
        "author",
        &genesis,
        Wallet::with_keys(author, None),
        None,
    );
    let (miner, _) = peer(
        &runtime,
        dir.path(),
        "miner",
        &genesis,
        Wallet::with_keys(hot, Some(cold)),
        Some(author_addr),
    );
    suite::behaves_as_a_ledger(miner.as_ref(), 50);
}

#[test]
fn a_hotkey_without_its_coldkey_cannot_register_and_says_why() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let author = Keypair::from_secret("//Author").unwrap();
    let genesis: Genesis = serde_json::from_value(serde_json::json!({
        "author": author.account(),
    }))
    .unwrap();
    let (ledger, _) = peer(
        &runtime,
        dir.path(),
        "lonely",
        &genesis,
        Wallet::with_keys(Keypair::from_secret("//Lonely").unwrap(), None),
        None,
    );
    match ledger.register() {
        Err(CallError::Keys { call, why }) => {
            assert_eq!(call, "register");
            assert!(why.contains("coldkey"), "{why}");
        }
        other => panic!("expected a missing-coldkey error, got {other:?}"),
    }
}
