//! Causal self-attention on flex, without splitting the heads into their own tensors.
//!
//! For each sequence and head, gemm multiplies strided views of the token-major projections
//! (`[tokens, heads · head_dim]`, a head's `head_dim` columns), so the `[batch, heads, seq,
//! head_dim]` copies burn makes forward and backward are gone. Only the causal part is
//! computed: queries go in blocks of [`BLOCK`], and a block multiplies only the keys up to its
//! last query. Each rayon task is one sequence and head (forward), or one sequence and
//! key/value head with the query heads sharing it in order (backward), on one thread: the
//! same bits whatever the number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::AttentionShape;
use super::buffer::{unwritten, written, written_part};
use super::exp::{exp, vectorized};
use super::flex::fold_lanes;
#[cfg(target_arch = "x86_64")]
use super::flex::{exp_terms_avx512, scale_avx512};
use super::matrix::{Matrix, product};

/// Queries per block of the causal products.
const BLOCK: usize = 32;

/// A token-major projection `[batch · seq, heads · head_dim]` as one matrix per sequence and
/// head.
#[derive(Clone, Copy)]
struct Heads {
    all: Matrix,
    seq: usize,
    head_dim: usize,
}

impl Heads {
    fn new(ptr: *const f32, heads: usize, shape: AttentionShape) -> Self {
        Self {
            all: Matrix::rows(ptr, heads * shape.head_dim),
            seq: shape.seq,
            head_dim: shape.head_dim,
        }
    }

    /// Sequence `b`'s head `h`, `[seq, head_dim]`.
    fn of(self, b: usize, h: usize) -> Matrix {
        self.all.at(b * self.seq, h * self.head_dim)
    }
}

/// The query blocks of a sequence: `(first, count)`.
fn blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..seq)
        .step_by(BLOCK)
        .map(move |first| (first, BLOCK.min(seq - first)))
}

/// How many keys query `i`'s block computed: up to the block's last query.
fn computed(i: usize, seq: usize) -> usize {
    ((i / BLOCK + 1) * BLOCK).min(seq)
}

/// The buffers' sizes against `shape`: every view below stays inside them.
fn check(q: &[f32], kv: [&[f32]; 2], shape: AttentionShape) {
    let tokens = shape.batch * shape.seq;
    assert!(shape.kv_heads > 0 && shape.heads.is_multiple_of(shape.kv_heads));
    assert_eq!(q.len(), tokens * shape.heads * shape.head_dim, "q");
    for t in kv {
        assert_eq!(t.len(), tokens * shape.kv_heads * shape.head_dim, "k, v");
    }
}

