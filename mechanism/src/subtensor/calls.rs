//! The extrinsics sinter sends to subtensor, built with subxt's dynamic API: each is looked
//! up by pallet and name in the runtime's own metadata, so one binary works across runtime
//! versions, and a runtime without a call is named instead of sent bytes it cannot read.

use std::net::IpAddr;

use subxt::dynamic::Value;
use subxt::metadata::Metadata;
use subxt::transactions::DynamicPayload;

use super::ChainError;
use crate::ledger::extrinsic::Hash;
use crate::ledger::interface::WeightsReveal;
use crate::ledger::keys::AccountId;

/// The axon protocol number Bittensor's own axons announce (TCP).
const AXON_PROTOCOL: u8 = 4;
/// The axon version sinter announces.
const AXON_VERSION: u32 = 1;

/// An address a hotkey serves at, as the chain stores it (`AxonInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axon {
    /// The address.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
}

impl Axon {
    /// The IP as the chain's `u128`.
    pub fn ip_u128(&self) -> u128 {
        match self.ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    /// The chain's `ip_type`: 4 or 6.
    pub fn ip_type(&self) -> u8 {
        if self.ip.is_ipv4() { 4 } else { 6 }
    }

    /// The axon stored as (`ip`, `ip_type`, `port`); `None` for one never served (ip 0) or
    /// of an unknown type.
    pub fn from_chain(ip: u128, ip_type: u8, port: u16) -> Option<Self> {
        let ip = match ip_type {
            4 => IpAddr::from(u32::try_from(ip).ok()?.to_be_bytes()),
            6 => IpAddr::from(ip.to_be_bytes()),
            _ => return None,
        };
        (!ip.is_unspecified()).then_some(Self { ip, port })
    }
}

impl std::fmt::Display for Axon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.ip, self.port))
    }
}

/// Which of a wallet's keys signs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The coldkey: it pays (registration, stake).
    Coldkey,
    /// The hotkey: it acts (axon, weights, commitments).
    Hotkey,
}

/// A call sinter makes on subtensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `SubtensorModule.burned_register`: registers `hotkey`, paying the subnet's burn.
    BurnedRegister {
        /// The subnet.
        netuid: u16,
        /// The hotkey to register.
        hotkey: AccountId,
    },
    /// `SubtensorModule.serve_axon`: the address the hotkey serves at.
    ServeAxon {
        /// The subnet.
        netuid: u16,
        /// The address.
        axon: Axon,
    },
    /// `SubtensorModule.add_stake`: moves `rao` from the coldkey to the hotkey's stake.
    AddStake {
        /// The subnet.
        netuid: u16,
        /// The hotkey staked to.
        hotkey: AccountId,
        /// How much.
        rao: u64,
    },
    /// `SubtensorModule.remove_stake`: moves `rao` of the hotkey's stake back to the coldkey.
    RemoveStake {
        /// The subnet.
        netuid: u16,
        /// The hotkey unstaked from.
        hotkey: AccountId,
        /// How much.
        rao: u64,
    },
    /// `SubtensorModule.set_weights`.
    SetWeights {
        /// The subnet.
        netuid: u16,
        /// Target uids.
        uids: Vec<u16>,
        /// Their weights.
        values: Vec<u16>,
        /// The subnet's weights version key.
        version_key: u64,
    },
    /// `SubtensorModule.commit_weights`: the hash of weights revealed later.
    CommitWeights {
        /// The subnet.
        netuid: u16,
        /// The commitment ([`weights_commitment`](crate::ledger::extrinsic::weights_commitment)).
        hash: Hash,
    },
    /// `SubtensorModule.reveal_weights`.
    RevealWeights {
        /// The subnet.
        netuid: u16,
        /// What the commitment hashed.
        reveal: WeightsReveal,
    },
    /// `SubtensorModule.commit_timelocked_weights` (with the runtime's commit-reveal
    /// `version`) or, where the runtime predates it, `commit_crv3_weights`: weights encrypted
    /// to a drand round, revealed by the chain itself ([`drand`](super::drand)).
    CommitTimelockedWeights {
        /// The subnet.
        netuid: u16,
        /// The encrypted payload.
        commit: Vec<u8>,
        /// The drand round that decrypts it.
        reveal_round: u64,
        /// `CommitRevealWeightsVersion`; `None` for `commit_crv3_weights`.
        version: Option<u16>,
    },
    /// `Commitments.set_commitment`: up to 128 bytes the hotkey publishes on the subnet.
    SetCommitment {
        /// The subnet.
        netuid: u16,
        /// The bytes (one `Raw` field).
        data: Vec<u8>,
    },
}

/// Subtensor's calls for weight commitments timelocked to drand, newest first.
const TIMELOCKED_COMMITS: [&str; 2] = ["commit_timelocked_weights", "commit_crv3_weights"];

/// The runtime's call for drand-timelocked weight commitments, where it has one.
pub fn timelocked_commit_call(metadata: &Metadata) -> Option<&'static str> {
    let pallet = metadata.pallet_by_name("SubtensorModule")?;
    TIMELOCKED_COMMITS
        .into_iter()
        .find(|call| pallet.call_variant_by_name(call).is_some())
}

