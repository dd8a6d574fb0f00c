//! The `Ledger` interface's behaviour, checked through the trait alone: one suite that every
//! implementation passes — the embedded ledger of a run (`trainer/tests/ledger.rs`) and
//! Bittensor's subtensor (`launch/tests/chain.rs`, against the real runtime in chopsticks).

use std::time::Duration;

use sinter_comms::net::{self, Multiaddr};
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::interface::{
    CallError, WeightsCommitment, WeightsReveal, wait_until,
};
use sinter_trainer::peer::identity::{served_address, uid_of};

/// What any implementation of the interface must do for a freshly funded, unregistered
/// hotkey whose coldkey can pay the burn and `stake` (rao) of stake.
pub fn behaves_as_a_ledger(ledger: &dyn Ledger, stake: u64) {
    let limit = 10 * ledger.block_time() + Duration::from_secs(5);
    // Blocks arrive, and waiting for one is waiting, not polling.
    let height = ledger.height();
    let next = ledger
        .wait_for_block(height, limit)
        .expect("a block within the limit");
    assert!(next > height);

    // Registering twice is the same uid, registered at a block since the one seen before.
    let hotkey = ledger.hotkey();
    let uid = ledger.register().expect("registers");
    assert_eq!(ledger.register().expect("registered already"), uid);
    let metagraph = ledger.metagraph();
    assert_eq!(metagraph.uid(&hotkey), Some(uid));
    let registered_at = metagraph.neuron(uid).expect("its neuron").registered_at;
    assert!(
        (next..=metagraph.block).contains(&registered_at),
        "registered at {registered_at}, between blocks {next} and {}",
        metagraph.block
    );

    // Serving binds a network identity to the hotkey: the metagraph shows it for this uid
    // only, as the peer's signature says.
    let peer_key = net::Keypair::generate_ed25519();
    let peer = peer_key.public().to_peer_id();
    let addr: Multiaddr = "/ip4/10.9.8.7/tcp/4001".parse().unwrap();
    let genesis = ledger.genesis_hash();
    let address = served_address(&peer_key, Some(&addr), &genesis, &hotkey);
    ledger.serve(&address).expect("serves");
    assert!(wait_until(ledger, limit, || uid_of(
        &ledger.metagraph(),
        &genesis,
        &peer
    ) == Some(uid)));
    let stranger = net::Keypair::generate_ed25519().public().to_peer_id();
    assert_eq!(uid_of(&ledger.metagraph(), &genesis, &stranger), None);

    // Stake and a contribution commitment reach a block.
    ledger.add_stake(stake).expect("stakes");
    assert!(wait_until(ledger, limit, || ledger
        .metagraph()
        .neuron(uid)
        .is_some_and(|n| n.stake >= stake / 10 * 9)));
    let contribution = [7u8; 32];
    ledger
        .commit_contribution(3, contribution)
        .expect("commits a contribution");
    assert!(wait_until(ledger, limit, || !ledger
        .contributions(3)
        .is_empty()));
    let committed = ledger.contributions(3);
    assert_eq!(committed.len(), 1);
    assert_eq!((committed[0].uid, committed[0].hash), (uid, contribution));
    assert!(ledger.contributions(4).is_empty());

    // Weights: committed as a hash, then revealed (or set at once where the subnet has no
    // commit-reveal); a reveal that does not match is refused.
    assert_eq!(ledger.committed_weights(), None);
    let (uids, values) = (vec![0, uid], vec![u16::MAX, 1]);
    match ledger
        .commit_weights(&uids, &values)
        .expect("commits weights")
    {
        WeightsCommitment::Hashed { hash, reveal } => {
            assert_eq!((reveal.uids.clone(), reveal.values.clone()), (uids, values));
            assert_eq!(hash, reveal.commitment(&hotkey, ledger.netuid()));
            assert!(wait_until(ledger, limit, || ledger.committed_weights() == Some(hash)));
            let forged = WeightsReveal {
                values: vec![1, u16::MAX],
                ..reveal.clone()
            };
            match ledger.reveal_weights(&forged) {
                Err(CallError::Refused { call, .. }) => assert_eq!(call, "reveal_weights"),
                other => panic!("a forged reveal was not refused: {other:?}"),
            }
            ledger.reveal_weights(&reveal).expect("reveals");
            assert!(wait_until(ledger, limit, || ledger
                .committed_weights()
                .is_none()));
        }
        WeightsCommitment::Set => {}
        other => panic!("{other:?}: no runtime here reveals timelocked weights"),
    }
    assert!(wait_until(ledger, limit, || ledger
        .metagraph()
        .neuron(uid)
        .is_some_and(|n| n.last_update > 0)));
}
