//! Peers over internet-like links: each peer in its own network namespace behind a 50 Mbit/s
//! link (`scripts/topology.sh`: veth + bridge + tc tbf), reached through a proxy that adds
//! 20 ms each way (40 ms round trip) and, for 1 % of the chunks it forwards, a 200 ms stall —
//! what a lost segment costs a TCP connection (`netem` does not exist on these kernels).
//! And peers behind NATs (`scripts/nat-topology.sh`: nftables masquerade in router
//! namespaces) that join with only `--bootstrap`, punch holes or train through relays.
//! Needs root for `ip netns`; `SINTER_SKIP_NETNS=1` skips them where that is impossible.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::peers::{Peer, RunDir};

const HOSTS: usize = 4;

/// Bytes the proxies forwarded.
static FORWARDED: AtomicU64 = AtomicU64::new(0);

/// Network namespaces made by one of the topology scripts, torn down when dropped.
struct Topology {
    script: &'static str,
    counts: Vec<String>,
}

impl Topology {
    /// `scripts/SCRIPT up COUNTS… MBIT` (with `env`), which must succeed.
    fn up(script: &'static str, counts: &[usize], mbit: u32, env: &[(&str, &str)]) -> Topology {
        let topology = Topology {
            script,
            counts: counts.iter().map(|c| c.to_string()).collect(),
        };
        let out = Command::new(topology.path())
            .arg("up")
            .args(&topology.counts)
            .arg(mbit.to_string())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/{script} up failed (it needs root for ip netns, and nftables from scripts/setup.sh; SINTER_SKIP_NETNS=1 skips these tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        topology
    }

    fn path(&self) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts")
            .join(self.script)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(self.path())
            .arg("down")
            .args(&self.counts)
            .output();
    }
}

/// Whether the network-namespace tests are to be skipped (`SINTER_SKIP_NETNS=1`).
fn skipped() -> bool {
    let skip = std::env::var("SINTER_SKIP_NETNS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SINTER_SKIP_NETNS=1: skipping a network-namespace test");
    }
    skip
}

/// A small deterministic generator for the proxy's losses.
struct Lcg(u64);

impl Lcg {
    fn chance(&mut self, p: f64) -> bool {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Forwards `from` to `to` in order, each chunk `delay` late, some chunks stalled `stall` more.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, loss: f64, seed: u64) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut rng = Lcg(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut stalled_until = Instant::now();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut due = Instant::now() + delay;
            if rng.chance(loss) {
                due += Duration::from_millis(200);
            }
            // In order, like TCP: a stalled chunk holds back the ones behind it.
            stalled_until = stalled_until.max(due);
            if tx.send((stalled_until, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, data) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&data).is_err() {
                break;
            }
            FORWARDED.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Listens on `listen` and relays every connection to `target` through [`pump`] both ways.
fn proxy(listen: &str, target: String, delay: Duration, loss: f64) {
    let listener = TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let seed = i as u64 * 2 + 1;
            pump(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                delay,
                loss,
                seed,
            );
            pump(server, client, delay, loss, seed + 1);
        }
    });
}

#[test]
fn four_peers_in_namespaces_over_shaped_delayed_lossy_links_end_bit_identical() {
    if skipped() {
        return;
    }
    let _serial = common::peers::serial();
    let _topology = Topology::up("topology.sh", &[HOSTS], 50, &[]);
    for i in 1..=HOSTS {
        proxy(
            &format!("10.77.0.254:{}", 5000 + i),
            format!("10.77.0.{i}:4001"),
            Duration::from_millis(20),
            0.01,
        );
    }
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(24, HOSTS, 4)).unwrap();
    let peers: Vec<(Peer, String)> = (1..=HOSTS)
        .map(|i| {
            let ns = format!("sinter-p{i}");
            let listen = format!("/ip4/10.77.0.{i}/tcp/4001");
            let external = format!("/ip4/10.77.0.254/tcp/{}", 5000 + i);
            let mut args = vec!["--listen", &listen, "--external", &external];
            let bootstrap = "/ip4/10.77.0.254/tcp/5001";
            if i > 1 {
                args.extend(["--bootstrap", bootstrap]);
            }
            let name = format!("p{i}");
            let peer = Peer::start_in(
                &["ip", "netns", "exec", &ns],
                dir.path(),
                &name,
                &config,
                &args,
                &[],
            );
            if i == 1 {
                // The first peer must listen before the others dial it.
                let _ = peer.address();
            }
            (peer, name)
        })
        .collect();
    let mut hashes = Vec::new();
    let mut sent = 0;
    for (peer, name) in peers {
        let (status, summary) = peer.wait(dir.path(), &name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["rounds"], 6, "{name}: {summary}");
        assert_eq!(summary["workers"], HOSTS, "{name}: {summary}");
        common::assert_loss_fell(&summary, &name);
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
        sent += summary["bytes_sent_per_worker"].as_u64().unwrap();
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // The tensors took the delayed, lossy path (the peers told each other only the proxies).
    let forwarded = FORWARDED.load(Ordering::Relaxed);
    assert!(
        forwarded >= sent,
        "proxies forwarded {forwarded} bytes of {sent} sent"
    );
}

