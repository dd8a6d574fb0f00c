//! Real peers: `launch run` processes on loopback training one model together.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::peers::{Peer, RunDir, wait_for_round};

fn val_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["val_loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn three_peers_end_bit_identical_and_match_the_simulation() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(12, 3, 4)).unwrap();
    // The first peer listens on TCP and QUIC; one joiner comes over QUIC naming the peer id,
    // the other over TCP with only the plain address.
    let quic = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"];
    let first = Peer::start(dir.path(), "p1", &config, &quic);
    let addrs = first.addresses(2);
    let find = |transport: &str| addrs.iter().find(|a| a.contains(transport)).unwrap();
    let plain = find("/tcp/").split("/p2p/").next().unwrap().to_owned();
    let second = Peer::start(
        dir.path(),
        "p2",
        &config,
        &["--bootstrap", find("/quic-v1")],
    );
    let third = Peer::start(dir.path(), "p3", &config, &["--bootstrap", &plain]);
    let mut hashes = Vec::new();
    let mut outs = Vec::new();
    for (peer, name) in [(first, "p1"), (second, "p2"), (third, "p3")] {
        let out = peer.out.clone();
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["rounds"], 3, "{name}: {summary}");
        assert_eq!(summary["workers"], 3, "{name}: {summary}");
        assert_eq!(summary["peers_seen"].as_array().unwrap().len(), 3);
        assert!(summary["bytes_sent_per_worker"].as_u64().unwrap() > 0);
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
        outs.push(out);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // The simulation of the same three workers reaches the same losses.
    let sim = dir.path().join("sim");
    let status = Command::new(env!("CARGO_BIN_EXE_launch"))
        .arg("sim")
        .arg(&config)
        .arg("--out")
        .arg(&sim)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let expected = val_losses(&sim);
    for out in &outs {
        let got = val_losses(out);
        assert_eq!(got.len(), expected.len());
        for ((s1, a), (s2, b)) in got.iter().zip(&expected) {
            assert_eq!(s1, s2);
            assert!((a - b).abs() <= 1e-6, "step {s1}: peer {a}, sim {b}");
        }
    }
}

/// `configs/frontier.toml` (its model, sparse codec, outer step and inner schedule; 8 steps,
/// 3 peers) over real peers: each shard's owner relays the members' top-k sets, and every
/// peer ends with the simulation's parameters, bit for bit.
#[test]
fn the_frontier_setting_over_real_peers_ends_bit_identical_to_the_simulation() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/frontier.toml");
    let shorter = ["--steps", "8", "--workers", "3"];
    let first = Peer::start(dir.path(), "p1", &config, &shorter);
    let addr = first.address();
    let others = ["p2", "p3"].map(|name| {
        let args = [&shorter[..], &["--bootstrap", &addr]].concat();
        (Peer::start(dir.path(), name, &config, &args), name)
    });
    let mut summaries = Vec::new();
    for (peer, name) in std::iter::once((first, "p1")).chain(others) {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["rounds"], 4, "{name}: {summary}");
        assert_eq!(summary["workers"], 3, "{name}: {summary}");
        assert_eq!(summary["quant"], "sparse", "{name}: {summary}");
        summaries.push(summary);
    }
    let sim = dir.path().join("sim");
    let out = common::launch(
        &[
            &[
                "sim",
                config.to_str().unwrap(),
                "--out",
                sim.to_str().unwrap(),
            ][..],
            &shorter,
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sim.join("summary.json")).unwrap()).unwrap();
    for summary in &summaries {
        assert_eq!(summary["params_sha256"], expected["params_sha256"]);
        assert_eq!(summary["final_val_loss"], expected["final_val_loss"]);
    }
}

/// A peer stopped early by `--max-rounds` evaluates its last round, so its summary tells
/// the loss it ended at rather than the initial one.
#[test]
fn a_peer_stopped_by_max_rounds_reports_the_loss_it_reached() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    let text = common::small_config(12, 1, 2).replace("every_steps = 2", "every_steps = 100");
    std::fs::write(&config, text).unwrap();
    let peer = Peer::start(dir.path(), "p1", &config, &["--max-rounds", "2"]);
    let out = peer.out.clone();
    let (status, summary) = peer.wait(dir.path(), "p1");
    assert!(status.success(), "{summary}");
    assert_eq!(summary["rounds"], 2, "{summary}");
    let losses = val_losses(&out);
    assert_eq!(losses.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 4]);
    assert!(
        summary["final_val_loss"].as_f64() < summary["initial_val_loss"].as_f64(),
        "{summary}"
    );
}

