//! A fetched checkpoint: a chunk manifest (JSON, as the donor offers it) and the blob (file
//! index then files). Rebuilding it either fails with a typed error or yields files whose
//! names are plain and whose bytes are the blob's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_checkpoints::Checkpoint;
use sinter_comms::transfer::Manifest;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (json, blob) = data.split_at(split);
    let blob = blob.get(1..).unwrap_or_default();
    // Either the donor's manifest, or the honest manifest of the blob (so the fuzzer reaches
    // the file index without forging SHA-256).
    let chunks = serde_json::from_slice::<Manifest>(json)
        .unwrap_or_else(|_| Manifest::of(blob, 64));
    if let Ok((checkpoint, manifest)) = Checkpoint::from_fetched(&chunks, blob) {
        assert!(manifest.check_names().is_ok());
        assert_eq!(checkpoint.blob(), blob);
    }
});
