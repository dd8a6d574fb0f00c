//! Offline checks of the subtensor client against the real runtime's metadata (spec 218,
//! `fixtures/subtensor/`, copied from Bittensor's chain): every call sinter builds encodes to
//! the bytes `vectors.json` records, storage keys use the runtime's hashers, stored values
//! decode, and a runtime without a call is named.

use std::sync::Arc;

use sinter_mechanism::ledger::extrinsic::weights_commitment;
use sinter_mechanism::ledger::interface::WeightsReveal;
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_mechanism::subtensor::calls::{require_call, timelocked_commit_call};
use sinter_mechanism::subtensor::{Axon, Call, ChainError};
use subxt::config::polkadot::{PolkadotConfig, SpecVersionForRange};
use subxt::{Metadata, OfflineClient};

const METADATA: &[u8] = include_bytes!("fixtures/subtensor/subtensor-spec218.metadata.scale");
const VECTORS: &str = include_str!("fixtures/subtensor/vectors.json");

fn metadata() -> Metadata {
    Metadata::decode_from(METADATA).expect("spec-218 metadata decodes")
}

fn offline() -> OfflineClient<PolkadotConfig> {
    let config = PolkadotConfig::builder()
        .use_historic_types(false)
        .set_metadata_for_spec_versions([(218, Arc::new(metadata()))])
        .set_spec_version_for_block_ranges([SpecVersionForRange {
            block_range: 0..u64::MAX,
            spec_version: 218,
            transaction_version: 1,
        }])
        .build();
    OfflineClient::new_with_config(config)
}

fn call_data(call: &Call) -> String {
    let client = offline();
    let at = client.at_block(0u64).expect("block 0 is spec 218");
    let payload = call
        .payload(at.metadata_ref(), 218)
        .expect("the runtime has the call");
    format!(
        "0x{}",
        hex::encode(at.transactions().call_data(&payload).expect("encodes"))
    )
}

fn vector(name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    v["call_data_vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no vector for {name}"))["call_data"]
        .as_str()
        .unwrap()
        .to_string()
}

fn bob() -> AccountId {
    Keypair::from_secret("//Bob").unwrap().account()
}

#[test]
fn every_call_encodes_to_the_runtimes_bytes() {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(
        format!("0x{}", hex::encode(bob().0)),
        v["bob_account_hex"].as_str().unwrap()
    );
    assert_eq!(
        call_data(&Call::SetWeights {
            netuid: 1,
            uids: vec![1, 2],
            values: vec![40000, 20000],
            version_key: 0
        }),
        vector("set_weights(")
    );
    assert_eq!(
        call_data(&Call::CommitWeights {
            netuid: 1,
            hash: [0x11; 32]
        }),
        vector("commit_weights(")
    );
    assert_eq!(
        call_data(&Call::BurnedRegister {
            netuid: 1,
            hotkey: bob()
        }),
        vector("burned_register(")
    );
    assert_eq!(
        call_data(&Call::AddStake {
            netuid: 1,
            hotkey: bob(),
            rao: 1_000_000_000
        }),
        vector("add_stake(")
    );
    // The vector serves protocol 0; sinter's axons announce TCP (4), as Bittensor's do.
    let served = call_data(&Call::ServeAxon {
        netuid: 1,
        axon: Axon {
            ip: "127.0.0.2".parse().unwrap(),
            port: 30333,
        },
    });
    let expected = vector("serve_axon(");
    assert_eq!(served.len(), expected.len());
    assert_eq!(&served[..served.len() - 6], &expected[..expected.len() - 6]);
    assert_eq!(
        &served[served.len() - 6..],
        "040000",
        "protocol 4, placeholders 0"
    );
}

#[test]
fn the_calls_without_vectors_encode_field_by_field() {
    // remove_stake: the same layout as add_stake, call index 3.
    let unstake = call_data(&Call::RemoveStake {
        netuid: 1,
        hotkey: bob(),
        rao: 1_000_000_000,
    });
    assert_eq!(
        unstake,
        vector("add_stake(").replacen("0x0702", "0x0703", 1)
    );
    // reveal_weights (call 97 = 0x61): netuid, uids, values, salt, version_key.
    let reveal = call_data(&Call::RevealWeights {
        netuid: 1,
        reveal: WeightsReveal {
            uids: vec![1],
            values: vec![65535],
            salt: vec![7, 8],
            version_key: 2,
        },
    });
    assert_eq!(reveal, "0x0761010004010004ffff08070008000200000000000000");
    // Commitments (pallet 18) set_commitment (call 0): netuid, CommitmentInfo { fields: [Raw4] }.
    let commit = call_data(&Call::SetCommitment {
        netuid: 1,
        data: vec![0xde, 0xad, 0xbe, 0xef],
    });
    assert_eq!(commit, "0x1200010004".to_string() + "05deadbeef");
}

