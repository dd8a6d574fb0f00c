//! The fused operations against burn's composed ones: flex's host kernels forward and
//! backward, and the autodiff node's gradients against autodiff through the composed ops.

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{AttentionShape, ModelBackend, composed};
use crate::CpuBackend as B;

type AB = Autodiff<B>;

/// `[rows, len]` values in ±4.
fn values_in(rows: usize, len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows * len)
        .map(|_| rng.random_range(-4.0..4.0))
        .collect()
}

fn tensor<Bk: burn::tensor::backend::Backend>(values: Vec<f32>, dims: [usize; 2]) -> Tensor<Bk, 2> {
    Tensor::from_data(TensorData::new(values, dims), &Default::default())
}

fn values<Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, 2>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn assert_close(fused: &[f32], composed: &[f32], tolerance: f32, what: &str) {
    assert_eq!(fused.len(), composed.len(), "{what}: lengths");
    for (i, (a, b)) in fused.iter().zip(composed).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * (1.0 + b.abs()),
            "{what}[{i}]: fused {a}, composed {b}"
        );
    }
}

/// Grouped-query heads (4 sharing 2) over 70 positions: three query blocks, the last one
/// short, and a row length no vector divides.
const GROUPED: AttentionShape = AttentionShape {
    batch: 3,
    seq: 70,
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
};

/// `q`, `k`, `v` for `shape`, each `[tokens, width]` with its dims.
fn projections(shape: AttentionShape, seed: u64) -> [(Vec<f32>, [usize; 2]); 3] {
    let tokens = shape.batch * shape.seq;
    let width = |heads: usize| heads * shape.head_dim;
    [shape.heads, shape.kv_heads, shape.kv_heads].map(|heads| {
        let dims = [tokens, width(heads)];
        (values_in(dims[0], dims[1], seed + heads as u64), dims)
    })
}

fn tensors<Bk: burn::tensor::backend::Backend, const N: usize>(
    inputs: &[(Vec<f32>, [usize; 2]); N],
) -> [Tensor<Bk, 2>; N] {
    inputs.each_ref().map(|(x, dims)| tensor(x.clone(), *dims))
}

/// Grouped, plain, and one key/value head for all.
const SHAPES: [AttentionShape; 3] = [
    GROUPED,
    AttentionShape {
        kv_heads: 4,
        ..GROUPED
    },
    AttentionShape {
        kv_heads: 1,
        ..GROUPED
    },
];

