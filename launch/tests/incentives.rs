//! The incentive mechanism end to end: `launch incentives` (experiments 1 and 3 at small
//! size), the ledger's verification and crash safety (experiment 4), `launch wallet`,
//! `launch bench cabal` (experiment 2's printout; its assertions are mechanism unit tests),
//! the ledger over libp2p, and a real `launch run` keeping the ledger, scoring and paying.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kill_at_fault, launch, ledger_node, text};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A model small enough for a round in about a second.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("incentives.toml");
    std::fs::write(
        &path,
        r#"
[model]
d_model = 64
n_layers = 2
n_heads = 4
n_kv_heads = 4
ffn_hidden = 172
context = 64

[data]
validation_batch_size = 8

[inner]
steps = 64
batch_size = 8
lr = 3e-3

# Plain averaging (the tuned config's outer step): with Nesterov momentum early in training
# every extra peer mostly shrinks the step, and leave-one-out stops measuring content.
[outer]
workers = 4
inner_steps = 8
lr = 1.0
momentum = 0.0
"#,
    )
    .unwrap();
    path
}

fn incentives(dir: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let config = config(dir);
    let out = dir.join(out);
    let mut args = vec!["incentives", s(&config), "--out", s(&out)];
    args.extend(extra);
    let run = launch(&args);
    assert!(run.status.success(), "{}", text(&run));
    serde_json::from_slice(&std::fs::read(out.join("incentives.json")).unwrap()).unwrap()
}

#[test]
fn honest_peers_earn_the_emission_and_lazy_and_copycat_peers_do_not() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let report = incentives(
        dir.path(),
        "run",
        &["--rounds", "6", "--warmup-rounds", "2"],
    );
    let peers = report["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 6);
    let share = report["lazy_and_copycat_share"].as_f64().unwrap();
    assert!(share <= 0.02, "lazy + copycat earned {share}");
    // The copycat is caught by the ledger's commitment order every round.
    let copycat = &peers[5];
    assert_eq!(copycat["role"], "copycat");
    let rejected = copycat["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 6);
    assert!(rejected[0][1].as_str().unwrap().contains("copies peer 0"));
    // Honest peers share what the validator does not keep.
    for p in &peers[..4] {
        assert!(p["emission_share"].as_f64().unwrap() > 0.0, "{p}");
    }
    let spearman = report["spearman_shapley"].as_f64().unwrap();
    assert!(
        spearman >= 0.8,
        "Shapley vs leave-one-out: {spearman}\n{report:#}"
    );
    assert!(report["spearman_fisher"].as_f64().is_some());
    assert!(report["scoring_secs"].as_f64().unwrap() > 0.0);

    // The ledger it wrote checks out, and shows every uid.
    let ledger = dir.path().join("run/ledger");
    let verify = launch(&["ledger", "verify", s(&ledger)]);
    assert!(verify.status.success(), "{}", text(&verify));
    let show = launch(&["ledger", "show", s(&ledger)]);
    assert!(show.status.success(), "{}", text(&show));
    assert_eq!(text(&show).matches("\n").count(), 9, "{}", text(&show));

    // One flipped byte anywhere after the genesis is named by its block.
    let mut bytes = std::fs::read(&ledger).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&ledger, &bytes).unwrap();
    let verify = launch(&["ledger", "verify", s(&ledger)]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("is bad:"), "{}", text(&verify));
}

#[test]
fn monte_carlo_shapley_is_within_five_percent_of_exact_for_eight_peers() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let report = incentives(
        dir.path(),
        "eight",
        &[
            "--rounds",
            "1",
            "--warmup-rounds",
            "0",
            "--permutations",
            "256",
            "--roles",
            "shakespeare,shakespeare,shakespeare,shakespeare,shakespeare,shakespeare,milton,milton",
        ],
    );
    let errors = report["monte_carlo_relative_error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report:#}");
    let error = errors[0].as_f64().unwrap();
    assert!(error < 0.05, "relative error {error}");
}