#[test]
fn a_runtime_without_a_call_is_named_and_oversized_commitments_are_refused() {
    let md = metadata();
    let err = require_call(
        &md,
        218,
        "SubtensorModule",
        "register_network_with_hotkey",
        2,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "this runtime (spec 218) has no SubtensorModule.register_network_with_hotkey"
    );
    let err = require_call(&md, 218, "Drand", "write_pulse", 1).unwrap_err();
    assert!(
        err.to_string().contains("has no Drand.write_pulse"),
        "{err}"
    );
    let err = require_call(&md, 218, "SubtensorModule", "set_weights", 3).unwrap_err();
    assert!(
        err.to_string().contains("with 3 arguments (it takes 4)"),
        "{err}"
    );
    let Err(err) = (Call::SetCommitment {
        netuid: 1,
        data: vec![0; 129],
    })
    .payload(&md, 218) else {
        panic!("129 bytes do not fit");
    };
    assert!(matches!(err, ChainError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("at most 128 bytes"), "{err}");
}

#[test]
fn storage_keys_use_the_runtimes_hashers_and_values_decode() {
    use sp_crypto_hashing::{blake2_128, twox_128};
    use subxt::ext::scale_decode::DecodeAsType;
    let client = offline();
    let at = client.at_block(0u64).unwrap();
    // Uids: (netuid Identity, hotkey Blake2_128Concat).
    let uids = subxt::dynamic::storage::<(u16, [u8; 32]), u16>("SubtensorModule", "Uids");
    let key = at
        .storage()
        .entry(uids)
        .unwrap()
        .fetch_key((1, bob().0))
        .unwrap();
    let expected = [
        &twox_128(b"SubtensorModule")[..],
        &twox_128(b"Uids"),
        &1u16.to_le_bytes(),
        &blake2_128(&bob().0),
        &bob().0,
    ]
    .concat();
    assert_eq!(hex::encode(key), hex::encode(expected));
    // Keys: (netuid Identity, uid Identity).
    let keys = subxt::dynamic::storage::<(u16, u16), [u8; 32]>("SubtensorModule", "Keys");
    let key = at.storage().entry(keys).unwrap().fetch_key((1, 3)).unwrap();
    let expected = [
        &twox_128(b"SubtensorModule")[..],
        &twox_128(b"Keys"),
        &[1, 0],
        &[3, 0],
    ]
    .concat();
    assert_eq!(key, expected);
    // AxonInfo decodes from the runtime's own type.
    #[derive(DecodeAsType, Debug, PartialEq)]
    #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
    struct AxonInfo {
        block: u64,
        ip: u128,
        port: u16,
        ip_type: u8,
    }
    let md = metadata();
    let entry = md
        .pallet_by_name("SubtensorModule")
        .unwrap()
        .storage()
        .unwrap()
        .entry_by_name("Axons")
        .unwrap();
    let ip = u128::from(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 7)));
    let bytes = [
        &9u64.to_le_bytes()[..],
        &1u32.to_le_bytes(),
        &ip.to_le_bytes(),
        &8091u16.to_le_bytes(),
        &[4, 4, 0, 0],
    ]
    .concat();
    let axon = AxonInfo::decode_as_type(&mut &bytes[..], entry.value_ty(), md.types()).unwrap();
    assert_eq!(
        axon,
        AxonInfo {
            block: 9,
            ip,
            port: 8091,
            ip_type: 4
        }
    );
    assert_eq!(
        Axon::from_chain(axon.ip, axon.ip_type, axon.port)
            .unwrap()
            .to_string(),
        "10.0.0.7:8091"
    );
}

#[test]
fn the_weights_commitment_is_the_chains_formula() {
    // BlakeTwo256 over SCALE (hotkey, netuid, uids, values, salt, version_key), spelled out
    // byte by byte here (compact lengths: n << 2).
    let hotkey = bob();
    let bytes = [
        &hotkey.0[..],
        &1u16.to_le_bytes(),
        &[2 << 2],
        &[0, 0, 3, 0],
        &[2 << 2],
        &[0xff, 0xff, 0x00, 0x80],
        &[1 << 2],
        &[42, 0],
        &7u64.to_le_bytes(),
    ]
    .concat();
    let expected = sp_crypto_hashing::blake2_256(&bytes);
    assert_eq!(
        weights_commitment(&hotkey, 1, &[0, 3], &[0xffff, 0x8000], &[42], 7),
        expected
    );
}

/// Spec 218 takes hashed weight commitments (`commit_weights`, then `reveal_weights`) and no
/// timelocked ones: a timelocked commitment meant for it is named as missing, not sent as
/// bytes the runtime cannot read.
#[test]
fn spec_218_takes_hashed_weight_commitments_not_timelocked_ones() {
    let md = metadata();
    assert_eq!(timelocked_commit_call(&md), None);
    require_call(&md, 218, "SubtensorModule", "commit_weights", 2).unwrap();
    for version in [Some(4), None] {
        let call = Call::CommitTimelockedWeights {
            netuid: 1,
            commit: vec![1, 2, 3],
            reveal_round: 1000,
            version,
        };
        let err = call.payload(&md, 218).unwrap_err();
        assert!(matches!(err, ChainError::Missing { .. }), "{err}");
        assert!(err.to_string().contains(call.name().1), "{err}");
    }
}
