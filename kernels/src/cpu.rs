//! The rayon implementation: each block is quantized by one task, in one pass over memory
//! while the block is hot in cache.

use rayon::prelude::*;

use crate::quantized::{code_multiplier, encode, stored_scales, value_step};
use crate::{KernelError, Kernels, QuantConfig, QuantizedTensor, check_lengths};

/// Kernels on CPU threads (rayon's global pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct RayonKernels;

/// Elements per rayon task in elementwise loops: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

impl RayonKernels {
    /// Quantizes the values produced by `value(i)`, writing `residual` if given.
    fn quantize_with<F>(
        &self,
        len: usize,
        value: F,
        residual: Option<&mut [f32]>,
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError>
    where
        F: Fn(usize) -> f32 + Sync,
    {
        config.validate()?;
        let blocks = config.blocks(len);
        // Pass over each block once for its absmax (also catching non-finite values)...
        let absmax: Vec<Option<f32>> = (0..blocks)
            .into_par_iter()
            .map(|b| {
                let mut max = 0.0f32;
                for i in config.block_range(b, len) {
                    let v = value(i);
                    if !v.is_finite() {
                        return None;
                    }
                    max = max.max(v.abs());
                }
                Some(max)
            })
            .collect();
        if let Some(b) = absmax.iter().position(Option::is_none) {
            return Err(config.non_finite(b, len));
        }
        let absmax: Vec<f32> = absmax.into_iter().map(|a| a.unwrap_or(0.0)).collect();
        let scales = stored_scales(&absmax, config)?;
        // ...then encode it (the block is still in cache), updating the residual alongside.
        let mut codes = vec![0i8; len];
        let encode_block = |(b, out): (usize, &mut [i8])| {
            let multiplier = code_multiplier(scales[b]);
            let start = b * config.block;
            for (j, code) in out.iter_mut().enumerate() {
                *code = encode(value(start + j), multiplier);
            }
        };
        codes
            .par_chunks_mut(config.block)
            .enumerate()
            .for_each(encode_block);
        if let Some(residual) = residual {
            residual
                .par_chunks_mut(config.block)
                .enumerate()
                .for_each(|(b, out)| {
                    let step = value_step(scales[b]);
                    let start = b * config.block;
                    for (j, r) in out.iter_mut().enumerate() {
                        *r = value(start + j) - f32::from(codes[start + j]) * step;
                    }
                });
        }
        Ok(QuantizedTensor {
            config,
            codes,
            scales,
        })
    }
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
        self.quantize_with(values.len(), |i| values[i], None, config)
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
            None => self.quantize_with(global.len(), |i| global[i] - local[i], None, config),
            Some(residual) => {
                check_lengths("residual", global.len(), residual.len())?;
                let previous = residual.to_vec();
                self.quantize_with(
                    global.len(),
                    |i| (global[i] - local[i]) + previous[i],
                    Some(residual),
                    config,
                )
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
