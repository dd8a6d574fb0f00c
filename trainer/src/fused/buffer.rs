//! Output buffers the kernels write in full before anything reads them, allocated without
//! clearing: zeroing every new output (`vec![0.0; n]`) took 3.8 % of a training step on
//! flex, a pass over memory that the kernel's own pass then overwrites (BENCHMARKS.md). The
//! matrix products ([`super::matrix`]), the fused row and element kernels ([`super::flex`])
//! and attention ([`super::flex_attention`]) all allocate their outputs here.
//!
//! The values are `MaybeUninit` until written, so no `f32` is read before it has one.

use std::mem::MaybeUninit;

/// A buffer of `len` values, none written yet.
pub(super) fn unwritten(len: usize) -> Box<[MaybeUninit<f32>]> {
    Box::new_uninit_slice(len)
}

/// The values of a buffer every one of which has been written.
///
/// # Safety
/// Every value of `buffer` was written.
pub(super) unsafe fn written(buffer: Box<[MaybeUninit<f32>]>) -> Vec<f32> {
    // SAFETY: the caller's contract.
    unsafe { buffer.assume_init() }.into_vec()
}

/// A part of a buffer whose values have been written, as `f32`s.
///
/// # Safety
/// Every value of `values` was written.
pub(super) unsafe fn written_part(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller's contract says each
    // value is initialized.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}
