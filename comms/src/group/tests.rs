//! The group's refusals of untrusted requests, without sockets.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::formation::{Formed, group_key};
use super::messages::{Header, Reply, Stage, encode_request};
use super::{GroupSettings, Shared};

use crate::testing::peer;

fn shared() -> Shared {
    shared_as(peer())
}

fn shared_as(me: PeerId) -> Shared {
    Shared::detached(
        me,
        GroupSettings {
            run: "run-a".into(),
            config: serde_json::json!({}),
            heartbeat: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(5),
            round_ceiling: Duration::from_secs(60),
            limits: Default::default(),
        },
    )
}

/// A contribution to shard 0 of `round`, from a member holding the group named `group`.
fn shard(run: &str, round: u64, group: &str) -> Vec<u8> {
    shard_with(run, round, group, 0, b"frame")
}

fn shard_with(run: &str, round: u64, group: &str, shard: u32, frame: &[u8]) -> Vec<u8> {
    let header = Header::Shard {
        run: run.into(),
        round,
        group: group.into(),
        shard,
        stage: Stage::Contribution,
        contributors: Vec::new(),
    };
    encode_request(&header, frame)
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
    let members = vec![group.me, member];
    let key = group_key(3, &members);
    group.lock().groups.insert(
        3,
        Formed {
            round: 3,
            members,
            states: vec![None, None],
        },
    );
    group.lock().round = 3;
    assert!(matches!(
        group.on_request(member, &shard("run-a", 3, &key)),
        Reply::Ok
    ));
    // Same shard again: a replay.
    assert!(
        refused(group.on_request(member, &shard("run-a", 3, &key))).contains("already received")
    );
    assert!(refused(group.on_request(outsider, &shard("run-a", 3, &key))).contains("not a member"));
    assert!(refused(group.on_request(member, &shard("run-b", 3, &key))).contains("not this run"));
    assert!(refused(group.on_request(member, &shard("run-a", 1, &key))).contains("is over"));
    assert!(refused(group.on_request(member, b"\x01\x00")).contains("shorter"));
    let counts = group.lock().rejected.clone();
    assert_eq!(counts[&member], 4);
    assert_eq!(counts[&outsider], 1);
    // Only the accepted contribution was stored, and only accepted requests mark liveness.
    assert_eq!(group.lock().shards[&(3, Stage::Contribution, 0)].len(), 1);
    assert!(!group.lock().last_seen.contains_key(&outsider));
}

/// A `Ready` for `round` holding `state` (none: a newcomer).
fn ready(round: u64, state: Option<String>) -> Vec<u8> {
    encode_request(
        &Header::Ready {
            run: "run-a".into(),
            round,
            state,
            addrs: Vec::new(),
        },
        &[],
    )
}

#[test]
fn the_largest_round_numbers_from_the_wire_are_refused_or_kept_without_a_panic() {
    let group = shared();
    let member = peer();
    group.lock().round = 5;
    for round in [u64::MAX, u64::MAX - 1] {
        assert!(matches!(
            group.on_request(member, &ready(round, Some("h".into()))),
            Reply::Ok
        ));
        assert!(matches!(
            group.on_request(member, &ready(round, None)),
            Reply::Ok
        ));
        assert!(refused(group.on_request(member, &shard("run-a", round, "g"))).contains("ahead"));
    }
    // Old rounds are still refused.
    assert!(refused(group.on_request(member, &ready(1, Some("h".into())))).contains("is over"));
    assert!(refused(group.on_request(member, &shard("run-a", 1, "g"))).contains("is over"));
}

/// A newcomer whose `Ready` names a round the run has left behind (it moved on while the
/// `Ready` was on the way) is taken into the next round that forms, not refused: refused, it
/// asked for the same round again and again until the run ended without it.
#[test]
fn a_newcomer_asking_for_a_round_the_run_has_left_behind_joins_the_next_one() {
    let group = shared();
    let (newcomer, member) = (peer(), peer());
    group.lock().round = 60;
    assert!(matches!(
        group.on_request(newcomer, &ready(42, None)),
        Reply::Ok
    ));
    assert_eq!(group.lock().joiners.get(&newcomer), Some(&60));
    // A member of an old round is still told it is over (it joins the run where it is).
    assert!(refused(group.on_request(member, &ready(42, Some("h".into())))).contains("is over"));
    assert!(!group.lock().joiners.contains_key(&member));
}

