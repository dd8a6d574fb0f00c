//! A worker's pseudo-gradient on its way to the group's mean: built per parameter tensor from
//! `θ_global − θ_local` (int8 or f32), framed by the wire codec, and — on the receiving side —
//! checked against the model's layout and accumulated into the fp32 mean. The simulation and
//! the network layer both go through these two functions, so a simulated byte is a real one.

use sinter_comms::{TensorPayload, TensorSet, WireTensor};
use sinter_kernels::{Kernels, QuantConfig, ScaleDtype};

use crate::TrainerError;
use crate::config::{OuterConfig, Quant, ScaleType};
use crate::params::ParamLayout;

/// The quantization an outer config asks for, if any.
pub fn quant_config(outer: &OuterConfig) -> Option<QuantConfig> {
    match outer.quant {
        Quant::None => None,
        Quant::Int8 => Some(QuantConfig {
            block: outer.block,
            scale: match outer.scale {
                ScaleType::F32 => ScaleDtype::F32,
                ScaleType::F16 => ScaleDtype::F16,
            },
        }),
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

/// Checks a received set against the layout (same names, shapes and order) and adds
/// `weight ·` its values into `accumulator`. Nothing is added unless the whole set fits.
pub fn accumulate(
    kernels: &dyn Kernels,
    layout: &ParamLayout,
    set: &TensorSet,
    accumulator: &mut [f32],
    weight: f32,
) -> Result<(), TrainerError> {
    if set.tensors.len() != layout.slots.len() {
        return Err(TrainerError::Layout(format!(
            "{} tensors, the model has {}",
            set.tensors.len(),
            layout.slots.len()
        )));
    }
    for (t, slot) in set.tensors.iter().zip(&layout.slots) {
        if t.name != slot.name || t.shape != slot.shape {
            return Err(TrainerError::Layout(format!(
                "got {} {:?} where the model has {} {:?}",
                t.name, t.shape, slot.name, slot.shape
            )));
        }
        if let TensorPayload::Int8(q) = &t.payload {
            q.validate()?;
        }
    }
    for (t, slot) in set.tensors.iter().zip(&layout.slots) {
        let acc = &mut accumulator[slot.offset..slot.offset + slot.len];
        match &t.payload {
            TensorPayload::Int8(q) => kernels.dequantize_accumulate(acc, q, weight)?,
            TensorPayload::F32(values) => acc
                .iter_mut()
                .zip(values)
                .for_each(|(a, v)| *a += weight * v),
        }
    }
    Ok(())
}
