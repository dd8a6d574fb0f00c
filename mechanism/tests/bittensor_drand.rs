//! Weights timelocked to drand, checked against Bittensor's own bittensor-drand: a commitment
//! it made (`scripts/bittensor-drand-fixtures.py`) opens here with the real quicknet pulse of
//! its round, one made here opens in it (the venv `scripts/setup.sh` makes;
//! `SINTER_SKIP_PYTHON=1` skips that half), and the reveal rounds sinter picks are the ones it
//! picks, for both of the chain's epoch clocks.

mod python;

use std::path::Path;

use serde_json::Value;
use sinter_mechanism::ledger::keys::AccountId;
use sinter_mechanism::subtensor::drand::{self, EpochClock, Timelock, WeightsPayload, round_after};

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/drand")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn payload_of(fixture: &Value) -> WeightsPayload {
    let p = &fixture["payload"];
    let row = |k: &str| -> Vec<u16> {
        p[k].as_array()
            .unwrap()
            .iter()
            .map(|x| u16::try_from(u64_of(x)).unwrap())
            .collect()
    };
    WeightsPayload {
        hotkey: Some(AccountId(hex_of(&p["hotkey"]).try_into().unwrap())),
        uids: row("uids"),
        values: row("values"),
        version_key: u64_of(&p["version_key"]),
    }
}

#[test]
fn a_commitment_bittensor_drand_made_opens_here_with_its_rounds_pulse() {
    let fixture = fixture("bittensor-drand.json");
    let signature = hex_of(&fixture["signature"]);
    let opened = drand::decrypt(&hex_of(&fixture["commit"]), &signature).unwrap();
    // Its payload, encoded by hand in the script, is byte for byte what sinter encodes.
    let scale = hex_of(&fixture["payload"]["scale"]);
    assert_eq!(opened, scale);
    let payload = payload_of(&fixture);
    assert_eq!(payload.encode(), scale);
    assert_eq!(WeightsPayload::decode(&opened, true).unwrap(), payload);
}

/// bittensor-drand's `UserData` around a commitment: what its `decrypt_with_signature` reads.
fn user_data(commit: &[u8], round: u64) -> Vec<u8> {
    let n = u16::try_from(commit.len()).unwrap();
    assert!(n < 1 << 14);
    let mut out = ((n << 2) | 1).to_le_bytes().to_vec();
    out.extend_from_slice(commit);
    out.extend_from_slice(&round.to_le_bytes());
    out
}

#[test]
fn bittensor_drand_opens_a_commitment_made_here() {
    let Some(python) = python::bittensor_python() else {
        return;
    };
    let fixture = fixture("bittensor-drand.json");
    let round = u64_of(&fixture["round"]);
    let payload = payload_of(&fixture);
    let commit = drand::encrypt(&payload.encode(), round).unwrap();
    let script = r#"
import sys, bittensor_drand
print(bittensor_drand.decrypt_with_signature(bytes.fromhex(sys.argv[1]), sys.argv[2]).hex())
"#;
    let out = python::run(
        &python,
        script,
        &[
            &hex::encode(user_data(&commit, round)),
            fixture["signature"].as_str().unwrap(),
        ],
    );
    let opened = hex::decode(out.trim()).unwrap();
    assert_eq!(WeightsPayload::decode(&opened, true).unwrap(), payload);
}

/// Checks each case's round against bittensor-drand's: it read the clock at some instant
/// between `now_before` and `now_after`, so its round lies between the two sinter computes.
fn rounds_match(fixture: &Value, clock: impl Fn(&Value) -> EpochClock, head: impl Fn(u64) -> u64) {
    let cases = fixture["reveal_rounds"].as_array().unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
        let current = u64_of(&case["current_block"]);
        let reveal = clock(case)
            .reveal_block(current, u64_of(&case["subnet_reveal_period_epochs"]))
            .unwrap();
        let blocks = (reveal + 3).saturating_sub(head(current));
        let secs = case["block_time"].as_f64().unwrap();
        let at = |now: &str| round_after(case[now].as_f64().unwrap(), blocks, secs);
        let theirs = u64_of(&case["round"]);
        assert!(
            (at("now_before")..=at("now_after")).contains(&theirs),
            "{case}: sinter picks {}..={}, bittensor-drand {theirs}",
            at("now_before"),
            at("now_after")
        );
    }
}