fn announcement(round: u64, members: &[PeerId], states: Vec<Option<String>>) -> Vec<u8> {
    let header = Header::Group {
        run: "run-a".into(),
        round,
        members: members.iter().map(|m| m.to_string()).collect(),
        states,
        addrs: vec![Vec::new(); members.len()],
    };
    encode_request(&header, &[])
}

/// Four peers sorted by id, and a group (as the highest of them) whose round 3 had them all,
/// every one live.
fn after_round_three() -> (Shared, Vec<PeerId>) {
    after_round_three_as(3)
}

/// As [`after_round_three`], seen by the `me`-th lowest of the four.
fn after_round_three_as(me: usize) -> (Shared, Vec<PeerId>) {
    let mut peers: Vec<PeerId> = (0..4).map(|_| peer()).collect();
    peers.sort();
    let group = shared_as(peers[me]);
    {
        let mut state = group.lock();
        state.round = 4;
        state.groups.insert(
            3,
            Formed {
                round: 3,
                members: peers.clone(),
                states: vec![Some("s".into()); 4],
            },
        );
        for (_, p) in peers.iter().enumerate().filter(|(i, _)| *i != me) {
            state.last_seen.insert(*p, Instant::now());
        }
    }
    (group, peers)
}

#[test]
fn only_the_rounds_leader_announces_its_group() {
    let (group, peers) = after_round_three();
    let held = || vec![Some("s".to_string()); 4];
    // The second-lowest member leaves the leader out: refused while the leader is live.
    let forged = announcement(4, &peers[1..], vec![Some("s".into()); 3]);
    assert!(refused(group.on_request(peers[1], &forged)).contains("announced by its leader"));
    // An outsider naming itself and the members.
    let outsider = peer();
    let mut with_outsider = peers.clone();
    with_outsider.push(outsider);
    with_outsider.sort();
    let forged = announcement(4, &with_outsider, vec![Some("s".into()); 5]);
    assert!(refused(group.on_request(outsider, &forged)).contains("announced by its leader"));
    assert!(!group.lock().groups.contains_key(&4));
    assert_eq!(group.lock().rejected[&peers[1]], 1);
    assert_eq!(group.lock().rejected[&outsider], 1);
    // The leader's own announcement is taken.
    assert!(matches!(
        group.on_request(peers[0], &announcement(4, &peers, held())),
        Reply::Ok
    ));
    assert_eq!(group.lock().groups[&4].members, peers);
}

#[test]
fn after_the_leader_goes_the_next_member_announces() {
    let (group, peers) = after_round_three();
    let next = announcement(4, &peers[1..], vec![Some("s".into()); 3]);
    assert!(refused(group.on_request(peers[1], &next)).contains("announced by its leader"));
    // This peer notices the leader has gone; the next one's announcement (sent again when this
    // peer repeats its Ready) now counts.
    group.lock().gone.insert(peers[0]);
    assert!(matches!(group.on_request(peers[1], &next), Reply::Ok));
    assert_eq!(group.lock().groups[&4].members, peers[1..]);
}

#[test]
fn without_the_last_group_the_lowest_member_holding_a_state_leads() {
    let mut peers: Vec<PeerId> = (0..3).map(|_| peer()).collect();
    peers.sort();
    let joiner = shared_as(peers[2]);
    // A newcomer that asked for round 5 takes the first group that has it, from round 5 on.
    joiner.lock().round = 5;
    joiner
        .lock()
        .ready
        .entry(5)
        .or_default()
        .insert(peers[2], None);
    let states = vec![Some("s".into()), Some("s".into()), None];
    // Peers[1] holds a state too, but peers[0] leads.
    assert!(
        refused(joiner.on_request(peers[1], &announcement(7, &peers, states.clone())))
            .contains("lowest member holding a state")
    );
    assert!(matches!(
        joiner.on_request(peers[0], &announcement(7, &peers, states)),
        Reply::Ok
    ));
}

