//! Runs a job on the compute backend and kernels a config names.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use sinter_kernels::Kernels;
use sinter_trainer::TrainerError;
use sinter_trainer::config::BackendKind;

/// Work that is generic over the training backend.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` (with autodiff) and the kernels that suit it.
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        kernels: &dyn Kernels,
    ) -> Result<Self::Output>;
}

/// Runs `job` on `kind`: flex with rayon kernels on CPU, burn's wgpu or CUDA backend with
/// the matching CubeCL kernels when built with that feature.
pub fn dispatch<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Cpu => job.run::<sinter_trainer::CpuTrainBackend>(
            Default::default(),
            &sinter_kernels::RayonKernels,
        ),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => job.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(
            Default::default(),
            &sinter_kernels::WgpuKernels::wgpu(),
        ),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(TrainerError::BackendUnavailable("wgpu").into()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => job.run::<burn::backend::Autodiff<burn::backend::Cuda>>(
            Default::default(),
            &sinter_kernels::CudaKernels::cuda(),
        ),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(TrainerError::BackendUnavailable("cuda").into()),
    }
}
