//! Matrix products on the host through gemm, for the flex kernels: strided views of `f32`
//! buffers ([`Matrix`]), a product on the calling thread ([`product`], what attention's
//! per-head tasks run), and a product into a new buffer split across rayon's threads
//! ([`product_new`], the linear layers').
//!
//! gemm's own rayon split scales poorly on the linear layers' shapes (a weight's gradient,
//! `128 × 344` over 2048 tokens, ran at 1.1× one thread's speed on two), and burn's matmul
//! zeroes its output before gemm overwrites it. [`product_new`] gives each thread one
//! contiguous part of the output, one single-threaded gemm each, into memory it does not
//! clear. Every value is one dot product over `k` in gemm's order whatever part computes it,
//! so the bits do not depend on the number of threads (tested).

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::buffer::{unwritten, written};

/// A strided `f32` matrix inside a buffer: element `(r, c)` at `ptr + r · rs + c · cs`.
#[derive(Clone, Copy)]
pub(super) struct Matrix {
    ptr: *mut f32,
    rs: isize,
    cs: isize,
}

// SAFETY: a `Matrix` is an address; the tasks that share one read it, or write disjoint parts.
unsafe impl Send for Matrix {}
unsafe impl Sync for Matrix {}

impl Matrix {
    /// Row-major with `stride` values from one row to the next.
    pub(super) fn rows(ptr: *const f32, stride: usize) -> Self {
        Self {
            ptr: ptr.cast_mut(),
            rs: stride as isize,
            cs: 1,
        }
    }

    pub(super) fn transposed(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The matrix whose `(0, 0)` is this one's `(r, c)`.
    pub(super) fn at(self, r: usize, c: usize) -> Self {
        let offset = r as isize * self.rs + c as isize * self.cs;
        Self {
            ptr: self.ptr.wrapping_offset(offset),
            ..self
        }
    }
}

/// `dst = lhs · rhs` (`m × k` by `k × n`), or `dst += lhs · rhs` when `accumulate`, on this
/// thread.
///
/// # Safety
/// Each matrix's `m`, `n` or `k` rows and columns lie in a live buffer, and no other thread
/// touches `dst`'s.
pub(super) unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: Matrix,
    lhs: Matrix,
    rhs: Matrix,
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Below this many multiply-adds a product stays on one thread.
const PARALLEL_WORK: usize = 64 * 64 * 64;

/// `lhs · rhs` (`m × k` by `k × n`) as a new row-major `m × n` buffer: the longer of its
/// dimensions split into one contiguous part per rayon thread (rows in multiples of gemm's
/// 64-row kernel, columns in multiples of 16), each part one product on its thread.
///
/// # Safety
/// `lhs`'s `m` rows and `k` columns and `rhs`'s `k` rows and `n` columns lie in live buffers.
pub(super) unsafe fn product_new([m, n, k]: [usize; 3], lhs: Matrix, rhs: Matrix) -> Vec<f32> {
    let len = m.checked_mul(n).expect("product size overflows");
    if k == 0 {
        return vec![0.0; len];
    }
    let mut out = unwritten(len);
    let dst = Matrix::rows(out.as_mut_ptr().cast(), n);
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_WORK {
        1
    } else {
        rayon::current_num_threads()
    };
    let (long, align) = if m >= n { (m, 64) } else { (n, 16) };
    let part = long.div_ceil(threads).div_ceil(align) * align;
    (0..long.div_ceil(part.max(1)))
        .into_par_iter()
        .for_each(|i| {
            let (first, count) = (i * part, part.min(long - i * part));
            // SAFETY: the caller's contract for `lhs` and `rhs`; part `i` writes its own rows
            // (or columns) of `out`, whose capacity is `m · n`.
            unsafe {
                if m >= n {
                    product(
                        [count, n, k],
                        dst.at(first, 0),
                        lhs.at(first, 0),
                        rhs,
                        false,
                    )
                } else {
                    product(
                        [m, count, k],
                        dst.at(0, first),
                        lhs,
                        rhs.at(0, first),
                        false,
                    )
                }
            }
        });
    // SAFETY: the parts cover every row and column, and gemm wrote each value (`k > 0`, not
    // accumulating).
    unsafe { written(out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    /// `lhs · rhs` for a row-major `lhs` (or the transpose of a row-major `[k, m]` one) and a
    /// row-major `rhs`, by [`product_new`] on a pool of `threads`.
    fn new_product(threads: usize, [m, n, k]: [usize; 3], transposed: bool) -> Vec<f32> {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let lhs = if transposed {
            Matrix::rows(a.as_ptr(), m).transposed()
        } else {
            Matrix::rows(a.as_ptr(), k)
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        // SAFETY: `a` holds `m · k` values and `b` `k · n`.
        pool.install(|| unsafe { product_new([m, n, k], lhs, Matrix::rows(b.as_ptr(), n)) })
    }

    #[test]
    fn a_product_split_across_threads_has_the_bits_of_one_on_a_single_thread() {
        // More rows than columns and the reverse, parts that are not whole kernels, a long
        // inner dimension (a weight's gradient) read through a transposed view.
        for (shape, transposed) in [
            ([300, 40, 72], false),
            ([40, 300, 72], false),
            ([72, 200, 600], true),
            ([200, 72, 600], true),
        ] {
            let one = new_product(1, shape, transposed);
            let [m, n, _] = shape;
            assert_eq!(one.len(), m * n);
            for threads in [2, 3] {
                let split = new_product(threads, shape, transposed);
                let same = one
                    .iter()
                    .zip(&split)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{shape:?} on {threads} threads");
            }
            let [a, b] = [values(shape[0] * shape[2], 1), values(shape[2] * n, 2)];
            let (i, j) = (m - 1, n / 2);
            let a_at = |r: usize, c: usize| {
                if transposed {
                    a[c * m + r]
                } else {
                    a[r * shape[2] + c]
                }
            };
            let naive: f64 = (0..shape[2])
                .map(|c| a_at(i, c) as f64 * b[c * n + j] as f64)
                .sum();
            assert!((one[i * n + j] as f64 - naive).abs() < 1e-4, "{shape:?}");
        }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros_and_an_empty_output_nothing() {
        assert_eq!(new_product(2, [3, 4, 0], false), vec![0.0; 12]);
        assert!(new_product(2, [0, 4, 5], false).is_empty());
        assert!(new_product(2, [3, 0, 5], false).is_empty());
    }
}