/// Experiment 4: SIGKILL while a block is half written loses no committed block.
#[test]
fn a_crash_in_the_middle_of_a_block_write_loses_no_committed_block() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let out = dir.path().join("killed");
    let log = dir.path().join("killed.log");
    kill_at_fault(
        &[
            "incentives",
            s(&config),
            "--out",
            s(&out),
            "--rounds",
            "2",
            "--warmup-rounds",
            "0",
        ],
        ("SINTER_FAULT_LEDGER", "torn@5"),
        &log,
        "paused in the middle of block 5",
    );

    let ledger = out.join("ledger");
    let verify = launch(&["ledger", "verify", "--json", s(&ledger)]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let v: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(v["blocks"], 4, "blocks 1–4 were committed: {v}");
    assert_eq!(v["torn_block"], 5);
    assert!(v["first_bad"].is_null());
    assert!(text(&verify).contains("block 5 was cut short"));
    let show = launch(&["ledger", "show", s(&ledger)]);
    assert!(show.status.success(), "{}", text(&show));
    assert!(text(&show).contains("block 4, 1 epochs"), "{}", text(&show));
}

#[cfg(unix)]
#[test]
fn wallets_in_bittensors_format_keep_keys_private_lock_the_coldkey_and_restore_from_mnemonics() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wallets = s(dir.path());
    let alice = [
        "--wallet-path",
        wallets,
        "--name",
        "alice",
        "--hotkey",
        "miner",
    ];
    let new = launch(&[&["wallet", "new"], &alice[..]].concat());
    assert!(new.status.success(), "{}", text(&new));
    let printed = String::from_utf8_lossy(&new.stdout).into_owned();
    for file in [
        "coldkey",
        "coldkeypub.txt",
        "hotkeys/miner",
        "hotkeys/minerpub.txt",
    ] {
        let path = dir.path().join("alice").join(file);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let coldkey = std::fs::read(dir.path().join("alice/coldkey")).unwrap();
    assert!(coldkey.starts_with(b"$NACL"), "the coldkey is encrypted");
    let phrase = printed
        .lines()
        .find(|l| l.contains("mnemonic"))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap()
        .to_owned();
    let show = launch(&[&["wallet", "show", "--json"], &alice[..]].concat());
    assert!(show.status.success(), "{}", text(&show));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let account = shown["coldkey"].as_str().unwrap().to_owned();
    assert!(
        printed.contains(&format!("coldkey: {account}")),
        "{printed}"
    );
    assert!(printed.contains(&format!("hotkey: {}", shown["hotkey"].as_str().unwrap())));
    assert!(!text(&show).contains(&phrase), "show never prints secrets");

    // --unlock checks the password: exit 1 when it is wrong, saying so.
    let unlock = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_launch"))
            .args([&["wallet", "show", "--unlock"], &alice[..]].concat())
            .env("SINTER_COLDKEY_PASSWORD", password)
            .output()
            .unwrap()
    };
    let good = unlock(common::PASSWORD);
    assert!(good.status.success(), "{}", text(&good));
    let wrong = unlock("not it");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("wrong password"), "{}", text(&wrong));
    let missing = launch(&[
        "wallet",
        "show",
        "--wallet-path",
        wallets,
        "--name",
        "nobody",
    ]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(
        text(&missing).contains(wallets),
        "names where it looked: {}",
        text(&missing)
    );

    // Importing the coldkey's mnemonic elsewhere gives the same account.
    let import = |phrase: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_launch"))
            .args([
                "wallet",
                "import",
                "--wallet-path",
                wallets,
                "--name",
                "restored",
            ])
            .env("SINTER_COLDKEY_PASSWORD", common::PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(phrase.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = import("not a real mnemonic at all");
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let good = import(&phrase);
    assert!(good.status.success(), "{}", text(&good));
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), account);
    // Keys are never overwritten.
    let again = import(&phrase);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));

    // A wallet of sinter's first format converts with one command.
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    for (name, phrase) in [("coldkey", phrase.as_str()), ("hotkey", "//Bob")] {
        let body = serde_json::json!({ "secret_phrase": phrase });
        std::fs::write(old.join(name), body.to_string()).unwrap();
    }
    let convert = launch(&[
        "wallet",
        "convert",
        "--from",
        s(&old),
        "--wallet-path",
        wallets,
        "--name",
        "converted",
    ]);
    assert!(convert.status.success(), "{}", text(&convert));
    let shown = launch(&[
        "wallet",
        "show",
        "--json",
        "--wallet-path",
        wallets,
        "--name",
        "converted",
    ]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["coldkey"], account.as_str());
}

