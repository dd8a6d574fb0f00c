//! The fused operations against burn's composed ones: flex's host kernels forward and
//! backward, and the autodiff node's gradients against autodiff through the composed ops.

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{ModelBackend, composed};
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

#[test]
fn flex_causal_softmax_is_burns_masked_softmax_the_future_exactly_zero() {
    // 5 groups of 70: rows split unevenly over rayon's tasks, a length no vector divides.
    let (len, dims) = (70, [350, 70]);
    let x = values_in(dims[0], dims[1], 1);
    let fused = values(B::causal_softmax(tensor(x.clone(), dims), 0.35));
    let composed = composed::causal_softmax::<B>(tensor(x, dims), 0.35);
    assert_close(&fused, &values(composed), 1e-6, "causal softmax");
    for (r, row) in fused.chunks(len).enumerate() {
        let query = r % len;
        assert!(
            row[query + 1..].iter().all(|&p| p == 0.0),
            "row {r} sees the future"
        );
        assert!(row[..=query].iter().all(|&p| p > 0.0));
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn flex_causal_softmax_backward_is_the_composed_formula() {
    let dims = [8 * 33, 33];
    let y = values(B::causal_softmax(
        tensor(values_in(dims[0], dims[1], 2), dims),
        0.5,
    ));
    let grad = values_in(dims[0], dims[1], 3);
    let fused =
        B::causal_softmax_backward(tensor(y.clone(), dims), tensor(grad.clone(), dims), 0.5);
    let composed = composed::causal_softmax_backward::<B>(tensor(y, dims), tensor(grad, dims), 0.5);
    assert_close(
        &values(fused),
        &values(composed),
        1e-5,
        "causal softmax backward",
    );
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

#[test]
fn a_nan_spreads_through_its_row_and_value_instead_of_vanishing() {
    let mut x = values_in(16, 16, 7);
    x[16 * 9 + 3] = f32::NAN;
    let y = values(B::causal_softmax(tensor(x.clone(), [16, 16]), 1.0));
    assert!(
        y[16 * 9..16 * 9 + 10].iter().all(|p| p.is_nan()),
        "row 9 sees the NaN in what it attends to"
    );
    assert!(
        y[..16 * 9]
            .iter()
            .chain(&y[16 * 10..])
            .all(|p| p.is_finite())
    );
    let mut x = x[..64].to_vec();
    x[20] = f32::NAN;
    let h = values(B::swiglu(tensor(x.clone(), [4, 16]), tensor(x, [4, 16])));
    assert!(h[20].is_nan() && h.iter().filter(|v| v.is_nan()).count() == 1);
}

/// Gradients of `Σ w ⊙ op(x…)` with respect to each input, through autodiff.
fn gradients(
    op: impl Fn(&[Tensor<AB, 2>]) -> Tensor<AB, 2>,
    inputs: &[Vec<f32>],
    dims: [usize; 2],
) -> Vec<Vec<f32>> {
    let xs: Vec<Tensor<AB, 2>> = inputs
        .iter()
        .map(|x| tensor::<AB>(x.clone(), dims).require_grad())
        .collect();
    let w = tensor::<AB>(values_in(dims[0], dims[1], 99), dims);
    let grads = (op(&xs) * w).sum().backward();
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
    let dims = [3 * 40, 40];
    let x = values_in(dims[0], dims[1], 8);
    let softmax = |x: &[Tensor<AB, 2>]| AB::causal_softmax(x[0].clone(), 0.25);
    let fused = gradients(softmax, std::slice::from_ref(&x), dims);
    let composed = gradients(|x| composed::causal_softmax(x[0].clone(), 0.25), &[x], dims);
    assert_close(
        &fused[0],
        &composed[0],
        1e-5,
        "causal softmax's input gradient",
    );

    let inputs = [values_in(1, 4800, 10), values_in(1, 4800, 11)];
    let fused = gradients(|x| AB::swiglu(x[0].clone(), x[1].clone()), &inputs, dims);
    let composed = gradients(
        |x| composed::swiglu(x[0].clone(), x[1].clone()),
        &inputs,
        dims,
    );
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