#[test]
fn shards_ahead_of_a_known_group_come_only_from_its_members_and_are_capped() {
    let (mut group, peers) = after_round_three();
    group.settings.limits.max_transfer_bytes = 100;
    let outsider = peer();
    // Round 4's group is not known yet: a member of round 3 may send, an outsider may not.
    assert!(matches!(
        group.on_request(peers[1], &shard_with("run-a", 4, "g", 0, &[0u8; 60])),
        Reply::Ok
    ));
    assert!(
        refused(group.on_request(outsider, &shard_with("run-a", 4, "g", 0, &[0u8; 10])))
            .contains("not a member of round 3")
    );
    // Nothing past the next round, and no more than one transfer's worth ahead of the group.
    assert!(refused(group.on_request(peers[1], &shard("run-a", 6, "g"))).contains("ahead"));
    let reason = refused(group.on_request(peers[1], &shard_with("run-a", 4, "g", 1, &[0u8; 60])));
    assert!(reason.contains("over 100 bytes"), "{reason}");
}

#[test]
fn a_member_takes_no_group_ahead_of_the_last_one_it_knows() {
    let mut peers: Vec<PeerId> = (0..3).map(|_| peer()).collect();
    peers.sort();
    let member = shared_as(peers[2]);
    member
        .lock()
        .ready
        .entry(0)
        .or_default()
        .insert(peers[2], Some("s".into()));
    // In round 0 and waiting for its group: a group for round 1, whoever announces it, is not
    // to be believed before round 0's.
    let states = vec![Some("s".into()); 3];
    let reason = refused(member.on_request(peers[0], &announcement(1, &peers, states.clone())));
    assert!(
        reason.contains("before this peer knows round 0's"),
        "{reason}"
    );
    assert!(matches!(
        member.on_request(peers[0], &announcement(0, &peers, states)),
        Reply::Ok
    ));
}

/// Four live peers sorted by id, seen by `peers[me]`, whose newest group (round 7) is `mine`;
/// every other peer's heartbeat names the group `says[i]` (by its lowest member).
fn split(me: usize, mine: &[usize], says: [usize; 4]) -> (Shared, Vec<PeerId>) {
    let mut peers: Vec<PeerId> = (0..4).map(|_| peer()).collect();
    peers.sort();
    let group = shared_as(peers[me]);
    {
        let mut state = group.lock();
        let members: Vec<PeerId> = mine.iter().map(|i| peers[*i]).collect();
        let states = vec![Some("s".into()); members.len()];
        state.groups.insert(
            7,
            Formed {
                round: 7,
                members,
                states,
            },
        );
        for (i, p) in peers.iter().enumerate().filter(|(i, _)| *i != me) {
            state.last_seen.insert(*p, Instant::now());
            state.peer_groups.insert(*p, peers[says[i]]);
        }
    }
    (group, peers)
}

#[test]
fn a_peer_split_off_alone_yields_to_the_rest_but_the_rest_does_not_yield_to_it() {
    // Peer 2 was cut off and led a group of itself; the other three formed theirs.
    let (alone, peers) = split(2, &[2], [0, 0, 2, 0]);
    assert_eq!(alone.larger_group(&alone.lock()), Some(peers[0]));
    let (rest, _) = split(0, &[0, 1, 3], [0, 0, 2, 0]);
    assert_eq!(rest.larger_group(&rest.lock()), None);
    // The same with the lowest peer cut off: size counts before the key.
    let (lowest, peers) = split(0, &[0], [0, 1, 1, 1]);
    assert_eq!(lowest.larger_group(&lowest.lock()), Some(peers[1]));
    let (rest, _) = split(1, &[1, 2, 3], [0, 1, 1, 1]);
    assert_eq!(rest.larger_group(&rest.lock()), None);
}

