//! `launch chain …` against Bittensor's real runtime (spec 218) running locally in
//! chopsticks: register (with the burn shown and capped), serve an axon, stake and unstake,
//! set weights directly and by commit-reveal, publish a commitment, read the metagraph; and
//! the chain's refusals turned into messages that say what to do, with exit codes. One test:
//! the chain takes half a minute to start. And the `Ledger` interface's suite against
//! `ChainLedger` on the same runtime, and a `launch run` whose ledger is the chain.

mod common;
#[path = "../../trainer/tests/suite/ledger.rs"]
mod suite;

use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::chain::LocalChain;
use common::peers::Peer;
use common::{Wallet, wallet};
use common::{launch, text};
use serde_json::{Value, json};

const TAO: u64 = 1_000_000_000;

/// `launch chain COMMAND --url … --netuid 1 WALLET EXTRA…`, timed.
fn chain_cmd(chain: &LocalChain, command: &str, wallet: &Wallet, extra: &[&str]) -> Output {
    let mut args = vec!["chain", command, "--url", &chain.url, "--netuid", "1"];
    args.extend(wallet.args.iter().map(String::as_str));
    args.extend(extra);
    let started = Instant::now();
    let out = launch(&args);
    eprintln!(
        "launch chain {command} {extra:?}: {:.1?}, {}",
        started.elapsed(),
        out.status
    );
    out
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn failed(out: Output, code: i32, says: &[&str]) {
    let all = text(&out);
    assert_eq!(out.status.code(), Some(code), "{all}");
    for s in says {
        assert!(all.contains(s), "expected {s:?} in:\n{all}");
    }
}

fn metagraph(chain: &LocalChain) -> Value {
    let out = launch(&[
        "chain",
        "metagraph",
        "--url",
        &chain.url,
        "--netuid",
        "1",
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn neuron<'a>(m: &'a Value, hotkey: &str) -> &'a Value {
    m["neurons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hotkey"] == hotkey)
        .unwrap_or_else(|| panic!("{hotkey} not in {m}"))
}

#[test]
fn a_wallet_registers_serves_stakes_weighs_and_commits_on_bittensors_runtime() {
    let Some(chain) = LocalChain::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let alice = wallet(dir.path(), "alice");
    let broke = wallet(dir.path(), "broke");
    chain.fund(&alice.coldkey, 1_000_000 * TAO);
    // Test settings on subnet 1: weights limited to one setting a block, and its pool priced 1:1 so that
    // staked TAO becomes about as much stake.
    chain.set_subnet("WeightsSetRateLimit", 1, json!(1));
    chain.set_subnet("SubnetAlphaIn", 1, json!(29 * TAO));

    // Register: the burn (1 TAO at genesis) is shown and capped; twice is not an error.
    failed(
        chain_cmd(&chain, "register", &alice, &["--max-burn", "0.5"]),
        2,
        &["burn (1 TAO) is above --max-burn (0.5 TAO)"],
    );
    failed(
        chain_cmd(&chain, "register", &broke, &[]),
        1,
        &["has 0 TAO and the burn is 1 TAO: fund it with at least 1 TAO more"],
    );
    let registered = ok(chain_cmd(&chain, "register", &alice, &["--max-burn", "2"]));
    assert!(
        registered.contains(&format!("registered {} on subnet 1: uid 1", alice.hotkey)),
        "{registered}"
    );
    let again = ok(chain_cmd(&chain, "register", &alice, &[]));
    assert!(
        again.contains("already registered on subnet 1: uid 1"),
        "{again}"
    );

    // Serve: the chain refuses loopback, and says so; a routable address is stored.
    failed(
        chain_cmd(
            &chain,
            "serve",
            &alice,
            &["--ip", "127.0.0.1", "--port", "8091"],
        ),
        1,
        &["InvalidIpAddress", "serve a public address"],
    );
    ok(chain_cmd(
        &chain,
        "serve",
        &alice,
        &["--ip", "10.1.2.3", "--port", "8091"],
    ));

    // Stake and unstake; unstaking more than there is says so.
    ok(chain_cmd(&chain, "stake", &alice, &["--amount", "10"]));
    let staked = neuron(&metagraph(&chain), &alice.hotkey)["stake"]
        .as_u64()
        .unwrap();
    assert!(
        staked > 5 * TAO,
        "10 TAO staked at about 1:1, stake {staked}"
    );
    // (Exact amounts cannot be compared: the subnet's emission adds to the stake every block.)
    let unstaked = ok(chain_cmd(&chain, "unstake", &alice, &["--amount", "1"]));
    assert!(unstaked.contains("unstaked 1 TAO"), "{unstaked}");
    failed(
        chain_cmd(&chain, "unstake", &alice, &["--amount", "1000"]),
        1,
        &["NotEnoughStakeToWithdraw", "less stake than that"],
    );

    // Weights, set directly (commit-reveal is off on subnet 1).
    let set = ok(chain_cmd(
        &chain,
        "weights",
        &alice,
        &["--uids", "0,1", "--weights", "0.7,0.3"],
    ));
    assert!(
        set.contains("set weights on subnet 1") && set.contains("values [65535, 28086]"),
        "{set}"
    );
    failed(
        chain_cmd(
            &chain,
            "weights",
            &alice,
            &["--uids", "0,7", "--weights", "1,1"],
        ),
        2,
        &["uid 7 is not on subnet 1"],
    );

    // A commitment, then the pallet's rate limit, with the next allowed block.
    let committed = ok(chain_cmd(
        &chain,
        "commit",
        &alice,
        &["--data", "0xdeadbeef"],
    ));
    assert!(committed.contains("committed 0xdeadbeef"), "{committed}");
    failed(
        chain_cmd(&chain, "commit", &alice, &["--data", "00"]),
        1,
        &[
            "CommitmentSetRateLimitExceeded",
            "the next allowed block is #",
        ],
    );

    // The metagraph shows it all.
    let m = metagraph(&chain);
    assert_eq!(m["netuid"], 1);
    let me = neuron(&m, &alice.hotkey);
    assert_eq!(me["uid"], 1);
    assert_eq!(me["coldkey"], alice.coldkey.as_str());
    assert_eq!(me["axon"], json!({"ip": "10.1.2.3", "port": 8091}));
    assert!(
        me["last_update"].as_u64().unwrap() > 2,
        "weights set after registration: {me}"
    );
    assert_eq!(m["neurons"][0]["axon"], Value::Null, "uid 0 never served");

    // Commit-reveal on, with short epochs: `weights` commits, waits for the window (blocks
    // made here on demand) and reveals.
    chain.set_subnet("CommitRevealWeightsEnabled", 1, json!(true));
    chain.set_subnet("Tempo", 1, json!(4));
    let done = AtomicBool::new(false);
    let revealed = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(700));
                chain.new_blocks(1);
            }
        });
        let out = chain_cmd(
            &chain,
            "weights",
            &alice,
            &["--uids", "0", "--weights", "1"],
        );
        done.store(true, Ordering::Relaxed);
        out
    });
    let revealed = ok(revealed);
    assert!(
        revealed.contains("committed weights on subnet 1"),
        "{revealed}"
    );
    assert!(
        revealed.contains("revealed weights on subnet 1"),
        "{revealed}"
    );

    // A subnet that does not exist: a clear refusal, exit 2.
    let out = launch(&["chain", "metagraph", "--url", &chain.url, "--netuid", "99"]);
    failed(out, 2, &["no subnet 99"]);
}

