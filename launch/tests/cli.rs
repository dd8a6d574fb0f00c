//! The `launch` binary as a user runs it: arguments, files written, exit codes.

mod common;

use common::{launch, text};

use std::path::Path;

fn small_config(dir: &Path) -> String {
    let path = dir.join("small.toml");
    std::fs::write(&path, common::small_config(8, 2, 4)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn help_explains_every_command() {
    let out = launch(&["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    for command in ["sim", "train", "eval", "generate"] {
        assert!(help.contains(command), "{help}");
    }
    let sim = text(&launch(&["sim", "--help"]));
    assert!(
        sim.contains("--inner-steps") && sim.contains("--quant") && sim.contains("--out"),
        "{sim}"
    );
}

#[test]
fn a_config_typo_exits_2_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[outer]\nworkerz = 4\n").unwrap();
    let out = launch(&["sim", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains("typo.toml") && message.contains("workerz") && message.contains("workers"),
        "{message}"
    );
}

#[test]
fn an_override_is_validated_like_the_config_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let out = launch(&["sim", &config, "--inner-lr", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains("command-line overrides") && message.contains("`inner.lr` is 0;"),
        "{message}"
    );
}

#[test]
fn a_run_with_a_ledger_needs_a_wallet_and_valid_accounts_exit_2_before_joining() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.toml");
    // Alice's well-known dev account.
    let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    let ledger = format!(
        "{}\n[incentives.ledger]\nauthor = \"{alice}\"\nneurons = [{{ hotkey = \"{alice}\", coldkey = \"{alice}\", stake = 1 }}]\n",
        common::small_config(8, 2, 4)
    );
    let run = |config: &str, args: &[&str]| {
        std::fs::write(&path, config).unwrap();
        let mut all = vec![
            "run",
            path.to_str().unwrap(),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ];
        all.extend(args);
        let out = launch(&all);
        let message = text(&out);
        assert_eq!(out.status.code(), Some(2), "{message}");
        assert!(!message.contains("listening on"), "{message}");
        message
    };
    assert!(run(&ledger, &[]).contains("pass --wallet NAME"));
    let wallets = dir.path().to_str().unwrap();
    let missing = run(&ledger, &["--wallet", "nobody", "--wallets", wallets]);
    assert!(
        missing.contains("no hotkey at") && missing.contains("launch wallet new"),
        "{missing}"
    );
    let typo = run(&ledger.replace("author =", "auther ="), &[]);
    assert!(
        typo.contains("auther") && typo.contains("ledger.toml"),
        "{typo}"
    );
    let bad = run(&ledger.replace("author = \"5G", "author = \"6G"), &[]);
    assert!(bad.contains("not an SS58 address"), "{bad}");
}

#[test]
fn a_missing_config_exits_2() {
    let out = launch(&["sim", "/nonexistent/config.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/config.toml"));
}

#[test]
fn sim_writes_metrics_summary_curve_and_weights_that_eval_and_generate_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let out_dir = dir.path().join("run");
    let out = launch(&["sim", &config, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "initial + 2 rounds: {metrics}");
    for key in ["round", "step", "tokens", "val_loss", "bytes_sent"] {
        assert!(
            lines.iter().all(|l| l.get(key).is_some()),
            "metrics lack {key}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).unwrap()).unwrap();
    for key in [
        "initial_val_loss",
        "final_val_loss",
        "tokens",
        "workers",
        "inner_steps",
        "mode",
        "quant",
        "bytes_sent_per_worker",
        "ddp_equivalent_bytes_per_worker",
        "wall_secs",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}");
    }
    assert_eq!(summary["workers"], 2);
    assert_eq!(summary["mode"], "diloco");
    let svg = std::fs::read_to_string(out_dir.join("loss.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "loss.svg is not a line chart"
    );

    let picture = out_dir.join("both.svg");
    let plot = launch(&[
        "plot",
        out_dir.to_str().unwrap(),
        out_dir.to_str().unwrap(),
        "--out",
        picture.to_str().unwrap(),
    ]);
    assert!(plot.status.success(), "{}", text(&plot));
    let both = std::fs::read_to_string(&picture).unwrap();
    assert_eq!(
        both.matches("<polyline").count(),
        svg.matches("<polyline").count() + 2,
        "one more curve and legend mark than the run's own picture"
    );
    let missing = launch(&["plot", dir.path().join("nothing").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("metrics.jsonl"),
        "{}",
        text(&missing)
    );

    let weights = out_dir.join("model.safetensors");
    let eval = launch(&["eval", weights.to_str().unwrap()]);
    assert!(eval.status.success(), "{}", text(&eval));
    let final_loss = summary["final_val_loss"].as_f64().unwrap();
    let printed: f64 = text(&eval).split("validation loss ").nth(1).unwrap()[..6]
        .trim()
        .parse()
        .unwrap();
    assert!(
        (printed - final_loss).abs() < 1e-3,
        "eval says {printed}, the run said {final_loss}"
    );

    let greedy = |seed: &str| {
        let out = launch(&[
            "generate",
            weights.to_str().unwrap(),
            "--prompt",
            "ROMEO:",
            "--max-tokens",
            "20",
            "--temperature",
            "0",
            "--seed",
            seed,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = greedy("1");
    assert!(first.starts_with("ROMEO:"));
    assert_eq!(
        first,
        greedy("2"),
        "temperature 0 must not depend on the seed"
    );
}

#[test]
fn train_is_one_worker_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let out_dir = dir.path().join("run");
    let out = launch(&[
        "train",
        &config,
        "--steps",
        "4",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["workers"], 1);
    assert_eq!(summary["bytes_sent_per_worker"], 0);
}

#[test]
fn a_damaged_weights_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let out = launch(&["eval", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("model.safetensors"), "{}", text(&out));
}

#[test]
fn ledger_epoch_prints_what_the_chain_would_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("epoch.json");
    // The chain README's worked example, at the stake ratio the runtime held (see
    // mechanism/src/yuma.rs for why 1000 : 500 lands one unit off in two vectors).
    std::fs::write(
        &file,
        r#"{"stake": [1000, 499.98, 0],
            "weights": [[0, 65535, 32767], [65535, 0, 65535], [0, 0, 0]],
            "validator_permit": [true, true, true]}"#,
    )
    .unwrap();
    let out = launch(&["ledger", "epoch", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["consensus"], serde_json::json!([0, 43690, 21844]));
    assert_eq!(v["incentive"], serde_json::json!([0, 37449, 28085]));
    assert_eq!(v["dividends"], serde_json::json!([56173, 9361, 0]));
    assert_eq!(v["validator_trust"], serde_json::json!([65534, 21844, 0]));
    assert_eq!(
        v["bonds"],
        serde_json::json!([[0, 65535, 43690], [0, 0, 21844], [0, 0, 0]])
    );
    assert_eq!(v["emission"].as_array().unwrap().len(), 3);

    std::fs::write(
        &file,
        r#"{"stake": [1], "weights": [[1, 2]], "validator_permit": [true]}"#,
    )
    .unwrap();
    let out = launch(&["ledger", "epoch", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("`weights` row 0"), "{}", text(&out));
    std::fs::write(
        &file,
        r#"{"stake": [1], "weigths": [[0]], "validator_permit": [true]}"#,
    )
    .unwrap();
    let out = launch(&["ledger", "epoch", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("weigths"), "{}", text(&out));
}

/// `train --from` fine-tunes trained weights (a file or a checkpoint) on another corpus: it
/// starts where they are (lower on Milton than a fresh model), and weights of another model
/// are refused by name.
#[test]
fn train_from_weights_fine_tunes_them_on_another_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let shakespeare = dir.path().join("shakespeare");
    let out = launch(&["sim", &config, "--out", shakespeare.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let initial_loss = |name: &str, from: Option<&Path>| {
        let out_dir = dir.path().join(name);
        let mut args = vec![
            "train",
            config.as_str(),
            "--corpus",
            "milton",
            "--steps",
            "4",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        if let Some(from) = from {
            args.extend(["--from", from.to_str().unwrap()]);
        }
        let out = launch(&args);
        assert!(out.status.success(), "{}", text(&out));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).unwrap()).unwrap();
        summary["initial_val_loss"].as_f64().unwrap()
    };
    let fresh = initial_loss("fresh", None);
    let weights = shakespeare.join("model.safetensors");
    let tuned = initial_loss("tuned", Some(&weights));
    let from_checkpoint = initial_loss("tuned-ckpt", Some(&shakespeare.join("checkpoints")));
    assert!(
        tuned < fresh - 0.1,
        "from the weights {tuned}, fresh {fresh}"
    );
    assert!(
        (tuned - from_checkpoint).abs() < 1e-6,
        "{tuned} vs {from_checkpoint}"
    );

    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        common::small_config(8, 2, 4).replace("d_model = 32", "d_model = 16"),
    )
    .unwrap();
    let refused = launch(&[
        "train",
        other.to_str().unwrap(),
        "--from",
        weights.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("not this config's [model]"),
        "{}",
        text(&refused)
    );
}

#[test]
fn bench_train_prints_speed_and_memory_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let zero = launch(&["bench", "train", &config, "--steps", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero));
    let out = launch(&["bench", "train", &config, "--steps", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["framework"], "sinter");
    assert_eq!(report["device"], "rayon");
    assert_eq!(report["steps"], 3);
    assert_eq!(
        report["tokens"],
        3 * 4 * 32,
        "3 steps of 4 windows of 32 tokens"
    );
    assert!(report["tokens_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["peak_host_rss_mib"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
