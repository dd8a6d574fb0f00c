//! A progress bar for long runs: steps done, training loss, tokens/s, last validation loss.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use sinter_trainer::simulate::{EvalPoint, Observer};

/// Shows training progress on stderr (hidden when stderr is not a terminal) and logs each
/// evaluation.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    loss: f32,
    val_loss: Option<f32>,
}

impl Progress {
    /// A bar for `total` worker-steps.
    pub fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} steps  {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        Self {
            bar,
            started: Instant::now(),
            loss: f32::NAN,
            val_loss: None,
        }
    }

    fn refresh(&self, tokens: u64) {
        let rate = tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let val = self
            .val_loss
            .map_or(String::new(), |v| format!("  val {v:.3}"));
        self.bar.set_message(format!(
            "loss {:.3}  {:.1}k tok/s{val}",
            self.loss,
            rate / 1000.0
        ));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Progress {
    fn on_step(&mut self, _worker: usize, _step: usize, loss: f32, tokens: u64) {
        self.loss = loss;
        self.bar.inc(1);
        self.refresh(tokens);
    }

    fn on_eval(&mut self, point: &EvalPoint) {
        self.val_loss = Some(point.val_loss);
        self.bar.suspend(|| {
            tracing::info!(
                round = point.round,
                step = point.step,
                tokens = point.tokens,
                val_loss = format!("{:.4}", point.val_loss),
                bytes_sent = point.bytes_sent,
                "eval"
            )
        });
    }
}