#[test]
fn peer_lists_the_run_cannot_play_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for (roles, why) in [
        ("lazy,copycat", "at least one peer that trains"),
        ("copycat,shakespeare", "copies the first peer"),
        ("shakespeare,bogus", "unknown role"),
    ] {
        let out = dir.path().join("refused");
        let run = launch(&["incentives", s(&config), "--out", s(&out), "--roles", roles]);
        assert_eq!(run.status.code(), Some(2), "{roles}: {}", text(&run));
        assert!(text(&run).contains(why), "{roles}: {}", text(&run));
        assert!(!out.exists(), "nothing is written for a refused run");
    }
}

#[test]
fn the_cabal_benchmark_prints_both_consensus_variants() {
    let out = launch(&["bench", "cabal", "--epochs", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("subtensor:") && printed.contains("papers:"));
}

fn account(wallets: &str, name: &str, key: &str) -> String {
    let out = launch(&["wallet", "show", "--name", name, "--dir", wallets]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_owned))
        .unwrap()
}

fn verified(ledger: &Path) -> serde_json::Value {
    let out = launch(&["ledger", "verify", "--json", s(ledger)]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn extrinsics_reach_the_author_over_libp2p_and_a_late_replica_follows_its_blocks() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let wallets = s(dir.path());
    for name in ["author", "owner", "miner"] {
        assert!(
            launch(&["wallet", "new", "--name", name, "--dir", wallets])
                .status
                .success()
        );
    }
    let author = account(wallets, "author", "hotkey");
    let owner = account(wallets, "owner", "coldkey");
    let miner = account(wallets, "miner", "hotkey");
    let genesis = dir.path().join("genesis.json");
    std::fs::write(
        &genesis,
        serde_json::json!({
            "author": author, "tempo": 2, "burn": 100, "emission_per_epoch": 1000000,
            "balances": [{"account": owner, "balance": 10000}],
            "neurons": [{"hotkey": author, "coldkey": owner, "stake": 1000}],
        })
        .to_string(),
    )
    .unwrap();
    let author_ledger = dir.path().join("author.ledger");
    let author_key = dir.path().join("author/hotkeys/default");
    let (_author, address) = ledger_node(&[
        "--genesis",
        s(&genesis),
        "--ledger",
        s(&author_ledger),
        "--author-key",
        s(&author_key),
        "--block-secs",
        "0.3",
    ]);
    let submit = |key: &str, call: &[&str]| {
        let key = dir.path().join(key);
        let mut args = vec![
            "ledger",
            "submit",
            "--genesis",
            s(&genesis),
            "--node",
            &address,
        ];
        args.extend(["--key", s(&key)]);
        args.extend(call);
        launch(&args)
    };
    let out = submit("owner/coldkey", &["register", "--hotkey", &miner]);
    assert!(out.status.success(), "{}", text(&out));
    let out = submit(
        "owner/coldkey",
        &["add-stake", "--hotkey", &miner, "--amount", "50"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Only the hotkey's coldkey may stake on it: refused with the reason, exit 1.
    let out = submit(
        "miner/hotkeys/default",
        &["add-stake", "--hotkey", &miner, "--amount", "5"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not the signer"), "{}", text(&out));

    // A replica joining now catches up on the blocks it missed, then follows the gossip.
    common::eventually("the author's third block", Duration::from_secs(30), || {
        let author = verified(&author_ledger);
        match author["blocks"].as_u64() {
            Some(blocks) if blocks >= 3 => Ok(()),
            _ => Err(author.to_string()),
        }
    });
    let replica_ledger = dir.path().join("replica.ledger");
    let (_replica, _) = ledger_node(&[
        "--genesis",
        s(&genesis),
        "--ledger",
        s(&replica_ledger),
        "--bootstrap",
        &address,
    ]);
    let replica = common::eventually(
        "the replica's eighth block",
        Duration::from_secs(60),
        || {
            let replica = verified(&replica_ledger);
            match replica["blocks"].as_u64() {
                Some(blocks) if blocks >= 8 => Ok(replica),
                _ => Err(replica.to_string()),
            }
        },
    );
    assert!(replica["first_bad"].is_null(), "{replica}");
    // Both extrinsics reach the replica (given time: once, under load, the stake was not
    // there yet at its eighth block).
    let show = |ledger: &Path| {
        let out = launch(&["ledger", "show", "--json", s(ledger)]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let state = common::eventually("the stake on the replica", Duration::from_secs(30), || {
        let state = show(&replica_ledger);
        if state["neurons"][1]["stake"] == 50 {
            Ok(state)
        } else {
            Err(format!(
                "replica: {state}\nauthor: {}",
                show(&author_ledger)
            ))
        }
    });
    assert_eq!(state["neurons"][1]["hotkey"], miner);
    assert_eq!(
        state["balances"][&owner],
        10000 - 100 - 50
            + state["neurons"][0]["total_emission"].as_u64().unwrap()
            + state["neurons"][1]["total_emission"].as_u64().unwrap()
    );
    assert!(verified(&author_ledger)["first_bad"].is_null());
}

/// Waits for `launch status` from `peer` to show every member with a ledger standing.
fn status_with_emission(peer: &str, members: usize) -> serde_json::Value {
    let what = format!("{members} members with a ledger standing in {peer}'s status");
    common::eventually(&what, Duration::from_secs(60), || {
        let out = launch(&["status", "--peer", peer, "--json"]);
        let status =
            serde_json::from_slice::<serde_json::Value>(&out.stdout).map_err(|_| text(&out))?;
        let standing = status["peers"]
            .as_object()
            .map_or(0, |p| p.values().filter(|s| s["emission"].is_u64()).count());
        if standing >= members {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
}

/// Three peers of a run keeping a ledger, started: a validates and authors; b is a miner from
/// the genesis; c registers itself (its coldkey pays the burn) and is lazy: it sends a zero
/// pseudo-gradient every round. Returns them and a's address.
fn ledger_run(dir: &Path, steps: usize) -> ([common::peers::Peer; 3], String) {
    let wallets = s(dir);
    for name in ["a", "b", "c"] {
        assert!(
            launch(&["wallet", "new", "--name", name, "--dir", wallets])
                .status
                .success()
        );
    }
    let key = |name: &str, which: &str| account(wallets, name, which);
    let config = dir.join("run.toml");
    let toml = format!(
        r#"{}
[incentives]
tempo = 4

[incentives.ledger]
author = "{a}"
block_secs = 0.3
balances = [{{ account = "{c_cold}", balance = 10000000000 }}]
neurons = [
    {{ hotkey = "{a}", coldkey = "{a_cold}", stake = 1000000000000 }},
    {{ hotkey = "{b}", coldkey = "{b_cold}", stake = 0 }},
]
"#,
        common::small_config(steps, 3, 4).replace(
            "inner_steps = 4",
            "inner_steps = 4\nlr = 1.0\nmomentum = 0.0"
        ),
        a = key("a", "hotkey"),
        a_cold = key("a", "coldkey"),
        b = key("b", "hotkey"),
        b_cold = key("b", "coldkey"),
        c_cold = key("c", "coldkey"),
    );
    std::fs::write(&config, toml).unwrap();
    let wallet = |name: &'static str| ["--wallet", name, "--wallets", wallets];
    let a = common::peers::Peer::start(dir, "a", &config, &wallet("a"));
    let address = a.address();
    let mut args = vec!["--bootstrap", address.as_str()];
    args.extend(wallet("b"));
    let b = common::peers::Peer::start(dir, "b", &config, &args);
    let mut args = vec!["--bootstrap", address.as_str()];
    args.extend(wallet("c"));
    let c =
        common::peers::Peer::start_with(dir, "c", &config, &args, &[("SINTER_FAULT_LAZY", "1")]);
    ([a, b, c], address)
}

#[test]
fn a_run_goes_on_when_the_ledger_author_dies() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let ([mut a, b, c], _) = ledger_run(dir.path(), 64);
    common::peers::wait_for_round(dir.path(), "a", 4);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    for (peer, name) in [(b, "b"), (c, "c")] {
        let out = peer.out.clone();
        let (exit, summary) = peer.wait(dir.path(), name);
        assert!(exit.success(), "{name}: {summary}");
        assert_eq!(summary["rounds"], 16, "{name}: {summary}");
        // The replica kept every block the author wrote before it died, all verified.
        let verify = verified(&out.join("ledger.sntr"));
        assert!(verify["first_bad"].is_null(), "{name}: {verify}");
        assert!(verify["blocks"].as_u64().unwrap() >= 4, "{name}: {verify}");
    }
}

#[test]
fn a_run_keeps_a_ledger_where_its_validator_scores_the_members_and_epochs_pay_them() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let ([a, b, c], address) = ledger_run(dir.path(), 96);
    // `launch status` shows each member's incentive and emission while the run goes on.
    common::peers::wait_for_round(dir.path(), "a", 2);
    let status = status_with_emission(&address, 3);
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");

    let mut summaries = Vec::new();
    for (peer, name) in [(a, "a"), (b, "b"), (c, "c")] {
        let out = peer.out.clone();
        let (exit, summary) = peer.wait(dir.path(), name);
        assert!(exit.success(), "{name}: {summary}");
        let verify = verified(&out.join("ledger.sntr"));
        assert!(verify["first_bad"].is_null(), "{name}: {verify}");
        assert!(verify["blocks"].as_u64().unwrap() >= 8, "{name}: {verify}");
        summaries.push(summary);
    }
    let peer_id = |i: usize| summaries[i]["peer_id"].as_str().unwrap().to_owned();
    // Every member ends with the same parameters, and the shard owners left the lazy
    // member's zero parts out of the average (its norm is far from the others' in every
    // shard), as the validator's filter does for its score.
    let params: Vec<&str> = summaries
        .iter()
        .map(|s| s["params_sha256"].as_str().unwrap())
        .collect();
    assert!(params.windows(2).all(|w| w[0] == w[1]), "{params:?}");
    let refused_lazy: u64 = summaries
        .iter()
        .map(|s| s["rejected_by_peer"][peer_id(2)].as_u64().unwrap_or(0))
        .sum();
    assert!(refused_lazy >= 24, "{refused_lazy}");
    for honest in [0, 1] {
        let refused: u64 = summaries
            .iter()
            .map(|s| s["rejected_by_peer"][peer_id(honest)].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(refused, 0, "peer {honest}");
    }
    let incentives = &summaries[0]["incentives"];
    assert_eq!(incentives["validator"], true, "{incentives}");
    assert!(
        incentives["rounds_scored"].as_u64().unwrap() >= 6,
        "{incentives}"
    );
    assert!(incentives["epochs"].as_u64().unwrap() >= 2, "{incentives}");
    assert!(incentives["scoring_secs"].as_f64().unwrap() > 0.0);
    // The lazy peer's zero update is filtered out (its norm is far below the others').
    let lazy = &incentives["scores"][peer_id(2)];
    let rejected = lazy["rejected"].as_array().unwrap();
    assert!(rejected.len() >= 6, "{lazy}");
    assert!(
        rejected
            .iter()
            .all(|r| r[1].as_str().unwrap().contains("norm")),
        "{lazy}"
    );
    let honest = &incentives["scores"][peer_id(1)];
    assert!(honest["weight"].as_f64().unwrap() > 0.0, "{honest}");
    // Every replica pays the honest miner and not the lazy one; c registered as uid 2 and
    // serves its peer id, signed for its hotkey.
    for summary in &summaries {
        let neurons = summary["incentives"]["neurons"].as_array().unwrap();
        assert_eq!(neurons.len(), 3, "{summary}");
        assert!(neurons[1]["emission"].as_u64().unwrap() > 0, "{summary}");
        assert_eq!(neurons[2]["emission"], 0, "{summary}");
        assert!(
            neurons[2]["address"]
                .as_str()
                .unwrap()
                .contains(&format!("/p2p/{}#", peer_id(2))),
            "{summary}"
        );
    }
    assert_eq!(summaries[1]["incentives"]["validator"], false);
}