/// Checks that the runtime has `pallet.call` taking `arguments` arguments.
pub fn require_call(
    metadata: &Metadata,
    spec_version: u32,
    pallet: &str,
    call: &str,
    arguments: usize,
) -> Result<(), ChainError> {
    let variant = metadata
        .pallet_by_name(pallet)
        .and_then(|p| p.call_variant_by_name(call))
        .ok_or_else(|| ChainError::Missing {
            spec_version,
            what: format!("{pallet}.{call}"),
        })?;
    if variant.fields.len() != arguments {
        return Err(ChainError::Missing {
            spec_version,
            what: format!(
                "{pallet}.{call} with {arguments} arguments (it takes {})",
                variant.fields.len()
            ),
        });
    }
    Ok(())
}

/// Largest commitment field the pallet's `Data` type holds (`Raw128`).
pub const MAX_COMMITMENT_BYTES: usize = 128;

impl Call {
    /// The pallet and call name.
    pub fn name(&self) -> (&'static str, &'static str) {
        const S: &str = "SubtensorModule";
        match self {
            Call::BurnedRegister { .. } => (S, "burned_register"),
            Call::ServeAxon { .. } => (S, "serve_axon"),
            Call::AddStake { .. } => (S, "add_stake"),
            Call::RemoveStake { .. } => (S, "remove_stake"),
            Call::SetWeights { .. } => (S, "set_weights"),
            Call::CommitWeights { .. } => (S, "commit_weights"),
            Call::RevealWeights { .. } => (S, "reveal_weights"),
            Call::CommitTimelockedWeights { version, .. } => match version {
                Some(_) => (S, TIMELOCKED_COMMITS[0]),
                None => (S, TIMELOCKED_COMMITS[1]),
            },
            Call::SetCommitment { .. } => ("Commitments", "set_commitment"),
        }
    }

    /// Which key signs it.
    pub fn signer(&self) -> Signer {
        match self {
            Call::BurnedRegister { .. } | Call::AddStake { .. } | Call::RemoveStake { .. } => {
                Signer::Coldkey
            }
            _ => Signer::Hotkey,
        }
    }

    /// The arguments, in the order and shape the runtime declares them.
    fn fields(&self) -> Vec<Value> {
        let account = |a: &AccountId| Value::from_bytes(a.0);
        let list = |v: &[u16]| Value::unnamed_composite(v.iter().map(|&x| Value::u128(x.into())));
        let n = |x: u16| Value::u128(x.into());
        match self {
            Call::BurnedRegister { netuid, hotkey } => vec![n(*netuid), account(hotkey)],
            Call::ServeAxon { netuid, axon } => vec![
                n(*netuid),
                Value::u128(AXON_VERSION.into()),
                Value::u128(axon.ip_u128()),
                n(axon.port),
                Value::u128(axon.ip_type().into()),
                Value::u128(AXON_PROTOCOL.into()),
                Value::u128(0),
                Value::u128(0),
            ],
            Call::AddStake {
                netuid,
                hotkey,
                rao,
            }
            | Call::RemoveStake {
                netuid,
                hotkey,
                rao,
            } => vec![account(hotkey), n(*netuid), Value::u128((*rao).into())],
            Call::SetWeights {
                netuid,
                uids,
                values,
                version_key,
            } => vec![
                n(*netuid),
                list(uids),
                list(values),
                Value::u128((*version_key).into()),
            ],
            Call::CommitWeights { netuid, hash } => vec![n(*netuid), Value::from_bytes(hash)],
            Call::RevealWeights { netuid, reveal } => vec![
                n(*netuid),
                list(&reveal.uids),
                list(&reveal.values),
                list(&reveal.salt),
                Value::u128(reveal.version_key.into()),
            ],
            Call::CommitTimelockedWeights {
                netuid,
                commit,
                reveal_round,
                version,
            } => {
                let mut fields = vec![
                    n(*netuid),
                    Value::from_bytes(commit),
                    Value::u128((*reveal_round).into()),
                ];
                fields.extend(version.map(n));
                fields
            }
            Call::SetCommitment { netuid, data } => {
                let field =
                    Value::unnamed_variant(format!("Raw{}", data.len()), [Value::from_bytes(data)]);
                vec![
                    n(*netuid),
                    Value::named_composite([("fields", Value::unnamed_composite([field]))]),
                ]
            }
        }
    }

    /// The call as a dynamic payload, once the runtime is known to have it with as many
    /// arguments as sinter sends.
    pub fn payload(
        &self,
        metadata: &Metadata,
        spec_version: u32,
    ) -> Result<DynamicPayload<Vec<Value>>, ChainError> {
        let (pallet, call) = self.name();
        if let Call::SetCommitment { data, .. } = self
            && data.len() > MAX_COMMITMENT_BYTES
        {
            return Err(ChainError::Invalid(format!(
                "a commitment holds at most {MAX_COMMITMENT_BYTES} bytes, not {}",
                data.len()
            )));
        }
        let fields = self.fields();
        require_call(metadata, spec_version, pallet, call, fields.len())?;
        Ok(subxt::dynamic::tx(pallet, call, fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axons_round_trip_through_the_chains_encoding() {
        for text in ["10.0.0.7:8091", "[2001:db8::1]:30333"] {
            let addr: std::net::SocketAddr = text.parse().unwrap();
            let axon = Axon {
                ip: addr.ip(),
                port: addr.port(),
            };
            let back = Axon::from_chain(axon.ip_u128(), axon.ip_type(), axon.port).unwrap();
            assert_eq!(back, axon);
            assert_eq!(back.to_string(), text);
        }
        assert_eq!(Axon::from_chain(0, 4, 0), None, "never served");
        assert_eq!(Axon::from_chain(1 << 40, 4, 1), None, "not an IPv4");
        assert_eq!(Axon::from_chain(1, 5, 1), None, "unknown type");
    }
}
