//! Writing checkpoints in the background: the trainer hands over a snapshot (already copied
//! out of the model) and goes on training while a thread writes it. At most one write is in
//! flight: the next submission first waits for the previous one, so memory holds at most one
//! snapshot besides the model.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::CheckpointError;
use crate::store::{self, Checkpoint, DirManifest};

/// A finished write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The checkpoint directory.
    pub path: PathBuf,
    /// Its manifest (the root is its identity).
    pub manifest: DirManifest,
    /// Seconds the background thread spent hashing and writing.
    pub secs: f64,
}

/// Writes checkpoints under one directory, keeping the newest `keep`.
pub struct BackgroundWriter {
    parent: PathBuf,
    prefix: String,
    keep: usize,
    in_flight: Option<JoinHandle<Result<Written, CheckpointError>>>,
}

impl BackgroundWriter {
    /// A writer for `parent/PREFIX…` directories.
    pub fn new(parent: &Path, prefix: &str, keep: usize) -> Self {
        Self {
            parent: parent.to_owned(),
            prefix: prefix.to_owned(),
            keep,
            in_flight: None,
        }
    }

    /// Waits for the write in flight, if any, and returns how it ended.
    pub fn wait(&mut self) -> Option<Result<Written, CheckpointError>> {
        let handle = self.in_flight.take()?;
        Some(handle.join().unwrap_or_else(|_| {
            Err(CheckpointError::invalid(
                &self.parent,
                "the checkpoint writer thread panicked",
            ))
        }))
    }

    /// Starts writing the checkpoint `build` makes (on the background thread: serialising is
    /// part of the write) as `parent/name`, after the previous write finished, whose result is
    /// returned.
    pub fn submit(
        &mut self,
        name: String,
        build: impl FnOnce() -> Result<Checkpoint, CheckpointError> + Send + 'static,
    ) -> Option<Result<Written, CheckpointError>> {
        let previous = self.wait();
        let (parent, prefix, keep) = (self.parent.clone(), self.prefix.clone(), self.keep);
        self.in_flight = Some(std::thread::spawn(move || {
            let started = Instant::now();
            let manifest = build()?.write(&parent, &name)?;
            store::prune(&parent, &prefix, keep)?;
            Ok(Written {
                path: parent.join(name),
                manifest,
                secs: started.elapsed().as_secs_f64(),
            })
        }));
        previous
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.wait() {
            tracing::error!(error = %e, "the last checkpoint could not be written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_the_background_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = BackgroundWriter::new(dir.path(), "round-", 2);
        for r in 0..4u8 {
            let mut c = Checkpoint::default();
            c.add("a.bin", vec![r; 1000]);
            if let Some(done) = writer.submit(format!("round-{r:06}"), move || Ok(c)) {
                assert!(done.unwrap().secs >= 0.0);
            }
        }
        let last = writer.wait().unwrap().unwrap();
        assert_eq!(last.path, dir.path().join("round-000003"));
        assert_eq!(store::resolve(dir.path()).unwrap(), last.path);
        assert!(!dir.path().join("round-000001").exists());
        assert!(dir.path().join("round-000002").exists());
    }
}
