//! The fused operations on flex: host loops over contiguous `f32` rows or elements, split
//! across rayon's threads and vectorized through [`vectorized`]. Other element types take
//! the composed operations.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, ElementConversion, Int, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::buffer::{unwritten, written, written_part};
#[cfg(target_arch = "x86_64")]
use super::exp::exp_avx512;
use super::exp::{exp, vectorized};
use super::matrix::{Matrix, product_new};
use super::{AttentionShape, ModelBackend, composed, flex_attention};

/// Values per rayon task: enough to outweigh a task's cost, few enough to fill both cores.
const TASK_VALUES: usize = 16 * 1024;
/// Running values a row reduction keeps: one AVX-512 register of `f32`.
const LANES: usize = 16;

impl ModelBackend for Flex {
    fn dense(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return composed::dense(x, weight);
        }
        let ([rows, d_in], [w_in, d_out]) = (x.dims(), weight.dims());
        assert_eq!(
            d_in, w_in,
            "dense: x has {d_in} columns, the weight {w_in} rows"
        );
        let (x, weight) = (contiguous(x), contiguous(weight));
        let (x, weight) = (rows_of(&x, d_in), rows_of(&weight, d_out));
        // SAFETY: `x` is `[rows, d_in]` and `weight` `[d_in, d_out]`, contiguous and alive.
        let y = unsafe { product_new([rows, d_out, d_in], x, weight) };
        tensor(y, [rows, d_out])
    }

    fn dense_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if [&x, &weight, &grad].iter().any(|t| t.dtype() != DType::F32) {
            return composed::dense_backward(x, weight, grad);
        }
        let ([rows, d_in], [w_in, d_out]) = (x.dims(), weight.dims());
        assert_eq!(
            d_in, w_in,
            "dense: x has {d_in} columns, the weight {w_in} rows"
        );
        assert_eq!(grad.dims(), [rows, d_out], "dense: the gradient's shape");
        let [x, weight, grad] = [x, weight, grad].map(contiguous);
        let [x, weight, grad] =
            [(&x, d_in), (&weight, d_out), (&grad, d_out)].map(|(t, columns)| rows_of(t, columns));
        // SAFETY: as in `dense`, and `grad` is `[rows, d_out]`.
        let (dx, dweight) = unsafe {
            (
                product_new([rows, d_in, d_out], grad, weight.transposed()),
                product_new([d_in, d_out, rows], x.transposed(), grad),
            )
        };
        (tensor(dx, [rows, d_in]), tensor(dweight, [d_in, d_out]))
    }

    fn causal_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        shape: AttentionShape,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if [&q, &k, &v].iter().any(|t| t.dtype() != DType::F32) {
            return composed::causal_attention(q, k, v, shape);
        }
        let dims = q.dims();
        let [q, k, v] = [q, k, v].map(contiguous);
        let (out, probs) = flex_attention::forward(q.storage(), k.storage(), v.storage(), shape);
        let probs_dims = [shape.batch * shape.heads * shape.seq, shape.seq];
        (tensor(out, dims), tensor(probs, probs_dims))
    }

    fn causal_attention_backward(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        probs: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
        shape: AttentionShape,
    ) -> [Tensor<Self, 2>; 3] {
        if [&q, &k, &v, &probs, &grad]
            .iter()
            .any(|t| t.dtype() != DType::F32)
        {
            return composed::causal_attention_backward(q, k, v, probs, grad, shape);
        }
        let (q_dims, kv_dims) = (q.dims(), k.dims());
        let [q, k, v, probs, grad] = [q, k, v, probs, grad].map(contiguous);
        let [dq, dk, dv] = flex_attention::backward(
            [q.storage(), k.storage(), v.storage()],
            probs.storage(),
            grad.storage(),
            shape,
        );
        [tensor(dq, q_dims), tensor(dk, kv_dims), tensor(dv, kv_dims)]
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        if logits.dtype() != DType::F32 {
            return composed::cross_entropy(logits, targets);
        }
        let [rows, vocab] = logits.dims();
        let targets = target_ids(targets, vocab);
        let logits = contiguous(logits);
        let mut losses = vec![0.0f32; rows];
        let chunk = TASK_VALUES.div_ceil(vocab.max(1));
        losses
            .par_chunks_mut(chunk)
            .zip(logits.storage::<f32>().par_chunks(chunk * vocab))
            .zip(targets.par_chunks(chunk))
            .for_each(|((losses, logits), targets)| {
                let mut exps = unwritten(vocab);
                vectorized(
                    #[inline(always)]
                    || {
                        let rows = losses.iter_mut().zip(logits.chunks(vocab)).zip(targets);
                        for ((loss, x), &target) in rows {
                            let (max, sum, _) = exps_of(x, &mut exps);
                            let picked = target.map_or(f32::NAN, |t| x[t]);
                            *loss = max + sum.ln() - picked;
                        }
                    },
                )
            });
        let mean = losses.iter().sum::<f32>() / rows as f32;
        Tensor::from_floats([mean], &Default::default())
    }

    fn cross_entropy_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        if logits.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return composed::cross_entropy_backward(logits, targets, grad);
        }
        let dims @ [rows, vocab] = logits.dims();
        let targets = target_ids(targets, vocab);
        let scale = grad.into_scalar().elem::<f32>() / rows as f32;
        let logits = contiguous(logits);
        // SAFETY: `exps_of` writes each row.
        let [d] = unsafe {
            for_chunks(
                vocab,
                [logits.storage()],
                #[inline(always)]
                |first, [x], [d]| {
                    let rows = x.chunks(vocab).zip(d.chunks_mut(vocab));
                    for (r, (x, d)) in rows.enumerate() {
                        let (_, sum, d) = exps_of(x, d);
                        let inv = scale / sum;
                        d.iter_mut().for_each(|d| *d *= inv);
                        match targets[first + r] {
                            Some(t) => d[t] -= scale,
                            None => d.fill(f32::NAN),
                        }
                    }
                },
            )
        };
        tensor(d, dims)
    }

    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return composed::rms_norm(x, weight, epsilon);
        }
        let dims @ [_, d] = x.dims();
        let x = contiguous(x);
        let weight = weight.into_primitive().tensor().to_contiguous();
        let weight = weight.storage::<f32>();
        // SAFETY: `map2` writes each row.
        let [y] = unsafe {
            for_chunks(
                d,
                [x.storage()],
                #[inline(always)]
                |_, [x], [y]| {
                    for (x, y) in x.chunks(d).zip(y.chunks_mut(d)) {
                        let r = inv_rms(x, y, epsilon);
                        map2(y, x, weight, |x, w| x * r * w);
                    }
                },
            )
        };
        tensor(y, dims)
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        grad: Tensor<Self, 2>,
        epsilon: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        if [x.dtype(), weight.dtype(), grad.dtype()]
            .iter()
            .any(|&t| t != DType::F32)
        {
            return composed::rms_norm_backward(x, weight, grad, epsilon);
        }
        let dims @ [_, d] = x.dims();
        let (x, grad) = (contiguous(x), contiguous(grad));
        let weight = weight.into_primitive().tensor().to_contiguous();
        let weight = weight.storage::<f32>();
        // SAFETY: `map2` writes each row of `scaled`, `map3` each row of `dx`.
        let [dx, scaled] = unsafe {
            for_chunks(
                d,
                [x.storage(), grad.storage()],
                #[inline(always)]
                |_, [x, g], [dx, scaled]| {
                    let rows = x.chunks(d).zip(g.chunks(d));
                    let outs = dx.chunks_mut(d).zip(scaled.chunks_mut(d));
                    for ((x, g), (dx, scaled)) in rows.zip(outs) {
                        let r = inv_rms(x, dx, epsilon);
                        // `grad ⊙ x · r` per row, summed over the rows below.
                        map2(scaled, g, x, |g, x| g * x * r);
                        let products = map3(dx, g, weight, x, |g, w, x| g * w * x);
                        let mean = fold_lanes(products, 0.0, |s, v| s + v) / d as f32;
                        map3(dx, g, weight, x, |g, w, x| r * (g * w - x * (r * r) * mean));
                    }
                },
            )
        };
        let dweight = tensor(scaled, dims).sum_dim(0).reshape([d]);
        (tensor(dx, dims), dweight)
    }

    fn rope(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        if [&x, &cos, &sin].iter().any(|t| t.dtype() != DType::F32) {
            return composed::rope(x, cos, sin, head_dim);
        }
        let dims @ [_, width] = x.dims();
        assert!(
            head_dim > 0 && head_dim.is_multiple_of(2) && width.is_multiple_of(head_dim),
            "rope: {width} columns are not heads of an even size {head_dim}"
        );
        let [x, cos, sin] = [x, cos, sin].map(contiguous);
        let (cos, sin) = (cos.storage::<f32>(), sin.storage::<f32>());
        let (table_rows, half) = (cos.len() / width, head_dim / 2);
        // SAFETY: each row is whole heads (asserted above), each head two halves, and `map4`
        // writes each half.
        let [y] = unsafe {
            for_chunks(
                width,
                [x.storage()],
                #[inline(always)]
                |first, [x], [y]| {
                    for (r, (x, y)) in x.chunks(width).zip(y.chunks_mut(width)).enumerate() {
                        let t = (first + r) % table_rows * width;
                        let (cos, sin) = (&cos[t..t + width], &sin[t..t + width]);
                        let heads = x.chunks(head_dim).zip(y.chunks_mut(head_dim));
                        let tables = cos.chunks(head_dim).zip(sin.chunks(head_dim));
                        for ((x, y), (cos, sin)) in heads.zip(tables) {
                            let [(x1, x2), (c1, c2), (s1, s2)] =
                                [x, cos, sin].map(|t| t.split_at(half));
                            let (y1, y2) = y.split_at_mut(half);
                            map4(y1, x1, c1, x2, s1, |x1, c, x2, s| x1 * c - x2 * s);
                            map4(y2, x2, c2, x1, s2, |x2, c, x1, s| x2 * c + x1 * s);
                        }
                    }
                },
            )
        };
        tensor(y, dims)
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
            return composed::swiglu(gate, up);
        }
        let dims = gate.dims();
        let (gate, up) = (contiguous(gate), contiguous(up));
        // SAFETY: `map2` writes each chunk.
        let [h] = unsafe {
            for_chunks(
                1,
                [gate.storage(), up.storage()],
                #[inline(always)]
                |_, [g, u], [h]| {
                    map2(h, g, u, |g, u| g * sigmoid(g) * u);
                },
            )
        };
        tensor(h, dims)
    }

    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if [&gate, &up, &grad].iter().any(|t| t.dtype() != DType::F32) {
            return composed::swiglu_backward(gate, up, grad);
        }
        let dims = gate.dims();
        let (gate, up, grad) = (contiguous(gate), contiguous(up), contiguous(grad));
        // SAFETY: each chunk's inputs are as long as its outputs, and the loop writes both
        // outputs at every index.
        let [d_gate, d_up] = unsafe {
            for_chunks(
                1,
                [gate.storage(), up.storage(), grad.storage()],
                #[inline(always)]
                |_, [g, u, grad], [d_gate, d_up]| {
                    let outs = d_gate.iter_mut().zip(d_up.iter_mut());
                    let ins = g.iter().zip(u).zip(grad);
                    for ((d_gate, d_up), ((&g, &u), &grad)) in outs.zip(ins) {
                        let s = sigmoid(g);
                        d_up.write(grad * g * s);
                        d_gate.write(grad * u * s * (1.0 + g * (1.0 - s)));
                    }
                },
            )
        };
        (tensor(d_gate, dims), tensor(d_up, dims))
    }
}

