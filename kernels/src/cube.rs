//! The CubeCL implementation (wgpu or CUDA).
//!
//! Quantization takes two launches: `block_absmax` (one thread per block, flagging
//! non-finite values), then `encode_blocks` with the per-block multipliers the host derived
//! from the absmax rounded to its storage type. The host step in between is what lets codes
//! match the CPU path bit for bit, with f16 scales too. Codes travel packed, four per `u32`,
//! because WGSL has no 8-bit storage.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::quantized::{code_multiplier, stored_scales, value_step};
use crate::{KernelError, Kernels, QuantConfig, QuantizedTensor, check_lengths};

/// Where the quantized values come from.
const SOURCE_VALUES: u32 = 0;
const SOURCE_DIFFERENCE: u32 = 1;
const SOURCE_DIFFERENCE_PLUS_RESIDUAL: u32 = 2;

const THREADS: u32 = 256;

#[cube]
fn source_value(
    a: &Array<f32>,
    b: &Array<f32>,
    residual: &Array<f32>,
    i: usize,
    #[comptime] source: u32,
) -> f32 {
    if comptime![source == SOURCE_VALUES] {
        a[i]
    } else if comptime![source == SOURCE_DIFFERENCE] {
        a[i] - b[i]
    } else {
        (a[i] - b[i]) + residual[i]
    }
}

#[cube(launch_unchecked)]
fn block_absmax(
    a: &Array<f32>,
    b: &Array<f32>,
    residual: &Array<f32>,
    absmax: &mut Array<f32>,
    non_finite: &mut Array<u32>,
    len: u32,
    block: u32,
    #[comptime] source: u32,
) {
    let blk = ABSOLUTE_POS as u32;
    if blk * block < len {
        let start = blk * block;
        let end = min(start + block, len);
        let mut largest = 0.0f32;
        let mut bad = 0u32;
        for i in start..end {
            let v = source_value(a, b, residual, i as usize, source);
            let exponent = u32::reinterpret(v) & 0x7F80_0000u32;
            if exponent == 0x7F80_0000u32 {
                bad = 1u32;
            }
            largest = max(largest, v.abs());
        }
        absmax[blk as usize] = largest;
        non_finite[blk as usize] = bad;
    }
}

#[cube]
fn encode_one(v: f32, multiplier: f32) -> i32 {
    let t = v * multiplier;
    let magnitude = min((t.abs() + 0.5f32).floor(), 127.0f32);
    let signed = select(t < 0.0f32, -magnitude, magnitude);
    i32::cast_from(signed)
}

#[cube(launch_unchecked)]
fn encode_blocks(
    a: &Array<f32>,
    b: &Array<f32>,
    residual: &mut Array<f32>,
    multipliers: &Array<f32>,
    steps: &Array<f32>,
    words: &mut Array<u32>,
    len: u32,
    block: u32,
    #[comptime] source: u32,
) {
    let word = ABSOLUTE_POS as u32;
    if word * 4u32 < len {
        let mut packed = 0u32;
        for k in 0..4u32 {
            let i = word * 4u32 + k;
            if i < len {
                let blk = (i / block) as usize;
                let v = source_value(a, b, residual, i as usize, source);
                let code = encode_one(v, multipliers[blk]);
                packed |= (u32::cast_from(code) & 0xFFu32) << (k * 8u32);
                if comptime![source == SOURCE_DIFFERENCE_PLUS_RESIDUAL] {
                    residual[i as usize] = v - f32::cast_from(code) * steps[blk];
                }
            }
        }
        words[word as usize] = packed;
    }
}

#[cube(launch_unchecked)]
fn dequantize_accumulate_words(
    accumulator: &mut Array<f32>,
    words: &Array<u32>,
    steps: &Array<f32>,
    len: u32,
    block: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        let word = words[(i / 4u32) as usize];
        let byte = (word >> ((i % 4u32) * 8u32)) & 0xFFu32;
        // Sign-extend the byte.
        let code = i32::cast_from(byte << 24u32) >> 24u32;
        let step = steps[(i / block) as usize];
        accumulator[i as usize] += f32::cast_from(code) * step;
    }
}

#[cube(launch_unchecked)]
fn nesterov_step(
    params: &mut Array<f32>,
    momentum: &mut Array<f32>,
    delta: &Array<f32>,
    lr: f32,
    mu: f32,
    len: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < len {
        let idx = i as usize;
        let d = delta[idx];
        let m = mu * momentum[idx] + d;
        momentum[idx] = m;
        params[idx] -= lr * (d + mu * m);
    }
}

