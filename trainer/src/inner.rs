//! One worker's local training: AdamW with warmup-cosine learning rate and global
//! gradient-norm clipping (as PyTorch's `clip_grad_norm_`, over all parameters at once;
//! burn's own clipping works per tensor).

use crate::fused::TrainBackend;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use crate::config::{InnerConfig, RunConfig};
use crate::model::Llama;
use crate::schedule::warmup_cosine;

/// The inner optimizer.
pub type InnerOptimizer<B> = OptimizerAdaptor<AdamW, Llama<B>, B>;

/// Builds the inner AdamW from the config.
pub fn inner_optimizer<B: AutodiffBackend>(config: &InnerConfig) -> InnerOptimizer<B> {
    AdamWConfig::new()
        .with_beta_1(config.beta1)
        .with_beta_2(config.beta2)
        .with_epsilon(config.eps)
        .with_weight_decay(config.weight_decay)
        .init()
}

/// A batch of token windows `[batch, context + 1]` as a tensor.
pub fn windows_tensor<B: burn::tensor::backend::Backend>(
    windows: &[u32],
    batch: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let width = windows.len() / batch;
    let ids: Vec<i32> = windows.iter().map(|&t| t as i32).collect();
    Tensor::from_data(TensorData::new(ids, [batch, width]), device)
}

struct SumOfSquares<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumOfSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sum += g.square().sum().into_scalar().elem::<f64>();
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Scales all gradients together so that their global L2 norm is at most `max_norm`.
/// Returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend>(
    model: &Llama<B>,
    grads: &mut GradientsParams,
    max_norm: f32,
) -> f32 {
    let mut squares = SumOfSquares { grads, sum: 0.0 };
    burn::module::Module::visit(model, &mut squares);
    let norm = squares.sum.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        // PyTorch's clip_grad_norm_ uses max_norm / (norm + 1e-6).
        let factor = max_norm / (norm + 1e-6);
        burn::module::Module::visit(model, &mut Scale { grads, factor });
    }
    norm
}

/// The learning rate of inner step `step` (0-based, counted over the whole run).
pub fn inner_lr(config: &InnerConfig, step: usize) -> f64 {
    let warmup = ((config.steps as f64) * config.warmup_fraction).round() as usize;
    warmup_cosine(
        step,
        config.steps,
        warmup,
        config.lr,
        config.min_lr_fraction,
    )
}

/// One AdamW step on a batch of windows; returns the updated model and the batch loss.
pub fn train_step<B: TrainBackend>(
    model: Llama<B>,
    optimizer: &mut InnerOptimizer<B>,
    windows: &[u32],
    batch: usize,
    step: usize,
    config: &RunConfig,
    device: &B::Device,
) -> (Llama<B>, f32) {
    let loss = model.loss(windows_tensor::<B>(windows, batch, device));
    let loss_value = loss.clone().into_scalar().elem::<f32>();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    clip_global_norm(&model, &mut grads, config.inner.grad_clip);
    let model = optimizer.step(inner_lr(&config.inner, step), model, grads);
    (model, loss_value)
}

/// Evaluation copy of a training model.
pub fn eval_model<B: AutodiffBackend>(model: &Llama<B>) -> Llama<B::InnerBackend> {
    model.valid()
}