#[test]
fn a_peer_with_another_config_is_refused_with_the_differing_field() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(12, 3, 4)).unwrap();
    let mut first = Peer::start(dir.path(), "p1", &config, &["--workers", "2"]);
    let addr = first.address();
    let out = Command::new(env!("CARGO_BIN_EXE_launch"))
        .arg("run")
        .arg(&config)
        .args([
            "--workers",
            "2",
            "--outer-lr",
            "0.5",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--bootstrap", &addr, "--key"])
        .arg(dir.path().join("other.key"))
        .output()
        .unwrap();
    first.child.kill().unwrap();
    let _ = first.child.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("outer.lr: yours 0.5, the run's 0.7"),
        "{stderr}"
    );
}

#[test]
fn survivors_finish_the_round_when_a_peer_dies_in_the_all_reduce() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(12, 3, 4)).unwrap();
    let first = Peer::start(dir.path(), "p1", &config, &["--round-ceiling", "60"]);
    let addr = first.address();
    let args = ["--bootstrap", addr.as_str(), "--round-ceiling", "60"];
    let second = Peer::start(dir.path(), "p2", &config, &args);
    // The third peer aborts in round 1, after sending its contributions but before the
    // shard it owns reaches anyone.
    let doomed = Peer::start_with(
        dir.path(),
        "p3",
        &config,
        &args,
        &[("SINTER_FAULT_ABORT_IN_ROUND", "1")],
    );
    let (status, _) = doomed.wait(dir.path(), "p3");
    assert!(!status.success());
    let mut hashes = Vec::new();
    for (peer, name) in [(first, "p1"), (second, "p2")] {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["rounds"], 3, "{name}: {summary}");
        assert_eq!(summary["workers"], 2, "{name}: {summary}");
        assert!(summary["final_val_loss"].as_f64().unwrap().is_finite());
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
    }
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn a_second_peer_with_the_same_key_is_told_to_give_it_its_own_before_it_joins() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = long_config(dir.path(), 200);
    let first = Peer::start(dir.path(), "p1", &config, &[]);
    let addr = first.address();
    let key = dir.path().join("p1").join("peer.key");
    let second = common::launch(&[
        "run",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &addr,
    ]);
    let text = common::text(&second);
    assert_eq!(second.status.code(), Some(2), "{text}");
    assert!(text.contains("give this one its own --key"), "{text}");
    assert!(!text.contains("local peer id"), "{text}");
}