/// The lowest peer, cut off after a round of all four, still has that round's group (it is its
/// key) while the other three went on as a group of their own: to it they are a larger group,
/// though they were all in its last one (else it waits to lead them until the run ends).
#[test]
fn the_rest_of_a_group_that_went_on_without_this_peer_is_a_larger_group_to_it() {
    let (cut_off, peers) = split(0, &[0, 1, 2, 3], [0, 1, 1, 1]);
    assert_eq!(cut_off.larger_group(&cut_off.lock()), Some(peers[1]));
    // Its own last group's members still naming it are its group.
    let (member, _) = split(0, &[0, 1, 2, 3], [0, 0, 0, 1]);
    assert_eq!(member.larger_group(&member.lock()), None);
}

#[test]
fn of_two_groups_as_large_the_one_with_the_higher_key_yields() {
    let (high, peers) = split(2, &[2, 3], [0, 0, 2, 2]);
    assert_eq!(high.larger_group(&high.lock()), Some(peers[0]));
    let (low, _) = split(0, &[0, 1], [0, 0, 2, 2]);
    assert_eq!(low.larger_group(&low.lock()), None);
}

#[test]
fn only_live_peers_outside_the_group_count_for_a_live_group_outside_it() {
    // Members of this peer's own group still naming the old one (a failover under way) and
    // peers naming a group whose key is gone or inside this group do not count.
    let (member, peers) = split(1, &[1, 2], [0, 1, 0, 1]);
    {
        let mut state = member.lock();
        state.gone.insert(peers[0]);
    }
    assert_eq!(member.larger_group(&member.lock()), None);
    // A liar alone outside, claiming a group of itself: one peer is no larger than two.
    let (member, _) = split(1, &[1, 2], [0, 1, 1, 3]);
    member.lock().gone.insert(peers[0]);
    assert_eq!(member.larger_group(&member.lock()), None);
}

#[test]
fn a_peer_yields_only_once_a_larger_group_stays_in_sight_for_a_peer_timeout() {
    let (alone, _) = split(2, &[2], [0, 0, 2, 0]);
    let mut state = alone.lock();
    alone.watch_for_split(&mut state);
    assert!(!alone.outranked(&state), "at first sight");
    state.outranked_since = Some(Instant::now() - Duration::from_secs(6));
    alone.watch_for_split(&mut state);
    assert!(alone.outranked(&state));
    // Once it is gone from sight, the clock starts again.
    state.peer_groups.clear();
    alone.watch_for_split(&mut state);
    assert!(!alone.outranked(&state));
    assert!(state.outranked_since.is_none());
}

#[test]
fn a_minority_cut_off_waits_for_the_silent_rest_but_not_for_crashed_or_departed_peers() {
    let stale = Instant::now() - Duration::from_secs(6);
    // The highest peer of four alone after round 3: the others, seen `ago`, are `marked`.
    let alone = |ago: Instant, mark: &dyn Fn(&mut super::State, PeerId)| {
        let (group, peers) = after_round_three();
        {
            let mut state = group.lock();
            for p in &peers[..3] {
                state.last_seen.insert(*p, ago);
                mark(&mut state, *p);
            }
        }
        group.minority_waits(&group.lock(), 4)
    };
    assert!(alone(stale, &|_, _| {}), "silent a moment ago: a cut link");
    let long_ago = Instant::now() - Duration::from_secs(60);
    assert!(
        !alone(long_ago, &|_, _| {}),
        "silent long enough: it goes on"
    );
    assert!(
        !alone(stale, &|s, p| {
            s.closed.insert(p);
        }),
        "crashed"
    );
    assert!(
        !alone(stale, &|s, p| {
            s.left.insert(p);
        }),
        "left"
    );
    // Half of the group: it goes on only with the lowest member.
    let half = |silent: [usize; 2]| {
        let (group, peers) = after_round_three();
        for i in silent {
            group.lock().last_seen.insert(peers[i], stale);
        }
        group.minority_waits(&group.lock(), 4)
    };
    assert!(half([0, 1]), "peers 2 and 3, without the lowest, wait");
    assert!(!half([1, 2]), "peers 0 and 3 go on");
    // The majority never waits.
    assert!(!half_of_three_silent_one(stale));
}

