//! Checkpoint directories on disk.
//!
//! Written atomically: every file goes into `NAME.partial/`, each is fsync'd, the directory
//! is renamed to `NAME` and the parent fsync'd, and only then does `latest` (itself written
//! to a temporary file and renamed) name it. A crash at any instant leaves the previous
//! checkpoint complete and named by `latest`; leftover `.partial` directories are removed by
//! the next writer.
//!
//! Identity: the chunks cover an index (the file names and lengths, as JSON) followed by the
//! files' bytes, so the Merkle root binds names, lengths and contents together.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sinter_comms::transfer::{Manifest, chunk_size_for};

use crate::CheckpointError;

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";
/// The file naming the newest complete checkpoint in a checkpoints directory.
pub const LATEST: &str = "latest";
const PARTIAL: &str = ".partial";
const REPLACED: &str = ".replaced";

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the directory.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
}

/// `manifest.json`: the files in order and the chunk manifest over index + files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirManifest {
    /// The files, in blob order.
    pub files: Vec<FileEntry>,
    /// Chunk hashes and the Merkle root (the checkpoint's identity).
    pub chunks: Manifest,
}

impl DirManifest {
    /// The checkpoint's identity.
    pub fn root(&self) -> &str {
        &self.chunks.root
    }

    fn index(&self) -> Vec<u8> {
        index_bytes(&self.files)
    }

    /// The files a byte range of the blob touches.
    fn files_in(&self, range: std::ops::Range<usize>) -> Vec<String> {
        let mut at = self.index().len();
        let mut names = Vec::new();
        if range.start < at {
            names.push(MANIFEST.to_owned());
        }
        for f in &self.files {
            let end = at.saturating_add(usize::try_from(f.len).unwrap_or(usize::MAX));
            if range.start < end && range.end > at {
                names.push(f.name.clone());
            }
            at = end;
        }
        names
    }
}

/// Longest file name a checkpoint may hold.
const MAX_NAME: usize = 100;

/// Refuses file names that are not plain names inside the checkpoint directory: only ASCII
/// letters, digits, `_`, `-` and `.`, not starting with `.`, at most 100 bytes, none twice,
/// and not the manifest's own. Every name that comes from a donor, a manifest on disk or the
/// trainer is checked here before it becomes a path.
pub fn check_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        let plain = !name.is_empty()
            && name.len() <= MAX_NAME
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !plain || name == MANIFEST || name == LATEST {
            return Err(format!(
                "file name {name:?} is not a plain file name of a checkpoint"
            ));
        }
        if !seen.insert(name) {
            return Err(format!("file name {name:?} appears twice"));
        }
    }
    Ok(())
}

impl DirManifest {
    /// Checks the file names (see [`check_names`]).
    pub fn check_names(&self) -> Result<(), String> {
        check_names(self.files.iter().map(|f| f.name.as_str()))
    }

    /// Where each file lies in a blob of `total_len` bytes (offset, length): after the index,
    /// one after another, the last ending exactly at the blob's end.
    pub(crate) fn layout(&self, total_len: u64) -> Result<Vec<(u64, u64)>, String> {
        let mut at = self.index().len() as u64;
        let mut spans = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let end = at
                .checked_add(f.len)
                .filter(|end| *end <= total_len)
                .ok_or_else(|| format!("{} runs past the end", f.name))?;
            spans.push((at, f.len));
            at = end;
        }
        match total_len.saturating_sub(at) {
            0 => Ok(spans),
            extra => Err(format!("{extra} bytes after the last file")),
        }
    }
}

pub(crate) fn index_bytes(files: &[FileEntry]) -> Vec<u8> {
    serde_json::to_vec(files).expect("file entries serialise")
}

