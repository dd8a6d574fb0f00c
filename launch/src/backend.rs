//! Runs a job on the compute backend and kernels a config names.

use anyhow::Result;
use sinter_kernels::Kernels;
use sinter_trainer::config::BackendKind;
use sinter_trainer::fused::TrainBackend;

/// Work that is generic over the training backend.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` (with autodiff) and the kernels that suit it.
    fn run<B: TrainBackend>(self, device: B::Device, kernels: &dyn Kernels)
    -> Result<Self::Output>;
}

/// What a backend needs from the machine, for the message when it is missing.
#[cfg(feature = "wgpu")]
const WGPU_NEEDS: &str = "wgpu needs a Vulkan, Metal or DirectX 12 driver: on Linux your \
GPU's Vulkan driver, or Mesa's software one (`apt-get install mesa-vulkan-drivers libvulkan1`); \
or train with `--backend cpu`";
#[cfg(feature = "cuda")]
const CUDA_NEEDS: &str = "CUDA needs an NVIDIA GPU with its driver (libcuda.so.1) and, to \
compile kernels, the CUDA toolkit's NVRTC and headers: set CUDA_PATH (default /usr/local/cuda) \
and put its lib64 on LD_LIBRARY_PATH; or train with `--backend cpu`";

/// Runs `job` on `kind`: flex with rayon kernels on CPU, burn's wgpu or CUDA backend with
/// the matching CubeCL kernels, once a first kernel has run on the device (a missing device
/// is an error saying what to install, not a panic halfway through).
pub fn dispatch<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Cpu => job.run::<sinter_trainer::CpuTrainBackend>(
            Default::default(),
            &sinter_kernels::RayonKernels,
        ),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
            let kernels = sinter_kernels::WgpuKernels::probed(&device)
                .map_err(|e| anyhow::anyhow!("backend `wgpu`: {e}\n{WGPU_NEEDS}"))?;
            job.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(device, &kernels)
        }
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(sinter_trainer::TrainerError::BackendUnavailable("wgpu").into()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = burn::backend::cuda::CudaDevice::new(0);
            let kernels = sinter_kernels::CudaKernels::probed(&device)
                .map_err(|e| anyhow::anyhow!("backend `cuda`: {e}\n{CUDA_NEEDS}"))?;
            job.run::<burn::backend::Autodiff<burn::backend::Cuda>>(device, &kernels)
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(sinter_trainer::TrainerError::BackendUnavailable("cuda").into()),
    }
}
