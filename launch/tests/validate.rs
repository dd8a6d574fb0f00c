//! `launch validate` against real miners: three `launch serve` processes (weights of a longer
//! run, of a short one, and untrained weights) announce their axons on an embedded ledger
//! node; a validator process routes held-out text to them through its gate, values their
//! signed answers by Shapley value, and commits and reveals weights on the ledger, whose epoch
//! then pays the miners in that order. A fourth neuron announces an address nobody answers
//! at: it is absent, scores zero, and the rounds still end within their deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, launch, small_config, text};
use serde_json::Value;

/// Weights from a `steps`-step run (a learning rate near 0: the initialization, untrained).
fn weights(dir: &Path, name: &str, steps: usize, lr: Option<f64>) -> PathBuf {
    let mut config = small_config(steps, 1, steps.min(10));
    if let Some(lr) = lr {
        config = config.replace("[inner]\n", &format!("[inner]\nlr = {lr}\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let out = dir.join(name);
    let run = launch(&[
        "sim",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    out.join("model.safetensors")
}

/// Starts `launch serve` for `weights` with its axon announced on the ledger; returns once the
/// announcement is in a block.
fn miner(weights: &Path, wallet: &common::Wallet, ledger: &[String], dir: &Path) -> Node {
    let name = wallet.args[3].clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(["serve", weights.to_str().unwrap(), "--http", "127.0.0.1:0"])
        .args(["--axon", "/ip4/127.0.0.1/tcp/0"])
        .arg("--axon-key")
        .arg(dir.join(format!("{name}.axon.key")))
        .arg("--ledger")
        .arg(dir.join(format!("{name}.ledger")))
        .args(ledger)
        .args(&wallet.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let node = Node(child);
    let mut lines = BufReader::new(stdout).lines();
    let announced = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("axon announced on the ledger"));
    assert!(announced, "miner {name} did not announce its axon");
    // Keep reading: a miner whose stdout is closed dies at its next line.
    std::thread::spawn(move || lines.for_each(drop));
    node
}

#[test]
fn a_validator_pays_the_trained_miner_most_and_the_untrained_least_through_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trained = weights(d, "trained", 200, None);
    let undertrained = weights(d, "undertrained", 12, None);
    let untrained = weights(d, "untrained", 1, Some(1e-9));
    let wallets = d.join("wallets");
    let [author, validator, good, fair, poor, absent] =
        ["author", "validator", "good", "fair", "poor", "absent"]
            .map(|name| common::wallet(&wallets, name));
    let genesis = d.join("genesis.json");
    let neuron = |w: &common::Wallet, stake: u64| serde_json::json!({"hotkey": w.hotkey, "coldkey": w.coldkey, "stake": stake});
    std::fs::write(
        &genesis,
        serde_json::json!({
            "author": author.hotkey, "tempo": 10, "burn": 1, "emission_per_epoch": 1_000_000,
            "balances": [],
            "neurons": [neuron(&validator, 1000), neuron(&good, 0), neuron(&fair, 0),
                        neuron(&poor, 0), neuron(&absent, 0)],
        })
        .to_string(),
    )
    .unwrap();
    let author_ledger = d.join("author.ledger");
    let (_node, node_addr) = common::ledger_node(&[
        "--genesis",
        genesis.to_str().unwrap(),
        "--ledger",
        author_ledger.to_str().unwrap(),
        "--author-key",
        wallets.join("author/hotkeys/miner").to_str().unwrap(),
        "--block-secs",
        "0.2",
    ]);
    let node_id = node_addr;
    let ledger: Vec<String> = [
        "--ledger-node",
        &node_id,
        "--genesis",
        genesis.to_str().unwrap(),
        "--block-secs",
        "0.2",
    ]
    .map(String::from)
    .to_vec();
    let _miners = [
        (&trained, &good),
        (&undertrained, &fair),
        (&untrained, &poor),
    ]
    .map(|(weights, wallet)| miner(weights, wallet, &ledger, d));
    // A neuron whose announced axon nobody answers at.
    let mut submit = vec!["ledger", "submit", "--genesis", genesis.to_str().unwrap()];
    let absent_key = wallets.join("absent/hotkeys/miner");
    submit.extend(["--node", &node_id, "--key", absent_key.to_str().unwrap()]);
    let dead = "/ip4/127.0.0.1/tcp/9";
    submit.extend(["serve", "--address", dead]);
    let out = launch(&submit);
    assert!(out.status.success(), "{}", text(&out));

    let config = d.join("trained.toml");
    let out_dir = d.join("validator");
    let mut args = vec![
        "validate",
        config.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--rounds",
        "5",
        "--examples",
        "4",
        "--timeout",
        "20",
    ];
    let replica = d.join("validator.ledger");
    args.extend(["--ledger", replica.to_str().unwrap()]);
    args.extend(ledger.iter().map(String::as_str));
    args.extend(validator.args.iter().map(String::as_str));
    let out = launch(&args);
    assert!(out.status.success(), "{}", text(&out));

    let log = std::fs::read_to_string(out_dir.join("validate.jsonl")).unwrap();
    let rounds: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rounds.len(), 5, "{log}");
    let last = &rounds[4];
    let by_hotkey = |w: &common::Wallet| {
        last["miners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["hotkey"] == w.hotkey.as_str())
            .unwrap_or_else(|| panic!("{} not validated: {last}", w.hotkey))
            .clone()
    };
    let [good_m, fair_m, poor_m, absent_m] = [&good, &fair, &poor, &absent].map(by_hotkey);
    for m in [&good_m, &fair_m, &poor_m] {
        assert_eq!(m["asked"], m["answered"], "{last}");
    }
    let score = |m: &Value| m["score"].as_f64().unwrap();
    assert!(
        score(&good_m) > score(&fair_m) && score(&fair_m) > score(&poor_m),
        "trained > undertrained > untrained: {last}"
    );
    assert_eq!(score(&absent_m), 0.0, "{last}");
    assert_eq!(absent_m["answered"], 0, "{last}");
    assert!(
        absent_m["misses"]["unreachable"].as_u64().unwrap() > 0,
        "{last}"
    );
    for round in &rounds {
        assert!(round["seconds"].as_f64().unwrap() < 25.0, "{round}");
    }
    // The revealed weights reach an epoch: emission follows them.
    common::eventually(
        "an epoch paying the miners",
        Duration::from_secs(60),
        || {
            let out = launch(&["ledger", "show", "--json", author_ledger.to_str().unwrap()]);
            let state: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let neuron = |w: &common::Wallet| {
                state["neurons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["hotkey"] == w.hotkey.as_str())
                    .map(|n| n["incentive"].as_u64().unwrap())
                    .unwrap()
            };
            let [g, f, p, a] = [&good, &fair, &poor, &absent].map(neuron);
            match g > f && f >= p && a == 0 && g > 0 {
                true => Ok(()),
                false => Err(format!(
                    "incentives good {g}, fair {f}, poor {p}, absent {a}"
                )),
            }
        },
    );
}