#[test]
fn an_unreachable_chain_says_where_it_looked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let out = launch(&["chain", "metagraph", "--url", &url, "--netuid", "1"]);
    failed(
        out,
        1,
        &[
            &format!("cannot reach the chain at {url}"),
            "is the node running",
        ],
    );
}

/// subtensor as a run's `Ledger`: the suite every implementation passes, on the real runtime
/// (subnet 1 with commit-reveal on a 10-block tempo, commitments not rate-limited, a block
/// every 200 ms). The reveal window is one epoch, and the suite spends a block or two on a
/// forged reveal before the real one: a 4-block tempo left too few (CI saw the commitment
/// expire first).
#[test]
fn subtensor_behaves_as_a_ledger() {
    use sinter_mechanism::ledger::wallet::{Wallet as Keys, WalletPath};
    use sinter_mechanism::subtensor::{Chain, ledger::ChainLedger};
    use std::sync::Arc;
    use std::time::Duration;
    let Some(chain) = LocalChain::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bob = wallet(dir.path(), "bob");
    chain.fund(&bob.coldkey, 1_000 * TAO);
    chain.set_subnet("WeightsSetRateLimit", 1, json!(1));
    chain.set_subnet("SubnetAlphaIn", 1, json!(29 * TAO));
    chain.set_subnet("CommitRevealWeightsEnabled", 1, json!(true));
    chain.set_subnet("Tempo", 1, json!(10));
    let chain = Arc::new(chain);
    let blocks = Blocks::start(chain.clone(), vec![bob.hotkey.clone()], 1);
    let path = WalletPath::new(Some(dir.path()), "bob", "miner").unwrap();
    let keys = Keys::read(&path, Some(common::PASSWORD)).unwrap();
    let ledger = ChainLedger::new(
        Chain::connect(&chain.url).unwrap(),
        1,
        keys,
        Some(2 * TAO),
        // What the suite's waits scale with.
        Duration::from_secs(3),
    )
    .unwrap();
    let started = Instant::now();
    suite::behaves_as_a_ledger(&ledger, TAO);
    eprintln!("the suite on subtensor: {:.1?}", started.elapsed());
    // With commit-reveal off the same call sets weights at once.
    chain.set_subnet("CommitRevealWeightsEnabled", 1, json!(false));
    let uid = ledger.metagraph().uid(&ledger.hotkey()).unwrap();
    let before = ledger.metagraph().neuron(uid).unwrap().last_update;
    use sinter_mechanism::Ledger;
    use sinter_mechanism::ledger::interface::WeightsCommitment;
    assert_eq!(
        ledger.commit_weights(&[0, uid], &[u16::MAX, 1]).unwrap(),
        WeightsCommitment::Set
    );
    let after = ledger.metagraph().neuron(uid).unwrap().last_update;
    assert!(
        after > before,
        "set_weights did not land: {before} → {after}"
    );
    drop(blocks);
}