/// A config of `rounds` rounds of 4 steps among three workers, evaluated only at the end.
fn long_config(dir: &Path, rounds: usize) -> PathBuf {
    let config = dir.join("small.toml");
    let text = common::small_config(4 * rounds, 3, 4)
        .replace("every_steps = 4", &format!("every_steps = {}", 4 * rounds));
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn a_peer_joins_mid_run_while_its_donor_dies_and_contributes_from_the_next_round() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = long_config(dir.path(), 80);
    // p1 dies as soon as someone fetches a chunk of its state from it.
    let first = Peer::start_with(
        dir.path(),
        "p1",
        &config,
        &["--round-ceiling", "60"],
        &[("SINTER_FAULT_ABORT_SERVING_STATE", "1")],
    );
    let addr = first.address();
    let args = ["--bootstrap", addr.as_str(), "--round-ceiling", "60"];
    let second = Peer::start(dir.path(), "p2", &config, &args);
    let second_addr = second.address();
    let third = Peer::start(dir.path(), "p3", &config, &args);
    wait_for_round(dir.path(), "p2", 2);
    let joiner = Peer::start(
        dir.path(),
        "p4",
        &config,
        &["--bootstrap", &second_addr, "--round-ceiling", "60"],
    );
    let (status, _) = first.wait(dir.path(), "p1");
    let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
    assert!(
        !status.success(),
        "the donor was meant to die:\n{}",
        log("p4")
    );
    let mut hashes = Vec::new();
    for (peer, name) in [(second, "p2"), (third, "p3"), (joiner, "p4")] {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["last_round"], 80, "{name}: {summary}");
        assert_eq!(
            summary["peers_seen"].as_array().unwrap().len(),
            4,
            "{name}: {summary}"
        );
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
        if name == "p4" {
            let joined_at = summary["joined_at_round"]
                .as_u64()
                .expect("p4 joined mid-run");
            assert!(joined_at >= 3, "{summary}");
            // It trained every round from the one it joined.
            assert_eq!(
                summary["rounds"].as_u64().unwrap(),
                80 - joined_at,
                "{summary}"
            );
            assert_eq!(summary["state_fetches"], serde_json::json!([joined_at]));
        } else {
            assert_eq!(summary["joined_at_round"], serde_json::Value::Null);
        }
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // The state came whole from the others: the dying donor delivered no chunk.
    let log = std::fs::read_to_string(dir.path().join("p4.log")).unwrap();
    let fetched = log
        .lines()
        .find(|l| l.contains("fetched the group's state"))
        .unwrap_or_else(|| panic!("no fetch in p4's log:\n{log}"));
    let donor = addr.rsplit('/').next().unwrap();
    assert!(!fetched.contains(donor), "{fetched}");
}

/// A newcomer that arrives while the run trains its last round is taken into the closing
/// group and leaves with the final state (before the closing group it waited for a round that
/// never came, until its round ceiling).
#[test]
fn a_peer_arriving_in_the_last_round_leaves_with_the_final_state() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(24, 2, 4)).unwrap();
    // The last of the six rounds takes 8 s longer, for the newcomer to arrive in.
    let slow = [("SINTER_FAULT_SLOW_ROUND", "5:8")];
    let ceiling = ["--round-ceiling", "60"];
    let first = Peer::start_with(dir.path(), "p1", &config, &ceiling, &slow);
    let addr = first.address();
    let args = ["--bootstrap", addr.as_str(), "--round-ceiling", "60"];
    let second = Peer::start_with(dir.path(), "p2", &config, &args, &slow);
    wait_for_round(dir.path(), "p1", 5);
    let late = Peer::start(dir.path(), "p3", &config, &args);
    let mut hashes = Vec::new();
    for (peer, name) in [(first, "p1"), (second, "p2"), (late, "p3")] {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["last_round"], 6, "{name}: {summary}");
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
        if name == "p3" {
            assert_eq!(summary["joined_at_round"], 6, "{summary}");
            assert_eq!(summary["rounds"], 0, "{summary}");
            assert_eq!(summary["state_fetches"], serde_json::json!([6]));
        }
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