/// A checkpoint in memory: named files in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// `(name, bytes)` in order.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Faults the kill tests inject: with `SINTER_FAULT_CHECKPOINT=POINT@NAME` the writer of
/// checkpoint NAME stops at POINT (`before_tensors`, `mid_tensors`, `before_rename`,
/// `before_latest`), says so on stderr and waits there to be killed (`kill -9`).
#[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
fn fault_at(point: &str, name: &str) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("SINTER_FAULT_CHECKPOINT").is_ok_and(|p| p == format!("{point}@{name}")) {
        eprintln!("injected fault: checkpoint writer paused at {point}@{name}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Writes a checkpoint directory `parent/name` atomically: `write_file(i, path)` writes (and
/// fsyncs) the manifest's file `i` at `path` inside the temporary directory; then come the
/// manifest, the renames and `latest`, each made durable in turn.
pub(crate) fn write_dir(
    parent: &Path,
    name: &str,
    manifest: &DirManifest,
    mut write_file: impl FnMut(usize, &Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    manifest
        .check_names()
        .and_then(|()| check_names([name]))
        .map_err(|why| CheckpointError::invalid(parent.join(name), why))?;
    std::fs::create_dir_all(parent).map_err(CheckpointError::io(parent))?;
    let target = parent.join(name);
    let partial = parent.join(format!("{name}{PARTIAL}"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(CheckpointError::io(&partial))?;
    }
    std::fs::create_dir(&partial).map_err(CheckpointError::io(&partial))?;
    fault_at("before_tensors", name);
    for (i, file) in manifest.files.iter().enumerate() {
        write_file(i, &partial.join(&file.name))?;
    }
    let text = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    write_synced(&partial.join(MANIFEST), &text, name)?;
    sync_dir(&partial)?;
    fault_at("before_rename", name);
    // Rewriting a name (a resumed run in the same directory) keeps the old copy until the
    // new one is in place; `latest` falls back to it if a crash comes in between.
    let replaced = parent.join(format!("{name}{REPLACED}"));
    if target.exists() {
        if replaced.exists() {
            std::fs::remove_dir_all(&replaced).map_err(CheckpointError::io(&replaced))?;
        }
        std::fs::rename(&target, &replaced).map_err(CheckpointError::io(&target))?;
    }
    std::fs::rename(&partial, &target).map_err(CheckpointError::io(&target))?;
    sync_dir(parent)?;
    if replaced.exists() {
        remove_dir(&replaced)?;
    }
    fault_at("before_latest", name);
    let tmp = parent.join(format!("{LATEST}{PARTIAL}"));
    write_synced(&tmp, name.as_bytes(), name)?;
    std::fs::rename(&tmp, parent.join(LATEST)).map_err(CheckpointError::io(parent))?;
    sync_dir(parent)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CheckpointError::io(dir))
}

fn write_synced(path: &Path, bytes: &[u8], name: &str) -> Result<(), CheckpointError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(CheckpointError::io(path))?;
    if path.extension().is_some_and(|e| e == "safetensors") && !bytes.is_empty() {
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])
            .and_then(|()| f.sync_data())
            .map_err(CheckpointError::io(path))?;
        fault_at("mid_tensors", name);
        f.write_all(&bytes[half..])
    } else {
        f.write_all(bytes)
    }
    .and_then(|()| f.sync_all())
    .map_err(CheckpointError::io(path))
}

impl Checkpoint {
    /// Adds a file.
    pub fn add(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.files.push((name.into(), bytes));
    }

    /// A file's bytes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// A file's bytes, or an error naming the missing file.
    pub fn require(&self, name: &str, dir: &Path) -> Result<&[u8], CheckpointError> {
        self.get(name)
            .ok_or_else(|| CheckpointError::invalid(dir, format!("no {name}")))
    }

    fn entries(&self) -> Vec<FileEntry> {
        self.files
            .iter()
            .map(|(name, b)| FileEntry {
                name: name.clone(),
                len: b.len() as u64,
            })
            .collect()
    }

    /// The bytes the chunks cover: the index, then every file.
    pub fn blob(&self) -> Vec<u8> {
        let mut blob = index_bytes(&self.entries());
        for (_, b) in &self.files {
            blob.extend_from_slice(b);
        }
        blob
    }

    /// The manifest (hashes every byte: call it off any lock).
    pub fn manifest(&self) -> DirManifest {
        let blob = self.blob();
        DirManifest {
            files: self.entries(),
            chunks: Manifest::of(&blob, chunk_size_for(blob.len())),
        }
    }

    /// Rebuilds a checkpoint from a fetched blob, checked against `manifest`.
    pub fn from_blob(manifest: &DirManifest, blob: &[u8]) -> Result<Self, CheckpointError> {
        let bad = |reason: String| CheckpointError::invalid("<fetched>", reason);
        manifest.check_names().map_err(bad)?;
        manifest.chunks.check().map_err(|e| bad(e.to_string()))?;
        let blob_manifest = Manifest::of(blob, manifest.chunks.chunk_size as usize);
        if blob_manifest != manifest.chunks {
            return Err(bad(format!(
                "fetched bytes have root {}, expected {}",
                blob_manifest.root, manifest.chunks.root
            )));
        }
        if !blob.starts_with(&manifest.index()) {
            return Err(bad("the index does not match the manifest's files".into()));
        }
        let spans = manifest.layout(blob.len() as u64).map_err(bad)?;
        let files = manifest
            .files
            .iter()
            .zip(spans)
            .map(|(f, (at, len))| {
                let bytes = &blob[at as usize..(at + len) as usize];
                (f.name.clone(), bytes.to_vec())
            })
            .collect();
        Ok(Self { files })
    }

