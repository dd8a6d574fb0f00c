//! `exp` for `f32` that the compiler vectorizes, and the dispatch that compiles a loop for the
//! widest vector unit the CPU has.
//!
//! glibc's `expf` is a call per value; this one is branch-free arithmetic (Cody–Waite range
//! reduction and Cephes' degree-6 polynomial), so a loop over it becomes AVX-512 or AVX2
//! code. Its error is within 2 ulp of the true value. The same operations run whatever the
//! vector width (no fused multiply-adds are formed), so every CPU computes the same bits.
//! [`exp_avx512`] is the same operations written in AVX-512 instructions, for the row loops
//! (softmax, the cross-entropy) that the auto-vectorizer left mostly four wide.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts: the first exact in few bits, so `n · LN2_HI` has no rounding error.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` is under the smallest normal `f32`: flushed to 0.
const MIN_ARG: f32 = -87.33;
/// Above this, `2^n` would overflow the exponent field: `+∞`.
const MAX_ARG: f32 = 88.0;
/// Adding and subtracting 1.5 · 2²³ rounds an `f32` of magnitude below 2²² to an integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x`: 0 below −87.33, `+∞` above 88, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // `n` as an integer without a conversion (Rust's saturating `as i32` compiles to one
    // scalar conversion per value): `shifted`'s low mantissa bits are `n` above ROUND's.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let two_n = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    let e = e_r * two_n;
    if x < MIN_ARG {
        0.0
    } else if x > MAX_ARG {
        f32::INFINITY
    } else {
        e
    }
}

/// [`exp`] of 16 values with AVX-512 instructions: the same operations in the same order, so
/// the same bits, without depending on the auto-vectorizer (which left some loops over `exp`
/// scalar or four wide).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let splat = _mm512_set1_ps;
    // `max(MIN, x)` then `min(MAX, ·)`: each returns its second operand for a NaN, so a NaN
    // stays one, as `clamp` keeps it.
    let clamped = _mm512_min_ps(splat(MAX_ARG), _mm512_max_ps(splat(MIN_ARG), x));
    let shifted = _mm512_add_ps(_mm512_mul_ps(clamped, splat(LOG2_E)), splat(ROUND));
    let n = _mm512_sub_ps(shifted, splat(ROUND));
    let r = _mm512_sub_ps(
        _mm512_sub_ps(clamped, _mm512_mul_ps(n, splat(LN2_HI))),
        _mm512_mul_ps(n, splat(LN2_LO)),
    );
    let mut p = splat(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), splat(c));
    }
    let p_rr = _mm512_mul_ps(_mm512_mul_ps(p, r), r);
    let e_r = _mm512_add_ps(_mm512_add_ps(p_rr, r), splat(1.0));
    let n_int = _mm512_sub_epi32(
        _mm512_castps_si512(shifted),
        _mm512_set1_epi32(ROUND.to_bits() as i32),
    );
    let biased = _mm512_add_epi32(n_int, _mm512_set1_epi32(127));
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
    let e = _mm512_mul_ps(e_r, two_n);
    let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, splat(MAX_ARG));
    let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, splat(MIN_ARG));
    let e = _mm512_mask_blend_ps(above, e, splat(f32::INFINITY));
    _mm512_mask_blend_ps(below, e, _mm512_setzero_ps())
}

/// Runs `f` compiled for AVX-512 or AVX2 when the CPU has them (a loop in `f` over
/// `#[inline(always)]` arithmetic is then vectorized that wide), else as it is.
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 97th `f32` bit pattern from −87.33 to 88: about 10 million values.
    fn sweep() -> impl Iterator<Item = f32> {
        let negative = (0..=(-MIN_ARG).to_bits())
            .step_by(97)
            .map(|b| -f32::from_bits(b));
        let positive = (0..=MAX_ARG.to_bits()).step_by(97).map(f32::from_bits);
        negative.chain(positive)
    }

    #[test]
    fn exp_is_within_two_ulp_across_its_range() {
        for x in sweep() {
            let exact = (x as f64).exp();
            let ulp = f64::from(f32::EPSILON) * 2f64.powi(exact.log2().floor() as i32);
            let error = (f64::from(exp(x)) - exact).abs() / ulp;
            assert!(
                error <= 2.0,
                "exp({x}) = {}, true {exact}: {error} ulp",
                exp(x)
            );
        }
    }

    #[test]
    fn exp_at_its_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_exp_has_the_bits_of_the_scalar_one() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let edges = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -100.0,
            100.0,
            0.0,
            -0.0,
        ];
        let xs: Vec<f32> = edges.into_iter().chain(sweep().step_by(3)).collect();
        for chunk in xs.chunks_exact(16) {
            let mut out = [0.0f32; 16];
            // SAFETY: the CPU has AVX-512F (checked above); `chunk` and `out` hold 16 values.
            unsafe {
                use std::arch::x86_64::*;
                let v = exp_avx512(_mm512_loadu_ps(chunk.as_ptr()));
                _mm512_storeu_ps(out.as_mut_ptr(), v);
            }
            for (&x, &e) in chunk.iter().zip(&out) {
                let scalar = exp(x);
                let same = e.to_bits() == scalar.to_bits() || (e.is_nan() && scalar.is_nan());
                assert!(same, "exp({x}): AVX-512 {e}, scalar {scalar}");
            }
        }
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        let xs: Vec<f32> = sweep().step_by(7).collect();
        let scalar: Vec<u32> = xs
            .iter()
            .map(|&x| std::hint::black_box(exp(x)).to_bits())
            .collect();
        // Inlined into each target-feature wrapper, so each compiles its own vector code.
        #[inline(always)]
        fn run(xs: &[f32]) -> Vec<u32> {
            xs.iter().map(|&x| exp(x).to_bits()).collect()
        }
        assert_eq!(
            vectorized(
                #[inline(always)]
                || run(&xs)
            ),
            scalar
        );
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                assert_eq!(
                    unsafe {
                        with_avx512(
                            #[inline(always)]
                            || run(&xs),
                        )
                    },
                    scalar
                );
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                assert_eq!(
                    unsafe {
                        with_avx2(
                            #[inline(always)]
                            || run(&xs),
                        )
                    },
                    scalar
                );
            }
        }
    }
}
