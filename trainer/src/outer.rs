//! The outer step: the scheduled outer learning rate and the Nesterov step every worker
//! applies to the averaged pseudo-gradient, in the simulation and in real runs alike.

use sinter_kernels::Kernels;

use crate::TrainerError;
use crate::config::{OuterSchedule, RunConfig};

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
pub fn outer_step(
    kernels: &dyn Kernels,
    config: &RunConfig,
    global: &mut [f32],
    momentum: &mut [f32],
    delta: &[f32],
    round: usize,
    rounds: usize,
) -> Result<(), TrainerError> {
    let lr = outer_lr(config, round, rounds);
    kernels.outer_nesterov_step(global, momentum, delta, lr, config.outer.momentum)?;
    if global.iter().any(|v| !v.is_finite()) {
        return Err(TrainerError::Diverged(format!(
            "global parameters became non-finite in round {round}"
        )));
    }
    Ok(())
}
