//! DiLoCo simulations end to end: trainer → kernels → wire codec → kernels → trainer.
//! Small models so that each test takes seconds on two cores.

mod common;

use common::small;
use sinter_kernels::{Kernels, RayonKernels, WgpuKernels};
use sinter_trainer::config::{Mode, Quant, RunConfig};
use sinter_trainer::simulate::{Quiet, Summary, allreduce_factor, simulate};
use sinter_trainer::{CpuTrainBackend, params, pseudo_gradient};

fn run(
    config: &RunConfig,
    kernels: &dyn Kernels,
) -> (Summary, Vec<sinter_trainer::simulate::EvalPoint>) {
    let (_, dataset) = config.load_data().unwrap();
    let outcome = simulate::<CpuTrainBackend>(
        config,
        &dataset,
        kernels,
        &Default::default(),
        &mut Quiet,
        Default::default(),
    )
    .unwrap();
    (outcome.summary, outcome.evals)
}

#[test]
fn int8_diloco_learns_and_counts_bytes_of_real_frames() {
    let config = small();
    let (summary, evals) = run(&config, &RayonKernels);
    assert!(
        summary.final_val_loss < summary.initial_val_loss - 0.5,
        "{summary:?}"
    );
    assert_eq!(summary.rounds, 4);
    assert_eq!(evals.len(), 5, "initial + one per round");
    // Payload per sync: one int8 code per parameter plus one f32 scale per block of each tensor.
    let (layout, _) = params::flatten(&params::skeleton::<sinter_trainer::CpuBackend>(
        &config.model,
        &Default::default(),
    ));
    let per_sync: usize = layout
        .slots
        .iter()
        .map(|s| s.len + 4 * s.len.div_ceil(256))
        .sum();
    let expected = allreduce_factor(3) * per_sync as f64 * 4.0;
    assert_eq!(summary.payload_bytes_per_worker, expected.round() as u64);
    assert!(
        summary.bytes_sent_per_worker > 0
            && summary.bytes_sent_per_worker < summary.payload_bytes_per_worker * 11 / 10
    );
    let ddp = allreduce_factor(3) * summary.params as f64 * 4.0 * 24.0;
    assert_eq!(summary.ddp_equivalent_bytes_per_worker, ddp.round() as u64);
    assert_eq!(summary.rejected_contributions, 0);
}

#[test]
fn runs_are_deterministic_and_kernels_interchangeable() {
    let mut config = small();
    config.inner.steps = 12;
    let (a, ea) = run(&config, &RayonKernels);
    let (b, eb) = run(&config, &RayonKernels);
    assert_eq!(ea, eb, "same seed, same curve");
    assert_eq!(a.bytes_sent_per_worker, b.bytes_sent_per_worker);
    let gpu = WgpuKernels::wgpu();
    let (c, ec) = run(&config, &gpu);
    for (x, y) in ea.iter().zip(&ec) {
        assert!(
            (x.val_loss - y.val_loss).abs() < 1e-3,
            "rayon {} vs wgpu {}",
            x.val_loss,
            y.val_loss
        );
    }
    assert_eq!(a.payload_bytes_per_worker, c.payload_bytes_per_worker);
}

#[test]
fn fp32_pseudo_gradients_cost_about_four_times_int8() {
    let mut config = small();
    config.inner.steps = 6;
    let (int8, _) = run(&config, &RayonKernels);
    config.outer.quant = Quant::None;
    let (fp32, _) = run(&config, &RayonKernels);
    let ratio = fp32.payload_bytes_per_worker as f64 / int8.payload_bytes_per_worker as f64;
    assert!(
        (3.8..4.0).contains(&ratio),
        "fp32/int8 payload ratio {ratio}"
    );
}

#[test]
fn sparse_diloco_learns_and_counts_the_relay_of_its_sets() {
    let mut config = small();
    config.outer.quant = Quant::Sparse;
    config.outer.sparse.chunk = 1024;
    config.outer.sparse.k = 32;
    let (summary, _) = run(&config, &RayonKernels);
    assert!(
        summary.final_val_loss < summary.initial_val_loss - 0.3,
        "{summary:?}"
    );
    let (int8, _) = run(&small(), &RayonKernels);
    // 3 % of the entries, 2-bit; each member's parts go to the shards' owners, which relay
    // every member's parts to the others ((N²−1)/N sets sent per member, against int8's
    // 2(N−1)/N): about a tenth of int8's all-reduce.
    let ratio = summary.payload_bytes_per_worker as f64 / int8.payload_bytes_per_worker as f64;
    assert!((0.03..0.2).contains(&ratio), "sparse/int8 payload {ratio}");
    assert_eq!(summary.rejected_contributions, 0);
    let (again, _) = run(&config, &RayonKernels);
    assert_eq!(again.final_val_loss, summary.final_val_loss);
}