/// `values` folded by `op` in [`LANES`] interleaved running values, then across them: an
/// order that vectorizes and is the same on every CPU.
#[inline(always)]
pub(super) fn fold_lanes(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let (chunks, tail) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, v);
        }
    }
    let folded = lanes.into_iter().fold(init, &op);
    tail.iter().fold(folded, |acc, &v| op(acc, v))
}

/// `out[i] = f(a[i])` for every `i` of `out` (the inputs are as long), returning the written
/// `out`. As separate slice arguments of an inlined function, output and inputs are known not
/// to overlap (here and in [`map2`] to [`map4`]), so the loop vectorizes without a run-time
/// overlap check; written inline in the kernels' closures, such loops took their scalar path
/// (RMSNorm's forward: 4.3 % of the profile before, under 1 % after; see BENCHMARKS.md).
#[inline(always)]
fn map1<'a>(out: &'a mut [MaybeUninit<f32>], a: &[f32], f: impl Fn(f32) -> f32) -> &'a mut [f32] {
    assert!(a.len() >= out.len(), "map: a shorter input");
    for (o, &a) in out.iter_mut().zip(a) {
        o.write(f(a));
    }
    // SAFETY: the loop wrote every value of `out`.
    unsafe { written_part(out) }
}

/// `out[i] = f(a[i], b[i])` (see [`map1`]).
#[inline(always)]
fn map2<'a>(
    out: &'a mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32,
) -> &'a mut [f32] {
    assert!(a.len().min(b.len()) >= out.len(), "map: a shorter input");
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        o.write(f(a, b));
    }
    // SAFETY: the loop wrote every value of `out`.
    unsafe { written_part(out) }
}

