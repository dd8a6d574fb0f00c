//! The hostile-peer harness (fast subset): three honest peers run all-reduce rounds over real
//! libp2p connections on loopback while a fourth speaks sinter's protocol with anything it
//! likes: forged group announcements, `u64::MAX` rounds, unicode and non-UTF-8 strings,
//! oversized names, requests for roots and chunks that do not exist, and floods of requests
//! and gossip. The honest peers finish every round with bit-identical results and the group
//! they should have; the offender is counted, then banned by each of them, and refused.
//! And a donor whose answers trickle in a byte a second (its link through a proxy that
//! drips) does not hold up a fetch from it and an honest donor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use sinter_comms::group::fuzzing::Handler;
use sinter_comms::group::{Arrival, BlobSource, Group, GroupLimits, GroupSettings, Reduction};
use sinter_comms::net::{self, Client, Multiaddr, NetConfig, PeerLimits};
use sinter_comms::transfer::Manifest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUN: &str = "hostile-test-run-000";
const TOPIC: &str = "sinter/run/hostile-test";
const ROUNDS: u64 = 4;
/// Values per member's payload.
const VALUES: usize = 64;

fn limits() -> GroupLimits {
    GroupLimits {
        requests: PeerLimits {
            requests_per_sec: 200,
            max_in_flight: 8,
        },
        ban_after: 20,
        ..GroupLimits::default()
    }
}

async fn network(
    bootstrap: Option<&Multiaddr>,
) -> (
    Client,
    tokio::sync::mpsc::Receiver<net::NetEvent>,
    Multiaddr,
) {
    let mut config = NetConfig::new(net::Keypair::generate_ed25519(), TOPIC.into());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.limits = limits().requests;
    let (client, events, event_loop) = net::start(config).await.unwrap();
    tokio::spawn(event_loop.run());
    if let Some(addr) = bootstrap {
        client.dial(addr.clone()).await.unwrap();
    }
    let addr = client.listen_addrs().await.unwrap().remove(0);
    (client, events, addr)
}

async fn honest(bootstrap: Option<&Multiaddr>) -> (Group, Multiaddr) {
    let (group, addr, _) = honest_with_client(bootstrap).await;
    (group, addr)
}

/// An honest peer, with its network client (to dial by hand).
async fn honest_with_client(bootstrap: Option<&Multiaddr>) -> (Group, Multiaddr, Client) {
    let (client, events, addr) = network(bootstrap).await;
    let group = Group::start(
        client.clone(),
        events,
        GroupSettings {
            run: RUN.into(),
            config: serde_json::json!({}),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_secs(5),
            round_ceiling: Duration::from_secs(30),
            limits: limits(),
        },
    );
    (group, addr, client)
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn to_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The sum of the members' parts, in member order (the order the all-reduce gives them).
fn sum(_: usize, arrivals: &[Arrival]) -> Reduction {
    let mut total = vec![0f32; VALUES];
    for a in arrivals {
        for (t, v) in total.iter_mut().zip(to_values(&a.frame)) {
            *t += v;
        }
    }
    Reduction {
        frame: to_bytes(&total),
        contributors: arrivals.iter().map(|a| a.from).collect(),
        rejected: Vec::new(),
    }
}

/// Fails saying what `group` saw.
fn diagnose<T>(group: &Group, e: sinter_comms::group::GroupError) -> T {
    panic!(
        "{}: {e}; refused {:?}, banned {:?}, live {:?}",
        group.me(),
        group.rejected_counts(),
        group.banned_peers(),
        group.live_peers()
    )
}

/// One honest peer's rounds: each forms its group and all-reduces a payload that depends on
/// the peer and the round. Returns, per round, the members and the reduced values.
async fn rounds(group: Group, seed: f32) -> Vec<(Vec<PeerId>, Vec<f32>)> {
    let mut held = "genesis".to_string();
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        let formed = group
            .form(round, Some(held.clone()))
            .await
            .unwrap_or_else(|e| diagnose(&group, e));
        let n = formed.members.len();
        let payload: Vec<f32> = (0..n * VALUES)
            .map(|i| seed * (i as f32 + 1.0) / (round as f32 + 1.0))
            .collect();
        let parts = payload.chunks(VALUES).map(to_bytes).collect();
        let reduced = group
            .all_reduce(round, &formed.members, parts, &sum)
            .await
            .unwrap_or_else(|e| diagnose(&group, e));
        let values: Vec<f32> = reduced
            .shards
            .iter()
            .flat_map(|s| to_values(&s.frame))
            .collect();
        held = format!(
            "{:x}",
            values.iter().map(|v| v.to_bits() as u64).sum::<u64>()
        );
        out.push((formed.members, values));
    }
    out
}

