//! A fetched checkpoint written to disk by a fetch: a chunk manifest (JSON, as the donor
//! offers it) and the file holding the blob. Opening it either fails with a typed error, or
//! yields a checkpoint with plain names whose files, copied out of the file, are the same as
//! the in-memory path (`Checkpoint::from_fetched`) makes of the same bytes.
#![no_main]

use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use sinter_checkpoints::Checkpoint;
use sinter_checkpoints::fetched::FetchedBlob;
use sinter_comms::transfer::Manifest;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (json, blob) = data.split_at(split);
    let blob = blob.get(1..).unwrap_or_default();
    // Either the donor's manifest, or the honest manifest of the blob (so the fuzzer reaches
    // the file index without forging SHA-256).
    let chunks =
        serde_json::from_slice::<Manifest>(json).unwrap_or_else(|_| Manifest::of(blob, 64));
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(blob, 0).unwrap();
    let on_disk = FetchedBlob::open(file, &chunks);
    let in_memory = Checkpoint::from_fetched(&chunks, blob);
    assert_eq!(on_disk.is_ok(), in_memory.is_ok(), "{on_disk:?} / {in_memory:?}");
    if let (Ok(fetched), Ok((checkpoint, _))) = (on_disk, in_memory) {
        assert!(fetched.manifest().check_names().is_ok());
        let dir = tempfile::tempdir().unwrap();
        fetched.write(dir.path(), "ckpt").unwrap();
        for entry in &fetched.manifest().files {
            let bytes = std::fs::read(dir.path().join("ckpt").join(&entry.name)).unwrap();
            assert_eq!(Some(bytes.as_slice()), checkpoint.get(&entry.name));
        }
    }
});