/// Makes a block every 200 ms until dropped, every `lift_every` blocks lifting the runtime's
/// one commitment per 100 blocks for `hotkeys` (as funding is lifted: seconds, not minutes);
/// so a hotkey commits at most once per `lift_every` blocks, as on Bittensor once per 100.
struct Blocks {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Blocks {
    fn start(chain: std::sync::Arc<LocalChain>, hotkeys: Vec<String>, lift_every: u32) -> Self {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for block in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A call the local node was too slow to answer (it once took over a
                    // minute under load) is retried with the next block, not fatal: a panic
                    // here would stop the chain and leave the peers waiting on it.
                    if block % lift_every == 0 {
                        // Removed, not zeroed: a last commitment at block 0 still waits 100 blocks.
                        let reset: Vec<Value> =
                            hotkeys.iter().map(|h| json!([[1, h], null])).collect();
                        let changes = json!([{"Commitments": {"LastCommitment": reset}}]);
                        if let Err(e) = chain.try_rpc("dev_setStorage", changes) {
                            eprintln!("lifting the commitment limit failed (retried): {e}");
                        }
                    }
                    if let Err(e) = chain.try_rpc("dev_newBlock", json!([{"count": 1}])) {
                        eprintln!("a block was not made (retried): {e}");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A run paid by the chain: two peers with `[incentives.chain]`, one staked beforehand (it
/// validates), the other registering itself as the run starts. Both end bit-identical; each
/// contribution is committed under a Merkle root on the chain; the validator scores the
/// other's contributions from the proofs it serves, and both peers are on the subnet with
/// their identity binding.
#[test]
fn a_run_with_a_chain_ledger_registers_commits_and_scores_on_subtensor() {
    let Some(chain) = LocalChain::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (wallet(dir.path(), "alice"), wallet(dir.path(), "bob"));
    for w in [&alice, &bob] {
        chain.fund(&w.coldkey, 1_000 * TAO);
    }
    chain.set_subnet("WeightsSetRateLimit", 1, json!(1));
    chain.set_subnet("SubnetAlphaIn", 1, json!(29 * TAO));
    chain.set_subnet("CommitRevealWeightsEnabled", 1, json!(true));
    chain.set_subnet("Tempo", 1, json!(4));
    ok(chain_cmd(&chain, "register", &alice, &["--max-burn", "2"]));
    ok(chain_cmd(&chain, "stake", &alice, &["--amount", "10"]));
    let chain = std::sync::Arc::new(chain);
    // One commitment per hotkey every 5 blocks (about 10 s): the run's 4 rounds take a few
    // seconds, so most of a member's contributions are proven only well after their round.
    let _blocks = Blocks::start(
        chain.clone(),
        vec![alice.hotkey.clone(), bob.hotkey.clone()],
        5,
    );
    // chopsticks builds a block in about 2 s here, whatever the pace asked: the peers' waits
    // for inclusion scale with `block_secs`.

    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        common::small_config(16, 2, 4)
            + &format!(
                "\n[incentives]\ntempo = 4\nvalidator_batches = 1\n\n[incentives.chain]\nurl = \"{}\"\nnetuid = 1\nmax_burn = 2\nblock_secs = 2\n",
                chain.url
            ),
    )
    .unwrap();
    let wallets = dir.path().to_str().unwrap();
    let as_peer = |name: &'static str| {
        vec![
            "--wallet",
            name,
            "--hotkey",
            "miner",
            "--wallet-path",
            wallets,
        ]
    };
    let started_at = metagraph(&chain)["block"].as_u64().unwrap();
    let first = Peer::start(dir.path(), "alice", &config, &as_peer("alice"));
    let addr = first.address();
    let mut args = as_peer("bob");
    args.extend(["--bootstrap", addr.as_str()]);
    let second = Peer::start(dir.path(), "bob", &config, &args);
    let (status, validator) = first.wait(dir.path(), "alice");
    assert!(status.success(), "alice: {validator}");
    let (status, miner) = second.wait(dir.path(), "bob");
    assert!(status.success(), "bob: {miner}");
    assert_eq!(validator["params_sha256"], miner["params_sha256"]);

    // Alice validated and scored bob's contributions, proven against his roots on the chain.
    let incentives = &validator["incentives"];
    assert_eq!(incentives["validator"], true, "{incentives:#}");
    assert!(
        incentives["rounds_scored"].as_u64() >= Some(1),
        "{incentives:#}"
    );
    // Every round bob took part in is scored from his proofs, however late they came.
    let bob_id = miner["peer_id"].as_str().unwrap();
    let scored = &incentives["scores"][bob_id];
    assert_eq!(scored["rejected"], json!([]), "{incentives:#}");
    assert_eq!(
        scored["rounds"], incentives["rounds_scored"],
        "{incentives:#}"
    );
    assert_eq!(incentives["rounds_unscored"], 0, "{incentives:#}");
    assert_eq!(miner["incentives"]["validator"], false);

    // Both on the subnet, bob registered by the run; each summary shows the chain's
    // incentive and emission for every member.
    let subnet = metagraph(&chain);
    for (w, summary) in [(&alice, &validator), (&bob, &miner)] {
        let uid = neuron(&subnet, &w.hotkey)["uid"].clone();
        assert_eq!(summary["incentives"]["uid"], uid, "{summary}");
        for other in [&alice, &bob] {
            let uid = &neuron(&subnet, &other.hotkey)["uid"];
            let shown = summary["incentives"]["neurons"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["uid"] == *uid)
                .unwrap_or_else(|| panic!("uid {uid} not in {summary}"));
            assert!(
                shown["incentive"].is_f64() && shown["emission"].is_u64(),
                "{shown}"
            );
        }
    }
    // Alice's weights were committed and revealed on the chain during the run.
    let updated = neuron(&subnet, &alice.hotkey)["last_update"]
        .as_u64()
        .unwrap();
    assert!(
        updated > started_at,
        "alice's weights not set after block {started_at}: {subnet:#}"
    );
}