#[test]
fn reveal_rounds_are_bittensor_drands_on_the_stateful_epoch_clock() {
    rounds_match(
        &fixture("bittensor-drand.json"),
        |case| EpochClock::Stateful {
            tempo: u16::try_from(u64_of(&case["tempo"])).unwrap(),
            last_epoch_block: u64_of(&case["last_epoch_block"]),
            pending_epoch_at: u64_of(&case["pending_epoch_at"]),
            blocks_since_last_step: 0,
        },
        |current| current,
    );
}

#[test]
fn reveal_rounds_are_bittensor_drands_on_the_modulo_epoch_clock() {
    rounds_match(
        &fixture("bittensor-drand-legacy.json"),
        |case| EpochClock::Modulo {
            netuid: u16::try_from(u64_of(&case["netuid"])).unwrap(),
            tempo: u16::try_from(u64_of(&case["tempo"])).unwrap(),
        },
        |current| current,
    );
}

fn weights(
    hotkey: AccountId,
    uids: Vec<u16>,
    values: Vec<u16>,
    version_key: u64,
) -> WeightsPayload {
    WeightsPayload {
        hotkey: Some(hotkey),
        uids,
        values,
        version_key,
    }
}

/// The whole commitment a validator sends: aimed at the round that opens the reveal epoch,
/// carrying its hotkey, and opened by that round's pulse (now chosen so that it is round
/// 1000, whose real pulse the fixture holds).
#[test]
fn a_timelocked_commit_call_opens_with_the_pulse_of_its_round() {
    let fixture = fixture("bittensor-drand.json");
    let timelock = Timelock {
        call: "commit_timelocked_weights",
        version: Some(4),
        clock: EpochClock::Modulo {
            netuid: 1,
            tempo: 99,
        },
        reveal_period: 1,
        head: 150,
    };
    let hotkey = AccountId([5; 32]);
    // Reveal at block 198, aimed at 201: 51 blocks of 12 s after `now`.
    let now = (drand::QUICKNET_GENESIS_SECS + 1000 * 3) as f64 - 51.0 * 12.0 + 1.0;
    let commit = timelock
        .commit(1, weights(hotkey, vec![0, 2], vec![9, 65535], 3), 12.0, now)
        .unwrap();
    assert_eq!((commit.round, commit.reveal_block), (1000, 198));
    let sinter_mechanism::subtensor::Call::CommitTimelockedWeights {
        netuid,
        commit: bytes,
        reveal_round,
        version,
    } = &commit.call
    else {
        panic!("{:?}", commit.call);
    };
    assert_eq!((*netuid, *reveal_round, *version), (1, 1000, Some(4)));
    let opened = drand::decrypt(bytes, &hex_of(&fixture["signature"])).unwrap();
    let payload = WeightsPayload::decode(&opened, true).unwrap();
    assert_eq!(payload.hotkey, Some(hotkey));
    assert_eq!(
        (payload.uids, payload.values, payload.version_key),
        (vec![0, 2], vec![9, 65535], 3)
    );
    // The older call carries the payload without the hotkey.
    let legacy = Timelock {
        call: "commit_crv3_weights",
        version: None,
        ..timelock
    };
    let commit = legacy
        .commit(1, weights(hotkey, vec![1], vec![1], 0), 12.0, now)
        .unwrap();
    let sinter_mechanism::subtensor::Call::CommitTimelockedWeights { commit: bytes, .. } =
        &commit.call
    else {
        panic!("{:?}", commit.call);
    };
    let opened = drand::decrypt(bytes, &hex_of(&fixture["signature"])).unwrap();
    assert_eq!(WeightsPayload::decode(&opened, false).unwrap().hotkey, None);
    assert_eq!(commit.call.name().1, "commit_crv3_weights");
}

/// A commitment above the runtime's 5000 bytes is refused before sending, with the count.
#[test]
fn a_timelocked_commitment_too_long_for_the_chain_is_refused() {
    let timelock = Timelock {
        call: "commit_timelocked_weights",
        version: Some(4),
        clock: EpochClock::Modulo {
            netuid: 1,
            tempo: 360,
        },
        reveal_period: 1,
        head: 10,
    };
    let row = |n: u16| (0..n).collect::<Vec<u16>>();
    let now = drand::unix_now();
    timelock
        .commit(
            1,
            weights(AccountId([1; 32]), row(1000), row(1000), 0),
            12.0,
            now,
        )
        .unwrap();
    let err = timelock
        .commit(
            1,
            weights(AccountId([1; 32]), row(1300), row(1300), 0),
            12.0,
            now,
        )
        .unwrap_err();
    assert!(err.to_string().contains("1300 weights"), "{err}");
    assert!(err.to_string().contains("5000"), "{err}");
}
