//! Test-only fault hooks (the `fault-injection` feature): a peer that aborts at a chosen
//! point, as `kill -9` would stop it. Without the feature they compile to nothing.

/// Fault injection for the crash tests: when the environment variable `var` equals `value`,
/// the process aborts here, as `kill -9` would stop it.
#[cfg(feature = "fault-injection")]
pub(super) fn fault_point(var: &str, value: &str, what: &str) {
    if std::env::var(var).is_ok_and(|v| v == value) {
        tracing::error!("{var}={value}: aborting while {what}");
        std::process::abort();
    }
}

/// With `SINTER_FAULT_ABORT_IN_ROUND=R`, the process aborts in round R right after sending
/// its contributions, in the middle of the all-reduce, before it has sent the shard it owns.
#[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
pub(super) fn crash_point(round: u64) {
    #[cfg(feature = "fault-injection")]
    fault_point(
        "SINTER_FAULT_ABORT_IN_ROUND",
        &round.to_string(),
        "in the all-reduce",
    );
}
