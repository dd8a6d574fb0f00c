//! The group's refusals of untrusted requests, without sockets.

use std::sync::Mutex;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::Notify;

use super::formation::Formed;
use super::messages::{Header, Reply, Stage, encode_request};
use super::{GroupSettings, Shared, State};

fn peer() -> PeerId {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
}

fn shared() -> Shared {
    Shared {
        me: peer(),
        settings: GroupSettings {
            run: "run-a".into(),
            config: serde_json::json!({}),
            heartbeat: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(5),
            round_ceiling: Duration::from_secs(60),
        },
        state: Mutex::new(State::default()),
        changed: Notify::new(),
    }
}

fn shard(run: &str, round: u64) -> Vec<u8> {
    let header = Header::Shard {
        run: run.into(),
        round,
        shard: 0,
        stage: Stage::Contribution,
        contributors: Vec::new(),
    };
    encode_request(&header, b"frame")
}

fn refused(reply: Reply) -> String {
    match reply {
        Reply::Refused(reason) => reason,
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn untrusted_requests_are_refused_with_a_reason_and_counted() {
    let group = shared();
    let (member, outsider) = (peer(), peer());
    group.lock().groups.insert(
        3,
        Formed {
            round: 3,
            members: vec![group.me, member],
            states: vec![None, None],
        },
    );
    group.lock().round = 3;
    assert!(matches!(
        group.on_request(member, &shard("run-a", 3)),
        Reply::Ok
    ));
    // Same shard again: a replay.
    assert!(refused(group.on_request(member, &shard("run-a", 3))).contains("already received"));
    assert!(refused(group.on_request(outsider, &shard("run-a", 3))).contains("not a member"));
    assert!(refused(group.on_request(member, &shard("run-b", 3))).contains("not this run"));
    assert!(refused(group.on_request(member, &shard("run-a", 1))).contains("is over"));
    assert!(refused(group.on_request(member, b"\x01\x00")).contains("shorter"));
    let counts = group.lock().rejected.clone();
    assert_eq!(counts[&member], 4);
    assert_eq!(counts[&outsider], 1);
    // Only the accepted contribution was stored, and only accepted requests mark liveness.
    assert_eq!(group.lock().shards[&(3, Stage::Contribution, 0)].len(), 1);
    assert!(!group.lock().last_seen.contains_key(&outsider));
}

#[test]
fn the_largest_round_numbers_from_the_wire_are_refused_or_kept_without_a_panic() {
    let group = shared();
    let member = peer();
    group.lock().round = 5;
    let ready = |round: u64, state: Option<String>| {
        encode_request(
            &Header::Ready {
                run: "run-a".into(),
                round,
                state,
                addrs: Vec::new(),
            },
            &[],
        )
    };
    for round in [u64::MAX, u64::MAX - 1] {
        assert!(matches!(
            group.on_request(member, &ready(round, Some("h".into()))),
            Reply::Ok
        ));
        assert!(matches!(
            group.on_request(member, &ready(round, None)),
            Reply::Ok
        ));
        assert!(matches!(
            group.on_request(member, &shard("run-a", round)),
            Reply::Ok
        ));
    }
    // Old rounds are still refused.
    assert!(refused(group.on_request(member, &ready(1, None))).contains("is over"));
    assert!(refused(group.on_request(member, &shard("run-a", 1))).contains("is over"));
}
