//! Serving a checkpoints directory to peers and rebuilding a fetched checkpoint.
//!
//! A peer answers for its newest checkpoint (`latest`) and for any other it still keeps, by
//! Merkle root, reading each requested chunk from disk; it does not check what it serves —
//! the fetcher verifies every chunk against the manifest and re-asks another peer for any
//! that fails (`sinter_comms::transfer::fetch`).

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sinter_comms::group::BlobSource;
use sinter_comms::transfer::Manifest;

use crate::CheckpointError;
use crate::store::{self, Checkpoint, DirManifest, FileEntry, MANIFEST};

/// A checkpoints directory, served by root.
pub struct Served {
    parent: PathBuf,
}

impl Served {
    /// Serves the checkpoints under `parent`.
    pub fn new(parent: &Path) -> Self {
        Self {
            parent: parent.to_owned(),
        }
    }

    /// The manifest of the checkpoint in `dir`, if it reads and names only plain files.
    fn read_manifest(dir: &Path) -> Option<DirManifest> {
        let manifest: DirManifest =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()?;
        match manifest.check_names() {
            Ok(()) => Some(manifest),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), %why, "not serving this checkpoint");
                None
            }
        }
    }

    /// The checkpoint with `root`, or the newest.
    fn find(&self, root: Option<&str>) -> Option<(PathBuf, DirManifest)> {
        match root {
            None => {
                let dir = store::latest(&self.parent).ok()??;
                Self::read_manifest(&dir).map(|m| (dir, m))
            }
            Some(root) => std::fs::read_dir(&self.parent)
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter_map(|dir| Self::read_manifest(&dir).map(|m| (dir, m)))
                .find(|(_, m)| m.root() == root),
        }
    }
}

/// Bytes `range` of the blob a checkpoint's chunks cover (index, then files), from disk.
pub fn read_range(
    dir: &Path,
    manifest: &DirManifest,
    range: Range<usize>,
) -> Result<Vec<u8>, CheckpointError> {
    let index = serde_json::to_vec(&manifest.files).expect("file entries serialise");
    let mut out = Vec::with_capacity(range.len());
    let mut at = 0usize;
    let mut take =
        |part: Range<usize>, read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>| {
            let (lo, hi) = (range.start.max(part.start), range.end.min(part.end));
            if lo < hi {
                let start = out.len();
                out.resize(start + hi - lo, 0);
                read((lo - part.start) as u64, &mut out[start..])?;
            }
            Ok::<(), std::io::Error>(())
        };
    take(0..index.len(), &mut |off, buf| {
        buf.copy_from_slice(&index[off as usize..off as usize + buf.len()]);
        Ok(())
    })
    .map_err(CheckpointError::io(dir))?;
    at += index.len();
    for FileEntry { name, len } in &manifest.files {
        let path = dir.join(name);
        let part = at..at + *len as usize;
        take(part, &mut |off, buf| {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(buf)
        })
        .map_err(CheckpointError::io(&path))?;
        at += *len as usize;
    }
    Ok(out)
}

impl BlobSource for Served {
    fn manifest(&self, root: Option<&str>) -> Option<Manifest> {
        self.find(root).map(|(_, m)| m.chunks)
    }

    fn chunk(&self, root: &str, index: usize) -> Option<Vec<u8>> {
        let (dir, manifest) = self.find(Some(root))?;
        if index >= manifest.chunks.chunks.len() {
            return None;
        }
        read_range(&dir, &manifest, manifest.chunks.range(index))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot serve a checkpoint chunk"))
            .ok()
    }
}

impl Checkpoint {
    /// Rebuilds a checkpoint from a fetched blob: its file index is the JSON at its start;
    /// every byte is checked against `chunks`.
    pub fn from_fetched(
        chunks: &Manifest,
        blob: &[u8],
    ) -> Result<(Self, DirManifest), CheckpointError> {
        let files: Vec<FileEntry> = serde_json::Deserializer::from_slice(blob)
            .into_iter()
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| CheckpointError::invalid("<fetched>", "no file index at its start"))?;
        let manifest = DirManifest {
            files,
            chunks: chunks.clone(),
        };
        Ok((Self::from_blob(&manifest, blob)?, manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_chunks_rebuild_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::default();
        c.add("a.safetensors", (0..200_000u32).map(|i| i as u8).collect());
        c.add("b.json", b"{}".to_vec());
        let manifest = c.write(dir.path(), "round-000001").unwrap();
        let served = Served::new(dir.path());
        let chunks = served.manifest(None).unwrap();
        assert_eq!(chunks, manifest.chunks);
        assert_eq!(served.manifest(Some(&chunks.root)).unwrap(), chunks);
        assert!(served.manifest(Some("0000")).is_none());
        let blob: Vec<u8> = (0..chunks.chunks.len())
            .flat_map(|i| served.chunk(&chunks.root, i).unwrap())
            .collect();
        assert_eq!(blob, c.blob());
        let (back, back_manifest) = Checkpoint::from_fetched(&chunks, &blob).unwrap();
        assert_eq!(back, c);
        assert_eq!(back_manifest, manifest);
        let mut bad = blob.clone();
        bad[150_000] ^= 1;
        assert!(Checkpoint::from_fetched(&chunks, &bad).is_err());
    }

    /// A donor's checkpoint whose index names a file outside the directory.
    fn hostile(name: &str) -> (Manifest, Vec<u8>) {
        let files = vec![FileEntry {
            name: name.into(),
            len: 3,
        }];
        let mut blob = serde_json::to_vec(&files).unwrap();
        blob.extend_from_slice(b"pwn");
        (Manifest::of(&blob, 1 << 20), blob)
    }

    #[test]
    fn a_fetched_checkpoint_naming_paths_outside_its_directory_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        for name in [
            "../../../escaped-1",
            "/tmp/escaped-2",
            "sub/file",
            "..",
            ".hidden",
            "",
            "manifest.json",
            "a\\b",
            "caf\u{e9}.json",
            &"x".repeat(101),
        ] {
            let (chunks, blob) = hostile(name);
            let err = Checkpoint::from_fetched(&chunks, &blob)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a plain file name"), "{name:?}: {err}");
            assert!(
                err.contains(&format!("{name:?}")),
                "names the offender: {err}"
            );
            // Even a checkpoint built in memory with such a name is not written.
            let mut c = Checkpoint::default();
            c.add(name, b"pwn".to_vec());
            assert!(c.write(&out, "round-000001").is_err(), "{name:?}");
        }
        assert!(!dir.path().join("escaped-1").exists());
        assert!(!out.join("round-000001").exists());
        let mut twice = Checkpoint::default();
        twice.add("a.json", b"1".to_vec());
        twice.add("a.json", b"2".to_vec());
        assert!(
            twice
                .write(&out, "round-000001")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn a_checkpoint_on_disk_whose_manifest_names_outside_files_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::default();
        c.add("a.json", b"{}".to_vec());
        let manifest = c.write(dir.path(), "round-000001").unwrap();
        let served = Served::new(dir.path());
        assert!(served.manifest(Some(manifest.root())).is_some());
        let path = dir.path().join("round-000001").join(MANIFEST);
        let mut tampered = manifest.clone();
        tampered.files[0].name = "../../etc/passwd".into();
        std::fs::write(&path, serde_json::to_vec(&tampered).unwrap()).unwrap();
        assert!(served.manifest(None).is_none());
        assert!(served.chunk(manifest.root(), 0).is_none());
        assert!(store::verify(&dir.path().join("round-000001")).is_err());
    }
}
