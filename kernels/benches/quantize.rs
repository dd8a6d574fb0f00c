//! Throughput of the rayon kernels against a plain memcpy of the same buffer, side by side.
//!
//! `cargo bench -p sinter-kernels --bench quantize`: divan prints the time of each; the ratio
//! `memcpy time / kernel time` is the figure BENCHMARKS.md reports (target ≥ 0.5).

use divan::{Bencher, black_box};
use sinter_kernels::{Kernels, QuantConfig, RayonKernels};

/// The parity model's parameter count: one pseudo-gradient per round.
const LEN: usize = 857_216;

fn buffer(seed: u32) -> Vec<f32> {
    (0..LEN)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as f32 / u32::MAX as f32)
                - 0.5
        })
        .collect()
}

#[divan::bench]
fn memcpy_f32(bencher: Bencher) {
    let src = buffer(1);
    let mut dst = vec![0.0f32; LEN];
    bencher
        .counter(divan::counter::BytesCount::new(LEN * 4))
        .bench_local(|| dst.copy_from_slice(black_box(&src)));
}

#[divan::bench]
fn quantize(bencher: Bencher) {
    let src = buffer(2);
    bencher
        .counter(divan::counter::BytesCount::new(LEN * 4))
        .bench_local(|| {
            RayonKernels
                .quantize(black_box(&src), QuantConfig::default())
                .unwrap()
        });
}

#[divan::bench]
fn pseudo_gradient_quantize(bencher: Bencher) {
    let (global, local) = (buffer(3), buffer(4));
    bencher
        .counter(divan::counter::BytesCount::new(LEN * 4))
        .bench_local(|| {
            RayonKernels
                .pseudo_gradient_quantize(black_box(&global), &local, None, QuantConfig::default())
                .unwrap()
        });
}

#[divan::bench]
fn dequantize_accumulate(bencher: Bencher) {
    let q = RayonKernels
        .quantize(&buffer(5), QuantConfig::default())
        .unwrap();
    let mut acc = vec![0.0f32; LEN];
    bencher
        .counter(divan::counter::BytesCount::new(LEN * 4))
        .bench_local(|| {
            RayonKernels
                .dequantize_accumulate(black_box(&mut acc), &q, 0.25)
                .unwrap()
        });
}

fn main() {
    divan::main();
}
