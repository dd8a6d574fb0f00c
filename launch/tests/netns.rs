//! Peers over internet-like links: each peer in its own network namespace behind a 50 Mbit/s
//! link (`scripts/topology.sh`: veth + bridge + tc tbf), reached through a proxy that adds
//! 20 ms each way (40 ms round trip) and, for 1 % of the chunks it forwards, a 200 ms stall —
//! what a lost segment costs a TCP connection (`netem` does not exist on these kernels).
//! Needs root for `ip netns`; `SINTER_SKIP_NETNS=1` skips it where that is impossible.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::peers::Peer;

const HOSTS: usize = 4;

/// Bytes the proxies forwarded.
static FORWARDED: AtomicU64 = AtomicU64::new(0);

/// The namespaces and links of `scripts/topology.sh`, torn down when dropped.
struct Topology;

impl Topology {
    fn up(hosts: usize, mbit: u32) -> Topology {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/topology.sh");
        let out = Command::new(&script)
            .args(["up", &hosts.to_string(), &mbit.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/topology.sh up failed (it needs root for ip netns; SINTER_SKIP_NETNS=1 skips this test): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Topology
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/topology.sh");
        let _ = Command::new(script)
            .args(["down", &HOSTS.to_string()])
            .output();
    }
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
    if std::env::var("SINTER_SKIP_NETNS").is_ok_and(|v| v == "1") {
        eprintln!("SINTER_SKIP_NETNS=1: skipping the network-namespace test");
        return;
    }
    let _topology = Topology::up(HOSTS, 50);
    for i in 1..=HOSTS {
        proxy(
            &format!("10.77.0.254:{}", 5000 + i),
            format!("10.77.0.{i}:4001"),
            Duration::from_millis(20),
            0.01,
        );
    }
    let dir = tempfile::tempdir().unwrap();
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
