//! The GPU backends from the default binary: a CPU peer and a wgpu peer training one run
//! (on Mesa's lavapipe where there is no GPU), and what a missing device says.

mod common;

use common::peers::Peer;
use common::{launch, text};

#[test]
fn a_cpu_peer_and_a_wgpu_peer_end_with_the_same_global_parameters() {
    let _serial = common::peers::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(12, 2, 4)).unwrap();
    let cpu = Peer::start(dir.path(), "cpu", &config, &["--backend", "cpu"]);
    let address = cpu.address();
    let gpu = Peer::start(
        dir.path(),
        "wgpu",
        &config,
        &["--backend", "wgpu", "--bootstrap", &address],
    );
    let (cpu_status, cpu_summary) = cpu.wait(dir.path(), "cpu");
    let (gpu_status, gpu_summary) = gpu.wait(dir.path(), "wgpu");
    assert!(cpu_status.success(), "{cpu_summary}");
    assert!(gpu_status.success(), "{gpu_summary}");
    for summary in [&cpu_summary, &gpu_summary] {
        assert_eq!(summary["rounds"], 3, "{summary}");
        assert_eq!(summary["workers"], 2, "{summary}");
    }
    assert_eq!(
        cpu_summary["params_sha256"], gpu_summary["params_sha256"],
        "the global parameters are the same bytes on both"
    );
    common::assert_loss_fell(&gpu_summary, "the wgpu peer");
    assert_eq!(cpu_summary["device"], "rayon");
    assert_eq!(
        cpu_summary["device_memory_reserved_mib"],
        serde_json::Value::Null
    );
    assert!(
        gpu_summary["device"].as_str().unwrap().contains("wgpu"),
        "{gpu_summary}"
    );
    let reserved = gpu_summary["device_memory_reserved_mib"].as_f64().unwrap();
    assert!(reserved > 0.0, "{gpu_summary}");
    assert!(gpu_summary["peak_host_rss_mib"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_missing_cuda_device_exits_1_saying_what_to_install() {
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, common::small_config(4, 1, 4)).unwrap();
    let out = launch(&[
        "train",
        config.to_str().unwrap(),
        "--backend",
        "cuda",
        "--steps",
        "1",
    ]);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    for needed in ["backend `cuda`", "libcuda", "CUDA_PATH", "--backend cpu"] {
        assert!(
            message.contains(needed),
            "{needed:?} missing from: {message}"
        );
    }
    assert!(!message.contains("panicked"), "{message}");
}
