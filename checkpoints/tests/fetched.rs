//! A fetched checkpoint is hostile bytes (the fuzz target `checkpoint_manifest` runs this for
//! longer): a valid checkpoint's blob with a byte changed, cut short or followed by more, or
//! a file index that lies about names and lengths, is refused with a typed error or rebuilt
//! exactly; nothing panics, and no accepted name is a path. The blob fetched to disk (what
//! `launch checkpoint fetch` writes out) gets the same verdict as the blob in memory.

use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use sinter_checkpoints::fetched::FetchedBlob;
use sinter_checkpoints::{Checkpoint, CheckpointError, DirManifest};
use sinter_comms::transfer::Manifest;

/// The blob as a fetch leaves it on disk, opened: its manifest, or why it is refused.
fn on_disk(chunks: &Manifest, blob: &[u8]) -> Result<DirManifest, CheckpointError> {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(blob, 0).unwrap();
    FetchedBlob::open(file, chunks).map(|f| f.manifest().clone())
}

/// Both ways of taking a fetched blob agree: both refuse it, or both accept the same.
fn agree(chunks: &Manifest, blob: &[u8]) -> Result<(), TestCaseError> {
    match (
        Checkpoint::from_fetched(chunks, blob),
        on_disk(chunks, blob),
    ) {
        (Ok((_, memory)), Ok(disk)) => prop_assert_eq!(memory, disk),
        (Err(_), Err(_)) => {}
        (memory, disk) => prop_assert!(
            false,
            "in memory {:?}, on disk {:?}",
            memory.map(|m| m.1),
            disk
        ),
    }
    Ok(())
}

fn checkpoint(sizes: &[usize]) -> Checkpoint {
    let mut c = Checkpoint::default();
    for (i, n) in sizes.iter().enumerate() {
        c.add(format!("part{i}.safetensors"), vec![i as u8; *n]);
    }
    c
}

#[test]
fn bytes_after_the_last_file_are_refused() {
    // Found by the fuzz target: an index of no files followed by bytes was accepted, and the
    // checkpoint rebuilt without them (so with another root than the one fetched).
    let blob = b"[][\x00e";
    let err = Checkpoint::from_fetched(&Manifest::of(blob, 64), blob)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 bytes after the last file"), "{err}");
    let mut blob = checkpoint(&[10, 20]).blob();
    blob.push(0);
    assert!(Checkpoint::from_fetched(&Manifest::of(&blob, 64), &blob).is_err());
}

proptest! {
    #[test]
    fn damaged_blobs_are_refused_or_rebuilt_exactly(
        sizes in prop::collection::vec(0usize..300, 1..4),
        flip in any::<(usize, u8)>(),
        cut in any::<usize>(),
    ) {
        let c = checkpoint(&sizes);
        let blob = c.blob();
        let mut flipped = blob.clone();
        let i = flip.0 % flipped.len();
        flipped[i] ^= flip.1.max(1);
        let cut = &blob[..cut % blob.len()];
        for candidate in [&flipped[..], cut] {
            // Against the donor's (honest-looking) manifest of what it sent.
            let chunks = Manifest::of(candidate, 64);
            if let Ok((back, manifest)) = Checkpoint::from_fetched(&chunks, candidate) {
                prop_assert!(manifest.check_names().is_ok());
                prop_assert_eq!(back.blob(), candidate.to_vec());
            }
            agree(&chunks, candidate)?;
            // Against the manifest of the real one: refused.
            prop_assert!(Checkpoint::from_fetched(&Manifest::of(&blob, 64), candidate).is_err());
            prop_assert!(on_disk(&Manifest::of(&blob, 64), candidate).is_err());
        }
        let (back, _) = Checkpoint::from_fetched(&Manifest::of(&blob, 64), &blob).unwrap();
        prop_assert_eq!(back, c);
    }

    #[test]
    fn lying_file_indexes_are_refused_without_a_panic(
        name in prop_oneof![
            Just("../escaped".to_string()),
            Just("/etc/passwd".to_string()),
            Just("a/b".to_string()),
            Just("运行🦀.safetensors".to_string()),
            "\\PC{0,20}",
        ],
        len in prop_oneof![Just(u64::MAX), Just(u64::MAX / 2), any::<u64>(), 0u64..64],
        rest in prop::collection::vec(any::<u8>(), 0..128),
        chunk_size in prop_oneof![Just(0u64), Just(u64::MAX), 1u64..128],
    ) {
        let index = serde_json::json!([{"name": name, "len": len}]);
        let mut blob = serde_json::to_vec(&index).unwrap();
        blob.extend_from_slice(&rest);
        let mut chunks = Manifest::of(&blob, 64);
        agree(&chunks, &blob)?;
        chunks.chunk_size = chunk_size;
        prop_assert!(chunk_size == 64 || Checkpoint::from_fetched(&chunks, &blob).is_err());
        prop_assert!(chunk_size == 64 || on_disk(&chunks, &blob).is_err());
    }
}
