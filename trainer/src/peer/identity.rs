//! Which ledger uid a run member is. A peer serves `<addr>/p2p/<peer id>#<signature>` on the
//! ledger, the signature by its network identity key over its hotkey and the chain's genesis
//! hash, so that no other hotkey can claim the peer's contributions (copying the address, or
//! replaying the signature for another hotkey or chain, does not verify).

use sinter_comms::net::{self, Keypair, Multiaddr, PeerId, Protocol};
use sinter_mechanism::ledger::interface::Metagraph;
use sinter_mechanism::ledger::keys::AccountId;

/// What a peer's identity key signs to say that `hotkey` speaks for it on this ledger.
fn serve_message(genesis_hash: &[u8; 32], hotkey: &AccountId) -> Vec<u8> {
    parity_scale_codec::Encode::encode(&("sinter-serve", genesis_hash, hotkey.0))
}

/// The address a peer serves on the ledger (see the module docs).
pub fn served_address(
    key: &Keypair,
    addr: Option<&Multiaddr>,
    genesis_hash: &[u8; 32],
    hotkey: &AccountId,
) -> String {
    let peer = key.public().to_peer_id();
    let signature = net::key::sign(key, &serve_message(genesis_hash, hotkey));
    let addr = addr
        .map(|a| {
            let mut a = a.clone();
            if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                a.pop();
            }
            a.to_string()
        })
        .unwrap_or_default();
    format!("{addr}/p2p/{peer}#{}", hex::encode(signature))
}

/// The uid that serves `peer` with a valid signature of the peer's identity key over the
/// uid's hotkey; a neuron merely naming the peer id is ignored.
pub fn uid_of(metagraph: &Metagraph, genesis_hash: &[u8; 32], peer: &PeerId) -> Option<u16> {
    let suffix = format!("/p2p/{peer}");
    metagraph
        .neurons
        .iter()
        .find(|n| {
            let Some((addr, signature)) = n.address.as_deref().and_then(|a| a.rsplit_once('#'))
            else {
                return false;
            };
            // Subtensor's record has no room for the peer id: a bare address (or none) with
            // the signature is as good, since only this peer's key makes it verify.
            (addr.ends_with(&suffix) || !addr.contains("/p2p/"))
                && hex::decode(signature).is_ok_and(|signature| {
                    net::key::verify(peer, &serve_message(genesis_hash, &n.hotkey), &signature)
                })
        })
        .map(|n| n.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinter_mechanism::ledger::keys::Keypair as Hotkey;
    use sinter_mechanism::ledger::state::{Genesis, GenesisNeuron, State};

    #[test]
    fn only_the_hotkey_a_peer_signed_for_gets_its_contributions() {
        let (honest, thief) = (
            Hotkey::from_secret("//Honest").unwrap(),
            Hotkey::from_secret("//Thief").unwrap(),
        );
        let genesis: Genesis = serde_json::from_value(serde_json::json!({
            "author": honest.account(),
            "neurons": [
                GenesisNeuron { hotkey: thief.account(), coldkey: thief.account(), stake: 0 },
                GenesisNeuron { hotkey: honest.account(), coldkey: honest.account(), stake: 0 },
            ],
        }))
        .unwrap();
        let genesis_hash = genesis.hash();
        let mut metagraph = Metagraph::of_state(&State::genesis(&genesis));
        let peer_key = Keypair::generate_ed25519();
        let peer = peer_key.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/10.0.0.2/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let honest_address =
            served_address(&peer_key, Some(&addr), &genesis_hash, &honest.account());
        assert!(honest_address.starts_with(&format!("/ip4/10.0.0.2/tcp/4001/p2p/{peer}#")));
        // uid 0 claims the peer id bare, then with the honest hotkey's signature copied.
        metagraph.neurons[0].address = Some(format!("/ip4/10.0.0.9/tcp/1/p2p/{peer}"));
        assert_eq!(uid_of(&metagraph, &genesis_hash, &peer), None);
        metagraph.neurons[0].address = Some(honest_address.clone());
        metagraph.neurons[1].address = Some(honest_address);
        assert_eq!(uid_of(&metagraph, &genesis_hash, &peer), Some(1));
        // A signature for another ledger, or not hex, does not count either.
        let other = served_address(&peer_key, Some(&addr), &[7u8; 32], &honest.account());
        metagraph.neurons[1].address = Some(other);
        assert_eq!(uid_of(&metagraph, &genesis_hash, &peer), None);
        metagraph.neurons[1].address = Some(format!("/p2p/{peer}#zz\u{e9}"));
        assert_eq!(uid_of(&metagraph, &genesis_hash, &peer), None);
        // On subtensor the record holds the signature alone (no peer id): it still binds,
        // and only for the hotkey it was made for.
        let signed = served_address(&peer_key, None, &genesis_hash, &honest.account());
        let signature = signed.rsplit_once('#').unwrap().1;
        metagraph.neurons[0].address = Some(format!("/ip4/10.0.0.9/tcp/1#{signature}"));
        metagraph.neurons[1].address = Some(format!("/ip4/10.0.0.2/tcp/4001#{signature}"));
        assert_eq!(uid_of(&metagraph, &genesis_hash, &peer), Some(1));
        // Naming another peer id with it does not.
        let other_peer = Keypair::generate_ed25519().public().to_peer_id();
        metagraph.neurons[1].address = Some(format!("/p2p/{other_peer}#{signature}"));
        assert_eq!(uid_of(&metagraph, &genesis_hash, &peer), None);
    }
}
