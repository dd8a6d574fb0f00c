//! A transfer manifest as a donor sends it (JSON), then chunks checked against it: a manifest
//! either fails `check` or describes its chunks consistently, and no chunk check panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_comms::transfer::Manifest;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (json, chunk) = data.split_at(split);
    let Ok(manifest) = serde_json::from_slice::<Manifest>(json) else {
        return;
    };
    for index in [0, 1, manifest.chunks.len(), usize::MAX] {
        let _ = manifest.verify_chunk(index, chunk);
        let _ = manifest.range(index);
    }
    if manifest.check().is_ok() {
        let total: usize = (0..manifest.chunks.len())
            .map(|i| manifest.range(i).len())
            .sum();
        assert_eq!(total as u64, manifest.total_len);
    }
});
