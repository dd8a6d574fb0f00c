//! A real peer process for the integration tests: `launch run` with its own key, output
//! directory and log file.
#![allow(dead_code)] // each test binary uses some of these

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::eventually;

/// The longest a test waits for one peer process to end.
const PEER_LIMIT: Duration = Duration::from_secs(300);

/// Holds the lock that lets one heavy test of a test binary run at a time — multi-process
/// runs, CPU-bound experiments and timing-based ledger tests: peers and block authors are
/// timed by heartbeats and blocks, and a dozen processes sharing two cores at once would make
/// the tests measure the machine's load rather than the code.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A multi-peer test's directory (configs, each peer's output and log): removed when the
/// test passes, kept when it fails, its path printed, so that every peer's log can be read.
pub struct RunDir(Option<tempfile::TempDir>);

impl RunDir {
    pub fn new() -> RunDir {
        RunDir(Some(tempfile::tempdir().unwrap()))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("held until dropped").path()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && std::thread::panicking()
        {
            eprintln!("the peers' logs are kept in {}", dir.keep().display());
        }
    }
}

pub struct Peer {
    pub child: Child,
    pub out: PathBuf,
    /// Lines of stdout, as they come.
    lines: mpsc::Receiver<String>,
}

impl Peer {
    /// Starts `launch run CONFIG ARGS…` with its own key and output directory under `dir`.
    pub fn start(dir: &Path, name: &str, config: &Path, args: &[&str]) -> Peer {
        Self::start_with(dir, name, config, args, &[])
    }

    pub fn start_with(
        dir: &Path,
        name: &str,
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Peer {
        let mut all = vec!["--listen", "/ip4/127.0.0.1/tcp/0"];
        all.extend_from_slice(args);
        Self::start_in(&[], dir, name, config, &all, env)
    }

    /// Starts `PREFIX… launch run CONFIG ARGS…` (e.g. `ip netns exec NS` as the prefix).
    pub fn start_in(
        prefix: &[&str],
        dir: &Path,
        name: &str,
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Peer {
        let out = dir.join(name);
        let (key, out_arg) = (out.join("peer.key"), out.to_str().unwrap().to_owned());
        let mut all = vec![
            "run",
            config.to_str().unwrap(),
            "--start-wait",
            "60",
            "--key",
            key.to_str().unwrap(),
            "--out",
            &out_arg,
        ];
        all.extend_from_slice(args);
        Self::spawn(prefix, dir, name, &all, env)
    }

    /// Starts `PREFIX… launch ARGS…` with its log in `dir/NAME.log` and its output
    /// directory `dir/NAME`.
    pub fn spawn(
        prefix: &[&str],
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Peer {
        let out = dir.join(name);
        let launch = env!("CARGO_BIN_EXE_launch");
        let (program, before) = match prefix.split_first() {
            Some((first, rest)) => (*first, [rest, &[launch]].concat()),
            None => (launch, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(before)
            .envs(env.iter().copied())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SINTER_TEST_PEER_LOG").unwrap_or("info".into()),
            )
            .env("SINTER_COLDKEY_PASSWORD", super::PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("{name}.log"))).unwrap(),
            ))
            .spawn()
            .expect("launch runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, out, lines }
    }

    /// The rest of the first line the peer prints that starts with `prefix` (lines before it
    /// are passed over).
    pub fn printed(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the peer printed no {prefix:?} line"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// The first address the peer prints.
    pub fn address(&self) -> String {
        self.addresses(1).remove(0)
    }

    /// The first `count` addresses the peer prints (one per `--listen`).
    pub fn addresses(&self, count: usize) -> Vec<String> {
        let mut found = Vec::new();
        while found.len() < count {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("peer prints its addresses");
            if let Some(addr) = line.strip_prefix("listening on ") {
                found.push(addr.to_owned());
            }
        }
        found
    }

    /// Waits for the peer to exit (at most five minutes: then it is killed and the test fails
    /// with its log) and reads its summary.
    pub fn wait(mut self, dir: &Path, name: &str) -> (std::process::ExitStatus, serde_json::Value) {
        let log = || std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > PEER_LIMIT {
                let _ = self.child.kill();
                panic!("peer {name} did not exit within {PEER_LIMIT:?}:\n{}", log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = log();
        let summary = std::fs::read_to_string(self.out.join("summary.json"))
            .map(|s| serde_json::from_str(&s).unwrap())
            .unwrap_or_else(|_| serde_json::json!({"log": log}));
        (status, summary)
    }
}

impl Drop for Peer {
    /// A test that fails leaves no peer process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the peer's log says it finished round `round` (or later).
pub fn wait_for_round(dir: &Path, name: &str, round: u64) {
    let log = dir.join(format!("{name}.log"));
    eventually(
        &format!("{name} finishing round {round}"),
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let reached = text
                .lines()
                .filter(|l| l.contains("round done"))
                .filter_map(|l| l.split("round=").nth(1))
                .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                .any(|r| r >= round);
            if reached { Ok(()) } else { Err(text) }
        },
    );
}