    /// Writes the checkpoint as `parent/name` atomically and returns its manifest (the
    /// directory appears complete or not at all).
    pub fn write(&self, parent: &Path, name: &str) -> Result<DirManifest, CheckpointError> {
        let manifest = self.manifest();
        write_dir(parent, name, &manifest, |i, path| {
            write_synced(path, &self.files[i].1, name)
        })?;
        Ok(manifest)
    }

    /// Reads a checkpoint directory, verifying every chunk against its manifest.
    pub fn read(dir: &Path) -> Result<(Self, DirManifest), CheckpointError> {
        let (manifest, report) = verify(dir)?;
        if let Some(problem) = report.problems().first() {
            return Err(CheckpointError::invalid(dir, problem.clone()));
        }
        let files = manifest
            .files
            .iter()
            .map(|f| {
                let path = dir.join(&f.name);
                std::fs::read(&path)
                    .map(|b| (f.name.clone(), b))
                    .map_err(CheckpointError::io(path))
            })
            .collect::<Result<_, _>>()?;
        Ok((Self { files }, manifest))
    }
}

/// A chunk whose bytes on disk do not hash to the manifest's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadChunk {
    /// Chunk index.
    pub index: usize,
    /// The files it covers.
    pub files: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The manifest's root.
    pub root: String,
    /// Chunks that failed.
    pub bad_chunks: Vec<BadChunk>,
    /// Files missing or of the wrong length.
    pub bad_files: Vec<String>,
}

impl Verification {
    /// Every problem as a sentence; empty when the checkpoint is intact.
    pub fn problems(&self) -> Vec<String> {
        let files = self.bad_files.iter().cloned();
        let chunks = self.bad_chunks.iter().map(|c| {
            format!(
                "chunk {} ({}) does not match its hash",
                c.index,
                c.files.join(", ")
            )
        });
        files.chain(chunks).collect()
    }
}

/// Recomputes every chunk hash and the root of the checkpoint in `dir`.
pub fn verify(dir: &Path) -> Result<(DirManifest, Verification), CheckpointError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::invalid(
            dir,
            format!("no {MANIFEST}: not a checkpoint, or one whose writing never finished"),
        ),
        _ => CheckpointError::io(&path)(e),
    })?;
    let manifest: DirManifest = serde_json::from_slice(&text)
        .map_err(|e| CheckpointError::invalid(dir, format!("{MANIFEST}: {e}")))?;
    manifest
        .chunks
        .check()
        .map_err(|e| CheckpointError::invalid(dir, format!("{MANIFEST}: {e}")))?;
    let mut report = Verification {
        root: manifest.root().to_owned(),
        ..Default::default()
    };
    manifest
        .check_names()
        .map_err(|why| CheckpointError::invalid(dir, format!("{MANIFEST}: {why}")))?;
    let mut blob = manifest.index();
    for f in &manifest.files {
        let mut bytes = match std::fs::read(dir.join(&f.name)) {
            Ok(b) => b,
            Err(e) => {
                report.bad_files.push(format!("{}: {e}", f.name));
                Vec::new()
            }
        };
        if bytes.len() as u64 != f.len && !bytes.is_empty() {
            report.bad_files.push(format!(
                "{}: {} bytes, expected {}",
                f.name,
                bytes.len(),
                f.len
            ));
        }
        bytes.resize(f.len as usize, 0);
        blob.extend_from_slice(&bytes);
    }
    if blob.len() as u64 != manifest.chunks.total_len {
        return Err(CheckpointError::invalid(
            dir,
            format!(
                "{MANIFEST}: files add up to {} bytes, the chunks to {}",
                blob.len(),
                manifest.chunks.total_len
            ),
        ));
    }
    for index in 0..manifest.chunks.chunks.len() {
        let range = manifest.chunks.range(index);
        if manifest
            .chunks
            .verify_chunk(index, &blob[range.clone()])
            .is_err()
        {
            report.bad_chunks.push(BadChunk {
                index,
                files: manifest.files_in(range),
            });
        }
    }
    Ok((manifest, report))
}

