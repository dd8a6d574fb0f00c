//! The rayon implementation: each block is quantized by one task, in one pass over memory
//! while the block is hot in cache.

use rayon::prelude::*;

use crate::quantized::{code_multiplier, encode, store_scale, value_step};
use crate::{KernelError, Kernels, QuantConfig, QuantizedTensor, check_lengths};

/// Kernels on CPU threads (rayon's global pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct RayonKernels;

/// Elements per rayon task in elementwise loops: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

/// Where the values to quantize come from.
enum Source<'a> {
    /// The values themselves: blocks are read in place.
    Values(&'a [f32]),
    /// `global − local (+ carried)`, computed block by block into a task buffer.
    Difference {
        global: &'a [f32],
        local: &'a [f32],
        carried: Option<&'a [f32]>,
    },
}

impl Source<'_> {
    /// The values of `range`, computed into `buffer` when they do not exist as such.
    fn block<'b>(&'b self, range: std::ops::Range<usize>, buffer: &'b mut [f32]) -> &'b [f32] {
        let out = &mut buffer[..range.len()];
        match self {
            Source::Values(values) => return &values[range],
            Source::Difference {
                global,
                local,
                carried: None,
            } => {
                for ((o, g), l) in out
                    .iter_mut()
                    .zip(&global[range.clone()])
                    .zip(&local[range])
                {
                    *o = g - l;
                }
            }
            Source::Difference {
                global,
                local,
                carried: Some(carried),
            } => {
                let sources = global[range.clone()]
                    .iter()
                    .zip(&local[range.clone()])
                    .zip(&carried[range]);
                for (o, ((g, l), r)) in out.iter_mut().zip(sources) {
                    *o = (g - l) + r;
                }
            }
        }
        out
    }
}

/// Blocks quantized by one rayon task: enough work (16 Ki values at block 256) that task
/// scheduling, not memory, stays negligible.
const BLOCKS_PER_TASK: usize = 64;

impl RayonKernels {
    /// Quantizes the values `source` yields for each block, in one pass over
    /// memory: a task takes [`BLOCKS_PER_TASK`] consecutive blocks and, for each, copies it
    /// into a task-local buffer, finds its absmax and encodes it while it is hot in cache.
    /// With `residual`, a second pass stores what quantization lost (only once every block
    /// has succeeded, so a failure leaves the residual untouched). On failure the error names
    /// the first bad block, whatever the thread timing.
    fn quantize_with(
        &self,
        len: usize,
        source: &Source<'_>,
        residual: Option<&mut [f32]>,
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError> {
        config.validate()?;
        let mut codes = vec![0i8; len];
        let mut scales = vec![0.0f32; config.blocks(len)];
        let task_values = config.block * BLOCKS_PER_TASK;
        let outcomes: Vec<Result<(), KernelError>> = codes
            .par_chunks_mut(task_values)
            .zip(scales.par_chunks_mut(BLOCKS_PER_TASK))
            .enumerate()
            .map(|(task, (codes, scales))| {
                let mut buffer = vec![0.0f32; config.block];
                let blocks = codes.chunks_mut(config.block).zip(scales.iter_mut());
                for (i, (codes, scale)) in blocks.enumerate() {
                    let b = task * BLOCKS_PER_TASK + i;
                    let values = source.block(config.block_range(b, len), &mut buffer);
                    *scale = quantize_block(values, codes, b, config)?;
                }
                Ok(())
            })
            .collect();
        if let Some(err) = outcomes.into_iter().find_map(Result::err) {
            return Err(err);
        }
        if let Some(residual) = residual {
            residual
                .par_chunks_mut(config.block)
                .enumerate()
                .for_each_init(
                    || vec![0.0f32; config.block],
                    |buffer, (b, out)| {
                        let values = source.block(config.block_range(b, len), buffer);
                        let step = value_step(scales[b]);
                        let codes = &codes[b * config.block..];
                        for ((r, &v), &c) in out.iter_mut().zip(values.iter()).zip(codes) {
                            *r = v - f32::from(c) * step;
                        }
                    },
                );
        }
        Ok(QuantizedTensor {
            config,
            codes,
            scales,
        })
    }
}

/// Encodes block `b` (`values`) into `codes` and returns its stored scale, with AVX2 (8 lanes
/// instead of SSE2's 4, and a native unsigned max) where the CPU has it.
fn quantize_block(
    values: &[f32],
    codes: &mut [i8],
    b: usize,
    config: QuantConfig,
) -> Result<f32, KernelError> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { quantize_block_avx2(values, codes, b, config) };
    }
    quantize_block_portable(values, codes, b, config)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_block_avx2(
    values: &[f32],
    codes: &mut [i8],
    b: usize,
    config: QuantConfig,
) -> Result<f32, KernelError> {
    quantize_block_portable(values, codes, b, config)
}

