//! Errors the kernels report instead of encoding garbage.

/// What went wrong in a kernel call.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum KernelError {
    /// A value in the input was NaN or infinite; nothing was encoded.
    #[error(
        "non-finite value (NaN or ±Inf) in block {block} (elements {start}..{end}); refusing to encode it"
    )]
    NonFinite {
        /// Index of the first block holding a non-finite value.
        block: usize,
        /// First element of that block.
        start: usize,
        /// One past the last element of that block.
        end: usize,
    },
    /// A block's absmax does not fit the scale type (f16 holds at most 65504).
    #[error("block {block} has absmax {absmax}, too large for its scale type; use f32 scales")]
    ScaleOverflow {
        /// The block.
        block: usize,
        /// Its absmax.
        absmax: f32,
    },
    /// Two buffers that must match in length do not.
    #[error("{what}: expected {expected} elements, got {got}")]
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// The quantization block size is not usable.
    #[error("block size {0} is invalid: it must be a multiple of 4 between 4 and 65536")]
    InvalidBlockSize(usize),
    /// The sparse codec's settings are not usable.
    #[error(
        "sparse codec chunk {chunk}, k {k}, bits {bits} is invalid: chunk must be 1..=65536, k 1..=chunk, bits 2, 4 or 8"
    )]
    InvalidSparseConfig {
        /// Values per chunk.
        chunk: usize,
        /// Entries kept per chunk.
        k: usize,
        /// Bits per kept value.
        bits: u8,
    },
    /// A sparse tensor's chunk is inconsistent.
    #[error("sparse chunk {chunk} is malformed: {why}")]
    BadSparseChunk {
        /// The chunk.
        chunk: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No device to run on: no adapter, no driver, or no kernel compiler.
    #[error("no usable device: {0}")]
    DeviceUnavailable(String),
    /// The GPU runtime failed (device lost, out of memory, …).
    #[error("GPU runtime error: {0}")]
    Runtime(String),
}
