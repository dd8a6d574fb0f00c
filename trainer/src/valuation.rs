//! What a validator measures about a round: its own loss at the global parameters θ, the
//! value of any coalition of peers' pseudo-gradients,
//! `v(S) = L(θ) − L(θ after the outer step built from the mean of {Δ_j : j ∈ S})`,
//! and the gradient and diagonal empirical Fisher of its loss at θ (for Fisher importance).
//!
//! Forward passes only run on the inner (non-autodiff) backend, so coalition values can be
//! computed on a thread beside the next round's training; the curvature's backward passes
//! run on the training thread (burn 0.21's autodiff graphs must not run backward on two
//! threads at once).

use crate::fused::{ModelBackend, TrainBackend};
use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use sinter_kernels::Kernels;

use crate::eval::validation_loss;
use crate::inner::windows_tensor;
use crate::model::Llama;
use crate::params::load;

/// A validator's evaluation batches and a model to load parameters into.
pub struct Evaluator<B: Backend> {
    template: Llama<B>,
    batches: Vec<Vec<u32>>,
    batch_size: usize,
    device: B::Device,
}

impl<B: ModelBackend> Evaluator<B> {
    /// An evaluator over `batches` (each `batch_size` windows).
    pub fn new(
        template: Llama<B>,
        batches: Vec<Vec<u32>>,
        batch_size: usize,
        device: B::Device,
    ) -> Self {
        Self {
            template,
            batches,
            batch_size,
            device,
        }
    }

    /// The validator's loss at `params`.
    pub fn loss(&self, params: &[f32]) -> f64 {
        let model = load(self.template.clone(), params, &self.device);
        validation_loss(&model, &self.batches, self.batch_size, &self.device) as f64
    }

    /// The batches.
    pub fn batches(&self) -> &[Vec<u32>] {
        &self.batches
    }
}

/// One round as the validator sees it: θ, the outer momentum and learning rate, and the
/// peers' dequantized pseudo-gradients.
pub struct RoundGame<'a, B: Backend> {
    /// The validator.
    pub evaluator: &'a Evaluator<B>,
    /// Kernels for the outer step.
    pub kernels: &'a dyn Kernels,
    /// θ before the round's outer step.
    pub global: &'a [f32],
    /// The outer momentum before it.
    pub momentum: &'a [f32],
    /// Each peer's pseudo-gradient.
    pub deltas: &'a [Vec<f32>],
    /// The round's outer learning rate.
    pub lr: f32,
    /// The outer momentum coefficient.
    pub mu: f32,
    /// `L(θ)`.
    pub base_loss: f64,
}

impl<B: ModelBackend> RoundGame<'_, B> {
    /// `v(S)` for peers `members`.
    pub fn value(&self, members: &[usize]) -> f64 {
        if members.is_empty() {
            return 0.0;
        }
        let mean = mean_of(self.deltas, members);
        let mut params = self.global.to_vec();
        let mut momentum = self.momentum.to_vec();
        if self
            .kernels
            .outer_nesterov_step(&mut params, &mut momentum, &mean, self.lr, self.mu)
            .is_err()
            || params.iter().any(|p| !p.is_finite())
        {
            return f64::NEG_INFINITY;
        }
        let loss = self.evaluator.loss(&params);
        if loss.is_finite() {
            self.base_loss - loss
        } else {
            f64::NEG_INFINITY
        }
    }
}

/// The mean of `deltas[j]` over `members` (non-empty), summed in the given order.
pub fn mean_of(deltas: &[Vec<f32>], members: &[usize]) -> Vec<f32> {
    let mut mean = vec![0.0f32; deltas[members[0]].len()];
    let scale = 1.0 / members.len() as f32;
    for &j in members {
        for (m, d) in mean.iter_mut().zip(&deltas[j]) {
            *m += d * scale;
        }
    }
    mean
}

struct FlatGradients<'a> {
    grads: &'a GradientsParams,
    out: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for FlatGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let len = param.val().shape().num_elements();
        match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => self.out.extend(
                g.into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("f32 gradients"),
            ),
            None => self.out.extend(std::iter::repeat_n(0.0, len)),
        }
    }
}

/// The gradient `g` (mean over batches) and diagonal empirical Fisher `F` (mean of each
/// batch's squared gradient) of the loss over `batches` at `params`, both in the parameter
/// layout's order.
pub fn curvature<B: TrainBackend>(
    template: &Llama<B>,
    params: &[f32],
    batches: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
) -> (Vec<f32>, Vec<f32>) {
    let model = load(template.clone(), params, device);
    let mut gradient = vec![0.0f32; params.len()];
    let mut fisher = vec![0.0f32; params.len()];
    let scale = 1.0 / batches.len().max(1) as f32;
    for windows in batches {
        let loss = model.loss(windows_tensor::<B>(windows, batch_size, device));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut flat = FlatGradients {
            grads: &grads,
            out: Vec::with_capacity(params.len()),
        };
        burn::module::Module::visit(&model, &mut flat);
        for ((g, f), b) in gradient.iter_mut().zip(&mut fisher).zip(&flat.out) {
            *g += b * scale;
            *f += b * b * scale;
        }
    }
    (gradient, fisher)
}
