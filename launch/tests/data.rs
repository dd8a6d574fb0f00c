//! `launch data prepare` on files the ecosystem's tools wrote (pyarrow's parquet, JSON lines,
//! a Hugging Face tokenizer; `scripts/data-fixtures.py`), checked against what those tools
//! read from them, then trained on end to end; and its refusals.

mod common;

use std::path::{Path, PathBuf};

use common::peers::Peer;
use common::{assert_loss_fell, launch, text};
use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
        .display()
        .to_string()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `launch data prepare ARGS… --out DIR`; returns the manifest and the fingerprint.
fn prepare(args: &[&str], out: &Path) -> (Value, String) {
    let mut all = vec!["data", "prepare"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    let run = launch(&all);
    assert!(run.status.success(), "{}", text(&run));
    let printed = text(&run);
    let fingerprint = printed
        .split("sha256 = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no fingerprint in {printed}"))
        .to_owned();
    (json(&out.join("manifest.json")), fingerprint)
}

fn totals(manifest: &Value) -> (u64, u64) {
    let sum = |key: &str| {
        ["train", "validation"]
            .iter()
            .flat_map(|split| manifest[split].as_array().unwrap())
            .map(|s| s[key].as_u64().unwrap())
            .sum()
    };
    (sum("documents"), sum("tokens"))
}

/// A small run's config in `dir`, its `[data]` section beginning with `data`.
fn config(dir: &Path, data: &str, vocab: usize, workers: usize) -> PathBuf {
    config_named(dir, "run.toml", data, vocab, workers)
}