#[test]
fn data_parallel_with_one_worker_is_plain_training_and_sends_nothing() {
    let mut config = small();
    config.outer.mode = Mode::Ddp;
    config.outer.workers = 1;
    config.inner.steps = 12;
    let (summary, _) = run(&config, &RayonKernels);
    assert_eq!(summary.bytes_sent_per_worker, 0);
    assert!(summary.final_val_loss < summary.initial_val_loss - 0.3);
}

#[test]
fn a_lying_or_corrupt_pseudo_gradient_is_rejected_before_it_touches_the_mean() {
    let config = small();
    let model = params::skeleton::<sinter_trainer::CpuBackend>(&config.model, &Default::default());
    let (layout, global) = params::flatten(&model);
    let mut local = global.clone();
    local[10] += 0.5;
    let quant = pseudo_gradient::quant_config(&config.outer);
    let set = pseudo_gradient::build(&RayonKernels, &layout, &global, &local, None, quant).unwrap();
    let frame = sinter_comms::encode(&set, 3).unwrap();
    let decoded = sinter_comms::decode(&frame, &Default::default()).unwrap();
    let mut mean = vec![0.0f32; global.len()];
    pseudo_gradient::accumulate(&RayonKernels, &layout.slots, &decoded, &mut mean, 1.0).unwrap();
    assert!(
        (mean[10] + 0.5).abs() < 0.5 / 127.0,
        "global − local at 10 is −0.5, got {}",
        mean[10]
    );

    // A peer that renames or reshapes a tensor is refused and nothing is added.
    let mut lying = decoded.clone();
    lying.tensors[1].name = "layers.9.attention.wq.weight".into();
    let mut untouched = vec![0.0f32; global.len()];
    assert!(
        pseudo_gradient::accumulate(&RayonKernels, &layout.slots, &lying, &mut untouched, 1.0)
            .is_err()
    );
    assert!(untouched.iter().all(|&v| v == 0.0));

    // A NaN in a worker's parameters never becomes a frame.
    local[3] = f32::NAN;
    let err =
        pseudo_gradient::build(&RayonKernels, &layout, &global, &local, None, quant).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
}

#[test]
fn a_delayed_outer_step_lands_each_mean_a_round_late_and_loses_no_progress() {
    let mut config = small();
    config.outer.workers = 1;
    config.outer.inner_steps = 3;
    config.inner.steps = 12;
    config.eval.every_steps = 3;
    config.outer.quant = Quant::None;
    config.outer.lr = 1.0;
    config.outer.momentum = 0.0;
    config.checkpoint.every_rounds = 0;
    let (now, now_evals) = run(&config, &RayonKernels);
    config.outer.delayed_outer_step = true;
    config.validate().unwrap();
    let (late, late_evals) = run(&config, &RayonKernels);
    // One worker averaging with itself at lr 1: its parameters are the global ones either
    // way, so the delay changes the intermediate global parameters, not where the run ends.
    assert_eq!(
        late_evals[1].val_loss, late_evals[0].val_loss,
        "after the first round its mean has not landed yet"
    );
    assert_ne!(now_evals[1].val_loss, now_evals[0].val_loss);
    assert!(
        (late.final_val_loss - now.final_val_loss).abs() < 1e-4,
        "delayed {} against at once {}",
        late.final_val_loss,
        now.final_val_loss
    );
    assert_eq!(late.rounds, now.rounds);
    assert_eq!(late.bytes_sent_per_worker, now.bytes_sent_per_worker);

    config.checkpoint.every_rounds = 2;
    let refused = config.validate().unwrap_err();
    assert!(refused.contains("checkpoint.every_rounds"), "{refused}");

    let mut sparse = small();
    sparse.outer.quant = Quant::Sparse;
    sparse.outer.sparse.chunk = 1024;
    sparse.outer.sparse.k = 32;
    sparse.outer.delayed_outer_step = true;
    sparse.checkpoint.every_rounds = 0;
    let (summary, _) = run(&sparse, &RayonKernels);
    assert!(
        summary.final_val_loss < summary.initial_val_loss - 0.3,
        "{summary:?}"
    );
}