/// The leader of round 4 whose link was cut just as it began to wait for the `Ready`s: the
/// rest fall silent while it waits, and it must not announce a group of one (it did, and
/// trained alone while the others went on without it).
#[test]
fn a_leader_cut_off_while_its_group_forms_waits_instead_of_leading_itself_alone() {
    let (leader, peers) = after_round_three_as(0);
    let ready = |p: PeerId| {
        leader
            .lock()
            .ready
            .entry(4)
            .or_default()
            .insert(p, Some("s".into()));
    };
    let seen = |ago: Instant| {
        let mut state = leader.lock();
        for p in &peers[1..] {
            state.last_seen.insert(*p, ago);
        }
    };
    ready(peers[0]);
    assert!(
        !leader.ready_to_form(&leader.lock(), 4),
        "nobody else is ready yet"
    );
    ready(peers[1]);
    ready(peers[2]);
    assert!(
        !leader.ready_to_form(&leader.lock(), 4),
        "one live member is not ready"
    );
    ready(peers[3]);
    assert!(leader.ready_to_form(&leader.lock(), 4), "all ready");
    // The link is cut before the others were ready: they are silent, not gone.
    leader.lock().ready.clear();
    ready(peers[0]);
    seen(Instant::now() - Duration::from_secs(6));
    assert!(!leader.ready_to_form(&leader.lock(), 4), "a minority waits");
    // Crashed (their connections closed): the leader goes on with whoever is left.
    for p in &peers[1..] {
        leader.lock().closed.insert(*p);
    }
    assert!(
        leader.ready_to_form(&leader.lock(), 4),
        "crashed peers are not waited for"
    );
}

/// Three of four live (the highest peer's view, one other silent): a majority.
fn half_of_three_silent_one(stale: Instant) -> bool {
    let (group, peers) = after_round_three();
    group.lock().last_seen.insert(peers[0], stale);
    group.minority_waits(&group.lock(), 4)
}

/// Two leaders' announcements crossed: a member of this peer's group for round 4 holds
/// another group for it (its shards are cut for another member count). Its shards are
/// refused as from outside the round, whether they come after this peer has the group or
/// before, and it is out of the round here (its shards are not waited for).
#[test]
fn a_member_holding_another_group_for_the_round_is_out_of_it() {
    let (group, peers) = after_round_three();
    let mine = peers.clone();
    let theirs = peers[1..].to_vec();
    let (key, other) = (group_key(4, &mine), group_key(4, &theirs));
    assert_ne!(key, other);
    // Before this peer has round 4's group: kept, with the group it names.
    assert!(matches!(
        group.on_request(peers[1], &shard("run-a", 4, &other)),
        Reply::Ok
    ));
    assert!(matches!(
        group.on_request(peers[2], &shard("run-a", 4, &key)),
        Reply::Ok
    ));
    group.lock().groups.insert(
        4,
        Formed {
            round: 4,
            members: mine,
            states: vec![Some("s".into()); 4],
        },
    );
    group.leave_out_other_groups(4, &key);
    {
        let state = group.lock();
        assert!(!group.in_round(&state, 4, &peers[1]));
        assert!(group.in_round(&state, 4, &peers[2]));
        let arrivals = &state.shards[&(4, Stage::Contribution, 0)];
        assert_eq!(arrivals.keys().collect::<Vec<_>>(), vec![&peers[2]]);
    }
    // After: refused at once, and out of the round.
    let reason = refused(group.on_request(peers[0], &shard_with("run-a", 4, &other, 1, b"f")));
    assert!(reason.contains("not a member of round 4"), "{reason}");
    let state = group.lock();
    assert!(!group.in_round(&state, 4, &peers[0]));
    assert!(group.in_round(&state, 4, &peers[2]));
}
