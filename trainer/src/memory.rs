//! What a run used of the machine's memory, for its summary: the process's peak resident
//! memory and, on a GPU backend, the device memory its allocator holds.

use sinter_kernels::Kernels;

/// Memory a run used, as `summary.json` reports it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    /// The kernels' device: `rayon` (CPU), `wgpu` or `cuda`.
    pub device: String,
    /// The process's peak resident memory in MiB (Linux's `VmHWM`; none elsewhere).
    pub peak_host_rss_mib: Option<f64>,
    /// Device memory the backend's allocator holds in MiB, read at the end of the run: its
    /// pools keep what they take, so this is about the peak. None on the CPU.
    pub device_memory_reserved_mib: Option<f64>,
}

impl MemoryStats {
    /// Reads both now.
    pub fn measure(kernels: &dyn Kernels) -> Self {
        Self {
            device: kernels.name().to_owned(),
            peak_host_rss_mib: peak_host_rss_bytes().map(mib),
            device_memory_reserved_mib: kernels.device_memory_reserved().map(mib),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / f64::from(1 << 20) * 10.0).round() / 10.0
}

/// The process's peak resident set size, from `/proc/self/status`.
fn peak_host_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_reports_host_memory_and_no_device_memory() {
        let held = vec![1u8; 64 << 20];
        let stats = MemoryStats::measure(&sinter_kernels::RayonKernels);
        assert_eq!(stats.device, "rayon");
        assert_eq!(stats.device_memory_reserved_mib, None);
        if cfg!(target_os = "linux") {
            let peak = stats.peak_host_rss_mib.unwrap();
            assert!(peak >= 64.0, "64 MiB held, peak {peak} MiB");
        }
        assert_eq!(held.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
