//! A fetched checkpoint on disk: the blob a fetch wrote to a file, never whole in memory.
//! Opening it checks every chunk against the manifest, reads the file index at its start (a
//! bounded read) and checks the names and the layout; writing copies each file's range out
//! into a checkpoint directory, atomically as every checkpoint is written.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sinter_comms::transfer::Manifest;

use crate::CheckpointError;
use crate::store::{DirManifest, FileEntry, index_bytes, write_dir};

/// The longest file index read from a fetched blob (names of ≤ 100 bytes: thousands of files).
const MAX_INDEX: u64 = 1 << 20;

/// A fetched checkpoint's blob in a file, checked.
#[derive(Debug)]
pub struct FetchedBlob {
    file: File,
    manifest: DirManifest,
    /// Each file's offset and length in the blob.
    spans: Vec<(u64, u64)>,
}

fn bad(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::invalid("<fetched>", reason)
}

fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, CheckpointError> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|e| bad(e.to_string()))?];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| bad(format!("reading the fetched bytes: {e}")))?;
    Ok(buf)
}

impl FetchedBlob {
    /// Checks the blob in `file` against `chunks` (every chunk's hash, the index, the names,
    /// the layout).
    pub fn open(file: File, chunks: &Manifest) -> Result<Self, CheckpointError> {
        chunks.check().map_err(|e| bad(e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| bad(format!("the fetched file: {e}")))?
            .len();
        if len != chunks.total_len {
            return Err(bad(format!(
                "{len} bytes fetched, the manifest says {}",
                chunks.total_len
            )));
        }
        for index in 0..chunks.chunks.len() {
            let range = chunks.range(index);
            let data = read_at(&file, range.start as u64, range.len() as u64)?;
            chunks.verify_chunk(index, &data).map_err(bad)?;
        }
        let head = read_at(&file, 0, len.min(MAX_INDEX))?;
        let files: Vec<FileEntry> = serde_json::Deserializer::from_slice(&head)
            .into_iter()
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| bad("no file index at its start"))?;
        if !head.starts_with(&index_bytes(&files)) {
            return Err(bad("the index is not in its canonical form"));
        }
        let manifest = DirManifest {
            files,
            chunks: chunks.clone(),
        };
        manifest.check_names().map_err(bad)?;
        let spans = manifest.layout(len).map_err(bad)?;
        Ok(Self {
            file,
            manifest,
            spans,
        })
    }

    /// The checkpoint's manifest.
    pub fn manifest(&self) -> &DirManifest {
        &self.manifest
    }

    /// The bytes of file `name`, if it is at most `limit` bytes (`meta.json`, say).
    pub fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, CheckpointError> {
        let (i, _) = self
            .manifest
            .files
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
            .ok_or_else(|| bad(format!("no {name}")))?;
        let (offset, len) = self.spans[i];
        if len > limit {
            return Err(bad(format!("{name} is {len} bytes, over {limit}")));
        }
        read_at(&self.file, offset, len)
    }

    /// Writes the checkpoint as `parent/name`, copying each file out of the blob.
    pub fn write(&self, parent: &Path, name: &str) -> Result<(), CheckpointError> {
        write_dir(parent, name, &self.manifest, |i, path| {
            let (offset, len) = self.spans[i];
            copy_range(&self.file, offset, len, path)
        })
    }
}

/// Copies `len` bytes at `offset` of `from` into a new file at `path`, fsync'd.
fn copy_range(from: &File, offset: u64, len: u64, path: &Path) -> Result<(), CheckpointError> {
    let to = File::create(path).map_err(CheckpointError::io(path))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        from.read_exact_at(&mut buf[..n], offset + done)
            .and_then(|()| to.write_all_at(&buf[..n], done))
            .map_err(CheckpointError::io(path))?;
        done += n as u64;
    }
    to.sync_all().map_err(CheckpointError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checkpoint;

    fn blob_file(blob: &[u8]) -> File {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(blob, 0).unwrap();
        file
    }

    #[test]
    fn a_fetched_blob_on_disk_becomes_the_same_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::default();
        c.add(
            "a.safetensors",
            (0..300_000u32).map(|i| (i % 253) as u8).collect(),
        );
        c.add("meta.json", b"{\"round\":3}".to_vec());
        let manifest = c.manifest();
        let fetched = FetchedBlob::open(blob_file(&c.blob()), &manifest.chunks).unwrap();
        assert_eq!(fetched.manifest(), &manifest);
        assert_eq!(
            fetched.read("meta.json", 1 << 10).unwrap(),
            b"{\"round\":3}"
        );
        assert!(fetched.read("a.safetensors", 1 << 10).is_err());
        fetched.write(dir.path(), "round-000003").unwrap();
        let (back, back_manifest) = Checkpoint::read(&dir.path().join("round-000003")).unwrap();
        assert_eq!(back, c);
        assert_eq!(back_manifest, manifest);
    }

    #[test]
    fn a_fetched_blob_that_differs_from_its_manifest_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::default();
        c.add("a.json", vec![7u8; 200_000]);
        let manifest = c.manifest();
        let mut blob = c.blob();
        blob[150_000] ^= 1;
        let err = FetchedBlob::open(blob_file(&blob), &manifest.chunks).unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
        // Bytes after the last file, under a manifest made for them: refused by the layout.
        let mut longer = c.blob();
        longer.extend_from_slice(b"tail");
        let chunks = Manifest::of(&longer, manifest.chunks.chunk_size as usize);
        let err = FetchedBlob::open(blob_file(&longer), &chunks).unwrap_err();
        assert!(
            err.to_string().contains("4 bytes after the last file"),
            "{err}"
        );
        // A name that is a path.
        let files = vec![FileEntry {
            name: "../escaped".into(),
            len: 3,
        }];
        let mut hostile = serde_json::to_vec(&files).unwrap();
        hostile.extend_from_slice(b"pwn");
        let chunks = Manifest::of(&hostile, 1 << 16);
        let err = FetchedBlob::open(blob_file(&hostile), &chunks).unwrap_err();
        assert!(err.to_string().contains("not a plain file name"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
