//! What the cross-crate tests share.

use sinter_trainer::config::RunConfig;

/// A model small enough that a test takes seconds on two cores: 3 workers, 24 steps, H = 6.
pub fn small() -> RunConfig {
    let mut c = RunConfig::default();
    c.model.d_model = 32;
    c.model.n_layers = 2;
    c.model.n_heads = 2;
    c.model.n_kv_heads = 2;
    c.model.ffn_hidden = 64;
    c.model.context = 32;
    c.data.validation_batches = 4;
    c.data.validation_batch_size = 8;
    c.inner.steps = 24;
    c.inner.batch_size = 8;
    c.inner.lr = 3e-3;
    c.outer.workers = 3;
    c.outer.inner_steps = 6;
    c.eval.every_steps = 6;
    c
}