/// A peer whose link is cut for longer than the peer timeout: the other three go on without
/// it (requests to it are given up once it is silent, not at their timeout), while it, a
/// minority of its group that sees no crash (its connections stall, nobody closes them),
/// waits for them instead of training alone; once the link is back it joins the run where it
/// is, fetching the state, and all four end bit-identical. The stalled connections are dropped
/// after `STALL_LIMIT` and redialled, so the peers hear each other as soon as the link is back
/// instead of at TCP's next retransmission (up to two minutes away after a long cut).
#[test]
fn a_peer_cut_off_waits_for_the_majority_rejoins_it_and_all_end_bit_identical() {
    if skipped() {
        return;
    }
    let _serial = common::peers::serial();
    let _topology = Topology::up("topology.sh", &[HOSTS], 50, &[]);
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    // 400 rounds of 40 steps: the run goes on well after the link is back. (With 150, an idle
    // CI machine once let the three finish the run, about 0.1 s a round, before p4 was back;
    // seeing them all leave, p4 went on alone, as a peer whose group has left does.)
    std::fs::write(&config, common::small_config(16000, HOSTS, 40)).unwrap();
    let peers: Vec<(Peer, String)> = (1..=HOSTS)
        .map(|i| {
            let listen = format!("/ip4/10.77.0.{i}/tcp/4001");
            let mut args = vec!["--listen", &listen];
            if i > 1 {
                args.extend(["--bootstrap", "/ip4/10.77.0.1/tcp/4001"]);
            }
            let name = format!("p{i}");
            let ns = format!("sinter-p{i}");
            let peer = Peer::start_in(&netns(&ns), dir.path(), &name, &config, &args, &[]);
            if i == 1 {
                let _ = peer.address();
            }
            (peer, name)
        })
        .collect();
    common::peers::wait_for_round(dir.path(), "p4", 2);
    let link = |state: &str| {
        let out = Command::new("ip")
            .args(["link", "set", "sinter-v4", state])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    link("down");
    // The link stays down until the others have gone on without p4, which they do a peer
    // timeout (5 s) after its last heartbeat, whatever they were sending it then; p4 waits
    // for them for six peer timeouts, so they must have gone on well within that.
    let log = dir.path().join("p1.log");
    common::eventually("p1 going on without p4", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("members=3") {
            Ok(())
        } else {
            Err(text)
        }
    });
    link("up");
    let mut hashes = Vec::new();
    for (peer, name) in peers {
        let (status, summary) = peer.wait(dir.path(), &name);
        assert!(status.success(), "{name}: {summary}");
        if name == "p4" {
            let log = std::fs::read_to_string(dir.path().join("p4.log")).unwrap();
            assert!(!log.contains("members=1"), "p4 trained alone: {log}");
            assert!(log.contains("fetched the group's state"), "{log}");
        } else {
            assert_eq!(summary["rounds"], 400, "{name}: {summary}");
        }
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

/// `ip netns exec NS`, to prefix a command with.
fn netns(ns: &str) -> [&str; 4] {
    ["ip", "netns", "exec", ns]
}

/// Three peers behind home NATs and one reachable peer train together, each NATed peer given
/// only `--bootstrap` (the third also a `launch relay`): two behind port-preserving NATs
/// punch a hole to each other, the third, behind a symmetric NAT where hole punching cannot
/// work, trains through relays; all end bit-identical, and `launch status` of a NATed peer,
/// asked through a relay, says how it reaches each.
#[test]
fn peers_behind_nats_join_with_only_bootstrap_punch_holes_or_relay_and_end_bit_identical() {
    if skipped() {
        return;
    }
    let _serial = common::peers::serial();
    let _topology = Topology::up("nat-topology.sh", &[2, 3], 50, &[("SYMMETRIC", "3")]);
    let dir = RunDir::new();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(48, 4, 4)).unwrap();

    let relay_key = dir.path().join("relay.key");
    let relay = Peer::spawn(
        &netns("sinter-pub1"),
        dir.path(),
        "relay",
        &[
            "relay",
            "--listen",
            "/ip4/10.78.0.1/tcp/4001",
            "--key",
            relay_key.to_str().unwrap(),
        ],
        &[],
    );
    let relay_addr = relay.printed("relay address ");
    let public = Peer::start_in(
        &netns("sinter-pub2"),
        dir.path(),
        "public",
        &config,
        &["--listen", "/ip4/10.78.0.2/tcp/4001"],
        &[],
    );
    let public_id = public.printed("peer id ");
    let bootstrap = "/ip4/10.78.0.2/tcp/4001";
    let natted: Vec<(Peer, String, String)> = (1..=3)
        .map(|i| {
            let name = format!("nat{i}");
            let mut args = vec![
                "--listen",
                "/ip4/0.0.0.0/tcp/4001",
                "--bootstrap",
                bootstrap,
            ];
            if i == 3 {
                args.extend(["--relay", &relay_addr]);
            }
            let ns = format!("sinter-lan{i}");
            let peer = Peer::start_in(&netns(&ns), dir.path(), &name, &config, &args, &[]);
            let id = peer.printed("peer id ");
            (peer, name, id)
        })
        .collect();

    // Asked through the public peer's relay, the first NATed peer says how it reaches the
    // others once it has trained a round with them.
    common::peers::wait_for_round(dir.path(), "nat1", 1);
    let through_relay = format!(
        "{bootstrap}/p2p/{public_id}/p2p-circuit/p2p/{}",
        natted[0].2
    );
    let out = common::launch(&["status", "--peer", &through_relay, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let route = |peer: &str| status["routes"][peer].as_str().unwrap_or("none").to_owned();
    assert_eq!(status["reachability"], "private (behind a NAT)", "{status}");
    assert_eq!(route(&public_id), "direct", "{status}");
    // Both routers drop unsolicited packets, so a direct route between nat1 and nat2 exists
    // only through holes punched in both. Usually libp2p's hole punch makes the connection
    // ("direct (hole-punched)"); CI once saw the mappings of a punch carry a plain dial first.
    assert!(
        ["direct (hole-punched)", "direct"].contains(&route(&natted[1].2).as_str()),
        "{status}"
    );
    // Usually relayed; CI once saw "direct". Likely cause (not confirmed): once nat1 has
    // sent to nat3's router while trying to punch a hole, a connection nat3 opens to nat1's
    // mapping gets through nat1's router. Either way the route is real; the relay's
    // reservation is checked below.
    assert!(
        ["relayed", "direct"].contains(&route(&natted[2].2).as_str()),
        "{status}"
    );

    let mut hashes = Vec::new();
    let everyone = std::iter::once((public, "public".to_owned()))
        .chain(natted.into_iter().map(|(peer, name, _)| (peer, name)));
    for (peer, name) in everyone {
        let (status, summary) = peer.wait(dir.path(), &name);
        assert!(status.success(), "{name}: {summary}");
        assert_eq!(summary["rounds"], 12, "{name}: {summary}");
        assert_eq!(summary["workers"], 4, "{name}: {summary}");
        hashes.push(summary["params_sha256"].as_str().unwrap().to_owned());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // The symmetric-NAT peer reserved a slot on the relay it was given.
    let relay_log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(
        relay_log.contains("relay: slot reserved"),
        "the relay reserved no slot:\n{relay_log}"
    );
}
