//! What a shard's owner makes of the contributions to its shard: the checked mean (for the
//! sparse codec, the bundle of the accepted sets, which every member averages), and the
//! refusals with their reasons.

use sinter_comms::group::{Arrival, Reduction};
use sinter_comms::{CodecLimits, decode, encode};
use sinter_kernels::Kernels;
use sinter_mechanism::filter::{MAX_NORM_RATIO, NormRule, norm_outliers};

use crate::config::{Quant, RunConfig};
use crate::params::ParamSlot;
use crate::{TrainerError, pseudo_gradient};

/// Combines the contributions to one shard: each is decoded and checked against the shard's
/// slots (names, shapes, finite values), and one whose norm is far above the others' is
/// refused too (in a run keeping a ledger: far from the others' either way, by the
/// validators' robust z-score, so that a lazy member's zero update is left out of the
/// average); each refusal is returned with its reason. The rest are averaged.
pub(super) fn reduce_shard(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    arrivals: &[Arrival],
    config: &RunConfig,
) -> Reduction {
    let quant = pseudo_gradient::quant_config(&config.outer);
    let mut decoded = Vec::new();
    let mut rejected = Vec::new();
    for a in arrivals {
        match decode(&a.frame, &CodecLimits::default())
            .map_err(TrainerError::from)
            .and_then(|set| pseudo_gradient::norm(kernels, slots, &set).map(|n| (set, n)))
        {
            Ok((set, norm)) => decoded.push((a.from, set, norm)),
            Err(e) => rejected.push((a.from, e.to_string())),
        }
    }
    let norms: Vec<f64> = decoded.iter().map(|(_, _, n)| *n).collect();
    let rule = if config.incentives.ledger.is_some() {
        config.incentives.scoring.filter.norm_rule()
    } else {
        NormRule::AboveMedian {
            ratio: MAX_NORM_RATIO,
        }
    };
    let refusals = norm_outliers(&norms, &rule)
        .into_iter()
        .map(|r| r.map(|r| format!("in this shard, {r}")));
    let mut sets = Vec::new();
    let mut contributors = Vec::new();
    for ((from, set, _), refusal) in decoded.into_iter().zip(refusals) {
        if let Some(reason) = refusal {
            rejected.push((from, reason));
        } else {
            sets.push(set);
            contributors.push(from);
        }
    }
    let combined = match config.outer.quant {
        Quant::Sparse => Ok(pseudo_gradient::bundle(sets)),
        _ => pseudo_gradient::mean(kernels, slots, &sets, quant),
    };
    let frame = combined
        .and_then(|set| Ok(encode(&set, 3)?))
        .unwrap_or_else(|e| {
            // E.g. a mean too large for f16 scales. Every member then skips this shard's
            // parameters for the round (an empty frame), so all stay identical.
            tracing::error!(error = %e, "reduction failed; the shard is skipped this round");
            Vec::new()
        });
    Reduction {
        frame,
        contributors,
        rejected,
    }
}
