//! A worker's pseudo-gradient on its way to the group's mean: built per parameter tensor from
//! `θ_global − θ_local` (int8 or f32), split into the all-reduce's shards, framed by the wire
//! codec, and — on the receiving side — checked against the model's layout, averaged in fp32
//! and re-encoded for the all-gather. The simulation and the peers both go through these
//! functions, so a simulated byte is a real one and both reach the same parameters.

use std::ops::Range;

use sinter_comms::{TensorPayload, TensorSet, WireTensor};
use sinter_kernels::{Kernels, QuantConfig, ScaleDtype, sparse};

use crate::TrainerError;
use crate::config::{OuterConfig, Quant, ScaleType};
use crate::params::{ParamLayout, ParamSlot};

/// The quantization an outer config asks for, if any.
pub fn quant_config(outer: &OuterConfig) -> Option<QuantConfig> {
    match outer.quant {
        Quant::None | Quant::Sparse => None,
        Quant::Int8 => Some(QuantConfig {
            block: outer.block,
            scale: match outer.scale {
                ScaleType::F32 => ScaleDtype::F32,
                ScaleType::F16 => ScaleDtype::F16,
            },
        }),
    }
}

/// Whether a worker keeps an error-feedback residual: always for the sparse codec (what it
/// does not send this round waits there), for int8 when `outer.error_feedback` asks.
pub fn keeps_residual(outer: &OuterConfig) -> bool {
    match outer.quant {
        Quant::Sparse => true,
        Quant::Int8 => outer.error_feedback,
        Quant::None => false,
    }
}

/// Builds the sparse tensor set of `global − local` plus the decayed `residual`, one wire
/// tensor per parameter (chunks never span two tensors), and leaves in `residual` what was
/// not sent. On error the residual may have been updated for the tensors before the bad one.
pub fn build_sparse(
    layout: &ParamLayout,
    global: &[f32],
    local: &[f32],
    residual: &mut [f32],
    outer: &OuterConfig,
) -> Result<TensorSet, TrainerError> {
    let config = outer.sparse.kernel_config();
    let tensors = layout
        .slots
        .iter()
        .map(|slot| {
            let range = slot.offset..slot.offset + slot.len;
            let payload = sparse::sparsify_with_feedback(
                &global[range.clone()],
                &local[range.clone()],
                &mut residual[range],
                outer.sparse.error_decay,
                config,
            )
            .map_err(|e| TrainerError::Layout(format!("{}: {e}", slot.name)))?;
            Ok(WireTensor {
                name: slot.name.clone(),
                shape: slot.shape.clone(),
                payload: TensorPayload::Sparse(payload),
            })
        })
        .collect::<Result<_, TrainerError>>()?;
    Ok(TensorSet { tensors })
}

/// Builds a worker's pseudo-gradient as `outer` asks: sparse (with `residual` as its error
/// feedback; none is a zero one) or dense through [`build`].
pub fn build_for(
    kernels: &dyn Kernels,
    layout: &ParamLayout,
    global: &[f32],
    local: &[f32],
    residual: Option<&mut [f32]>,
    outer: &OuterConfig,
) -> Result<TensorSet, TrainerError> {
    match (outer.quant, residual) {
        (Quant::Sparse, Some(residual)) => build_sparse(layout, global, local, residual, outer),
        (Quant::Sparse, None) => {
            build_sparse(layout, global, local, &mut vec![0.0; global.len()], outer)
        }
        (_, residual) => build(
            kernels,
            layout,
            global,
            local,
            residual,
            quant_config(outer),
        ),
    }
}

