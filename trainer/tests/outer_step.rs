//! The kernels' outer step against burn's own SGD with Nesterov momentum (dampening 0), with
//! the averaged pseudo-gradient registered as the gradient: two independent implementations
//! of DiLoCo's outer optimizer must agree.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Distribution, Tensor};
use sinter_kernels::{Kernels, RayonKernels};
use sinter_trainer::CpuTrainBackend as TB;
use sinter_trainer::params::{flatten, load};

#[derive(Module, Debug)]
struct Tiny<B: burn::tensor::backend::Backend> {
    a: Linear<B>,
    b: Linear<B>,
}

struct RegisterDelta<'a> {
    delta: &'a [f32],
    offset: usize,
    grads: GradientsParams,
}

impl burn::module::ModuleVisitor<TB> for RegisterDelta<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<TB, D>>) {
        let shape = param.val().dims();
        let n: usize = shape.iter().product();
        let values = self.delta[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let grad =
            Tensor::<<TB as burn::tensor::backend::AutodiffBackend>::InnerBackend, D>::from_data(
                burn::tensor::TensorData::new(values, shape),
                &Default::default(),
            );
        self.grads.register(param.id, grad);
    }
}

#[test]
fn kernels_outer_step_equals_burn_sgd_nesterov() {
    let device = Default::default();
    let model = Tiny::<TB> {
        a: LinearConfig::new(7, 5).init(&device),
        b: LinearConfig::new(5, 3).init(&device),
    };
    let (_, start) = flatten(&model);
    let sgd = SgdConfig::new().with_momentum(Some(MomentumConfig {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
    }));
    let mut optimizer = sgd.init::<TB, Tiny<TB>>();
    let mut burn_model = model;
    let mut params = start.clone();
    let mut momentum = vec![0.0f32; params.len()];
    for round in 0..4 {
        let delta: Vec<f32> =
            Tensor::<TB, 1>::random([params.len()], Distribution::Normal(0.0, 0.1), &device)
                .into_data()
                .to_vec()
                .unwrap();
        let mut register = RegisterDelta {
            delta: &delta,
            offset: 0,
            grads: GradientsParams::new(),
        };
        burn_model.visit(&mut register);
        burn_model = optimizer.step(0.7, burn_model, register.grads);
        RayonKernels
            .outer_nesterov_step(&mut params, &mut momentum, &delta, 0.7, 0.9)
            .unwrap();
        let (_, from_burn) = flatten(&burn_model);
        for (i, (a, b)) in params.iter().zip(&from_burn).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "round {round}, value {i}: kernels {a}, burn {b}"
            );
        }
    }
    // And the flat vector loads back into a model with the same values.
    let reloaded = load(burn_model, &params, &device);
    let (_, again) = flatten(&reloaded);
    assert_eq!(again, params);
}