/// Kernels on a CubeCL runtime: `CubeKernels::<cubecl::wgpu::WgpuRuntime>::new(&device)`.
pub struct CubeKernels<R: Runtime> {
    client: ComputeClient<R>,
    name: &'static str,
}

impl<R: Runtime> std::fmt::Debug for CubeKernels<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CubeKernels")
            .field("runtime", &self.name)
            .finish()
    }
}

#[cfg(feature = "wgpu")]
impl CubeKernels<cubecl::wgpu::WgpuRuntime> {
    /// Kernels on wgpu's default adapter (on a machine without a GPU, Mesa's lavapipe).
    pub fn wgpu() -> Self {
        Self::new(&cubecl::wgpu::WgpuDevice::DefaultDevice)
    }
}

#[cfg(feature = "cuda")]
impl CubeKernels<cubecl::cuda::CudaRuntime> {
    /// Kernels on the first CUDA device.
    pub fn cuda() -> Self {
        Self::new(&cubecl::cuda::CudaDevice::new(0))
    }
}

fn cube_count(items: usize) -> CubeCount {
    CubeCount::Static((items as u32).div_ceil(THREADS).max(1), 1, 1)
}

fn len_u32(len: usize) -> Result<u32, KernelError> {
    u32::try_from(len)
        .map_err(|_| KernelError::Runtime(format!("buffer of {len} elements exceeds u32 indexing")))
}

impl<R: Runtime> CubeKernels<R> {
    /// Kernels on the given device of runtime `R`.
    pub fn new(device: &R::Device) -> Self {
        let client = R::client(device);
        let name = R::name(&client);
        Self { client, name }
    }

    /// Kernels on `device` once one has compiled and run there; a missing device, driver or
    /// kernel compiler is [`KernelError::DeviceUnavailable`] with the runtime's own words.
    /// CubeCL reports these by panicking (in its device thread, then in the caller's), so
    /// the probe catches the panic and keeps its message off stderr.
    pub fn probed(device: &R::Device) -> Result<Self, KernelError> {
        let quiet = std::panic::take_hook();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = messages.clone();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(text);
        }));
        let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let kernels = Self::new(device);
            kernels.quantize(
                &[1.0; 8],
                crate::QuantConfig {
                    block: 8,
                    ..Default::default()
                },
            )?;
            Ok(kernels)
        }));
        std::panic::set_hook(quiet);
        tried.unwrap_or_else(|_| {
            let messages = messages.lock().unwrap_or_else(|e| e.into_inner());
            // The first panic is the cause; later ones are its echoes (a closed channel).
            let cause = messages.first().map_or("unknown", |m| m.as_str());
            Err(KernelError::DeviceUnavailable(
                cause.lines().map(str::trim).collect::<Vec<_>>().join(" "),
            ))
        })
    }

    fn upload(&self, values: &[f32]) -> Handle {
        // Zero-length bindings are not allowed by every backend.
        if values.is_empty() {
            self.client.create_from_slice(f32::as_bytes(&[0.0]))
        } else {
            self.client.create_from_slice(f32::as_bytes(values))
        }
    }

    fn read_f32(&self, handle: Handle, len: usize) -> Result<Vec<f32>, KernelError> {
        let bytes = self
            .client
            .read_one(handle)
            .map_err(|e| KernelError::Runtime(format!("{e:?}")))?;
        Ok(f32::from_bytes(&bytes)[..len].to_vec())
    }

    fn read_u32(&self, handle: Handle, len: usize) -> Result<Vec<u32>, KernelError> {
        let bytes = self
            .client
            .read_one(handle)
            .map_err(|e| KernelError::Runtime(format!("{e:?}")))?;
        Ok(u32::from_bytes(&bytes)[..len].to_vec())
    }

    /// Both quantization launches for values defined by `source` over `a`, `b`, `residual`.
    fn quantize_source(
        &self,
        a: &[f32],
        b: &[f32],
        residual: Option<&mut [f32]>,
        source: u32,
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError> {
        config.validate()?;
        let len = a.len();
        if len == 0 {
            return Ok(QuantizedTensor {
                config,
                codes: Vec::new(),
                scales: Vec::new(),
            });
        }
        let len32 = len_u32(len)?;
        let blocks = config.blocks(len);
        let a_h = self.upload(a);
        let b_h = self.upload(b);
        let r_h = self.upload(residual.as_deref().unwrap_or(&[]));
        let absmax_h = self.client.empty(blocks * 4);
        let bad_h = self.client.empty(blocks * 4);
        unsafe {
            block_absmax::launch_unchecked::<R>(
                &self.client,
                cube_count(blocks),
                CubeDim::new_1d(THREADS),
                ArrayArg::from_raw_parts(a_h.clone(), a.len().max(1)),
                ArrayArg::from_raw_parts(b_h.clone(), b.len().max(1)),
                ArrayArg::from_raw_parts(r_h.clone(), len.max(1)),
                ArrayArg::from_raw_parts(absmax_h.clone(), blocks),
                ArrayArg::from_raw_parts(bad_h.clone(), blocks),
                len32,
                config.block as u32,
                source,
            )
        };
        let bad = self.read_u32(bad_h, blocks)?;
        if let Some(blk) = bad.iter().position(|&x| x != 0) {
            return Err(config.non_finite(blk, len));
        }
        let scales = stored_scales(&self.read_f32(absmax_h, blocks)?, config)?;
        let multipliers: Vec<f32> = scales.iter().map(|&s| code_multiplier(s)).collect();
        let steps: Vec<f32> = scales.iter().map(|&s| value_step(s)).collect();
        let words_len = len.div_ceil(4);
        let words_h = self.client.empty(words_len * 4);
        unsafe {
            encode_blocks::launch_unchecked::<R>(
                &self.client,
                cube_count(words_len),
                CubeDim::new_1d(THREADS),
                ArrayArg::from_raw_parts(a_h, a.len().max(1)),
                ArrayArg::from_raw_parts(b_h, b.len().max(1)),
                ArrayArg::from_raw_parts(r_h.clone(), len.max(1)),
                ArrayArg::from_raw_parts(self.upload(&multipliers), blocks),
                ArrayArg::from_raw_parts(self.upload(&steps), blocks),
                ArrayArg::from_raw_parts(words_h.clone(), words_len),
                len32,
                config.block as u32,
                source,
            )
        };
        let words = self.read_u32(words_h, words_len)?;
        let codes = words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(len)
            .map(|b| b as i8)
            .collect();
        if let Some(residual) = residual {
            residual.copy_from_slice(&self.read_f32(r_h, len)?);
        }
        Ok(QuantizedTensor {
            config,
            codes,
            scales,
        })
    }
}

