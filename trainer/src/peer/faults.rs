//! Test-only fault hooks of a run's peer (the `fault-injection` feature); without the
//! feature they do nothing.

/// Fault injection for the resync test (test builds only): with
/// `SINTER_FAULT_PERTURB_AFTER_ROUND=R`, this peer adds 1 to its first global parameter after
/// round R, so that its state no longer matches the group's and it must fetch the majority's.
#[cfg(feature = "fault-injection")]
pub(super) fn perturb_for_test(round: usize, global: &mut [f32]) {
    if std::env::var("SINTER_FAULT_PERTURB_AFTER_ROUND").is_ok_and(|r| r == round.to_string()) {
        tracing::error!(
            round,
            "SINTER_FAULT_PERTURB_AFTER_ROUND: corrupting this peer's state"
        );
        global[0] += 1.0;
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(super) fn perturb_for_test(_round: usize, _global: &mut [f32]) {}

/// Fault injection for the incentives test (test builds only): with `SINTER_FAULT_LAZY=1`
/// this peer skips its inner steps and so sends a zero pseudo-gradient every round.
pub(super) fn lazy_for_test() -> bool {
    cfg!(feature = "fault-injection") && std::env::var("SINTER_FAULT_LAZY").is_ok_and(|v| v == "1")
}

/// Fault injection for the closing test (test builds only): with
/// `SINTER_FAULT_SLOW_ROUND=R:SECS` this peer trains round R for SECS seconds longer, so that a
/// newcomer can arrive while it does.
#[cfg(feature = "fault-injection")]
pub(super) fn slow_for_test(round: usize) {
    let Ok(spec) = std::env::var("SINTER_FAULT_SLOW_ROUND") else {
        return;
    };
    if let Some((r, secs)) = spec.split_once(':')
        && r == round.to_string()
        && let Ok(secs) = secs.parse::<f64>()
    {
        tracing::error!(round, secs, "SINTER_FAULT_SLOW_ROUND: pausing");
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(super) fn slow_for_test(_round: usize) {}