/// This process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// A request whose header is any JSON a hostile peer likes.
fn json(value: serde_json::Value) -> Vec<u8> {
    Handler::request(&serde_json::to_vec(&value).unwrap(), &[])
}

/// Everything the hostile peer sends each honest peer, given the honest peers' ids.
fn attacks(honest: &[PeerId], me: PeerId, round: u64) -> Vec<Vec<u8>> {
    let mut forged_members: Vec<String> =
        vec![me.to_string(), honest[0].to_string(), honest[1].to_string()];
    forged_members.sort();
    let long = "../".repeat(20_000);
    vec![
        // A group that leaves the third honest peer out, announced for the next round.
        json(serde_json::json!({"Group": {"run": RUN, "round": round + 1,
            "members": forged_members, "states": [Some("x"), Some("x"), Some("x")],
            "addrs": [[], [], []]}})),
        // The largest round numbers, as a member's shard and as a newcomer.
        json(
            serde_json::json!({"Shard": {"run": RUN, "round": u64::MAX, "shard": u32::MAX,
            "group": long.clone(), "stage": "Contribution", "contributors": [long.clone()]}}),
        ),
        json(
            serde_json::json!({"Ready": {"run": RUN, "round": u64::MAX, "state": null,
            "addrs": [long.clone()]}}),
        ),
        // Unicode and non-UTF-8 strings.
        json(serde_json::json!({"StateManifest": {"run": "运行🦀\u{202e}", "round": round}})),
        Handler::request(b"{\"Leave\":{\"run\":\"\xff\xfe\"}}", &[]),
        // Roots and chunks that do not exist, with odd and oversized names.
        json(serde_json::json!({"BlobChunk": {"run": RUN, "root": long, "index": u32::MAX}})),
        json(serde_json::json!({"StateChunk": {"run": RUN, "round": round, "index": u32::MAX}})),
        json(serde_json::json!({"ContributionChunk": {"run": RUN, "round": u64::MAX, "index": 0}})),
        // Headers that lie about their length, or are not JSON at all.
        vec![0xff, 0xff, 0xff, 0x7f, b'{'],
        Handler::request(b"\x00\x01garbage", &[0u8; 1000]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_is_refused_counted_and_banned_while_the_honest_finish_identically() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let (a, a_addr) = honest(None).await;
    let (b, b_addr) = honest(Some(&a_addr)).await;
    let (c, c_addr) = honest(Some(&a_addr)).await;
    for g in [&a, &b, &c] {
        assert_eq!(g.wait_for_peers(3, Duration::from_secs(20)).await, 3);
    }
    let honest_ids: Vec<PeerId> = {
        let mut ids = vec![a.me(), b.me(), c.me()];
        ids.sort();
        ids
    };
    let (hostile, _, _) = network(Some(&a_addr)).await;
    for addr in [b_addr, c_addr] {
        hostile.dial(addr).await.unwrap();
    }

    let peak_before = peak_rss_kib();
    let runs = [(a.clone(), 1.0), (b.clone(), 2.0), (c.clone(), 3.0)]
        .map(|(g, seed)| tokio::spawn(rounds(g, seed)));

    // Attacks for the whole run: each kind to each honest peer, then floods of requests
    // and gossip.
    let attack = {
        let hostile = hostile.clone();
        let honest_ids = honest_ids.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                for peer in &honest_ids {
                    for request in attacks(&honest_ids, hostile.peer_id(), round) {
                        let _ = hostile.request(*peer, request).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let status = json(serde_json::json!("Status"));
            let flood = honest_ids.iter().flat_map(|peer| {
                let status = status.clone();
                (0..600).map(move |_| (*peer, status.clone()))
            });
            futures::future::join_all(flood.map(|(peer, r)| hostile.request(peer, r))).await;
            for i in 0..2000u32 {
                let _ = hostile
                    .publish(format!("{{\"not a heartbeat\": {i}}}").into_bytes())
                    .await;
            }
        })
    };

    let results: Vec<Vec<(Vec<PeerId>, Vec<f32>)>> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    attack.await.unwrap();
    // Memory stayed bounded: nothing was allocated on the attacker's word (its frames claim
    // up to 2 GiB, its strings 60 kB each, its floods thousands of requests).
    let grown_mib = (peak_rss_kib() - peak_before) / 1024;
    assert!(
        grown_mib < 256,
        "the honest peers' process grew by {grown_mib} MiB under attack"
    );

    // Every round: the three honest peers, no one else, and the same bits everywhere.
    for (round, per_peer) in (0..ROUNDS as usize).map(|r| (r, results.iter().map(move |p| &p[r]))) {
        let per_peer: Vec<_> = per_peer.collect();
        for (members, values) in &per_peer {
            assert_eq!(members, &honest_ids, "round {round}");
            let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            let first: Vec<u32> = per_peer[0].1.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, first, "round {round}");
        }
        // And the right sum: member i's values times 1 + 2 + 3.
        let expected = 6.0 / (round as f32 + 1.0);
        assert!((per_peer[0].1[0] - expected).abs() < 1e-5, "round {round}");
    }

    // Each honest peer counted the hostile one and banned it; none banned another.
    let offender = hostile.peer_id();
    for g in [&a, &b, &c] {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !g.banned_peers().contains(&offender) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not ban the offender: {:?}",
                g.me(),
                g.rejected_counts()
            )
        });
        assert_eq!(g.banned_peers().len(), 1, "{:?}", g.banned_peers());
        for other in &honest_ids {
            assert!(g.rejected_counts().get(other).copied().unwrap_or(0) < 20);
        }
        assert!(!g.live_peers().contains(&offender));
    }
    // Banned: disconnected, and its requests go nowhere.
    for peer in &honest_ids {
        let answer = hostile
            .request(*peer, json(serde_json::json!("Status")))
            .await;
        assert!(answer.is_err(), "a banned peer got an answer: {answer:?}");
    }
}