/// The block quantizer itself; inlined into each instruction-set variant above so that the
/// compiler vectorises it for that set.
#[inline(always)]
fn quantize_block_portable(
    values: &[f32],
    codes: &mut [i8],
    b: usize,
    config: QuantConfig,
) -> Result<f32, KernelError> {
    // For finite floats the order of |bits| is the order of magnitudes, and NaN and ±Inf
    // sort above every finite value: one integer max finds both the absmax and any
    // non-finite value, and vectorises.
    let max_bits = values
        .iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    if max_bits >= 0x7F80_0000 {
        return Err(config.non_finite(b, values.len() + b * config.block));
    }
    let scale = store_scale(f32::from_bits(max_bits), b, config)?;
    let multiplier = code_multiplier(scale);
    for (code, &v) in codes.iter_mut().zip(values) {
        *code = encode(v, multiplier);
    }
    Ok(scale)
}

impl Kernels for RayonKernels {
    fn name(&self) -> &'static str {
        "rayon"
    }

    fn quantize(
        &self,
        values: &[f32],
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError> {
        self.quantize_with(values.len(), &Source::Values(values), None, config)
    }

    fn pseudo_gradient_quantize(
        &self,
        global: &[f32],
        local: &[f32],
        residual: Option<&mut [f32]>,
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError> {
        check_lengths("local parameters", global.len(), local.len())?;
        match residual {
            None => self.quantize_with(
                global.len(),
                &Source::Difference {
                    global,
                    local,
                    carried: None,
                },
                None,
                config,
            ),
            Some(residual) => {
                check_lengths("residual", global.len(), residual.len())?;
                let previous = residual.to_vec();
                let source = Source::Difference {
                    global,
                    local,
                    carried: Some(&previous),
                };
                self.quantize_with(global.len(), &source, Some(residual), config)
            }
        }
    }

    fn dequantize_accumulate(
        &self,
        accumulator: &mut [f32],
        quantized: &QuantizedTensor,
        weight: f32,
    ) -> Result<(), KernelError> {
        check_lengths("accumulator", quantized.len(), accumulator.len())?;
        quantized.validate()?;
        let block = quantized.config.block;
        accumulator
            .par_chunks_mut(block)
            .zip(quantized.codes.par_chunks(block))
            .enumerate()
            .for_each(|(b, (acc, codes))| {
                let step = value_step(quantized.scales[b]) * weight;
                for (a, &c) in acc.iter_mut().zip(codes) {
                    *a += f32::from(c) * step;
                }
            });
        Ok(())
    }

    fn outer_nesterov_step(
        &self,
        params: &mut [f32],
        momentum: &mut [f32],
        delta: &[f32],
        lr: f32,
        mu: f32,
    ) -> Result<(), KernelError> {
        check_lengths("momentum", params.len(), momentum.len())?;
        check_lengths("delta", params.len(), delta.len())?;
        params
            .par_chunks_mut(CHUNK)
            .zip(momentum.par_chunks_mut(CHUNK))
            .zip(delta.par_chunks(CHUNK))
            .for_each(|((p, m), d)| {
                for ((p, m), &d) in p.iter_mut().zip(m.iter_mut()).zip(d) {
                    *m = mu * *m + d;
                    *p -= lr * (d + mu * *m);
                }
            });
        Ok(())
    }
}
