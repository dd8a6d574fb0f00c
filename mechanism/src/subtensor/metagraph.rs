//! A subnet read from subtensor's storage: its neurons (keys, stake, axon, the last epoch's
//! consensus, incentive, dividends, trust and emission) and the hyperparameters sinter needs.
//! Per-uid reads go out together over the one connection, not one round trip each.

use futures::future::try_join_all;
use subxt::ext::scale_decode::DecodeAsType;
use subxt::utils::AccountId32;

use super::calls::{Axon, timelocked_commit_call};
use super::drand::{DEFAULT_COMMIT_REVEAL_VERSION, EpochClock, Timelock};
use super::{At, ChainError, has_storage, read};
use crate::ledger::interface::{Metagraph, NeuronInfo};
use crate::ledger::keys::AccountId;

/// A subnet's settings that decide how sinter sets weights and commits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hyperparameters {
    /// Blocks per epoch (minus one: an epoch runs every `tempo + 1` blocks).
    pub tempo: u16,
    /// Whether weights go in as commit then reveal.
    pub commit_reveal: bool,
    /// Epochs between a weights commitment and its reveal.
    pub reveal_period_epochs: u64,
    /// Blocks between two weight settings by one hotkey.
    pub weights_rate_limit: u64,
    /// The version key weights must carry (at least).
    pub weights_version_key: u64,
    /// The burn registration costs now (rao).
    pub burn: u64,
    /// Uids on the subnet.
    pub neurons: u16,
    /// The runtime's call for weight commitments timelocked to drand, where it has one (then
    /// the chain reveals committed weights itself, and takes no hashed commitments).
    pub timelocked_commits: Option<String>,
}

pub(super) async fn hyperparameters(at: &At, netuid: u16) -> Result<Hyperparameters, ChainError> {
    const S: &str = "SubtensorModule";
    let exists: bool = read(at, S, "NetworksAdded", (netuid,))
        .await?
        .unwrap_or(false);
    if !exists {
        return Err(ChainError::Invalid(format!(
            "there is no subnet {netuid} on this chain"
        )));
    }
    Ok(Hyperparameters {
        tempo: read(at, S, "Tempo", (netuid,)).await?.unwrap_or(0),
        commit_reveal: read(at, S, "CommitRevealWeightsEnabled", (netuid,))
            .await?
            .unwrap_or(false),
        reveal_period_epochs: read(at, S, "RevealPeriodEpochs", (netuid,))
            .await?
            .unwrap_or(1),
        weights_rate_limit: read(at, S, "WeightsSetRateLimit", (netuid,))
            .await?
            .unwrap_or(0),
        weights_version_key: read(at, S, "WeightsVersionKey", (netuid,))
            .await?
            .unwrap_or(0),
        burn: read(at, S, "Burn", (netuid,)).await?.unwrap_or(0),
        neurons: read(at, S, "SubnetworkN", (netuid,)).await?.unwrap_or(0),
        timelocked_commits: timelocked_commit_call(at.metadata_ref()).map(String::from),
    })
}

pub(super) async fn timelock(at: &At, netuid: u16) -> Result<Option<Timelock>, ChainError> {
    const S: &str = "SubtensorModule";
    let Some(call) = timelocked_commit_call(at.metadata_ref()) else {
        return Ok(None);
    };
    let params = hyperparameters(at, netuid).await?;
    if !params.commit_reveal {
        return Ok(None);
    }
    let version = match call {
        "commit_timelocked_weights" if has_storage(at, S, "CommitRevealWeightsVersion") => Some(
            read(at, S, "CommitRevealWeightsVersion", ())
                .await?
                .unwrap_or(DEFAULT_COMMIT_REVEAL_VERSION),
        ),
        "commit_timelocked_weights" => Some(DEFAULT_COMMIT_REVEAL_VERSION),
        _ => None,
    };
    let clock = if has_storage(at, S, "LastEpochBlock") {
        let entry = |name: &'static str| async move {
            Ok::<u64, ChainError>(read(at, S, name, (netuid,)).await?.unwrap_or(0))
        };
        let (last_epoch_block, pending_epoch_at, blocks_since_last_step) = futures::try_join!(
            entry("LastEpochBlock"),
            entry("PendingEpochAt"),
            entry("BlocksSinceLastStep")
        )?;
        EpochClock::Stateful {
            tempo: params.tempo,
            last_epoch_block,
            pending_epoch_at,
            blocks_since_last_step,
        }
    } else {
        EpochClock::Modulo {
            netuid,
            tempo: params.tempo,
        }
    };
    Ok(Some(Timelock {
        call,
        version,
        clock,
        reveal_period: params.reveal_period_epochs,
        head: at.block_number(),
    }))
}