/// Builds the tensor set for `global − local (+ residual)`, one wire tensor per parameter.
/// With `residual` (error feedback) and int8, the residual is updated with what was lost.
pub fn build(
    kernels: &dyn Kernels,
    layout: &ParamLayout,
    global: &[f32],
    local: &[f32],
    mut residual: Option<&mut [f32]>,
    quant: Option<QuantConfig>,
) -> Result<TensorSet, TrainerError> {
    let mut tensors = Vec::with_capacity(layout.slots.len());
    for slot in &layout.slots {
        let range = slot.offset..slot.offset + slot.len;
        let (g, l) = (&global[range.clone()], &local[range.clone()]);
        let payload = match quant {
            Some(config) => {
                let r = residual.as_deref_mut().map(|r| &mut r[range.clone()]);
                TensorPayload::Int8(kernels.pseudo_gradient_quantize(g, l, r, config)?)
            }
            None => {
                let delta: Vec<f32> = g.iter().zip(l).map(|(g, l)| g - l).collect();
                if let Some(i) = delta.iter().position(|d| !d.is_finite()) {
                    return Err(TrainerError::Layout(format!(
                        "{}: non-finite value at element {i}",
                        slot.name
                    )));
                }
                TensorPayload::F32(delta)
            }
        };
        tensors.push(WireTensor {
            name: slot.name.clone(),
            shape: slot.shape.clone(),
            payload,
        });
    }
    Ok(TensorSet { tensors })
}

/// Splits the layout into `n` shards of consecutive parameter tensors holding about equal
/// numbers of values: the all-reduce's unit of work (member `k` combines shard `k`).
/// Returns slot index ranges; with more members than tensors some shards are empty.
pub fn shard_bounds(layout: &ParamLayout, n: usize) -> Vec<Range<usize>> {
    let total = layout.len();
    let mut bounds = Vec::with_capacity(n);
    let mut start = 0;
    let mut covered = 0;
    for k in 0..n {
        let target = total * (k + 1) / n;
        let mut end = start;
        while end < layout.slots.len() && (covered < target || k + 1 == n) {
            covered += layout.slots[end].len;
            end += 1;
        }
        bounds.push(start..end);
        start = end;
    }
    bounds
}

/// Splits a whole-model set (in layout order) at `bounds`.
pub fn split(set: TensorSet, bounds: &[Range<usize>]) -> Vec<TensorSet> {
    let mut tensors = set.tensors.into_iter();
    bounds
        .iter()
        .map(|b| TensorSet {
            tensors: tensors.by_ref().take(b.len()).collect(),
        })
        .collect()
}

