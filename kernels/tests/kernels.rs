//! One test suite, run against every implementation: the rayon path and CubeCL on wgpu
//! (Mesa's software Vulkan when there is no GPU). Each implementation must satisfy the
//! properties on its own, and the two must agree: codes and scales exactly, floats within
//! `FLOAT_TOLERANCE`.

use proptest::prelude::*;
use sinter_kernels::{
    FLOAT_TOLERANCE, KernelError, Kernels, QuantConfig, QuantizedTensor, RayonKernels, ScaleDtype,
    WgpuKernels,
};
use std::sync::OnceLock;

fn gpu() -> &'static WgpuKernels {
    static GPU: OnceLock<WgpuKernels> = OnceLock::new();
    GPU.get_or_init(WgpuKernels::wgpu)
}

fn implementations() -> [&'static dyn Kernels; 2] {
    [&RayonKernels, gpu()]
}

/// A deterministic pseudo-random buffer (xorshift), spanning several magnitudes.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let unit = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            unit * 10f32.powi((s % 5) as i32 - 3)
        })
        .collect()
}

fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tolerance = FLOAT_TOLERANCE * x.abs().max(y.abs()).max(1e-30) + f32::MIN_POSITIVE;
        assert!((x - y).abs() <= tolerance, "{what}[{i}]: {x} vs {y}");
    }
}

/// Every dequantized value lies within half a quantization step of the original.
fn assert_within_half_step(original: &[f32], q: &QuantizedTensor, restored: &[f32]) {
    for (i, (o, r)) in original.iter().zip(restored).enumerate() {
        let step = q.scales[i / q.config.block] / 127.0;
        assert!(
            (o - r).abs() <= step * 0.5 + step * 1e-4 + 1e-30,
            "value {i}: {o} restored as {r}, step {step}"
        );
    }
}

const CONFIGS: [QuantConfig; 3] = [
    QuantConfig {
        block: 256,
        scale: ScaleDtype::F32,
    },
    QuantConfig {
        block: 64,
        scale: ScaleDtype::F16,
    },
    QuantConfig {
        block: 4,
        scale: ScaleDtype::F32,
    },
];

#[test]
fn quantize_roundtrip_is_within_half_a_step_and_implementations_agree() {
    for config in CONFIGS {
        for len in [0, 1, 3, 255, 256, 257, 1000, 4099] {
            let x = values(len, len as u64 + 7);
            let [cpu, gpu] = implementations().map(|k| k.quantize(&x, config).unwrap());
            assert_eq!(
                cpu.codes, gpu.codes,
                "codes differ for {config:?}, len {len}"
            );
            assert_eq!(
                cpu.scales, gpu.scales,
                "scales differ for {config:?}, len {len}"
            );
            for k in implementations() {
                let restored = k.dequantize(&cpu).unwrap();
                assert_within_half_step(&x, &cpu, &restored);
            }
        }
    }
}

#[test]
fn zeros_and_denormals_encode_without_dividing_by_zero() {
    let mut x = vec![0.0f32; 600];
    x[260] = f32::from_bits(1); // smallest denormal
    x[261] = -f32::from_bits(0x007F_FFFF); // largest denormal
    x[520] = 1e-30; // tiny but normal: kept
    for k in implementations() {
        let q = k.quantize(&x, QuantConfig::default()).unwrap();
        assert_eq!(q.scales[0], 0.0);
        assert!(q.codes[..256].iter().all(|&c| c == 0));
        // A block of denormals flushes to zero rather than overflowing 127 / absmax.
        assert_eq!(q.scales[1], 0.0, "{}", k.name());
        assert!(q.codes[256..512].iter().all(|&c| c == 0), "{}", k.name());
        assert_eq!(q.codes[520], 127, "{}", k.name());
        assert!(
            q.codes[512..]
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 8 || c == 0),
            "{}",
            k.name()
        );
        let restored = k.dequantize(&q).unwrap();
        assert!(restored.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn non_finite_values_are_rejected_naming_the_block() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = values(1000, 3);
        x[700] = bad;
        for k in implementations() {
            let err = k.quantize(&x, QuantConfig::default()).unwrap_err();
            assert_eq!(
                err,
                KernelError::NonFinite {
                    block: 2,
                    start: 512,
                    end: 768
                },
                "{} on {bad}",
                k.name()
            );
        }
    }
}

#[test]
fn pseudo_gradient_quantize_equals_quantizing_the_difference() {
    let global = values(5000, 11);
    let local = values(5000, 12);
    let diff: Vec<f32> = global.iter().zip(&local).map(|(g, l)| g - l).collect();
    for config in CONFIGS {
        for k in implementations() {
            let fused = k
                .pseudo_gradient_quantize(&global, &local, None, config)
                .unwrap();
            let plain = k.quantize(&diff, config).unwrap();
            assert_eq!(fused, plain, "{}", k.name());
        }
    }
}

#[test]
fn error_feedback_carries_exactly_what_quantization_lost() {
    let global = values(3000, 21);
    let local = values(3000, 22);
    let start = values(3000, 23);
    let config = QuantConfig {
        block: 128,
        scale: ScaleDtype::F16,
    };
    let mut results = Vec::new();
    for k in implementations() {
        let mut residual = start.clone();
        let q = k
            .pseudo_gradient_quantize(&global, &local, Some(&mut residual), config)
            .unwrap();
        let restored = k.dequantize(&q).unwrap();
        for i in 0..global.len() {
            let sent = (global[i] - local[i]) + start[i];
            let expect = sent - restored[i];
            assert!(
                (residual[i] - expect).abs() <= 1e-6 * sent.abs().max(1e-3),
                "{}: residual[{i}]",
                k.name()
            );
        }
        results.push((q, residual));
    }
    assert_eq!(
        results[0].0, results[1].0,
        "codes with error feedback differ"
    );
    assert_close("residual", &results[0].1, &results[1].1);
}