/// The output `[tokens, heads · head_dim]` and the probabilities `[batch · heads · seq, seq]`.
pub(super) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
) -> (Vec<f32>, Vec<f32>) {
    check(q, [k, v], shape);
    let AttentionShape {
        seq,
        heads,
        head_dim: d,
        ..
    } = shape;
    let probs_len = shape.batch * heads * seq * seq;
    if probs_len == 0 || d == 0 {
        return (vec![0.0; q.len()], vec![0.0; probs_len]);
    }
    let (mut out, mut probs) = (unwritten(q.len()), unwritten(probs_len));
    let out_heads = Heads::new(out.as_mut_ptr().cast(), heads, shape);
    let q_heads = Heads::new(q.as_ptr(), heads, shape);
    let [k_heads, v_heads] = [k, v].map(|t| Heads::new(t.as_ptr(), shape.kv_heads, shape));
    probs
        .par_chunks_mut(seq * seq)
        .enumerate()
        .for_each(|(task, p)| {
            let (b, h) = (task / heads, task % heads);
            let g = h / shape.group();
            let (q, out) = (q_heads.of(b, h), out_heads.of(b, h));
            let (k, v) = (k_heads.of(b, g), v_heads.of(b, g));
            let scores = Matrix::rows(p.as_mut_ptr().cast(), seq);
            for (first, n) in blocks(seq) {
                let seen = first + n;
                // SAFETY: rows `first..seen` of this sequence's `q` and `k` (`head_dim`
                // columns of a head), and this task's own `p`, whose rows it writes up to
                // the block's last query.
                unsafe {
                    product(
                        [n, seen, d],
                        scores.at(first, 0),
                        q.at(first, 0),
                        k.transposed(),
                        false,
                    )
                };
            }
            vectorized(
                #[inline(always)]
                || {
                    for (i, row) in p.chunks_mut(seq).enumerate() {
                        let (scores, future) = row.split_at_mut(computed(i, seq));
                        // SAFETY: the products above wrote the scores up to the block's
                        // last query.
                        softmax_row(unsafe { written_part(scores) }, i + 1, shape.scale());
                        future.fill(MaybeUninit::new(0.0));
                    }
                },
            );
            let p = Matrix::rows(p.as_ptr().cast(), seq);
            for (first, n) in blocks(seq) {
                let seen = first + n;
                // SAFETY: as above; `out`'s rows and columns are this sequence's and head's
                // only, and the blocks write each of its rows.
                unsafe { product([n, d, seen], out.at(first, 0), p.at(first, 0), v, false) };
            }
        });
    // SAFETY: each task wrote its sequence and head's rows of `out` and every value of its
    // `probs` (scores or zeros), and the tasks cover every sequence and head.
    unsafe { (written(out), written(probs)) }
}

/// `dq`, `dk`, `dv` in the layouts of `q`, `k`, `v`.
pub(super) fn backward(
    [q, k, v]: [&[f32]; 3],
    probs: &[f32],
    grad: &[f32],
    shape: AttentionShape,
) -> [Vec<f32>; 3] {
    check(q, [k, v], shape);
    let AttentionShape {
        seq,
        heads,
        kv_heads,
        head_dim: d,
        ..
    } = shape;
    assert_eq!(grad.len(), q.len(), "grad");
    assert_eq!(probs.len(), shape.batch * heads * seq * seq, "probs");
    if probs.is_empty() || d == 0 {
        return [q, k, v].map(|t| vec![0.0; t.len()]);
    }
    let [mut dq, mut dk, mut dv] = [q, k, v].map(|t| unwritten(t.len()));
    let [q_heads, grad_heads] = [q, grad].map(|t| Heads::new(t.as_ptr(), heads, shape));
    let dq_heads = Heads::new(dq.as_mut_ptr().cast(), heads, shape);
    let [k_heads, v_heads] = [k, v].map(|t| Heads::new(t.as_ptr(), kv_heads, shape));
    let [dk_heads, dv_heads] =
        [&mut dk, &mut dv].map(|t| Heads::new(t.as_mut_ptr().cast(), kv_heads, shape));
    (0..shape.batch * kv_heads)
        .into_par_iter()
        .for_each(|task| {
            let (b, g) = (task / kv_heads, task % kv_heads);
            let (k, v) = (k_heads.of(b, g), v_heads.of(b, g));
            let (dk, dv) = (dk_heads.of(b, g), dv_heads.of(b, g));
            let mut ds = unwritten(seq * seq);
            for (nth, h) in (g * shape.group()..(g + 1) * shape.group()).enumerate() {
                let accumulate = nth > 0;
                let p_values = &probs[(b * heads + h) * seq * seq..][..seq * seq];
                let p = Matrix::rows(p_values.as_ptr(), seq);
                let (q, grad, dq) = (q_heads.of(b, h), grad_heads.of(b, h), dq_heads.of(b, h));
                // SAFETY (every product below): rows of this sequence, columns of this head
                // or key/value head, inside their buffers (`check`); this task alone writes
                // `dk` and `dv` of this key/value head, `dq` of its query heads, and `ds`.
                // The first query head's products write every row of `dk` and `dv` (later
                // ones add to them), each head's every row of its `dq`; `ds` is read only
                // where the products and the softmax's backward wrote it (the keys up to its
                // block's last query).
                // dV += Pᵀ · dO: the keys from `first` on are seen by the queries from `first` on.
                for (first, n) in blocks(seq) {
                    let lhs = p.transposed().at(first, first);
                    unsafe {
                        product(
                            [n, d, seq - first],
                            dv.at(first, 0),
                            lhs,
                            grad.at(first, 0),
                            accumulate,
                        )
                    };
                }
                // dP = dO · Vᵀ on the computed blocks, then the softmax's backward in place.
                let ds_matrix = Matrix::rows(ds.as_mut_ptr().cast(), seq);
                for (first, n) in blocks(seq) {
                    let seen = first + n;
                    unsafe {
                        product(
                            [n, seen, d],
                            ds_matrix.at(first, 0),
                            grad.at(first, 0),
                            v.transposed(),
                            false,
                        )
                    };
                }
                vectorized(
                    #[inline(always)]
                    || {
                        let rows = ds.chunks_mut(seq).zip(p_values.chunks(seq));
                        for (i, (ds, p)) in rows.enumerate() {
                            // SAFETY: the products above wrote the row up to its block's last
                            // query.
                            let ds = unsafe { written_part(&mut ds[..computed(i, seq)]) };
                            softmax_backward_row(ds, &p[..i + 1], shape.scale());
                        }
                    },
                );
                let ds_matrix = Matrix::rows(ds.as_ptr().cast(), seq);
                // dQ = dS · K and dK += dSᵀ · Q, each over the causal part.
                for (first, n) in blocks(seq) {
                    let seen = first + n;
                    unsafe {
                        product(
                            [n, d, seen],
                            dq.at(first, 0),
                            ds_matrix.at(first, 0),
                            k,
                            false,
                        )
                    };
                    let lhs = ds_matrix.transposed().at(first, first);
                    unsafe {
                        product(
                            [n, d, seq - first],
                            dk.at(first, 0),
                            lhs,
                            q.at(first, 0),
                            accumulate,
                        )
                    };
                }
            }
        });
    // SAFETY: the tasks cover every sequence and key/value head, and each wrote every row of
    // its heads' columns of `dq`, `dk` and `dv`.
    [dq, dk, dv].map(|t| unsafe { written(t) })
}

