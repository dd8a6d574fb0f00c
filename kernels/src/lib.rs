//! # sinter-kernels
//!
//! The arithmetic at the heart of a DiLoCo round, on flat `f32` parameter buffers:
//!
//! | operation | what it does |
//! |---|---|
//! | [`Kernels::quantize`] | blockwise int8 absmax quantization of any buffer |
//! | [`Kernels::pseudo_gradient_quantize`] | `θ_global − θ_local` (+ error-feedback residual) quantized in one pass |
//! | [`Kernels::dequantize_accumulate`] | adds `weight · dequant(q)` into an fp32 accumulator (the reduction) |
//! | [`Kernels::outer_nesterov_step`] | SGD with Nesterov momentum, dampening 0, as PyTorch defines it |
//! | [`sparse::sparsify_with_feedback`] | top-k per chunk of `global − local` + decayed error feedback, 2/4/8-bit values (host only) |
//!
//! One trait, two implementations that the same tests hold to the same answers:
//! [`RayonKernels`] (CPU threads) and [`CubeKernels`] (CubeCL: wgpu, or CUDA with the `cuda`
//! feature). Codes agree exactly: both paths round each block's absmax to its storage type on
//! the host and multiply by the same host-computed reciprocal, so no GPU division or
//! contraction can move a code. Floats (dequantized sums, outer steps) agree within
//! [`FLOAT_TOLERANCE`] relative error, because GPUs may fuse multiply-adds.
//!
//! Non-finite input (NaN, ±Inf) is never encoded: both paths report the first bad block.
//!
//! | feature | runtime |
//! |---|---|
//! | `wgpu` (default) | Vulkan/Metal/DX12 through wgpu; Mesa's lavapipe in CI |
//! | `cuda` | NVIDIA GPUs; the driver is loaded at run time |
#![warn(missing_docs)]

mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod error;
mod quantized;
pub mod sparse;

pub use cpu::RayonKernels;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use cube::CubeKernels;
pub use error::KernelError;

/// The CubeCL kernels on wgpu: a GPU where there is one, Mesa's lavapipe (software Vulkan) where not.
#[cfg(feature = "wgpu")]
pub type WgpuKernels = CubeKernels<cubecl::wgpu::WgpuRuntime>;

/// The CubeCL kernels on CUDA (the driver is loaded at run time).
#[cfg(feature = "cuda")]
pub type CudaKernels = CubeKernels<cubecl::cuda::CudaRuntime>;
pub use quantized::{MIN_SCALE, QuantConfig, QuantizedTensor, ScaleDtype};
pub use sparse::{SparseConfig, SparseTensor};

/// Largest relative difference allowed between the two implementations' float outputs.
pub const FLOAT_TOLERANCE: f32 = 1e-6;

/// The pseudo-gradient kernels, implemented once per execution target.
///
/// All buffers are host slices: callers need not know where the work runs.
pub trait Kernels: Send + Sync {
    /// A short name for logs and benchmark tables (`rayon`, `wgpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Quantizes `values` blockwise to int8 with one absmax scale per block.
    fn quantize(&self, values: &[f32], config: QuantConfig)
    -> Result<QuantizedTensor, KernelError>;

    /// Quantizes the pseudo-gradient `global − local (+ residual)` in one pass.
    ///
    /// With `residual` (error feedback), the residual is read as part of the pseudo-gradient
    /// and overwritten with what quantization lost, to be carried into the next round.
    /// On error the residual is left unchanged.
    fn pseudo_gradient_quantize(
        &self,
        global: &[f32],
        local: &[f32],
        residual: Option<&mut [f32]>,
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError>;

    /// `accumulator += weight · dequantize(quantized)`, element by element.
    fn dequantize_accumulate(
        &self,
        accumulator: &mut [f32],
        quantized: &QuantizedTensor,
        weight: f32,
    ) -> Result<(), KernelError>;

    /// One outer SGD step with Nesterov momentum and no dampening, as PyTorch computes it:
    /// `m ← μ·m + Δ;  θ ← θ − lr·(Δ + μ·m)`, where `Δ` is the averaged pseudo-gradient.
    fn outer_nesterov_step(
        &self,
        params: &mut [f32],
        momentum: &mut [f32],
        delta: &[f32],
        lr: f32,
        mu: f32,
    ) -> Result<(), KernelError>;

    /// Bytes the device's allocator holds; `None` where the buffers are host memory.
    fn device_memory_reserved(&self) -> Option<u64> {
        None
    }

    /// The dequantized values of `quantized` as a new buffer.
    fn dequantize(&self, quantized: &QuantizedTensor) -> Result<Vec<f32>, KernelError> {
        let mut out = vec![0.0; quantized.len()];
        self.dequantize_accumulate(&mut out, quantized, 1.0)?;
        Ok(out)
    }
}

/// Checks that buffers which must be the same length are.
pub(crate) fn check_lengths(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}