/// One blob, served whole.
struct Served(Vec<u8>, Manifest);

impl BlobSource for Served {
    fn manifest(&self, root: Option<&str>) -> Option<Manifest> {
        root.is_none_or(|r| r == self.1.root)
            .then(|| self.1.clone())
    }

    fn chunk(&self, root: &str, index: usize) -> Option<Vec<u8>> {
        (root == self.1.root).then(|| self.0.get(self.1.range(index)).map(<[u8]>::to_vec))?
    }
}

/// A TCP proxy to `target` on loopback: what the target sends goes on at once until `drip` is
/// set, then a byte a second. Returns the address to dial.
async fn dripping_proxy(target: Multiaddr, drip: Arc<AtomicBool>) -> Multiaddr {
    let port = target
        .iter()
        .find_map(|p| match p {
            net::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut in_read, &mut out_write).await });
            let drip = drip.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = out_read.read(&mut buf).await {
                    for piece in buf[..n].chunks(if drip.load(Ordering::Relaxed) { 1 } else { n }) {
                        if in_write.write_all(piece).await.is_err() {
                            return;
                        }
                        if drip.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
        }
    });
    format!("/ip4/127.0.0.1/tcp/{}", addr.port())
        .parse()
        .unwrap()
}

/// A donor whose link drips its answers (a byte a second: the connection stays busy, no
/// timeout of its own fires) and an honest donor serve the same checkpoint: the fetch takes
/// the honest donor's manifest and chunks, and ends in seconds, not when the dripping
/// answers would (minutes) or the request timeout (ten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_whose_answers_trickle_does_not_hold_up_a_fetch() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let manifest = Manifest::of(&blob, 64 * 1024);
    let (fetcher, fetcher_addr, client) = honest_with_client(None).await;
    let (donor, _) = honest(Some(&fetcher_addr)).await;
    let (dripper, dripper_addr) = honest(None).await;
    for server in [&donor, &dripper] {
        server.serve_blobs(Arc::new(Served(blob.clone(), manifest.clone())));
    }
    let drip = Arc::new(AtomicBool::new(false));
    let proxied = dripping_proxy(dripper_addr, drip.clone()).await;
    assert_eq!(client.dial(proxied).await.unwrap(), dripper.me());
    assert_eq!(fetcher.wait_for_peers(3, Duration::from_secs(20)).await, 3);
    drip.store(true, Ordering::Relaxed);

    let sink = std::sync::Mutex::new(vec![0u8; blob.len()]);
    let started = Instant::now();
    let fetched = tokio::time::timeout(
        Duration::from_secs(60),
        fetcher.fetch_blob(
            &[dripper.me(), donor.me()],
            Some(manifest.root.clone()),
            blob.len() as u64,
            &sink,
        ),
    )
    .await
    .expect("the fetch waited on the dripping donor")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(sink.into_inner().unwrap(), blob);
    assert_eq!(fetched.0.root, manifest.root);
    assert_eq!(fetched.1.get(&donor.me()), Some(&manifest.chunks.len()));
    // The honest donor answers at once; the dripper's stream negotiation alone would time
    // out only after libp2p's 10 s.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}