/// A query's row of scores in place: the softmax of `scale · x` over its first `seen`
/// entries, 0 after them.
#[inline(always)]
fn softmax_row(row: &mut [f32], seen: usize, scale: f32) {
    let (x, future) = row.split_at_mut(seen);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: `x` holds `x.len()` values (read and written in place); the CPU has
        // AVX-512F, checked just above.
        unsafe {
            let values = x.as_mut_ptr();
            let (_, sum) = exp_terms_avx512(values, values, x.len(), scale);
            scale_avx512(x, 1.0 / sum);
        }
        future.fill(0.0);
        return;
    }
    let max = fold_lanes(x, f32::NEG_INFINITY, f32::max);
    x.iter_mut().for_each(|x| *x = exp(scale * (*x - max)));
    let inv = 1.0 / fold_lanes(x, 0.0, |s, v| s + v);
    x.iter_mut().for_each(|x| *x *= inv);
    future.fill(0.0);
}

/// A query's row of `dP` in place, as the gradient of its scores: `scale · p ⊙ (dP − Σ p ⊙
/// dP)` over the keys it sees (`p`'s length), 0 after them.
#[inline(always)]
fn softmax_backward_row(row: &mut [f32], p: &[f32], scale: f32) {
    let (ds, future) = row.split_at_mut(p.len());
    ds.iter_mut().zip(p).for_each(|(ds, &p)| *ds *= p);
    let dot = fold_lanes(ds, 0.0, |s, v| s + v);
    ds.iter_mut()
        .zip(p)
        .for_each(|(ds, &p)| *ds = scale * (*ds - p * dot));
    future.fill(0.0);
}