/// Epochs subnet `netuid` has run by `block`: subtensor runs one at each block `b` with
/// `(b + netuid + 1) % (tempo + 1) == 0`.
pub fn epochs_by(block: u64, netuid: u16, tempo: u16) -> u64 {
    let period = u64::from(tempo) + 1;
    let shift = u64::from(netuid) + 1;
    block.saturating_add(shift) / period - shift / period
}

#[derive(DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
struct AxonInfo {
    ip: u128,
    port: u16,
    ip_type: u8,
}

pub(super) async fn read_metagraph(at: &At, netuid: u16) -> Result<Metagraph, ChainError> {
    const S: &str = "SubtensorModule";
    let params = hyperparameters(at, netuid).await?;
    let n = params.neurons;
    let vec16 = |entry: &'static str| async move {
        Ok::<Vec<u16>, ChainError>(read(at, S, entry, (netuid,)).await?.unwrap_or_default())
    };
    let vec64 = |entry: &'static str| async move {
        Ok::<Vec<u64>, ChainError>(read(at, S, entry, (netuid,)).await?.unwrap_or_default())
    };
    let (consensus, incentive, dividends, trust) = futures::try_join!(
        vec16("Consensus"),
        vec16("Incentive"),
        vec16("Dividends"),
        vec16("ValidatorTrust")
    )?;
    let (emission, last_update) = futures::try_join!(vec64("Emission"), vec64("LastUpdate"))?;
    let permits: Vec<bool> = read(at, S, "ValidatorPermit", (netuid,))
        .await?
        .unwrap_or_default();
    let neurons = try_join_all((0..n).map(|uid| async move {
        let hotkey: AccountId32 = read(at, S, "Keys", (netuid, uid))
            .await?
            .unwrap_or(AccountId32([0; 32]));
        let (coldkey, stake, axon, registered_at) = futures::try_join!(
            read::<_, AccountId32>(at, S, "Owner", (hotkey.0,)),
            read::<_, u64>(at, S, "TotalHotkeyAlpha", (hotkey.0, netuid)),
            read::<_, AxonInfo>(at, S, "Axons", (netuid, hotkey.0)),
            read::<_, u64>(at, S, "BlockAtRegistration", (netuid, uid)),
        )?;
        Ok::<_, ChainError>((uid, hotkey, coldkey, stake, axon, registered_at))
    }))
    .await?;
    let share = |v: &[u16], i: usize| {
        v.get(i)
            .map_or(0.0, |&x| f64::from(x) / f64::from(u16::MAX))
    };
    Ok(Metagraph {
        block: at.block_number(),
        epochs: epochs_by(at.block_number(), netuid, params.tempo),
        neurons: neurons
            .into_iter()
            .map(|(uid, hotkey, coldkey, stake, axon, registered_at)| {
                let i = usize::from(uid);
                NeuronInfo {
                    uid,
                    hotkey: AccountId(hotkey.0),
                    coldkey: AccountId(coldkey.map_or([0; 32], |c| c.0)),
                    stake: stake.unwrap_or(0),
                    address: axon
                        .and_then(|a| Axon::from_chain(a.ip, a.ip_type, a.port))
                        .map(|a| a.to_string()),
                    consensus: share(&consensus, i),
                    incentive: share(&incentive, i),
                    dividends: share(&dividends, i),
                    validator_trust: share(&trust, i),
                    emission: emission.get(i).copied().unwrap_or(0),
                    validator_permit: permits.get(i).copied().unwrap_or(false),
                    last_update: last_update.get(i).copied().unwrap_or(0),
                    registered_at: registered_at.unwrap_or(0),
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_counted_as_subtensor_schedules_them() {
        // tempo 100, netuid 1: epochs at blocks 99, 200, 301, …
        assert_eq!(epochs_by(98, 1, 100), 0);
        assert_eq!(epochs_by(99, 1, 100), 1);
        assert_eq!(epochs_by(199, 1, 100), 1);
        assert_eq!(epochs_by(200, 1, 100), 2);
        let brute = |b: u64, netuid: u64, tempo: u64| {
            (1..=b)
                .filter(|k| (k + netuid + 1).is_multiple_of(tempo + 1))
                .count() as u64
        };
        for (b, netuid, tempo) in [(0, 0, 0), (1000, 3, 10), (777, 0, 360), (5, 9, 2)] {
            assert_eq!(
                epochs_by(b, netuid as u16, tempo as u16),
                brute(b, netuid, tempo)
            );
        }
    }
}
