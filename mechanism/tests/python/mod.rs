//! The Python venv with Bittensor's own tools (`bittensor-wallet`, `bittensor-drand`) and
//! OpenAI's client that `scripts/setup.sh` makes, which the tests compare sinter with (the
//! launch tests include this file too).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's Python, or none where `SINTER_SKIP_PYTHON` is set (Python packages cannot be
/// installed); `SINTER_BTWALLET_PYTHON` names another.
pub fn bittensor_python() -> Option<PathBuf> {
    if std::env::var_os("SINTER_SKIP_PYTHON").is_some() {
        return None;
    }
    let python = std::env::var_os("SINTER_BTWALLET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/sinter/btwallet-venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh (it installs bittensor-wallet, bittensor-drand and openai), or set SINTER_SKIP_PYTHON=1",
        python.display()
    );
    Some(python)
}

/// Runs `script` with `args` in `python`; its standard output, once it succeeded.
pub fn run(python: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
