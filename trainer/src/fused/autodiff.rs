//! The fused operations under autodiff: the inner backend computes the forward pass, and one
//! node in the graph keeps what the op's backward needs (softmax's output; SwiGLU's inputs).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::ModelBackend;

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn causal_softmax(scores: Tensor<Self, 2>, scale: f32) -> Tensor<Self, 2> {
        let x = primitive(scores);
        let y = primitive(B::causal_softmax(tensor(x.primitive.clone()), scale));
        let op = CausalSoftmax { scale };
        let out = match op.prepare::<C>([x.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        tensor(out)
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (gate, up) = (primitive(gate), primitive(up));
        let inner = (gate.primitive, up.primitive);
        let h = primitive(B::swiglu(tensor(inner.0.clone()), tensor(inner.1.clone())));
        let nodes = [gate.node, up.node];
        let out = match Swiglu.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(inner, h),
            OpsKind::UnTracked(prep) => prep.finish(h),
        };
        tensor(out)
    }
}

#[derive(Debug)]
struct CausalSoftmax {
    scale: f32,
}

impl<B: ModelBackend> Backward<B, 1> for CausalSoftmax {
    /// The forward pass's output.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x] = ops.parents;
        if let Some(x) = x {
            let dx = B::causal_softmax_backward(tensor(ops.state), tensor(grad), self.scale);
            grads.register::<B>(x.id, primitive(dx));
        }
    }
}

#[derive(Debug)]
struct Swiglu;

impl<B: ModelBackend> Backward<B, 2> for Swiglu {
    /// The forward pass's inputs, `gate` and `up`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [gate_node, up_node] = ops.parents;
        let (gate, up) = ops.state;
        let (d_gate, d_up) = B::swiglu_backward(tensor(gate), tensor(up), tensor(grad));
        if let Some(node) = gate_node {
            grads.register::<B>(node.id, primitive(d_gate));
        }
        if let Some(node) = up_node {
            grads.register::<B>(node.id, primitive(d_up));
        }
    }
}

fn primitive<B: burn::tensor::backend::Backend>(t: Tensor<B, 2>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: burn::tensor::backend::Backend>(p: FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
