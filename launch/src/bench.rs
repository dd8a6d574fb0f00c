//! `launch bench kernels`: the rayon kernels' throughput against a plain memcpy of the same
//! `f32` buffer, measured side by side in one process. A ratio of 1 means the kernel streams
//! its input as fast as memory can be copied; the target is at least 0.5.

use std::time::{Duration, Instant};

use sinter_kernels::{Kernels, QuantConfig, RayonKernels};

/// Median wall time of `iters` calls of `f` (after one warm-up call).
fn median_time(iters: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Runs the comparison on buffers of `len` values and prints a table.
pub fn kernels(len: usize, iters: usize) {
    let values = |seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| {
                (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as f32 / u32::MAX as f32
                    - 0.5
            })
            .collect()
    };
    let (global, local) = (values(1), values(2));
    let config = QuantConfig::default();
    let mut copy = vec![0.0f32; len];
    let memcpy = median_time(iters, || {
        copy.copy_from_slice(std::hint::black_box(&global))
    });
    let quantized = RayonKernels
        .quantize(&global, config)
        .expect("finite input");
    let mut accumulator = vec![0.0f32; len];
    let mut momentum = vec![0.0f32; len];
    let rows: Vec<(&str, Duration)> = vec![
        ("memcpy (baseline)", memcpy),
        (
            "quantize",
            median_time(iters, || {
                drop(RayonKernels.quantize(std::hint::black_box(&global), config))
            }),
        ),
        (
            "pseudo_gradient_quantize",
            median_time(iters, || {
                drop(RayonKernels.pseudo_gradient_quantize(
                    &global,
                    std::hint::black_box(&local),
                    None,
                    config,
                ))
            }),
        ),
        (
            "dequantize_accumulate",
            median_time(iters, || {
                drop(RayonKernels.dequantize_accumulate(&mut accumulator, &quantized, 0.25))
            }),
        ),
        (
            "outer_nesterov_step",
            median_time(iters, || {
                drop(RayonKernels.outer_nesterov_step(&mut copy, &mut momentum, &local, 0.7, 0.9))
            }),
        ),
    ];
    println!(
        "{len} f32 values ({:.1} MB), median of {iters} runs, {} rayon threads",
        len as f64 * 4e-6,
        rayon::current_num_threads()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>16}",
        "operation", "time", "GB/s", "ratio to memcpy"
    );
    for (name, t) in rows {
        let gbps = len as f64 * 4.0 / t.as_secs_f64() / 1e9;
        println!(
            "{name:<26} {:>8.3}ms {gbps:>10.2} {:>16.2}",
            t.as_secs_f64() * 1e3,
            memcpy.as_secs_f64() / t.as_secs_f64()
        );
    }
}