/// The newest complete checkpoint under `parent`, as `latest` names it.
pub fn latest(parent: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    match std::fs::read_to_string(parent.join(LATEST)) {
        Ok(name) => {
            let dir = parent.join(name.trim());
            let replaced = parent.join(format!("{}{REPLACED}", name.trim()));
            Ok(Some(if !dir.exists() && replaced.exists() {
                replaced
            } else {
                dir
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CheckpointError::io(parent.join(LATEST))(e)),
    }
}

/// A checkpoint directory given either itself or a checkpoints directory holding `latest`.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join(MANIFEST).exists() {
        return Ok(path.to_owned());
    }
    latest(path)?.ok_or_else(|| {
        CheckpointError::invalid(
            path,
            format!("neither a checkpoint ({MANIFEST}) nor a checkpoints directory ({LATEST})"),
        )
    })
}

/// Removes leftover `.partial` directories and all but the newest `keep` checkpoints whose
/// names start with `prefix` (names sort by age: zero-padded round numbers). Never removes
/// the one `latest` names.
pub fn prune(parent: &Path, prefix: &str, keep: usize) -> Result<(), CheckpointError> {
    let latest = latest(parent)?;
    let mut complete = Vec::new();
    for entry in std::fs::read_dir(parent).map_err(CheckpointError::io(parent))? {
        let path = entry.map_err(CheckpointError::io(parent))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(prefix) && name.ends_with(PARTIAL) && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(CheckpointError::io(&path))?;
        } else if name.starts_with(prefix) && path.join(MANIFEST).exists() {
            complete.push(path);
        }
    }
    complete.sort();
    let excess = complete.len().saturating_sub(keep.max(1));
    for path in complete.into_iter().take(excess) {
        if Some(&path) != latest.as_ref() {
            remove_dir(&path)?;
        }
    }
    Ok(())
}

/// Removes a checkpoint directory so that no crash leaves it half-removed under a complete
/// checkpoint's name: it is renamed `NAME.partial` first (a name never read, and removed by
/// the next prune), then deleted.
fn remove_dir(path: &Path) -> Result<(), CheckpointError> {
    let mut doomed = path.as_os_str().to_owned();
    doomed.push(PARTIAL);
    let doomed = std::path::PathBuf::from(doomed);
    if doomed.exists() {
        std::fs::remove_dir_all(&doomed).map_err(CheckpointError::io(&doomed))?;
    }
    std::fs::rename(path, &doomed).map_err(CheckpointError::io(path))?;
    std::fs::remove_dir_all(&doomed).map_err(CheckpointError::io(&doomed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u8) -> Checkpoint {
        let mut c = Checkpoint::default();
        c.add(
            "model.safetensors",
            (0..300_000u32).map(|i| (i as u8) ^ seed).collect(),
        );
        c.add("meta.json", br#"{"round":3}"#.to_vec());
        c
    }

    #[test]
    fn written_checkpoints_read_back_and_a_flipped_byte_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample(1);
        let manifest = c.write(dir.path(), "round-000003").unwrap();
        let path = resolve(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("round-000003"));
        let (back, back_manifest) = Checkpoint::read(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(back_manifest, manifest);
        assert_eq!(Checkpoint::from_blob(&manifest, &c.blob()).unwrap(), c);

        let file = path.join("model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[200_000] ^= 0x40;
        std::fs::write(&file, bytes).unwrap();
        let (_, report) = verify(&path).unwrap();
        assert_eq!(report.bad_chunks.len(), 1, "{report:?}");
        assert_eq!(report.bad_chunks[0].files, vec!["model.safetensors"]);
        let err = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");

        std::fs::remove_file(path.join("meta.json")).unwrap();
        let (_, report) = verify(&path).unwrap();
        assert!(report.bad_files[0].starts_with("meta.json"), "{report:?}");
    }

    #[test]
    fn rewriting_a_name_replaces_it_and_a_crash_in_between_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        sample(1).write(dir.path(), "round-000001").unwrap();
        sample(2).write(dir.path(), "round-000001").unwrap();
        let path = resolve(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(&path).unwrap().0, sample(2));
        assert!(!dir.path().join("round-000001.replaced").exists());
        // As a crash between the two renames leaves it:
        std::fs::rename(&path, dir.path().join("round-000001.replaced")).unwrap();
        let fallback = resolve(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(&fallback).unwrap().0, sample(2));
    }

    #[test]
    fn renamed_or_resized_files_change_the_root() {
        let mut a = sample(2);
        let root = a.manifest().chunks.root;
        a.files[1].0 = "other.json".into();
        assert_ne!(a.manifest().chunks.root, root);
        let mut b = sample(2);
        b.files[0].1.push(0);
        assert_ne!(b.manifest().chunks.root, root);
    }

    #[test]
    fn prune_keeps_the_newest_removes_through_partial_names_and_clears_partials() {
        let dir = tempfile::tempdir().unwrap();
        for r in 1..=4 {
            sample(r)
                .write(dir.path(), &format!("round-{r:06}"))
                .unwrap();
        }
        std::fs::create_dir(dir.path().join("round-000005.partial")).unwrap();
        // A prune interrupted earlier left its renamed directory: the next one clears it.
        std::fs::create_dir(dir.path().join("round-000001.partial")).unwrap();
        prune(dir.path(), "round-", 2).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["latest", "round-000003", "round-000004"]);
        assert!(verify(&dir.path().join("nothing")).is_err());
    }
}
