//! The outer step: the scheduled outer learning rate and the Nesterov step every worker
//! applies to the averaged pseudo-gradient, in the simulation and in real runs alike.

use sinter_kernels::{Kernels, RayonKernels};

use crate::TrainerError;
use crate::config::{OuterSchedule, RunConfig};

/// The kernels for what every peer must compute to the same bits (the reduced delta and the
/// outer step), on any backend.
pub const CANONICAL: &RayonKernels = &RayonKernels;

/// The outer learning rate of `round` out of `rounds`.
pub fn outer_lr(config: &RunConfig, round: usize, rounds: usize) -> f32 {
    match config.outer.lr_schedule {
        OuterSchedule::Constant => config.outer.lr,
        OuterSchedule::Cosine => {
            let progress = round as f32 / rounds.max(1) as f32;
            let min = config.outer.lr * 0.1;
            min + 0.5 * (config.outer.lr - min) * (1.0 + (std::f32::consts::PI * progress).cos())
        }
    }
}

/// The outer Nesterov step of `round` (of `rounds`) with the scheduled outer learning rate;
/// fails if the parameters stop being finite.
///
/// Always the rayon kernels, whatever the peer's backend: every peer of a run must hold the
/// same bits of the global parameters, and GPU kernels round differently from CPUs and from
/// each other (fused multiply-adds where the compiler chooses). Element-wise f32 in Rust is
/// not contracted, so this step gives the same bits on every CPU. Once per round, on
/// parameters that are on the host for the all-reduce anyway.
pub fn outer_step(
    config: &RunConfig,
    global: &mut [f32],
    momentum: &mut [f32],
    delta: &[f32],
    round: usize,
    rounds: usize,
) -> Result<(), TrainerError> {
    let lr = outer_lr(config, round, rounds);
    CANONICAL.outer_nesterov_step(global, momentum, delta, lr, config.outer.momentum)?;
    if global.iter().any(|v| !v.is_finite()) {
        return Err(TrainerError::Diverged(format!(
            "global parameters became non-finite in round {round}"
        )));
    }
    Ok(())
}