#[test]
fn a_member_whose_state_drifts_refetches_the_majority_state() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(16, 3, 4)).unwrap();
    let first = Peer::start(dir.path(), "p1", &config, &[]);
    let addr = first.address();
    let second = Peer::start(dir.path(), "p2", &config, &["--bootstrap", &addr]);
    let third = Peer::start_with(
        dir.path(),
        "p3",
        &config,
        &["--bootstrap", &addr],
        &[("SINTER_FAULT_PERTURB_AFTER_ROUND", "1")],
    );
    let mut hashes = Vec::new();
    for (peer, name) in [(first, "p1"), (second, "p2"), (third, "p3")] {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        let fetched = if name == "p3" { vec![2] } else { vec![] };
        assert_eq!(
            summary["state_fetches"],
            serde_json::json!(fetched),
            "{name}"
        );
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

#[test]
fn status_shows_the_group_and_leave_or_ctrl_c_exit_cleanly() {
    let _serial = common::peers::serial();
    let dir = RunDir::new();
    let config = long_config(dir.path(), 200);
    let first = Peer::start(dir.path(), "p1", &config, &[]);
    let addr = first.address();
    let second = Peer::start(dir.path(), "p2", &config, &["--bootstrap", &addr]);
    let third = Peer::start(dir.path(), "p3", &config, &["--bootstrap", &addr]);
    wait_for_round(dir.path(), "p1", 2);

    // Others' progress arrives with their heartbeats (every half second): ask until it has.
    let status = common::eventually(
        "three peers past round 1 in p1's status",
        Duration::from_secs(20),
        || {
            let out = Command::new(env!("CARGO_BIN_EXE_launch"))
                .args(["status", "--json", "--peer", &addr])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let peers = status["peers"].as_object().unwrap();
            if peers.len() == 3 && peers.values().all(|p| p["round"].as_u64() >= Some(1)) {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    );
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    let peers = status["peers"].as_object().unwrap();
    assert_eq!(peers.len(), 3, "{status}");
    assert!(
        peers
            .values()
            .all(|p| p["round"].as_u64() >= Some(1) && p["bytes_sent"].as_u64() > Some(0)),
        "{status}"
    );
    let table = Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(["status", "--peer", &addr])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("3 members"));

    // `launch leave` with p3's key: it finishes its round, tells the others, exits 0.
    let out = Command::new(env!("CARGO_BIN_EXE_launch"))
        .arg("leave")
        .arg("--key")
        .arg(third.out.join("peer.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("leaving after the current round"));
    let (status, summary) = third.wait(dir.path(), "p3");
    assert!(status.success(), "{summary}");
    assert!(summary["last_round"].as_u64().unwrap() < 200, "{summary}");

    // Ctrl-C (SIGINT) on p2: the same.
    let pid = second.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, summary) = second.wait(dir.path(), "p2");
    assert!(status.success(), "{summary}");
    assert!(summary["last_round"].as_u64().unwrap() < 200, "{summary}");

    // p1 trains on alone to the end.
    let (status, summary) = first.wait(dir.path(), "p1");
    assert!(status.success(), "{summary}");
    assert_eq!(summary["last_round"], 200, "{summary}");
    assert_eq!(summary["workers"], 1, "{summary}");
    let log = std::fs::read_to_string(dir.path().join("p1.log")).unwrap();
    assert_eq!(log.matches("peer left the run").count(), 2, "{log}");
    // A leave with no peer behind the key says so.
    let out = Command::new(env!("CARGO_BIN_EXE_launch"))
        .arg("leave")
        .arg("--key")
        .arg(dir.path().join("nobody.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no peer is running with key"));
}

/// The wire form of a group request, written by hand as a rogue would.
fn raw_shard(run: &str, round: u64, shard: u32, frame: &[u8]) -> Vec<u8> {
    let header = serde_json::json!({"Shard": {
        "run": run, "round": round, "group": "a replay", "shard": shard,
        "stage": "Contribution", "contributors": []
    }});
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(frame);
    out
}

/// A frame with the layout of `slots` and every value `value`.
fn filled_frame(slots: &[sinter_trainer::params::ParamSlot], value: f32) -> Vec<u8> {
    use sinter_comms::{TensorPayload, TensorSet, WireTensor};
    let set = TensorSet {
        tensors: slots
            .iter()
            .map(|s| WireTensor {
                name: s.name.clone(),
                shape: s.shape.clone(),
                payload: TensorPayload::F32(vec![value; s.len]),
            })
            .collect(),
    };
    sinter_comms::encode(&set, 1).unwrap()
}

#[test]
fn a_rogue_member_is_refused_with_reasons_and_the_run_goes_on() {
    let _serial = common::peers::serial();
    use sinter_comms::group::{Arrival, Group, GroupSettings, Reduction};
    use sinter_comms::net::{self, Keypair, NetConfig};

    let dir = RunDir::new();
    let config_path = dir.path().join("small.toml");
    std::fs::write(&config_path, common::small_config(16, 3, 4)).unwrap();
    let config = sinter_trainer::RunConfig::load(&config_path).unwrap();
    let run = config.hash();
    let first = Peer::start(dir.path(), "p1", &config_path, &["--round-ceiling", "60"]);
    let addr = first.address();
    let second = Peer::start(
        dir.path(),
        "p2",
        &config_path,
        &["--bootstrap", &addr, "--round-ceiling", "60"],
    );

    // The rogue: a real libp2p peer speaking the group protocol, whose payloads are poison.
    let model = sinter_trainer::params::skeleton::<sinter_trainer::CpuBackend>(
        &config.model,
        &Default::default(),
    );
    let (layout, _) = sinter_trainer::params::flatten(&model);
    let shards = 3 * sinter_trainer::peer::SHARDS_PER_MEMBER;
    let bounds = sinter_trainer::pseudo_gradient::shard_bounds(&layout, shards);
    let slots = |k: usize| &layout.slots[bounds[k].clone()];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rogue_id = runtime.block_on(async {
        let mut net_config = NetConfig::new(
            Keypair::generate_ed25519(),
            format!("sinter/run/{}", &run[..16]),
        );
        net_config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        net_config.max_request_bytes = 300 << 20; // so that it can send an oversized frame
        let (client, events, event_loop) = net::start(net_config).await.unwrap();
        tokio::spawn(event_loop.run());
        let group = Group::start(
            client.clone(),
            events,
            GroupSettings {
                run: run.clone(),
                config: serde_json::to_value(&config).unwrap(),
                heartbeat: Duration::from_millis(500),
                peer_timeout: Duration::from_secs(5),
                round_ceiling: Duration::from_secs(60),
                limits: Default::default(),
            },
        );
        let p1 = client.dial(addr.parse().unwrap()).await.unwrap();
        group.hello(p1).await.unwrap();
        assert_eq!(group.wait_for_peers(3, Duration::from_secs(60)).await, 3);
        // As an owner, it announces a NaN shard as the reduction of its own shard.
        let poison_reduce = |k: usize, arrivals: &[Arrival]| Reduction {
            frame: filled_frame(slots(k), f32::NAN),
            contributors: arrivals.iter().map(|a| a.from).collect(),
            rejected: Vec::new(),
        };
        let mut sent_round0 = Vec::new();
        for round in 0..2u64 {
            let formed = group.form(round, Some("rogue".into())).await.unwrap();
            assert_eq!(formed.members.len(), 3);
            // Every owner gets every kind of poison.
            let parts: Vec<Vec<u8>> = (0..shards)
                .map(|k| match (round as usize + k / 3) % 3 {
                    0 => filled_frame(slots(k), f32::NAN),
                    1 => b"not a frame at all".to_vec(),
                    _ => filled_frame(slots(k), 1e3), // an absurd norm
                })
                .collect();
            if round == 0 {
                sent_round0 = parts.clone();
            }
            group
                .all_reduce(round, &formed.members, parts, &poison_reduce)
                .await
                .unwrap();
        }
        // Replays of round 0 and an oversized frame, straight to p1.
        for (k, part) in sent_round0.iter().enumerate() {
            let answer = client
                .request(p1, raw_shard(&run, 0, k as u32, part))
                .await
                .unwrap();
            assert_eq!(answer[0], 1, "refused");
            assert!(String::from_utf8_lossy(&answer[1..]).contains("is over"));
        }
        // Over p1's 256 MiB limit: refused (libp2p reports it as a closed connection).
        assert!(client.request(p1, vec![0u8; 257 << 20]).await.is_err());
        // That closed the connection: wait until p1 is heard again, so that it hears the leave.
        group.wait_for_peers(3, Duration::from_secs(5)).await;
        let id = group.me();
        group.leave().await;
        id
    });
    let mut hashes = Vec::new();
    let mut logs = String::new();
    for (peer, name) in [(first, "p1"), (second, "p2")] {
        let (status, summary) = peer.wait(dir.path(), name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["last_round"], 4, "{name}: {summary}");
        common::assert_loss_fell(&summary, name);
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
        let refused = summary["rejected_by_peer"][rogue_id.to_string()].as_u64();
        assert!(
            refused >= Some(if name == "p1" { 5 } else { 1 }),
            "{name}: {summary}"
        );
        logs += &std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
    }
    assert_eq!(hashes[0], hashes[1]);
    for reason in [
        "non-finite value",
        "times the median",
        "reduced shard unusable",
        "is over (replay?)",
        "not a sinter tensor frame",
    ] {
        assert!(logs.contains(reason), "no {reason:?} in the logs:\n{logs}");
    }
}
