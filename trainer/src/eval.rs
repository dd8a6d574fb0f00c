//! Validation loss: mean cross-entropy per token over fixed held-out windows.

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;

/// One evaluation, as written to `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct EvalPoint {
    /// Outer rounds completed (data-parallel: steps / H).
    pub round: usize,
    /// Inner steps completed per worker.
    pub step: usize,
    /// Training tokens consumed by all workers together.
    pub tokens: u64,
    /// Validation loss of the global model.
    pub val_loss: f32,
    /// Bytes each worker has sent so far.
    pub bytes_sent: u64,
}

use crate::inner::windows_tensor;
use crate::model::Llama;

/// Mean loss over `batches` (each a concatenation of `batch_size` equal windows). Batches are
/// spread over the available cores; the sum is taken in batch order, so the result does not
/// depend on the number of threads.
pub fn validation_loss<B: Backend>(
    model: &Llama<B>,
    batches: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
) -> f32 {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(batches.len())
        .max(1);
    let per_thread = batches.len().div_ceil(threads);
    let losses: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = batches
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|windows| {
                            model
                                .loss(windows_tensor::<B>(windows, batch_size, device))
                                .into_scalar()
                                .elem::<f64>()
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("validation thread panicked"))
            .collect()
    });
    (losses.iter().sum::<f64>() / batches.len() as f64) as f32
}
