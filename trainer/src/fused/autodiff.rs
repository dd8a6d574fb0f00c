//! The fused operations under autodiff: the inner backend computes the forward pass, and one
//! node in the graph keeps what the op's backward needs (attention's inputs and
//! probabilities; the loss's logits and targets; RMSNorm's inputs; RoPE's tables, the constants it rotates by; SwiGLU's inputs).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};

use super::{AttentionShape, ModelBackend};

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn causal_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        shape: AttentionShape,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let [q, k, v] = [q, k, v].map(primitive);
        let inner = [&q, &k, &v].map(|t| t.primitive.clone());
        let (out, probs) = B::causal_attention(
            tensor(inner[0].clone()),
            tensor(inner[1].clone()),
            tensor(inner[2].clone()),
            shape,
        );
        let (out, probs) = (primitive(out), primitive(probs));
        let nodes = [q.node, k.node, v.node];
        let op = CausalAttention { shape };
        let out = match op.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((inner, probs.clone()), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (tensor(out), Tensor::from_inner(tensor(probs)))
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        let logits = primitive(logits);
        let targets = targets.inner();
        let loss = B::cross_entropy(tensor(logits.primitive.clone()), targets.clone());
        let loss = loss.into_primitive().tensor();
        let state = (logits.primitive, targets.into_primitive());
        let out = match CrossEntropy
            .prepare::<C>([logits.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        let x = primitive(x);
        let weight = weight.into_primitive().tensor();
        let inner = (x.primitive, weight.primitive);
        let y = primitive(B::rms_norm(
            tensor(inner.0.clone()),
            Tensor::from_primitive(TensorPrimitive::Float(inner.1.clone())),
            epsilon,
        ));
        let op = RmsNorm { epsilon };
        let out = match op
            .prepare::<C>([x.node, weight.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(inner, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        tensor(out)
    }

    fn rope(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        let x = primitive(x);
        let (cos, sin) = (cos.inner(), sin.inner());
        let y = primitive(B::rope(
            tensor(x.primitive),
            cos.clone(),
            sin.clone(),
            head_dim,
        ));
        let op = Rope { head_dim };
        let out = match op.prepare::<C>([x.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((primitive(cos), primitive(sin)), y),
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
        for (node, d) in ops.parents.into_iter().zip(inputs) {
            if let Some(node) = node {
                grads.register::<B>(node.id, primitive(d));
            }
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
            let grad = Tensor::from_primitive(TensorPrimitive::Float(grad));
            let targets = Tensor::from_primitive(targets);
            let d = B::cross_entropy_backward(tensor(logits), targets, grad);
            grads.register::<B>(node.id, primitive(d));
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
        let grad = grads.consume::<B>(&ops.node);
        let [x_node, weight_node] = ops.parents;
        let (x, weight) = ops.state;
        let weight = Tensor::from_primitive(TensorPrimitive::Float(weight));
        let (dx, dweight) = B::rms_norm_backward(tensor(x), weight, tensor(grad), self.epsilon);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, primitive(dx));
        }
        if let Some(node) = weight_node {
            grads.register::<B>(node.id, dweight.into_primitive().tensor());
        }
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
        let [x] = ops.parents;
        let (cos, sin) = ops.state;
        if let Some(x) = x {
            let dx = B::rope(tensor(grad), tensor(cos), -tensor(sin), self.head_dim);
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