#[test]
fn a_failed_quantization_leaves_the_residual_untouched() {
    let mut global = values(600, 1);
    global[5] = f32::NAN;
    let local = values(600, 2);
    for k in implementations() {
        let mut residual = values(600, 3);
        let before = residual.clone();
        assert!(
            k.pseudo_gradient_quantize(
                &global,
                &local,
                Some(&mut residual),
                QuantConfig::default()
            )
            .is_err()
        );
        assert_eq!(residual, before, "{}", k.name());
    }
}

#[test]
fn dequantize_accumulate_sums_many_peers() {
    let config = QuantConfig::default();
    let peers: Vec<Vec<f32>> = (0..5).map(|p| values(2049, 100 + p)).collect();
    let quantized: Vec<QuantizedTensor> = peers
        .iter()
        .map(|x| RayonKernels.quantize(x, config).unwrap())
        .collect();
    let mut sums = Vec::new();
    for k in implementations() {
        let mut acc = vec![0.0f32; 2049];
        for q in &quantized {
            k.dequantize_accumulate(&mut acc, q, 0.2).unwrap();
        }
        for i in 0..acc.len() {
            let mean: f32 = peers.iter().map(|x| x[i]).sum::<f32>() / 5.0;
            let step: f32 = quantized
                .iter()
                .map(|q| q.scales[i / 256] / 127.0)
                .sum::<f32>()
                / 5.0;
            assert!(
                (acc[i] - mean).abs() <= step * 0.5 + 1e-6,
                "{}: mean[{i}]",
                k.name()
            );
        }
        sums.push(acc);
    }
    assert_close("accumulated mean", &sums[0], &sums[1]);
}

#[test]
fn outer_step_matches_pytorch_sgd_nesterov() {
    // Reference values from torch.optim.SGD(lr=0.7, momentum=0.9, nesterov=True, dampening=0)
    // on params [1, -2, 0.5], gradients (the pseudo-gradients) [0.1, -0.2, 0.3] then
    // [0.05, 0.05, -0.1]: m1 = g1, p1 = p0 - lr (g1 + mu m1); m2 = mu m1 + g2, p2 = p1 - lr (g2 + mu m2).
    let expected_after_two = [0.7438f32, -1.6871, 0.0639];
    for k in implementations() {
        let mut params = vec![1.0f32, -2.0, 0.5];
        let mut momentum = vec![0.0f32; 3];
        k.outer_nesterov_step(&mut params, &mut momentum, &[0.1, -0.2, 0.3], 0.7, 0.9)
            .unwrap();
        k.outer_nesterov_step(&mut params, &mut momentum, &[0.05, 0.05, -0.1], 0.7, 0.9)
            .unwrap();
        for (p, e) in params.iter().zip(expected_after_two) {
            assert!((p - e).abs() < 1e-6, "{}: {params:?}", k.name());
        }
    }
}

#[test]
fn outer_step_implementations_agree_on_large_buffers() {
    let delta = values(100_003, 5);
    let mut results = Vec::new();
    for k in implementations() {
        let mut params = values(100_003, 6);
        let mut momentum = values(100_003, 7);
        k.outer_nesterov_step(&mut params, &mut momentum, &delta, 0.7, 0.9)
            .unwrap();
        results.push((params, momentum));
    }
    assert_close("params", &results[0].0, &results[1].0);
    assert_close("momentum", &results[0].1, &results[1].1);
}

#[test]
fn mismatched_lengths_and_bad_blocks_are_typed_errors() {
    for k in implementations() {
        assert!(matches!(
            k.pseudo_gradient_quantize(&[1.0; 8], &[1.0; 7], None, QuantConfig::default()),
            Err(KernelError::LengthMismatch { .. })
        ));
        assert_eq!(
            k.quantize(
                &[1.0; 8],
                QuantConfig {
                    block: 6,
                    scale: ScaleDtype::F32
                }
            ),
            Err(KernelError::InvalidBlockSize(6))
        );
        let q = RayonKernels
            .quantize(&[1.0; 8], QuantConfig::default())
            .unwrap();
        assert!(matches!(
            k.dequantize_accumulate(&mut [0.0; 9], &q, 1.0),
            Err(KernelError::LengthMismatch { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn implementations_agree_on_arbitrary_finite_input(
        x in prop::collection::vec(prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO, 0..700),
        block in prop::sample::select(vec![4usize, 16, 256]),
        f16 in any::<bool>(),
    ) {
        // Keep magnitudes where differences cannot overflow.
        let x: Vec<f32> = x.into_iter().map(|v| v.clamp(-1e30, 1e30)).collect();
        let config = QuantConfig { block, scale: if f16 { ScaleDtype::F16 } else { ScaleDtype::F32 } };
        let x: Vec<f32> = if f16 { x.into_iter().map(|v| v.clamp(-60000.0, 60000.0)).collect() } else { x };
        let cpu = RayonKernels.quantize(&x, config).unwrap();
        let gpu = gpu().quantize(&x, config).unwrap();
        prop_assert_eq!(&cpu.codes, &gpu.codes);
        prop_assert_eq!(&cpu.scales, &gpu.scales);
        prop_assert!(cpu.codes.iter().all(|&c| c != i8::MIN));
    }

    #[test]
    fn f16_scales_that_overflow_are_an_error(big in 65520.0f32..1e30) {
        let config = QuantConfig { block: 4, scale: ScaleDtype::F16 };
        for k in implementations() {
            let is_overflow = matches!(k.quantize(&[1.0, big], config), Err(KernelError::ScaleOverflow { block: 0, .. }));
            prop_assert!(is_overflow);
        }
    }
}