impl<R: Runtime> Kernels for CubeKernels<R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn device_memory_reserved(&self) -> Option<u64> {
        self.client.memory_usage().ok().map(|u| u.bytes_reserved)
    }

    fn quantize(
        &self,
        values: &[f32],
        config: QuantConfig,
    ) -> Result<QuantizedTensor, KernelError> {
        self.quantize_source(values, &[], None, SOURCE_VALUES, config)
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
            None => self.quantize_source(global, local, None, SOURCE_DIFFERENCE, config),
            Some(residual) => {
                check_lengths("residual", global.len(), residual.len())?;
                self.quantize_source(
                    global,
                    local,
                    Some(residual),
                    SOURCE_DIFFERENCE_PLUS_RESIDUAL,
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
        let len = accumulator.len();
        if len == 0 {
            return Ok(());
        }
        let mut words = vec![0u32; len.div_ceil(4)];
        for (w, chunk) in words.iter_mut().zip(quantized.codes.chunks(4)) {
            let mut bytes = [0u8; 4];
            for (b, &c) in bytes.iter_mut().zip(chunk) {
                *b = c as u8;
            }
            *w = u32::from_le_bytes(bytes);
        }
        let steps: Vec<f32> = quantized
            .scales
            .iter()
            .map(|&s| value_step(s) * weight)
            .collect();
        let acc_h = self.upload(accumulator);
        unsafe {
            dequantize_accumulate_words::launch_unchecked::<R>(
                &self.client,
                cube_count(len),
                CubeDim::new_1d(THREADS),
                ArrayArg::from_raw_parts(acc_h.clone(), len),
                ArrayArg::from_raw_parts(
                    self.client.create_from_slice(u32::as_bytes(&words)),
                    words.len(),
                ),
                ArrayArg::from_raw_parts(self.upload(&steps), steps.len()),
                len_u32(len)?,
                quantized.config.block as u32,
            )
        };
        accumulator.copy_from_slice(&self.read_f32(acc_h, len)?);
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
        let len = params.len();
        if len == 0 {
            return Ok(());
        }
        let p_h = self.upload(params);
        let m_h = self.upload(momentum);
        unsafe {
            nesterov_step::launch_unchecked::<R>(
                &self.client,
                cube_count(len),
                CubeDim::new_1d(THREADS),
                ArrayArg::from_raw_parts(p_h.clone(), len),
                ArrayArg::from_raw_parts(m_h.clone(), len),
                ArrayArg::from_raw_parts(self.upload(delta), len),
                lr,
                mu,
                len_u32(len)?,
            )
        };
        params.copy_from_slice(&self.read_f32(p_h, len)?);
        momentum.copy_from_slice(&self.read_f32(m_h, len)?);
        Ok(())
    }
}