#[test]
fn flex_causal_attention_is_the_composed_attention_the_future_exactly_zero() {
    for shape in SHAPES {
        let [q, k, v] = tensors::<B, 3>(&projections(shape, 1));
        let (out, probs) = B::causal_attention(q.clone(), k.clone(), v.clone(), shape);
        let (out_composed, probs_composed) = composed::causal_attention(q, k, v, shape);
        let probs = values(probs);
        assert_close(&probs, &values(probs_composed), 1e-6, "probabilities");
        assert_close(&values(out), &values(out_composed), 1e-5, "output");
        for (r, row) in probs.chunks(shape.seq).enumerate() {
            let query = r % shape.seq;
            assert!(
                row[query + 1..].iter().all(|&p| p == 0.0),
                "row {r} sees the future"
            );
            assert!(row[..=query].iter().all(|&p| p > 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn flex_causal_attention_backward_is_the_composed_formula() {
    for shape in SHAPES {
        let inputs = projections(shape, 2);
        let [q, k, v] = tensors::<B, 3>(&inputs);
        let probs = B::causal_attention(q.clone(), k.clone(), v.clone(), shape).1;
        let grad = tensor::<B>(values_in(inputs[0].1[0], inputs[0].1[1], 3), inputs[0].1);
        let fused = B::causal_attention_backward(
            q.clone(),
            k.clone(),
            v.clone(),
            probs.clone(),
            grad.clone(),
            shape,
        );
        let composed = composed::causal_attention_backward(q, k, v, probs, grad, shape);
        for ((fused, composed), what) in fused.into_iter().zip(composed).zip(["dq", "dk", "dv"]) {
            assert_close(&values(fused), &values(composed), 1e-4, what);
        }
    }
}

fn ids<Bk: burn::tensor::backend::Backend>(ids: &[i64]) -> Tensor<Bk, 1, Int> {
    Tensor::from_data(
        TensorData::new(ids.to_vec(), [ids.len()]),
        &Default::default(),
    )
}

#[test]
fn flex_cross_entropy_and_its_gradient_are_the_composed_ops() {
    // 100 rows over rayon's tasks unevenly, a vocabulary no vector divides.
    let dims @ [rows, vocab] = [100, 77];
    let logits = values_in(rows, vocab, 30);
    let targets: Vec<i64> = (0..rows as i64).map(|r| r * 31 % vocab as i64).collect();
    let x = || tensor::<B>(logits.clone(), dims);
    let loss = B::cross_entropy(x(), ids(&targets)).into_scalar();
    let expected = composed::cross_entropy(x(), ids(&targets)).into_scalar();
    assert!(
        (loss - expected).abs() < 1e-5,
        "loss {loss} against {expected}"
    );
    let grad = || Tensor::<B, 1>::from_floats([0.7], &Default::default());
    let d = B::cross_entropy_backward(x(), ids(&targets), grad());
    let d_composed = composed::cross_entropy_backward(x(), ids(&targets), grad());
    assert_close(&values(d), &values(d_composed), 1e-6, "logits' gradient");

    let through = |op: fn(Tensor<AB, 2>, Tensor<AB, 1, Int>) -> Tensor<AB, 1>| {
        let x = tensor::<AB>(logits.clone(), dims).require_grad();
        let grads = op(x.clone(), ids(&targets)).backward();
        values(x.grad(&grads).unwrap())
    };
    let (fused, composed) = (through(AB::cross_entropy), through(composed::cross_entropy));
    assert_close(&fused, &composed, 1e-6, "autodiff logits' gradient");
}

#[test]
fn a_target_outside_the_vocabulary_makes_the_loss_nan_on_both_paths() {
    let dims = [3, 8];
    let x = || tensor::<B>(values_in(3, 8, 31), dims);
    for bad in [8, -1] {
        let targets = ids::<B>(&[1, bad, 7]);
        assert!(
            B::cross_entropy(x(), targets.clone())
                .into_scalar()
                .is_nan()
        );
        assert!(
            composed::cross_entropy(x(), targets.clone())
                .into_scalar()
                .is_nan()
        );
        let grad = Tensor::<B, 1>::from_floats([1.0], &Default::default());
        let d = values(B::cross_entropy_backward(x(), targets, grad));
        assert!(
            d[8..16].iter().all(|v| v.is_nan()),
            "the bad row's gradient"
        );
        assert!(d[..8].iter().chain(&d[16..]).all(|v| v.is_finite()));
    }
}

#[test]
fn flex_rms_norm_forward_backward_and_under_autodiff_are_the_composed_ops() {
    // 300 rows over rayon's tasks unevenly; a width no vector divides.
    let dims = [300, 72];
    let (x, grad) = (
        values_in(dims[0], dims[1], 20),
        values_in(dims[0], dims[1], 21),
    );
    let weight = values_in(1, dims[1], 22);
    let w = || Tensor::<B, 1>::from_floats(weight.as_slice(), &Default::default());
    let x_ = || tensor::<B>(x.clone(), dims);
    let fused = B::rms_norm(x_(), w(), 1e-5);
    assert_close(
        &values(fused),
        &values(composed::rms_norm(x_(), w(), 1e-5)),
        1e-6,
        "rms norm",
    );
    let g = || tensor::<B>(grad.clone(), dims);
    let (dx, dw) = B::rms_norm_backward(x_(), w(), g(), 1e-5);
    let (dx_c, dw_c) = composed::rms_norm_backward(x_(), w(), g(), 1e-5);
    assert_close(&values(dx), &values(dx_c), 1e-5, "rms norm dx");
    let flat = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().unwrap();
    assert_close(&flat(dw), &flat(dw_c), 1e-4, "rms norm dweight");

    let autodiff = |op: fn(Tensor<AB, 2>, Tensor<AB, 1>, f64) -> Tensor<AB, 2>| {
        let x = tensor::<AB>(x.clone(), dims).require_grad();
        let w = Tensor::<AB, 1>::from_floats(weight.as_slice(), &Default::default()).require_grad();
        let grads = (op(x.clone(), w.clone(), 1e-5) * tensor::<AB>(grad.clone(), dims))
            .sum()
            .backward();
        let dw = w.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        (values(x.grad(&grads).unwrap()), dw)
    };
    let (fused, composed) = (autodiff(AB::rms_norm), autodiff(composed::rms_norm));
    assert_close(&fused.0, &composed.0, 1e-5, "autodiff rms norm dx");
    assert_close(&fused.1, &composed.1, 1e-4, "autodiff rms norm dweight");
}

#[test]
fn flex_dense_layers_are_burns_matrix_products_to_the_bit() {
    // Split by rows (x · w, dx) and by columns (dw, over the 600 rows), uneven parts; and a
    // weight given transposed (the tied LM head), which flex first makes contiguous.
    let ([rows, d_in, d_out], seed) = ([600, 96, 200], 30);
    let x = || tensor::<B>(values_in(rows, d_in, seed), [rows, d_in]);
    let w = || tensor::<B>(values_in(d_in, d_out, seed + 1), [d_in, d_out]);
    let grad = || tensor::<B>(values_in(rows, d_out, seed + 2), [rows, d_out]);
    let bits = |t: Tensor<B, 2>| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(B::dense(x(), w())),
        bits(composed::dense(x(), w())),
        "x · w"
    );
    let w_t = || tensor::<B>(values_in(d_out, d_in, seed + 3), [d_out, d_in]).transpose();
    assert_eq!(
        bits(B::dense(x(), w_t())),
        bits(composed::dense(x(), w_t())),
        "x · wᵀ"
    );
    let (dx, dw) = B::dense_backward(x(), w(), grad());
    let (dx_c, dw_c) = composed::dense_backward(x(), w(), grad());
    assert_eq!(bits(dx), bits(dx_c), "dx");
    assert_eq!(bits(dw), bits(dw_c), "dw");

    let inputs = [(rows, d_in, seed), (d_in, d_out, seed + 1)]
        .map(|(r, c, seed)| (values_in(r, c, seed), [r, c]));
    let fused = gradients(|x| AB::dense(x[0].clone(), x[1].clone()), &inputs);
    let composed = gradients(|x| composed::dense(x[0].clone(), x[1].clone()), &inputs);
    assert_close(&fused[0], &composed[0], 1e-6, "autodiff dense dx");
    assert_close(&fused[1], &composed[1], 1e-6, "autodiff dense dweight");
}

/// RoPE as a function of `x`, its tables and the head size.
type RopeOp = fn(Tensor<AB, 2>, Tensor<AB, 2>, Tensor<AB, 2>, usize) -> Tensor<AB, 2>;

/// RoPE's tables for 6 positions of 3 heads of 8: random angles, each repeated over both
/// halves of a head as the model's are.
fn rope_tables() -> [(Vec<f32>, [usize; 2]); 2] {
    let (positions, heads, head_dim) = (6, 3, 8);
    let angles = values_in(positions * heads, head_dim / 2, 12);
    let table = |f: fn(f32) -> f32| {
        let row = |half: &[f32]| half.iter().chain(half).map(|&a| f(a)).collect::<Vec<_>>();
        let values = angles.chunks(head_dim / 2).flat_map(row).collect();
        (values, [positions, heads * head_dim])
    };
    [table(f32::cos), table(f32::sin)]
}

#[test]
fn flex_rope_and_autodiff_through_it_are_the_composed_ops() {
    let [(cos, table), (sin, _)] = rope_tables();
    let dims = [4 * table[0], table[1]];
    let x = values_in(dims[0], dims[1], 13);
    let args = || {
        (
            tensor::<B>(x.clone(), dims),
            tensor(cos.clone(), table),
            tensor(sin.clone(), table),
        )
    };
    let (x_, c, s) = args();
    let fused = B::rope(x_, c, s, 8);
    let (x_, c, s) = args();
    assert_close(
        &values(fused),
        &values(composed::rope(x_, c, s, 8)),
        1e-6,
        "rope",
    );

    let with_tables = |op: RopeOp| {
        let (cos, sin) = (cos.clone(), sin.clone());
        move |x: &[Tensor<AB, 2>]| {
            op(
                x[0].clone(),
                tensor(cos.clone(), table),
                tensor(sin.clone(), table),
                8,
            )
        }
    };
    let inputs = [(x, dims)];
    let fused = gradients(with_tables(AB::rope), &inputs);
    let composed = gradients(with_tables(composed::rope), &inputs);
    assert_close(&fused[0], &composed[0], 1e-5, "rope's gradient");
}

#[test]
fn flex_swiglu_and_its_backward_are_the_composed_ops() {
    let dims = [129, 344];
    let n = dims[0] * dims[1];
    let (gate, up, grad) = (values_in(1, n, 4), values_in(1, n, 5), values_in(1, n, 6));
    let h = B::swiglu(tensor(gate.clone(), dims), tensor(up.clone(), dims));
    let h_composed = composed::swiglu::<B>(tensor(gate.clone(), dims), tensor(up.clone(), dims));
    assert_close(&values(h), &values(h_composed), 1e-6, "swiglu");
    let args = || {
        (
            tensor(gate.clone(), dims),
            tensor(up.clone(), dims),
            tensor(grad.clone(), dims),
        )
    };
    let (g, u, d) = args();
    let (d_gate, d_up) = B::swiglu_backward(g, u, d);
    let (g, u, d) = args();
    let (d_gate_composed, d_up_composed) = composed::swiglu_backward::<B>(g, u, d);
    assert_close(&values(d_gate), &values(d_gate_composed), 1e-5, "d gate");
    assert_close(&values(d_up), &values(d_up_composed), 1e-5, "d up");
}

/// Frees buffers of NaN of `lens` values each, so the allocator hands that memory to the
/// next allocations of those sizes. Twice: glibc maps a large buffer afresh (zeros) until
/// freeing one has raised its threshold for that size.
fn free_nans(lens: &[usize]) {
    for _ in 0..2 {
        let buffers: Vec<Vec<f32>> = lens.iter().map(|&len| vec![f32::NAN; len]).collect();
        drop(std::hint::black_box(buffers));
    }
}

fn assert_finite(values: &[f32], what: &str) {
    let bad = values.iter().position(|v| !v.is_finite());
    assert_eq!(bad, None, "{what}: a value not written");
}

#[test]
fn every_output_value_is_written_over_memory_that_held_nans() {
    // The flex kernels allocate their outputs without clearing them (`buffer`); one they
    // left unwritten would show the NaN freed just before. The inputs are finite, so are
    // all outputs.
    let shape = GROUPED;
    let inputs = projections(shape, 40);
    let [q, k, v] = tensors::<B, 3>(&inputs);
    let [q_len, kv_len] = [inputs[0].0.len(), inputs[1].0.len()];
    let probs_len = shape.batch * shape.heads * shape.seq * shape.seq;
    free_nans(&[q_len, probs_len]);
    let (out, probs) = B::causal_attention(q.clone(), k.clone(), v.clone(), shape);
    let grad = tensor::<B>(values_in(inputs[0].1[0], inputs[0].1[1], 41), inputs[0].1);
    free_nans(&[q_len, kv_len, kv_len, shape.seq * shape.seq]);
    let grads = B::causal_attention_backward(q, k, v, probs.clone(), grad, shape);
    for (t, what) in [out, probs]
        .into_iter()
        .chain(grads)
        .zip(["out", "probs", "dq", "dk", "dv"])
    {
        assert_finite(&values(t), what);
    }

    let dims @ [rows, width] = [100, 72];
    let x = || tensor::<B>(values_in(rows, width, 42), dims);
    let [x1, x2, x3] = [x(), x(), x()];
    let weight =
        Tensor::<B, 1>::from_floats(values_in(1, width, 43).as_slice(), &Default::default());
    free_nans(&[rows * width]);
    assert_finite(
        &values(B::rms_norm(x1.clone(), weight.clone(), 1e-5)),
        "rms norm",
    );
    free_nans(&[rows * width; 2]);
    let (dx, dweight) = B::rms_norm_backward(x1.clone(), weight, x2.clone(), 1e-5);
    assert_finite(&values(dx), "rms norm's dx");
    assert_finite(
        &dweight.into_data().to_vec::<f32>().unwrap(),
        "rms norm's dweight",
    );
    free_nans(&[rows * width; 2]);
    let (d_gate, d_up) = B::swiglu_backward(x1.clone(), x2.clone(), x3);
    assert_finite(&values(d_gate), "d gate");
    assert_finite(&values(d_up), "d up");
    free_nans(&[rows * width]);
    assert_finite(&values(B::swiglu(x1.clone(), x2)), "swiglu");
    let targets = ids(&(0..rows as i64)
        .map(|r| r % width as i64)
        .collect::<Vec<_>>());
    let loss = Tensor::<B, 1>::from_floats([1.0], &Default::default());
    free_nans(&[rows * width]);
    let d_logits = B::cross_entropy_backward(x1, targets, loss);
    assert_finite(&values(d_logits), "d logits");

    let [(cos, table), (sin, _)] = rope_tables();
    let dims = [4 * table[0], table[1]];
    let x = tensor(values_in(dims[0], dims[1], 44), dims);
    let (cos, sin) = (tensor(cos, table), tensor(sin, table));
    free_nans(&[dims[0] * dims[1]]);
    let y = B::rope(x, cos, sin, 8);
    assert_finite(&values(y), "rope");
}

#[test]
fn a_nan_spreads_to_what_attends_to_it_instead_of_vanishing() {
    let shape = AttentionShape {
        batch: 2,
        seq: 40,
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
    };
    let [(q, q_dims), (mut k, k_dims), (v, v_dims)] = projections(shape, 7);
    // The key at position 33 of the second sequence, which both heads share.
    k[(shape.seq + 33) * shape.head_dim + 1] = f32::NAN;
    let (out, _) = B::causal_attention(
        tensor(q, q_dims),
        tensor(k, k_dims),
        tensor(v, v_dims),
        shape,
    );
    let out = values(out);
    for (token, row) in out.chunks(q_dims[1]).enumerate() {
        let sees_it = token >= shape.seq + 33;
        assert_eq!(
            row.iter().all(|x| x.is_nan()),
            sees_it,
            "token {token}: {row:?}"
        );
        assert!(sees_it || row.iter().all(|x| x.is_finite()));
    }
    let mut x = values_in(4, 16, 8);
    x[20] = f32::NAN;
    let h = values(B::swiglu(tensor(x.clone(), [4, 16]), tensor(x, [4, 16])));
    assert!(h[20].is_nan() && h.iter().filter(|v| v.is_nan()).count() == 1);
}

/// Gradients of `Σ w ⊙ op(x…)` with respect to each input, through autodiff.
fn gradients<const N: usize>(
    op: impl Fn(&[Tensor<AB, 2>]) -> Tensor<AB, 2>,
    inputs: &[(Vec<f32>, [usize; 2]); N],
) -> Vec<Vec<f32>> {
    let xs = tensors::<AB, N>(inputs).map(|x| x.require_grad());
    let y = op(&xs);
    let [rows, cols] = y.dims();
    let w = tensor::<AB>(values_in(rows, cols, 99), [rows, cols]);
    let grads = (y * w).sum().backward();
    xs.iter()
        .map(|x| {
            x.grad(&grads)
                .expect("a gradient")
                .into_data()
                .to_vec()
                .unwrap()
        })
        .collect()
}

#[test]
fn autodiff_through_the_fused_ops_gives_burns_gradients() {
    let inputs = projections(GROUPED, 8);
    let fused = gradients(
        |x| AB::causal_attention(x[0].clone(), x[1].clone(), x[2].clone(), GROUPED).0,
        &inputs,
    );
    let composed = gradients(
        |x| composed::causal_attention(x[0].clone(), x[1].clone(), x[2].clone(), GROUPED).0,
        &inputs,
    );
    for ((fused, composed), what) in fused.iter().zip(&composed).zip(["q", "k", "v"]) {
        assert_close(
            fused,
            composed,
            1e-4,
            &format!("attention's {what} gradient"),
        );
    }

    let dims = [120, 40];
    let inputs = [10, 11].map(|seed| (values_in(dims[0], dims[1], seed), dims));
    let fused = gradients(|x| AB::swiglu(x[0].clone(), x[1].clone()), &inputs);
    let composed = gradients(|x| composed::swiglu(x[0].clone(), x[1].clone()), &inputs);
    assert_close(&fused[0], &composed[0], 1e-5, "swiglu's gate gradient");
    assert_close(&fused[1], &composed[1], 1e-5, "swiglu's up gradient");
}

#[test]
fn an_input_without_a_gradient_gets_none_and_the_other_its_own() {
    let dims = [8, 12];
    let gate = tensor::<AB>(values_in(1, 96, 13), dims).require_grad();
    let up = tensor::<AB>(values_in(1, 96, 14), dims);
    let grads = AB::swiglu(gate.clone(), up.clone()).sum().backward();
    assert!(up.grad(&grads).is_none());
    let expected = values(
        composed::swiglu_backward::<B>(
            gate.clone().inner(),
            up.inner(),
            Tensor::ones(dims, &Default::default()),
        )
        .0,
    );
    assert_close(
        &values(gate.grad(&grads).unwrap()),
        &expected,
        1e-6,
        "gate gradient",
    );
}

/// The AVX-512 row kernels against the portable loops they replace, to the bit: rows of every
/// length up to three vectors and a vocabulary's, scaled (attention) and not (cross-entropy).
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx512_row_kernels_have_the_bits_of_the_portable_loops() {
    use super::exp;
    use super::flex::{exp_terms_avx512, fold_lanes, scale_avx512};
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return;
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for len in (0..=48).chain([128, 256]) {
        // Values in ±40: terms from e^-80 (near the flush to 0) to 1.
        let x: Vec<f32> = values_in(1, len, len as u64)
            .iter()
            .map(|v| v * 10.0)
            .collect();
        for scale in [1.0, 0.176_776_7] {
            let max = fold_lanes(&x, f32::NEG_INFINITY, f32::max);
            let terms: Vec<f32> = x.iter().map(|&v| exp(scale * (v - max))).collect();
            let sum = fold_lanes(&terms, 0.0, |s, v| s + v);
            let mut out = vec![0.0f32; len];
            // SAFETY: `x` and `out` hold `len` values; the CPU has AVX-512F (checked above).
            let (max_simd, sum_simd) =
                unsafe { exp_terms_avx512(x.as_ptr(), out.as_mut_ptr(), len, scale) };
            assert_eq!(
                bits(&out),
                bits(&terms),
                "terms, {len} values, scale {scale}"
            );
            assert_eq!(max_simd.to_bits(), max.to_bits(), "max, {len} values");
            assert_eq!(sum_simd.to_bits(), sum.to_bits(), "sum, {len} values");

            let mut in_place = x.clone();
            let p = in_place.as_mut_ptr();
            // SAFETY: as above, read and written in place.
            unsafe { exp_terms_avx512(p, p, len, scale) };
            assert_eq!(bits(&in_place), bits(&terms), "in place, {len} values");
            // SAFETY: the CPU has AVX-512F.
            unsafe { scale_avx512(&mut in_place, 1.0 / sum) };
            let scaled: Vec<f32> = terms.iter().map(|t| t * (1.0 / sum)).collect();
            assert_eq!(bits(&in_place), bits(&scaled), "scaled, {len} values");
        }
    }
}
