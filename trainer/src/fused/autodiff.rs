//! The fused operations under autodiff: the inner backend computes the forward pass, and one
//! node in the graph keeps what the op's backward needs (a linear layer's input and weight;
//! attention's inputs and
//! probabilities; the loss's logits and targets; RMSNorm's and SwiGLU's inputs; RoPE's
//! tables, the constants it rotates by).

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};

use super::{AttentionShape, ModelBackend};

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn dense(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        record_pair(Dense, x, weight, B::dense)
    }

    fn causal_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        shape: AttentionShape,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let [q, k, v] = [q, k, v].map(primitive);
        let inner = || [&q, &k, &v].map(|t| t.primitive.clone());
        let [qi, ki, vi] = inner().map(tensor);
        let (out, probs) = B::causal_attention(qi, ki, vi, shape);
        let probs = primitive(probs);
        let op = CausalAttention { shape };
        let out = record::<C, _, _, _>(
            op,
            [&q, &k, &v],
            || (inner(), probs.clone()),
            primitive(out),
        );
        (tensor(out), Tensor::from_inner(tensor(probs)))
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        let logits = primitive(logits);
        let targets = targets.inner();
        let loss = B::cross_entropy(tensor(logits.primitive.clone()), targets.clone());
        let state = || (logits.primitive.clone(), targets.into_primitive());
        tensor(record::<C, _, _, _>(
            CrossEntropy,
            [&logits],
            state,
            primitive(loss),
        ))
    }

    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        record_pair(RmsNorm { epsilon }, x, weight, |x, w| {
            B::rms_norm(x, w, epsilon)
        })
    }

    fn rope(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        let x = primitive(x);
        let (cos, sin) = (cos.inner(), sin.inner());
        let y = B::rope(
            tensor(x.primitive.clone()),
            cos.clone(),
            sin.clone(),
            head_dim,
        );
        let tables = || (primitive(cos), primitive(sin));
        tensor(record::<C, _, _, _>(
            Rope { head_dim },
            [&x],
            tables,
            primitive(y),
        ))
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        record_pair(Swiglu, gate, up, B::swiglu)
    }
}

/// `out`, computed by the inner backend, as the output of `op` over `inputs`: a node in the
/// graph that keeps `state()` for the backward pass when an input is tracked.
fn record<C, B, Op, const N: usize>(
    op: Op,
    inputs: [&FloatTensor<Autodiff<B, C>>; N],
    state: impl FnOnce() -> Op::State,
    out: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: ModelBackend,
    C: CheckpointStrategy,
    Op: Backward<B, N>,
{
    let nodes = inputs.map(|t| t.node.clone());
    match op.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// `forward(first, second)` on the inner backend, recorded as `op`, which keeps both inputs
/// for its backward pass ([`pair_backward`]).
fn record_pair<B, C, Op, const D: usize>(
    op: Op,
    first: Tensor<Autodiff<B, C>, 2>,
    second: Tensor<Autodiff<B, C>, D>,
    forward: impl FnOnce(Tensor<B, 2>, Tensor<B, D>) -> Tensor<B, 2>,
) -> Tensor<Autodiff<B, C>, 2>
where
    B: ModelBackend,
    C: CheckpointStrategy,
    Op: Backward<B, 2, State = (FloatTensor<B>, FloatTensor<B>)>,
{
    let (first, second) = (primitive(first), primitive(second));
    let inputs = || (first.primitive.clone(), second.primitive.clone());
    let (a, b) = inputs();
    let out = forward(tensor(a), tensor(b));
    tensor(record::<C, _, _, _>(
        op,
        [&first, &second],
        inputs,
        primitive(out),
    ))
}

/// The backward pass of an op recorded by [`record_pair`]: `backward(first, second, grad)`
/// gives the two inputs' gradients.
fn pair_backward<B: ModelBackend, const D: usize>(
    ops: Ops<(FloatTensor<B>, FloatTensor<B>), 2>,
    grads: &mut Gradients,
    backward: impl FnOnce(Tensor<B, 2>, Tensor<B, D>, Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, D>),
) {
    let grad = grads.consume::<B>(&ops.node);
    let [first_node, second_node] = ops.parents;
    let (first, second) = ops.state;
    let (d_first, d_second) = backward(tensor(first), tensor(second), tensor(grad));
    register(grads, first_node.map(|n| n.id), d_first);
    register(grads, second_node.map(|n| n.id), d_second);
}

#[derive(Debug)]
struct Dense;

impl<B: ModelBackend> Backward<B, 2> for Dense {
    /// The forward pass's inputs, `x` and `weight`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        pair_backward(ops, grads, B::dense_backward);
    }
}

#[derive(Debug)]
struct CausalAttention {
    shape: AttentionShape,
}

impl<B: ModelBackend> Backward<B, 3> for CausalAttention {
    /// The forward pass's inputs `q`, `k`, `v` and its probabilities.
    type State = ([FloatTensor<B>; 3], FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ([q, k, v], probs) = ops.state;
        let [q, k, v, probs, grad] = [q, k, v, probs, grad].map(tensor);
        let inputs = B::causal_attention_backward(q, k, v, probs, grad, self.shape);
        for (parent, d) in ops.parents.iter().zip(inputs) {
            register(grads, parent.as_ref().map(|p| p.id), d);
        }
    }
}

#[derive(Debug)]
struct CrossEntropy;

impl<B: ModelBackend> Backward<B, 1> for CrossEntropy {
    /// The logits and the targets.
    type State = (FloatTensor<B>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [logits_node] = ops.parents;
        let (logits, targets) = ops.state;
        if let Some(node) = logits_node {
            let targets = Tensor::from_primitive(targets);
            let d = B::cross_entropy_backward(tensor(logits), targets, tensor(grad));
            register(grads, Some(node.id), d);
        }
    }
}

#[derive(Debug)]
struct RmsNorm {
    epsilon: f64,
}

impl<B: ModelBackend> Backward<B, 2> for RmsNorm {
    /// The forward pass's inputs, `x` and `weight`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        pair_backward(ops, grads, |x, w, grad| {
            B::rms_norm_backward(x, w, grad, self.epsilon)
        });
    }
}

#[derive(Debug)]
struct Rope {
    head_dim: usize,
}

impl<B: ModelBackend> Backward<B, 1> for Rope {
    /// The tables `cos` and `sin`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        let (cos, sin) = ops.state;
        if let Some(node) = x_node {
            let dx = B::rope(tensor(grad), tensor(cos), -tensor(sin), self.head_dim);
            register(grads, Some(node.id), dx);
        }
    }
}

#[derive(Debug)]
struct Swiglu;

impl<B: ModelBackend> Backward<B, 2> for Swiglu {
    /// The forward pass's inputs, `gate` and `up`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        pair_backward(ops, grads, B::swiglu_backward);
    }
}

/// `grad` as the gradient of the input `parent`, when that input is tracked.
fn register<B: ModelBackend, const D: usize>(
    grads: &mut Gradients,
    parent: Option<NodeId>,
    grad: Tensor<B, D>,
) {
    if let Some(id) = parent {
        grads.register::<B>(id, primitive(grad));
    }
}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
