//! The int8 block format shared by both implementations and the wire codec.
//!
//! A buffer of `len` values is cut into blocks of `block` values (the last may be shorter).
//! Each block stores its absolute maximum `a` (the *scale*, kept as f32 or f16) and one
//! signed code per value: `code = round(v · 127 / a)`, in `-127..=127`, ties away from zero;
//! `v ≈ code · a / 127`. Storing the absmax rather than `a / 127` keeps f16 scales in f16's
//! normal range for small pseudo-gradients.

use crate::KernelError;

/// Smallest absmax a block keeps; below it (values under 1e-36, far beneath any useful
/// pseudo-gradient) the block is encoded as zeros, and error feedback carries it forward.
pub const MIN_SCALE: f32 = 1e-36;

/// How scales are stored (and therefore rounded before quantizing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleDtype {
    /// 4 bytes per block, exact absmax.
    #[default]
    F32,
    /// 2 bytes per block; the absmax is rounded to f16 before codes are computed.
    F16,
}

impl ScaleDtype {
    /// Bytes one stored scale takes.
    pub fn bytes(self) -> usize {
        match self {
            ScaleDtype::F32 => 4,
            ScaleDtype::F16 => 2,
        }
    }

    /// Rounds an absmax to what this storage type holds. Rounds up where f16 would round
    /// below the true absmax, so that no code overflows ±127 by more than rounding. Blocks
    /// whose absmax is below [`MIN_SCALE`] are flushed to zero: `127 / absmax` would
    /// overflow f32 there.
    pub fn store(self, absmax: f32) -> f32 {
        if absmax < MIN_SCALE {
            return 0.0;
        }
        match self {
            ScaleDtype::F32 => absmax,
            ScaleDtype::F16 => {
                let h = half::f16::from_f32(absmax);
                let stored = h.to_f32();
                if stored < absmax {
                    half::f16::from_bits(h.to_bits() + 1).to_f32()
                } else {
                    stored
                }
            }
        }
    }
}

/// Block size and scale type of a quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantConfig {
    /// Values per block: a multiple of 4 in `4..=65536`.
    pub block: usize,
    /// How each block's scale is stored.
    pub scale: ScaleDtype,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            block: 256,
            scale: ScaleDtype::F32,
        }
    }
}

impl QuantConfig {
    /// Checks the block size.
    pub fn validate(&self) -> Result<(), KernelError> {
        if self.block >= 4 && self.block <= 65536 && self.block.is_multiple_of(4) {
            Ok(())
        } else {
            Err(KernelError::InvalidBlockSize(self.block))
        }
    }

    /// Number of blocks covering `len` values.
    pub fn blocks(&self, len: usize) -> usize {
        len.div_ceil(self.block)
    }

    /// Element range of block `b` in a buffer of `len` values.
    pub fn block_range(&self, b: usize, len: usize) -> std::ops::Range<usize> {
        b * self.block..((b + 1) * self.block).min(len)
    }

    /// The error for a non-finite value found in block `b`.
    pub(crate) fn non_finite(&self, b: usize, len: usize) -> KernelError {
        let r = self.block_range(b, len);
        KernelError::NonFinite {
            block: b,
            start: r.start,
            end: r.end,
        }
    }
}

/// An int8-quantized buffer: codes plus one stored absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    /// Block size and scale type.
    pub config: QuantConfig,
    /// One code per value, `-127..=127`.
    pub codes: Vec<i8>,
    /// One stored absmax per block, already rounded to `config.scale`.
    pub scales: Vec<f32>,
}

impl QuantizedTensor {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Bytes of codes plus stored scales: what this tensor costs on the wire before compression.
    pub fn payload_bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * self.config.scale.bytes()
    }

    /// Checks internal consistency (the wire decoder relies on this for untrusted input).
    pub fn validate(&self) -> Result<(), KernelError> {
        self.config.validate()?;
        crate::check_lengths(
            "scales",
            self.config.blocks(self.codes.len()),
            self.scales.len(),
        )?;
        if let Some(b) = self.scales.iter().position(|s| !s.is_finite() || *s < 0.0) {
            return Err(self.config.non_finite(b, self.codes.len()));
        }
        Ok(())
    }
}

/// Rounds each block's absmax to its storage type: the scales both implementations encode with.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn stored_scales(absmax: &[f32], config: QuantConfig) -> Result<Vec<f32>, KernelError> {
    absmax
        .iter()
        .enumerate()
        .map(|(block, &a)| store_scale(a, block, config))
        .collect()
}

/// Block `block`'s absmax rounded to its storage type, or an error if that type cannot hold it.
pub(crate) fn store_scale(
    absmax: f32,
    block: usize,
    config: QuantConfig,
) -> Result<f32, KernelError> {
    let stored = config.scale.store(absmax);
    if stored.is_finite() {
        Ok(stored)
    } else {
        Err(KernelError::ScaleOverflow { block, absmax })
    }
}

/// The multiplier that turns a value into a code: `127 / stored_absmax`, or 0 for an all-zero block.
pub(crate) fn code_multiplier(stored_absmax: f32) -> f32 {
    if stored_absmax > 0.0 {
        127.0 / stored_absmax
    } else {
        0.0
    }
}

/// The multiplier that turns a code back into a value: `stored_absmax / 127`.
pub(crate) fn value_step(stored_absmax: f32) -> f32 {
    stored_absmax / 127.0
}

/// Rounds `v · multiplier` to the nearest code, ties away from zero, clamped to ±127:
/// `floor(|t| + 0.5)` with the sign of `t`, as the GPU kernel computes it, written without
/// `floor` (a library call on baseline x86-64), branches or a saturating conversion, so that
/// it compiles to packed SSE2 instructions.
#[inline]
pub(crate) fn encode(v: f32, multiplier: f32) -> i8 {
    let t = v * multiplier;
    // Truncating t ± 0.5 toward zero is sign(t) · floor(|t| + 0.5). `max`/`min` return
    // their non-NaN operand, so `bounded` lies in [-127, 127] even for a NaN `t`.
    // (Not `clamp`: it would pass a NaN through.)
    #[allow(clippy::manual_clamp)]
    let bounded = (t + 0.5f32.copysign(t)).max(-127.0).min(127.0);
    // SAFETY: `bounded` is finite and within i32's range (see above).
    unsafe { bounded.to_int_unchecked::<i32>() as i8 }
}