/// `out[i] = f(a[i], b[i], c[i])` (see [`map1`]).
#[inline(always)]
fn map3<'a>(
    out: &'a mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32,
) -> &'a mut [f32] {
    assert!(
        a.len().min(b.len()).min(c.len()) >= out.len(),
        "map: a shorter input"
    );
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        o.write(f(a, b, c));
    }
    // SAFETY: the loop wrote every value of `out`.
    unsafe { written_part(out) }
}

/// `out[i] = f(a[i], b[i], c[i], d[i])` (see [`map1`]).
#[inline(always)]
fn map4<'a>(
    out: &'a mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    f: impl Fn(f32, f32, f32, f32) -> f32,
) -> &'a mut [f32] {
    let shortest = a.len().min(b.len()).min(c.len()).min(d.len());
    assert!(shortest >= out.len(), "map: a shorter input");
    for ((((o, &a), &b), &c), &d) in out.iter_mut().zip(a).zip(b).zip(c).zip(d) {
        o.write(f(a, b, c, d));
    }
    // SAFETY: the loop wrote every value of `out`.
    unsafe { written_part(out) }
}

/// `rsqrt(mean(x²) + ε)` of a row, with `scratch` (as long as `x`) for the squares.
#[inline(always)]
fn inv_rms(x: &[f32], scratch: &mut [MaybeUninit<f32>], epsilon: f64) -> f32 {
    let squares = map1(scratch, x, |x| x * x);
    let mean = fold_lanes(squares, 0.0, |s, v| s + v) / x.len() as f32;
    1.0 / (mean + epsilon as f32).sqrt()
}

