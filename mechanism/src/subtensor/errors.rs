//! What can go wrong talking to subtensor, and dispatch errors turned into what to do.

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached (after retries).
    #[error(
        "cannot reach the chain at {url}: {why} (is the node running and the URL right? a local node is ws://127.0.0.1:9944)"
    )]
    Connect {
        /// The URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The runtime lacks a call, storage entry or pallet sinter needs.
    #[error("this runtime (spec {spec_version}) has no {what}")]
    Missing {
        /// The runtime's spec version.
        spec_version: u32,
        /// What is missing (`Pallet.call`).
        what: String,
    },
    /// The call was in a block and failed there.
    #[error("{call} failed on chain ({error}): {advice}")]
    Dispatch {
        /// The call.
        call: String,
        /// The runtime's error, `Pallet::Error`.
        error: String,
        /// What to do about it.
        advice: String,
    },
    /// The node's transaction pool refused the call (fees it cannot pay, a bad nonce, …).
    #[error("{call} was refused before any block: {why}")]
    Rejected {
        /// The call.
        call: String,
        /// The node's reason.
        why: String,
    },
    /// The call was not in a block in time.
    #[error("{call} was not in a block after {secs} s (is the chain producing blocks?)")]
    Timeout {
        /// The call.
        call: String,
        /// How long it waited.
        secs: u64,
    },
    /// A read or the connection failed.
    #[error("{what}: {why}")]
    Rpc {
        /// What was being done.
        what: String,
        /// The error.
        why: String,
    },
    /// Something asked of the chain that cannot work (refused before sending).
    #[error("{0}")]
    Invalid(String),
}

/// What a user should do about the runtime error `pallet::error` from `call`. `next_block`
/// is the next block a rate-limited call is allowed at, when known.
pub fn advice(error: &str, netuid: u16, next_block: Option<u64>) -> String {
    let when = next_block.map_or_else(
        || "wait for the rate limit to pass, then try again".to_string(),
        |b| format!("the next allowed block is #{b}; try again then"),
    );
    match error {
        "SettingWeightsTooFast" | "CommittingWeightsTooFast" => {
            format!("weights are rate-limited on subnet {netuid}: {when}")
        }
        "ServingRateLimitExceeded" => format!("serving is rate-limited: {when}"),
        "CommitmentSetRateLimitExceeded" => format!("commitments are rate-limited: {when}"),
        "TxRateLimitExceeded" | "StakeRateLimitExceeded" | "UnstakeRateLimitExceeded" => {
            format!("this key is rate-limited: {when}")
        }
        "NeuronNoValidatorPermit" => format!(
            "this hotkey has no validator permit on subnet {netuid}: permits go to the top \
             hotkeys by stake at each epoch; add stake (`launch chain stake`) and wait for the next epoch"
        ),
        "NotEnoughStakeToSetWeights" => format!(
            "this hotkey has too little stake to set weights on subnet {netuid}: add stake (`launch chain stake`)"
        ),
        "HotKeyNotRegisteredInSubNet" | "HotKeyNotRegisteredInNetwork" | "HotKeyAccountNotExists" => {
            format!("this hotkey is not registered on subnet {netuid}: run `launch chain register` first")
        }
        "AccountNotAllowedCommit" => format!(
            "only hotkeys registered on subnet {netuid} may commit: run `launch chain register` first"
        ),
        "TooManyRegistrationsThisInterval" | "TooManyRegistrationsThisBlock" => format!(
            "subnet {netuid} has had as many registrations as it takes for now: try again in the next interval"
        ),
        "NotEnoughBalanceToStake" | "BalanceWithdrawalError" => {
            "the coldkey's balance is too low for this (fund it and try again)".to_string()
        }
        "NotEnoughStakeToWithdraw" | "NotEnoughStake" => {
            "the hotkey has less stake than that to remove".to_string()
        }
        "HotKeyAlreadyRegisteredInSubNet" => format!("this hotkey is already registered on subnet {netuid}"),
        "NonAssociatedColdKey" => {
            "this hotkey belongs to another coldkey: use the wallet that registered it".to_string()
        }
        "SubNetworkDoesNotExist" | "SubnetNotExists" => format!("there is no subnet {netuid} on this chain"),
        "SubNetRegistrationDisabled" => format!("subnet {netuid} does not take registrations now"),
        "InvalidIpAddress" => {
            "the chain refuses this IP address (loopback, private and unspecified addresses are refused): serve a public address".to_string()
        }
        "InvalidIpType" | "InvalidPort" => "give a valid IPv4/IPv6 address and a non-zero port".to_string(),
        "CommitRevealEnabled" => format!(
            "subnet {netuid} has commit-reveal on: weights go in as a commitment, then a reveal (`launch chain weights` does both)"
        ),
        "CommitRevealDisabled" => format!("subnet {netuid} has commit-reveal off: set weights directly"),
        "RevealTooEarly" => format!("the reveal window is not open yet: {when}"),
        "ExpiredWeightCommit" => "the commitment expired before its reveal: commit again".to_string(),
        "NoWeightsCommitFound" => "no weights commitment to reveal: commit first".to_string(),
        "InvalidRevealCommitHashNotMatch" => {
            "the revealed weights do not match the commitment (different uids, values, salt or version key)".to_string()
        }
        "TooManyUnrevealedCommits" => "too many unrevealed commitments: reveal or let them expire".to_string(),
        "IncorrectCommitRevealVersion" => "the chain expects another version of timelocked weight commitments than sinter read from it (`CommitRevealWeightsVersion`): try again; if it persists, this runtime changed the format and sinter needs an update".to_string(),
        "IncorrectWeightVersionKey" => format!("the weights version key is below subnet {netuid}'s"),
        "UidVecContainInvalidOne" | "UidsLengthExceedUidsInSubNet" => {
            format!("a uid is not on subnet {netuid} (see `launch chain metagraph`)")
        }
        "WeightVecNotEqualSize" | "InputLengthsUnequal" => "give as many weights as uids".to_string(),
        "DuplicateUids" => "a uid appears twice".to_string(),
        "WeightVecLengthIsLow" => format!("subnet {netuid} wants weights on more uids"),
        "MaxWeightExceeded" => format!("a weight is above subnet {netuid}'s maximum"),
        _ => "see the runtime's documentation for this error".to_string(),
    }
}
