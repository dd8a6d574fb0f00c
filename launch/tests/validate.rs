//! `launch validate` against real miners, each a `launch serve` process announcing its axon
//! on an embedded ledger node, and a validator process routing held-out text to them through
//! its gate, valuing their signed answers by Shapley value, and committing and revealing
//! weights on the ledger, whose epochs pay the miners.
//!
//! - Three miners (weights of a longer run, of a short one, untrained weights) are paid in
//!   that order; the gate sends Milton's text to a Milton specialist (the longer run
//!   fine-tuned on Milton) more than to any other miner, and more of it than of Shakespeare's,
//!   and the longer run the other way; a neuron
//!   announcing an address nobody answers at is absent, scores zero, and the rounds still
//!   end within their deadline.
//! - Hostile miners (garbage, NaN, oversized, slow, replayed, unsigned, forged, one relaying
//!   an honest miner's answers, one claiming the shared model while serving other weights)
//!   each get zero beside an honest one, within the deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Node, Wallet, launch, small_config, text};
use serde_json::Value;

/// The tests' model trained for `steps` steps with a context of `context` tokens (a learning
/// rate near 0: the initialization, untrained), written as `DIR/NAME.toml`.
fn config(dir: &Path, name: &str, steps: usize, lr: Option<f64>, context: usize) -> PathBuf {
    let mut config = small_config(steps, 1, steps.min(10))
        .replace("context = 32\n", &format!("context = {context}\n"));
    if let Some(lr) = lr {
        config = config.replace("[inner]\n", &format!("[inner]\nlr = {lr}\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

/// Weights from one worker training as [`config`] says (`launch train`), after `also` (its
/// `--from`, `--corpus`).
fn weights(
    dir: &Path,
    name: &str,
    steps: usize,
    lr: Option<f64>,
    context: usize,
    also: &[&str],
) -> PathBuf {
    let path = config(dir, name, steps, lr, context);
    let out = dir.join(name);
    let mut args = vec!["train", path.to_str().unwrap()];
    args.extend_from_slice(also);
    args.extend(["--out", out.to_str().unwrap()]);
    let run = launch(&args);
    assert!(run.status.success(), "{}", text(&run));
    out.join("model.safetensors")
}

/// An embedded ledger node whose genesis registers a staked validator and then `miners`, in
/// that order (so in uid order), all at block 0.
struct Market {
    dir: PathBuf,
    genesis: PathBuf,
    author_ledger: PathBuf,
    /// `--ledger-node … --genesis … --block-secs …`.
    ledger: Vec<String>,
    validator: Wallet,
    miners: Vec<Wallet>,
    _node: Node,
}

impl Market {
    fn start(dir: &Path, miners: &[&str]) -> Self {
        let wallets = dir.join("wallets");
        let author = common::wallet(&wallets, "author");
        let validator = common::wallet(&wallets, "validator");
        let miners: Vec<Wallet> = miners.iter().map(|m| common::wallet(&wallets, m)).collect();
        let neuron = |w: &Wallet, stake: u64| serde_json::json!({"hotkey": w.hotkey, "coldkey": w.coldkey, "stake": stake});
        let neurons: Vec<Value> = std::iter::once(neuron(&validator, 1000))
            .chain(miners.iter().map(|m| neuron(m, 0)))
            .collect();
        let genesis = dir.join("genesis.json");
        std::fs::write(
            &genesis,
            serde_json::json!({
                "author": author.hotkey, "tempo": 10, "burn": 1, "emission_per_epoch": 1_000_000,
                "balances": [], "neurons": neurons,
            })
            .to_string(),
        )
        .unwrap();
        let author_ledger = dir.join("author.ledger");
        let (node, node_addr) = common::ledger_node(&[
            "--genesis",
            genesis.to_str().unwrap(),
            "--ledger",
            author_ledger.to_str().unwrap(),
            "--author-key",
            wallets.join("author/hotkeys/miner").to_str().unwrap(),
            "--block-secs",
            "0.2",
        ]);
        let ledger = vec![
            "--ledger-node".into(),
            node_addr,
            "--genesis".into(),
            genesis.to_str().unwrap().into(),
            "--block-secs".into(),
            "0.2".into(),
        ];
        Self {
            dir: dir.to_path_buf(),
            genesis,
            author_ledger,
            ledger,
            validator,
            miners,
            _node: node,
        }
    }

    /// The miner named `name`.
    fn wallet(&self, name: &str) -> &Wallet {
        self.miners
            .iter()
            .find(|w| w.args[3] == name)
            .unwrap_or_else(|| panic!("no miner {name}"))
    }

    /// Starts `launch serve` for `weights` as miner `name`, with the environment `env`, its
    /// axon announced on the ledger; returns once the announcement is in a block, with the
    /// address announced.
    fn serve(&self, name: &str, weights: &Path, env: &[(&str, &str)]) -> (Node, String) {
        let wallet = self.wallet(name);
        let mut command = Command::new(env!("CARGO_BIN_EXE_launch"));
        command
            .args(["serve", weights.to_str().unwrap(), "--http", "127.0.0.1:0"])
            .args(["--axon", "/ip4/127.0.0.1/tcp/0"])
            .arg("--axon-key")
            .arg(self.dir.join(format!("{name}.axon.key")))
            .arg("--ledger")
            .arg(self.dir.join(format!("{name}.ledger")))
            .args(&self.ledger)
            .args(&wallet.args)
            .envs(env.iter().copied());
        common::spawn_until(command, "axon announced on the ledger: ")
    }

    /// Announces for miner `name` an axon address nobody answers at.
    fn announce_dead(&self, name: &str) {
        let key = self.dir.join(format!("wallets/{name}/hotkeys/miner"));
        let out = launch(&[
            "ledger",
            "submit",
            "--genesis",
            self.genesis.to_str().unwrap(),
            "--node",
            &self.ledger[1],
            "--key",
            key.to_str().unwrap(),
            "serve",
            "--address",
            "/ip4/127.0.0.1/tcp/9",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// Runs `launch validate CONFIG` with `flags` to its end; the lines of its
    /// `validate.jsonl`.
    fn validate(&self, config: &Path, flags: &[&str]) -> Vec<Value> {
        let out_dir = self.dir.join("validator");
        let replica = self.dir.join("validator.ledger");
        let mut args = vec![
            "validate",
            config.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--ledger",
            replica.to_str().unwrap(),
        ];
        args.extend(flags);
        args.extend(self.ledger.iter().map(String::as_str));
        args.extend(self.validator.args.iter().map(String::as_str));
        let out = launch(&args);
        assert!(out.status.success(), "{}", text(&out));
        let log = std::fs::read_to_string(out_dir.join("validate.jsonl")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The incentive each of the miners `names` has on the author's ledger.
    fn incentives<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let out = launch(&[
            "ledger",
            "show",
            "--json",
            self.author_ledger.to_str().unwrap(),
        ]);
        let state: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        names.map(|name| {
            let hotkey = &self.wallet(name).hotkey;
            state["neurons"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["hotkey"] == hotkey.as_str())
                .and_then(|n| n["incentive"].as_u64())
                .unwrap_or(0)
        })
    }
}

/// Miner `name`'s line in a round's record.
fn miner_in<'a>(round: &'a Value, market: &Market, name: &str) -> &'a Value {
    let hotkey = &market.wallet(name).hotkey;
    round["miners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["hotkey"] == hotkey.as_str())
        .unwrap_or_else(|| panic!("{name} not validated: {round}"))
}

fn score(m: &Value) -> f64 {
    m["score"].as_f64().unwrap()
}

#[test]
fn a_validator_pays_the_trained_miner_most_and_the_untrained_least_through_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Windows of 128 tokens: a shorter one says too little for the gate to tell Milton's
    // text from Shakespeare's.
    let context = 128;
    let trained = weights(d, "trained", 400, None, context, &[]);
    let undertrained = weights(d, "undertrained", 12, None, context, &[]);
    let untrained = weights(d, "untrained", 1, Some(1e-9), context, &[]);
    // The shared model fine-tuned on Milton: it knows Milton better and Shakespeare worse.
    let from = ["--from", trained.to_str().unwrap(), "--corpus", "milton"];
    let specialist = weights(d, "specialist", 200, None, context, &from);
    let market = Market::start(d, &["good", "fair", "poor", "milton", "absent"]);
    let _miners = [
        ("good", &trained),
        ("fair", &undertrained),
        ("poor", &untrained),
        ("milton", &specialist),
    ]
    .map(|(name, weights)| market.serve(name, weights, &[]));
    market.announce_dead("absent");

    let flags = [
        "--rounds",
        "8",
        "--examples",
        "8",
        "--timeout",
        "20",
        "--eval-corpus",
        "shakespeare",
        "--eval-corpus",
        "milton",
    ];
    let rounds = market.validate(&d.join("trained.toml"), &flags);
    assert_eq!(rounds.len(), 8, "{rounds:?}");
    let last = &rounds[7];
    let [good, fair, poor, absent] =
        ["good", "fair", "poor", "absent"].map(|name| miner_in(last, &market, name));
    for m in [good, fair, poor] {
        assert_eq!(m["asked"], m["answered"], "{last}");
        assert_eq!(m["copy_of"], Value::Null, "{last}");
    }
    assert!(
        score(good) > score(fair) && score(fair) > score(poor),
        "trained > undertrained > untrained: {last}"
    );
    // The gate has learned where each kind of text goes: a miner's mean share of the mixture
    // on each corpus's windows over the last rounds.
    let share = |name: &str, corpus: &str| {
        let shares: Vec<f64> = rounds[4..]
            .iter()
            .filter_map(|r| miner_in(r, &market, name)["gate_share_by_corpus"][corpus].as_f64())
            .collect();
        shares.iter().sum::<f64>() / 4.0
    };
    let [good_share, milton_share] =
        ["good", "milton"].map(|name| (share(name, "milton"), share(name, "shakespeare")));
    assert!(
        milton_share.0 > milton_share.1,
        "the specialist gets more of Milton's text than of Shakespeare's: {milton_share:?}"
    );
    for other in ["good", "fair", "poor"] {
        let theirs = share(other, "milton");
        assert!(
            milton_share.0 > theirs,
            "Milton's text goes to the specialist ({}) more than to {other} ({theirs})",
            milton_share.0
        );
    }
    assert!(
        good_share.1 > good_share.0,
        "Shakespeare's to the Shakespeare model: {good_share:?}"
    );
    assert_eq!(score(absent), 0.0, "{last}");
    assert_eq!(absent["answered"], 0, "{last}");
    assert!(
        absent["misses"]["unreachable"].as_u64().unwrap() > 0,
        "{last}"
    );
    for round in &rounds {
        assert!(round["seconds"].as_f64().unwrap() < 25.0, "{round}");
    }
    // `launch status` shows the last round to a person.
    let out = launch(&[
        "status",
        "--validator",
        d.join("validator").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("validator round 7"), "{shown}");
    assert!(shown.contains(&market.wallet("absent").hotkey), "{shown}");
    assert!(shown.contains("unreachable"), "{shown}");
    // The revealed weights reach an epoch: emission follows them.
    common::eventually(
        "an epoch paying the miners",
        Duration::from_secs(60),
        || {
            let [g, f, p, a] = market.incentives(["good", "fair", "poor", "absent"]);
            match g > f && f >= p && a == 0 && g > 0 {
                true => Ok(()),
                false => Err(format!(
                    "incentives good {g}, fair {f}, poor {p}, absent {a}"
                )),
            }
        },
    );
}

#[test]
fn hostile_miners_get_nothing_and_the_rounds_keep_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trained = weights(d, "trained", 60, None, 32, &[]);
    let untrained = weights(d, "untrained", 1, Some(1e-9), 32, &[]);
    let shared_hash = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(&trained).unwrap());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    // What each hostile miner does (`SINTER_FAULT_AXON`), and the miss it must be seen as.
    let hostile = [
        ("garbage", "bad_answer"),
        ("nan", "bad_answer"),
        ("oversized", "bad_answer"),
        ("slow", "late"),
        ("replayed", "bad_answer"),
        ("unsigned", "bad_answer"),
        ("forged", "bad_answer"),
        ("copy", "copied"),
        ("claim", "wrong_model"),
    ];
    let names: Vec<&str> = std::iter::once("honest")
        .chain(hostile.iter().map(|(fault, _)| *fault))
        .collect();
    let market = Market::start(d, &names);
    let (_honest, honest_axon) = market.serve("honest", &trained, &[]);
    let copy = format!("copy:{}:{honest_axon}", market.wallet("honest").hotkey);
    let claim = format!("claim:{shared_hash}");
    let _hostile: Vec<(Node, String)> = hostile
        .iter()
        .map(|&(name, _)| {
            let (fault, weights) = match name {
                "copy" => (copy.as_str(), &trained),
                // Untrained weights, said to be the shared model.
                "claim" => (claim.as_str(), &untrained),
                fault => (fault, &trained),
            };
            market.serve(name, weights, &[("SINTER_FAULT_AXON", fault)])
        })
        .collect();

    let timeout = 8.0;
    let shared = trained.to_str().unwrap();
    let flags = [
        "--rounds",
        "3",
        "--examples",
        "2",
        "--k",
        "10",
        "--timeout",
        "8",
        "--shared",
        shared,
    ];
    let rounds = market.validate(&d.join("trained.toml"), &flags);
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    for round in &rounds {
        assert!(
            round["seconds"].as_f64().unwrap() < timeout + 3.0,
            "{round}"
        );
        let honest = miner_in(round, &market, "honest");
        assert_eq!(honest["asked"], honest["answered"], "{round}");
        assert!(score(honest) > 0.0, "{round}");
        for (fault, miss) in hostile {
            let m = miner_in(round, &market, fault);
            assert_eq!(m["answered"], 0, "{fault}: {round}");
            assert_eq!(score(m), 0.0, "{fault}: {round}");
            assert_eq!(m["misses"][miss], m["asked"], "{fault} is {miss}: {round}");
        }
        // The honest miner claims the shared model too, and passes its check.
        assert_eq!(
            honest["model"].as_str(),
            Some(shared_hash.as_str()),
            "{round}"
        );
        let honest_uid = &honest["uid"];
        assert_eq!(
            &miner_in(round, &market, "copy")["copy_of"],
            honest_uid,
            "{round}"
        );
    }
}
