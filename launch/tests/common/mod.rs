//! Helpers shared by the `launch` integration tests.

pub mod peers;

use std::process::{Command, Output};

/// Runs `launch ARGS…` to completion.
#[allow(dead_code)] // each test binary uses some of these
pub fn launch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(args)
        .output()
        .expect("launch runs")
}

/// stdout and stderr together, for assertions and failure messages.
#[allow(dead_code)]
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A model small enough that a whole run takes a second: `steps` inner steps per worker,
/// `workers` workers, `h` local steps per round, an evaluation every `h` steps.
pub fn small_config(steps: usize, workers: usize, h: usize) -> String {
    format!(
        r#"
[model]
d_model = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
ffn_hidden = 64
context = 32

[data]
validation_batches = 2
validation_batch_size = 4

[inner]
steps = {steps}
batch_size = 4

[outer]
workers = {workers}
inner_steps = {h}

[eval]
every_steps = {h}
"#
    )
}