/// Checks that `set` holds exactly the tensors of `slots` (names, shapes, order) with
/// consistent int8 payloads: what a peer's frame must satisfy before anything is added.
pub fn check(slots: &[ParamSlot], set: &TensorSet) -> Result<(), TrainerError> {
    if set.tensors.len() != slots.len() {
        return Err(TrainerError::Layout(format!(
            "{} tensors where {} were expected",
            set.tensors.len(),
            slots.len()
        )));
    }
    for (t, slot) in set.tensors.iter().zip(slots) {
        if t.name != slot.name || t.shape != slot.shape {
            return Err(TrainerError::Layout(format!(
                "got {} {:?} where the model has {} {:?}",
                t.name, t.shape, slot.name, slot.shape
            )));
        }
        match &t.payload {
            TensorPayload::Int8(q) => q.validate()?,
            TensorPayload::Sparse(s) => s.validate()?,
            TensorPayload::F32(values) => {
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(TrainerError::Layout(format!(
                        "{}: non-finite value at element {i}",
                        slot.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Checks `set` against `slots` and adds `weight ·` its values into `accumulator`, where
/// slot values live at `slot.offset - base`. Nothing is added unless the whole set fits.
fn accumulate_at(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    set: &TensorSet,
    accumulator: &mut [f32],
    base: usize,
    weight: f32,
) -> Result<(), TrainerError> {
    check(slots, set)?;
    for (t, slot) in set.tensors.iter().zip(slots) {
        let start = slot.offset - base;
        let acc = &mut accumulator[start..start + slot.len];
        match &t.payload {
            TensorPayload::Int8(q) => kernels.dequantize_accumulate(acc, q, weight)?,
            TensorPayload::F32(values) => acc
                .iter_mut()
                .zip(values)
                .for_each(|(a, v)| *a += weight * v),
            TensorPayload::Sparse(s) => s.accumulate(acc, weight)?,
        }
    }
    Ok(())
}

/// Checks a received set against `slots` (same names, shapes and order) and adds `weight ·`
/// its values into the whole-model `accumulator`. Nothing is added unless the whole set fits.
pub fn accumulate(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    set: &TensorSet,
    accumulator: &mut [f32],
    weight: f32,
) -> Result<(), TrainerError> {
    accumulate_at(kernels, slots, set, accumulator, 0, weight)
}

/// Decodes a wire frame (the tensors of `slots`) and adds `weight ·` its values into the
/// whole-model `accumulator`, checked as [`accumulate`] does.
pub fn accumulate_frame(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    frame: &[u8],
    accumulator: &mut [f32],
    weight: f32,
) -> Result<(), TrainerError> {
    let set = sinter_comms::decode(frame, &sinter_comms::CodecLimits::default())?;
    accumulate(kernels, slots, &set, accumulator, weight)
}

/// The mean of `sets` (each already [`check`]ed against `slots`, summed in the given order
/// in fp32) re-encoded as the all-gather sends it: int8 again with `quant`, or f32. Every
/// peer and the simulation compute it the same way, so they agree bit for bit.
pub fn mean(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    sets: &[TensorSet],
    quant: Option<QuantConfig>,
) -> Result<TensorSet, TrainerError> {
    let (Some(first), Some(last)) = (slots.first(), slots.last()) else {
        return Ok(TensorSet::default());
    };
    let base = first.offset;
    let mut sum = vec![0.0f32; last.offset + last.len - base];
    let weight = 1.0 / sets.len().max(1) as f32;
    for set in sets {
        accumulate_at(kernels, slots, set, &mut sum, base, weight)?;
    }
    let tensors = slots
        .iter()
        .map(|slot| {
            let values = &sum[slot.offset - base..slot.offset - base + slot.len];
            let payload = match quant {
                Some(config) => TensorPayload::Int8(kernels.quantize(values, config)?),
                None => TensorPayload::F32(values.to_vec()),
            };
            Ok(WireTensor {
                name: slot.name.clone(),
                shape: slot.shape.clone(),
                payload,
            })
        })
        .collect::<Result<Vec<_>, TrainerError>>()?;
    Ok(TensorSet { tensors })
}

/// What the group's exchange of sparse sets carries: the contributors' sets (each already
/// [`check`]ed), one after the other in member order. Their mean is not sparse, so a shard's
/// owner relays them whole rather than averaging them, and every member averages them alike.
pub fn bundle(sets: Vec<TensorSet>) -> TensorSet {
    TensorSet {
        tensors: sets.into_iter().flat_map(|s| s.tensors).collect(),
    }
}

/// Adds the mean of a [`bundle`] of `contributors` sets of the tensors of `slots` into the
/// whole-model `accumulator`, each set weighted `1 / contributors` and added in order, as the
/// simulation and every peer do. Nothing is added unless the bundle holds exactly that many
/// sets, each matching `slots`.
pub fn accumulate_bundle(
    slots: &[ParamSlot],
    bundle: TensorSet,
    contributors: usize,
    accumulator: &mut [f32],
) -> Result<(), TrainerError> {
    if contributors == 0 || bundle.tensors.len() != contributors.saturating_mul(slots.len()) {
        return Err(TrainerError::Layout(format!(
            "a bundle of {} tensors is not {contributors} sets of {}",
            bundle.tensors.len(),
            slots.len()
        )));
    }
    let mut tensors = bundle.tensors.into_iter();
    let sets: Vec<TensorSet> = (0..contributors)
        .map(|_| TensorSet {
            tensors: tensors.by_ref().take(slots.len()).collect(),
        })
        .collect();
    for set in &sets {
        check(slots, set)?;
    }
    let weight = 1.0 / contributors as f32;
    for set in &sets {
        accumulate(crate::outer::CANONICAL, slots, set, accumulator, weight)?;
    }
    Ok(())
}

/// L2 norm of a received set's values (checked against `slots` first).
pub fn norm(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    set: &TensorSet,
) -> Result<f64, TrainerError> {
    let Some(first) = slots.first() else {
        return Ok(0.0);
    };
    let len: usize = slots.iter().map(|s| s.len).sum();
    let mut values = vec![0.0f32; len];
    accumulate_at(kernels, slots, set, &mut values, first.offset, 1.0)?;
    Ok(values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(lens: &[usize]) -> ParamLayout {
        let mut offset = 0;
        let slots = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let slot = ParamSlot {
                    name: format!("t{i}"),
                    shape: vec![len],
                    offset,
                    len,
                };
                offset += len;
                slot
            })
            .collect();
        ParamLayout { slots }
    }

    /// Three workers' sparse sets of a two-tensor model.
    fn sparse_sets(l: &ParamLayout) -> Vec<TensorSet> {
        let outer = OuterConfig {
            quant: Quant::Sparse,
            sparse: crate::config::SparseSettings {
                chunk: 16,
                k: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let global: Vec<f32> = (0..l.len()).map(|i| (i as f32 * 0.37).sin()).collect();
        (0..3)
            .map(|w| {
                let local: Vec<f32> = global
                    .iter()
                    .enumerate()
                    .map(|(i, g)| g - ((i * (w + 2)) as f32 * 0.11).cos())
                    .collect();
                build_for(crate::outer::CANONICAL, l, &global, &local, None, &outer).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_bundle_adds_the_mean_of_its_sets_in_order() {
        let l = layout(&[20, 12]);
        let sets = sparse_sets(&l);
        let mut expected = vec![0.0f32; l.len()];
        for set in &sets {
            accumulate(
                crate::outer::CANONICAL,
                &l.slots,
                set,
                &mut expected,
                1.0 / 3.0,
            )
            .unwrap();
        }
        assert!(expected.iter().any(|v| *v != 0.0));
        let mut got = vec![0.0f32; l.len()];
        accumulate_bundle(&l.slots, bundle(sets), 3, &mut got).unwrap();
        assert_eq!(got, expected, "bit for bit, as the simulation adds them");
    }

    #[test]
    fn a_bundle_that_is_not_its_contributors_sets_adds_nothing() {
        let l = layout(&[20, 12]);
        let sets = sparse_sets(&l);
        let mut renamed = sets.clone();
        renamed[2].tensors[1].name = "t0".into();
        let mut short = bundle(sets.clone());
        short.tensors.pop();
        let cases = [
            ("fewer contributors than sets", bundle(sets.clone()), 2),
            ("more contributors than sets", bundle(sets.clone()), 4),
            ("no contributors", bundle(sets.clone()), 0),
            ("a set cut short", short, 3),
            ("a set of other tensors", bundle(renamed), 3),
            ("an absurd count", bundle(sets.clone()), usize::MAX),
        ];
        for (what, b, contributors) in cases {
            let mut acc = vec![0.0f32; l.len()];
            let got = accumulate_bundle(&l.slots, b, contributors, &mut acc);
            assert!(got.is_err(), "{what}: accepted");
            assert!(acc.iter().all(|v| *v == 0.0), "{what}: added something");
        }
    }

    #[test]
    fn shards_cover_every_tensor_once_and_balance() {
        let l = layout(&[10, 10, 40, 10, 10, 20]);
        for n in 1..=8 {
            let bounds = shard_bounds(&l, n);
            assert_eq!(bounds.len(), n);
            assert_eq!(bounds.first().unwrap().start, 0);
            assert_eq!(bounds.last().unwrap().end, l.slots.len());
            assert!(bounds.windows(2).all(|w| w[0].end == w[1].start));
        }
        let sizes: Vec<usize> = shard_bounds(&l, 2)
            .iter()
            .map(|b| l.slots[b.clone()].iter().map(|s| s.len).sum())
            .collect();
        assert_eq!(sizes, vec![60, 40]);
    }
}