fn config_named(dir: &Path, name: &str, data: &str, vocab: usize, workers: usize) -> PathBuf {
    let config = common::small_config(12, workers, 4)
        .replace("[model]\n", &format!("[model]\nvocab_size = {vocab}\n"))
        .replace("[data]\n", &format!("[data]\n{data}\n"));
    let path = dir.join(name);
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn a_parquet_dataset_matches_pyarrow_and_tokenizers_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("milton");
    let tokenizer = fixture("bpe-512.json");
    // Both parquet flavours: snappy with dictionary pages, and zstd with plain pages.
    for (file, sub) in [("milton.parquet", "a"), ("milton-zstd-plain.parquet", "b")] {
        let (manifest, _) = prepare(
            &[
                &fixture(file),
                "--tokenizer",
                &tokenizer,
                "--validation-fraction",
                "0.1",
            ],
            &out.join(sub),
        );
        let want = &expected()["milton.parquet"];
        assert_eq!(
            totals(&manifest),
            (
                want["documents"].as_u64().unwrap(),
                want["tokens"].as_u64().unwrap()
            ),
            "{file}: documents and tokens (with one <|endoftext|> each) as Python reads them"
        );
        assert_eq!(manifest["eos"], expected()["eos"]);
        assert_eq!(manifest["dtype"], "u16");
    }
    // The same rows give the same shards, whatever the parquet encoding.
    let a = json(&out.join("a/manifest.json"));
    let b = json(&out.join("b/manifest.json"));
    assert_eq!(a["train"], b["train"]);
    // The first document's tokens, in whichever split it went to, are the Python tokenizer's.
    let want: Vec<u16> = serde_json::from_value(expected()["first_milton_ids"].clone()).unwrap();
    let all: Vec<u16> = ["train", "validation"]
        .iter()
        .flat_map(|split| a[split].as_array().unwrap().clone())
        .flat_map(|shard| {
            std::fs::read(out.join("a").join(shard["file"].as_str().unwrap())).unwrap()
        })
        .collect::<Vec<u8>>()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert!(all.windows(want.len()).any(|w| w == want.as_slice()));

    let verify = launch(&["data", "verify", out.join("a").to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));

    // Train on it: two DiLoCo workers, the dataset pinned by its fingerprint.
    let fingerprint = text(&verify)
        .split("fingerprint ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let data = format!(
        "corpus = {:?}\ntokenizer = {:?}\nsha256 = \"{fingerprint}\"",
        out.join("a").display().to_string(),
        out.join("a/tokenizer.json").display().to_string()
    );
    let run = dir.path().join("run");
    let sim = launch(&[
        "sim",
        config(dir.path(), &data, 512, 2).to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(sim.status.success(), "{}", text(&sim));
    let summary = json(&run.join("summary.json"));
    assert_loss_fell(&summary, "parquet");
    let used = &summary["data"];
    assert_eq!(used["dataset"], fingerprint.as_str());
    // 2 workers × 12 steps × 4 windows × 32 tokens.
    assert_eq!(used["tokens"], 2 * 12 * 4 * 32);
    assert_eq!(used["shards"]["train-00000.tokens"], 2 * 12 * 4 * 32);
}

#[test]
fn a_jsonl_dataset_in_several_shards_trains_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shakespeare");
    let (manifest, fingerprint) = prepare(
        &[
            &fixture("shakespeare.jsonl"),
            "--text-field",
            "content",
            "--shard-tokens",
            "20000",
            "--validation-fraction",
            "0.05",
        ],
        &out,
    );
    let want = &expected()["shakespeare.jsonl"];
    assert_eq!(
        totals(&manifest),
        (
            want["documents"].as_u64().unwrap(),
            want["tokens"].as_u64().unwrap()
        )
    );
    let shards = manifest["train"].as_array().unwrap();
    assert!(shards.len() >= 5, "{} shards", shards.len());
    assert_eq!(manifest["tokenizer"], "bytes");
    assert!(!out.join("tokenizer.json").exists());

    let data = format!(
        "corpus = {:?}\nsha256 = \"{fingerprint}\"",
        out.display().to_string()
    );
    let run = dir.path().join("run");
    let train = launch(&[
        "train",
        config(dir.path(), &data, 256, 1).to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(train.status.success(), "{}", text(&train));
    let summary = json(&run.join("summary.json"));
    assert_loss_fell(&summary, "jsonl");
    let used = summary["data"]["shards"].as_object().unwrap();
    assert!(
        used.len() >= 3,
        "a run's windows come from across the dataset: {used:?}"
    );
    assert_eq!(
        used.values().map(|t| t.as_u64().unwrap()).sum::<u64>(),
        12 * 4 * 32
    );
}

#[test]
fn bad_inputs_exit_2_naming_the_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    // `launch data prepare INPUTS… EXTRA… --out OUT` exits 2 with a message saying all of `says`.
    let refused = |inputs: &[&str], extra: &[&str], out: &str, says: &[&str]| {
        let mut args = vec!["data", "prepare"];
        args.extend_from_slice(inputs);
        args.extend_from_slice(extra);
        let out = dir.path().join(out);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let run = launch(&args);
        let message = text(&run);
        assert_eq!(run.status.code(), Some(2), "{message}");
        for said in says {
            assert!(message.contains(said), "{said:?} not in: {message}");
        }
    };
    let bad_path = bad.to_str().unwrap().to_owned();
    for (i, (lines, says)) in [
        (
            "{\"text\": \"one\"}\n\n{\"text\": oops}\n",
            &["bad.jsonl:3", "not JSON"][..],
        ),
        ("{\"body\": \"one\"}\n", &["\"text\"", "--text-field"]),
        ("{\"text\": 7}\n", &["a number, not a string"]),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&bad, lines).unwrap();
        refused(&[&bad_path], &[], &format!("jsonl-{i}"), says);
    }

    let parquet = fixture("milton.parquet");
    refused(
        &[&parquet],
        &["--text-field", "body"],
        "p1",
        &["id, text, url"],
    );
    refused(
        &[&parquet],
        &["--text-field", "id"],
        "p2",
        &["not a plain string column"],
    );
    refused(&["nothing/*.parquet"], &[], "glob", &["no such file"]);

    // An output directory in use is never overwritten.
    std::fs::create_dir(dir.path().join("used")).unwrap();
    std::fs::write(dir.path().join("used/keep.txt"), "mine").unwrap();
    let jsonl = fixture("shakespeare.jsonl");
    refused(
        &[&jsonl],
        &["--text-field", "content"],
        "used",
        &["not empty"],
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("used/keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn a_damaged_or_different_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let (manifest, fingerprint) = prepare(
        &[
            &fixture("shakespeare.jsonl"),
            "--text-field",
            "content",
            "--validation-fraction",
            "0.05",
        ],
        &out,
    );
    let data = |pin: &str| {
        format!(
            "corpus = {:?}\nsha256 = \"{pin}\"",
            out.display().to_string()
        )
    };
    let run_with = |pin: &str| {
        let config = config(dir.path(), &data(pin), 256, 1);
        let out_dir = dir.path().join("run");
        let run = launch(&[
            "train",
            config.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        (run.status.code(), text(&run))
    };

    // Another dataset's fingerprint: exit 2, both named.
    let other = "0".repeat(64);
    let (code, message) = run_with(&other);
    assert_eq!(code, Some(2), "{message}");
    assert!(
        message.contains(&other) && message.contains(&fingerprint),
        "{message}"
    );

    // One flipped token: the shard's hash names it, in `verify` and in training.
    let shard = out.join(manifest["train"][0]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let verify = launch(&["data", "verify", out.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("train-00000.tokens") && text(&verify).contains("SHA-256"));
    let (code, message) = run_with(&fingerprint);
    assert_eq!(code, Some(1), "{message}");
    assert!(message.contains("train-00000.tokens"), "{message}");

    // A manifest that names a file outside the directory is refused before anything opens.
    let mut hostile = manifest.clone();
    hostile["train"][0]["file"] = "../../etc/passwd".into();
    std::fs::write(out.join("manifest.json"), hostile.to_string()).unwrap();
    let verify = launch(&["data", "verify", out.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        text(&verify).contains("not a plain file name"),
        "{}",
        text(&verify)
    );

    // No manifest: an unfinished preparation, with what to do.
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    let (code, message) = run_with(&fingerprint);
    assert_eq!(code, Some(2), "{message}");
    assert!(message.contains("launch data prepare"), "{message}");
}

#[test]
fn a_tokenizer_trained_here_prepares_a_compressed_corpus_by_paragraph() {
    let dir = tempfile::tempdir().unwrap();
    let milton = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/milton.txt.zst")
        .display()
        .to_string();
    let tokenizer = dir.path().join("bpe/tokenizer.json");
    let trained = launch(&[
        "data",
        "tokenizer",
        &milton,
        "--txt-documents",
        "paragraph",
        "--vocab",
        "600",
        "--sample-bytes",
        "200000",
        "--out",
        tokenizer.to_str().unwrap(),
    ]);
    assert!(trained.status.success(), "{}", text(&trained));
    assert!(text(&trained).contains("600 tokens"), "{}", text(&trained));

    let (manifest, _) = prepare(
        &[
            &milton,
            "--txt-documents",
            "paragraph",
            "--tokenizer",
            tokenizer.to_str().unwrap(),
        ],
        &dir.path().join("milton"),
    );
    assert_eq!(manifest["eos"], 0, "<|endoftext|> ends every paragraph");
    let (documents, tokens) = totals(&manifest);
    assert!(documents > 1000, "{documents} paragraphs");
    // Learned merges: well under one token per byte of Milton's 1.4 MB.
    assert!(tokens < 1_000_000, "{tokens} tokens");
    let verify = launch(&[
        "data",
        "verify",
        dir.path().join("milton").to_str().unwrap(),
    ]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn peers_with_their_own_copies_of_a_pinned_dataset_train_one_run() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("copy-a"),
        dir.path().join("elsewhere/copy-b"),
    );
    let (_, fingerprint) = prepare(
        &[
            &fixture("shakespeare.jsonl"),
            "--text-field",
            "content",
            "--shard-tokens",
            "30000",
            "--validation-fraction",
            "0.05",
        ],
        &a,
    );
    std::fs::create_dir_all(&b).unwrap();
    for entry in std::fs::read_dir(&a).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, b.join(path.file_name().unwrap())).unwrap();
    }
    // The configs differ only in where the data lies: the pin makes them one run.
    let pinned = |copy: &Path| {
        format!(
            "corpus = {:?}\nsha256 = \"{fingerprint}\"",
            copy.display().to_string()
        )
    };
    let config_a = config_named(dir.path(), "a.toml", &pinned(&a), 256, 2);
    let config_b = config_named(dir.path(), "b.toml", &pinned(&b), 256, 2);
    let first = Peer::start(dir.path(), "p1", &config_a, &[]);
    let second = Peer::start(
        dir.path(),
        "p2",
        &config_b,
        &["--bootstrap", &first.address()],
    );
    let mut hashes = Vec::new();
    let mut tokens = 0;
    for (peer, name) in [(first, "p1"), (second, "p2")] {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["workers"], 2, "{name}: {summary}");
        let used = &summary["data"];
        assert_eq!(used["dataset"], fingerprint.as_str(), "{name}");
        tokens += used["tokens"].as_u64().unwrap();
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
    }
    assert_eq!(hashes[0], hashes[1]);
    // Each trained its own 12 steps of 4 windows of 32 tokens.
    assert_eq!(tokens, 2 * 12 * 4 * 32);
}