/// A row's maximum and `Σ exp(x − max)`, with `exps` (as long as `x`) set to the terms and
/// returned written.
#[inline(always)]
fn exps_of<'a>(x: &[f32], exps: &'a mut [MaybeUninit<f32>]) -> (f32, f32, &'a mut [f32]) {
    assert_eq!(x.len(), exps.len(), "exps_of: lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: `x` and `exps` hold `x.len()` values each; the CPU has AVX-512F, checked
        // just above. It writes every value of `exps`.
        unsafe {
            let (max, sum) = exp_terms_avx512(x.as_ptr(), exps.as_mut_ptr().cast(), x.len(), 1.0);
            return (max, sum, written_part(exps));
        }
    }
    let max = fold_lanes(x, f32::NEG_INFINITY, f32::max);
    let exps = map1(exps, x, |x| exp(x - max));
    (max, fold_lanes(exps, 0.0, |s, v| s + v), exps)
}

/// `dst[i] = exp(scale · (src[i] − max))` for the `len` values at `src` (`dst` may be `src`),
/// with `max` their maximum; returns `max` and `Σ dst`. The same operations in the same order
/// as the portable loops ([`fold_lanes`]: [`LANES`] running values, then across them, then
/// the tail in order; `exp` value by value), so the same bits, but in whole vectors whatever
/// the row's length: the auto-vectorized loops ran attention's rows (1 to 128 values) mostly
/// in their four-wide remainder loop. (`scale · (x − max)` with `scale` 1 is `x − max`.) A NaN
/// in the row makes the maximum NaN here, where `f32::max` skips it; the terms are NaN either
/// way.
///
/// # Safety
/// `src` and `dst` point to `len` values each, and the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_terms_avx512(
    src: *const f32,
    dst: *mut f32,
    len: usize,
    scale: f32,
) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (whole, rest) = (len / LANES * LANES, len % LANES);
    let tail_mask: __mmask16 = (1u32 << rest).wrapping_sub(1) as __mmask16;
    let fold = |v: __m512, init: f32, op: fn(f32, f32) -> f32| {
        let mut values = [0.0f32; LANES];
        // SAFETY: `values` holds `LANES` (16) values.
        unsafe { _mm512_storeu_ps(values.as_mut_ptr(), v) };
        values.into_iter().fold(init, op)
    };
    // SAFETY (every access below): offsets below `whole` are whole vectors inside `len`; the
    // tail's are masked to `rest` values.
    unsafe {
        let mut lanes = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..whole).step_by(LANES) {
            lanes = _mm512_max_ps(lanes, _mm512_loadu_ps(src.add(i)));
        }
        let mut max = fold(lanes, f32::NEG_INFINITY, f32::max);
        for i in whole..len {
            max = max.max(*src.add(i));
        }
        let term = |v: __m512| {
            exp_avx512(_mm512_mul_ps(
                _mm512_set1_ps(scale),
                _mm512_sub_ps(v, _mm512_set1_ps(max)),
            ))
        };
        let mut sums = _mm512_setzero_ps();
        for i in (0..whole).step_by(LANES) {
            let e = term(_mm512_loadu_ps(src.add(i)));
            _mm512_storeu_ps(dst.add(i), e);
            sums = _mm512_add_ps(sums, e);
        }
        let e = term(_mm512_maskz_loadu_ps(tail_mask, src.add(whole)));
        _mm512_mask_storeu_ps(dst.add(whole), tail_mask, e);
        let mut sum = fold(sums, 0.0, |s, v| s + v);
        for i in whole..len {
            sum += *dst.add(i);
        }
        (max, sum)
    }
}

