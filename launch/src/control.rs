//! A running peer's local control socket, for `launch leave`. It sits next to the peer's key
//! file (`KEY.sock`), so the key file names the peer on this machine, and only those who can
//! write to the key's directory can reach it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The control socket of the peer using `key`.
pub fn socket_path(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".sock");
    key.with_file_name(name)
}

/// The listening socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on the control socket of `key` (on the current tokio runtime): a `leave` line sets
/// `stop`. A socket left by a peer that crashed is replaced; one a live peer answers on is an
/// error (two peers must not share a key).
pub fn listen(key: &Path, stop: Arc<AtomicBool>) -> Result<ControlSocket> {
    let path = socket_path(key);
    if UnixStream::connect(&path).is_ok() {
        return Err(crate::ConfigFileError(format!(
            "another peer is running with key {} (it answers on {}); give this one its own --key FILE",
            key.display(),
            path.display()
        ))
        .into());
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("creating the control socket {}", path.display()))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(read)
                    .read_line(&mut line)
                    .await
                    .is_err()
                {
                    return;
                }
                let answer = match line.trim() {
                    "leave" => {
                        tracing::warn!("asked to leave: leaving after the current round");
                        stop.store(true, Ordering::Relaxed);
                        "leaving after the current round\n".to_string()
                    }
                    other => format!("unknown command {other:?} (known: leave)\n"),
                };
                let _ = write.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(ControlSocket { path })
}

/// Asks the peer using `key` to leave; returns its answer.
pub fn request_leave(key: &Path) -> Result<String> {
    let path = socket_path(key);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no peer is running with key {} (nothing answers on {})",
            key.display(),
            path.display()
        )
    })?;
    stream.write_all(b"leave\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim().to_string())
}