/// `x[i] *= factor` in AVX-512 instructions (the same bits as the portable loop).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn scale_avx512(x: &mut [f32], factor: f32) {
    use std::arch::x86_64::*;
    let (chunks, tail) = x.as_chunks_mut::<LANES>();
    for chunk in chunks {
        // SAFETY: `chunk` holds 16 values.
        unsafe {
            let v = _mm512_mul_ps(_mm512_loadu_ps(chunk.as_ptr()), _mm512_set1_ps(factor));
            _mm512_storeu_ps(chunk.as_mut_ptr(), v);
        }
    }
    let mask: __mmask16 = (1u32 << tail.len()).wrapping_sub(1) as __mmask16;
    // SAFETY: the mask covers the tail's values only.
    unsafe {
        let v = _mm512_maskz_loadu_ps(mask, tail.as_ptr());
        let v = _mm512_mul_ps(v, _mm512_set1_ps(factor));
        _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, v);
    }
}

/// Token ids as indices into a row of logits; `None` for one outside `0..vocab`.
fn target_ids(targets: Tensor<Flex, 1, Int>, vocab: usize) -> Vec<Option<usize>> {
    let ids = targets.into_data();
    ids.iter::<i64>()
        .map(|t| usize::try_from(t).ok().filter(|&t| t < vocab))
        .collect()
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `M` new outputs as long as the first of `ins`, computed by `f` on consecutive chunks of
/// them, each a whole number of `row`-value rows, with the index of the chunk's first row and
/// the same ranges of `ins`: a chunk per rayon task, vectorized.
///
/// # Safety
/// `f` writes every value of the output chunks it is given.
unsafe fn for_chunks<const N: usize, const M: usize>(
    row: usize,
    ins: [&[f32]; N],
    f: impl Fn(usize, [&[f32]; N], [&mut [MaybeUninit<f32>]; M]) + Sync,
) -> [Vec<f32>; M] {
    let len = ins.first().map_or(0, |x| x.len());
    let mut outs = [(); M].map(|()| unwritten(len));
    let row = row.max(1);
    let chunk = TASK_VALUES.div_ceil(row) * row;
    let mut split = outs.each_mut().map(|out| out.chunks_mut(chunk));
    let tasks: Vec<[&mut [MaybeUninit<f32>]; M]> = (0..len.div_ceil(chunk))
        .map(|_| {
            split
                .each_mut()
                .map(|chunks| chunks.next().expect("equal lengths"))
        })
        .collect();
    tasks.into_par_iter().enumerate().for_each(|(task, outs)| {
        let start = task * chunk;
        let ins = ins.map(|x| &x[start..start + outs[0].len()]);
        vectorized(
            #[inline(always)]
            || f(start / row, ins, outs),
        )
    });
    // SAFETY: the chunks cover every value of each output, and `f` wrote each (the
    // caller's contract).
    outs.map(|out| unsafe { written(out) })
}

/// A contiguous `f32` tensor as a row-major matrix of `columns` columns.
fn rows_of(x: &FlexTensor, columns: usize) -> Matrix {
    Matrix::rows(x.storage::<f32>().as_ptr(), columns)
}

fn contiguous(x: Tensor<Flex, 2>) -> FlexTensor {
    x.into_primitive().tensor().to_contiguous()
}

fn tensor(values: Vec<f32>, dims: [usize; 2]) -> Tensor<Flex, 2> {
    let layout = Layout::contiguous(dims.into());
    let primitive = FlexTensor::new(Bytes::from_elems(values), layout, DType::F32);
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}
