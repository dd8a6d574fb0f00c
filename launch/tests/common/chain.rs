//! A local Bittensor chain for the tests: chopsticks (installed by `scripts/setup.sh`)
//! executing subtensor's real spec-218 runtime from the chain spec in
//! `mechanism/tests/fixtures/subtensor/`, on a free loopback port, killed on drop. State is
//! set with chopsticks' `dev_setStorage` and blocks made with `dev_newBlock`, over plain
//! HTTP JSON-RPC.
//!
//! One local chain runs at a time in a test process: chopsticks executes the runtime's wasm
//! for every block, and several instances side by side on a two-core machine once made a
//! block take over a minute, so a run waiting on the chain outlived its deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running local chain.
pub struct LocalChain {
    child: Child,
    port: u16,
    /// Its WebSocket URL.
    pub url: String,
    dir: tempfile::TempDir,
    /// This test's turn with the chain, released after chopsticks is killed.
    _turn: Turn,
}

/// Whether a local chain runs in this process, and the signal that it stopped.
static CHAIN_RUNS: Mutex<bool> = Mutex::new(false);
static CHAIN_STOPPED: Condvar = Condvar::new();

/// A test's turn with the one local chain: taken by waiting for the last to end.
struct Turn;

impl Turn {
    fn take() -> Self {
        // A test that panicked while holding the lock has still ended: the flag stands.
        let mut runs = CHAIN_RUNS.lock().unwrap_or_else(|p| p.into_inner());
        while *runs {
            runs = CHAIN_STOPPED.wait(runs).unwrap_or_else(|p| p.into_inner());
        }
        *runs = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *CHAIN_RUNS.lock().unwrap_or_else(|p| p.into_inner()) = false;
        CHAIN_STOPPED.notify_one();
    }
}

fn chopsticks() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/sinter/chopsticks/node_modules/.bin/chopsticks")
}

impl LocalChain {
    /// Starts the chain and waits until it answers; `None` when SINTER_SKIP_CHAIN is set.
    pub fn start() -> Option<Self> {
        if std::env::var_os("SINTER_SKIP_CHAIN").is_some() {
            eprintln!("SINTER_SKIP_CHAIN is set: the live chain test does not run");
            return None;
        }
        let turn = Turn::take();
        let bin = chopsticks();
        assert!(
            bin.exists(),
            "{} missing: run scripts/setup.sh (it installs chopsticks), or set SINTER_SKIP_CHAIN=1",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("subtensor-spec218.raw.json");
        let packed = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../mechanism/tests/fixtures/subtensor/subtensor-spec218.raw.json.zst"),
        )
        .unwrap();
        std::fs::write(&spec, zstd::decode_all(&packed[..]).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The genesis state has no `Timestamp.Now`, so chopsticks reads the wall clock once for
        // block 1's Aura slot and again for its timestamp; across a slot boundary the runtime
        // refuses the block ("Timestamp slot must match `CurrentSlot`") and the chain stalls at
        // genesis. `timestamp` stores one instant for both. Chopsticks applies it only after its
        // own startup block, which may still fail that way; the next block is then built from
        // the stored instant.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let config = dir.path().join("chain.yml");
        std::fs::write(
            &config,
            format!(
                "genesis: {}\nport: {port}\nbuild-block-mode: Instant\ntimestamp: {now_ms}\n",
                spec.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("chopsticks.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("chopsticks starts");
        let chain = Self {
            child,
            port,
            url: format!("ws://127.0.0.1:{port}"),
            dir,
            _turn: turn,
        };
        let started = Instant::now();
        while chain.try_rpc("chain_getHeader", json!([])).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "chopsticks did not answer in 180 s; its log:\n{}",
                chain.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("local chain up in {:.0?}", started.elapsed());
        Some(chain)
    }

    /// Chopsticks' output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chopsticks.log")).unwrap_or_default()
    }

    /// Calls `method` over JSON-RPC; the error answer, or why there was none.
    pub fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let body =
            json!({"id": 1, "jsonrpc": "2.0", "method": method, "params": params}).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        // HTTP/1.0: the answer comes whole, not chunked, and the connection closes after it.
        write!(
            stream,
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let (_, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP body")?;
        let value: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        match value.get("error") {
            Some(error) => Err(format!("{method}: {error}")),
            None => Ok(value["result"].clone()),
        }
    }

    /// Calls `method` over JSON-RPC; panics on an error answer.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params).unwrap()
    }

    /// Sets storage with `dev_setStorage` (`{"Pallet": {"Entry": [[[keys…], value]]}}`).
    pub fn set_storage(&self, changes: Value) {
        self.rpc("dev_setStorage", json!([changes]));
    }

    /// Gives `account` (SS58) `rao` of free balance.
    pub fn fund(&self, account: &str, rao: u64) {
        self.set_storage(json!({"System": {"Account": [[[account], {"providers": 1, "data": {"free": rao.to_string()}}]]}}));
    }

    /// Sets `SubtensorModule.ENTRY[netuid]` to `value`.
    pub fn set_subnet(&self, entry: &str, netuid: u16, value: Value) {
        self.set_storage(json!({"SubtensorModule": {entry: [[[netuid], value]]}}));
    }

    /// Authors `count` blocks now.
    pub fn new_blocks(&self, count: u32) {
        self.rpc("dev_newBlock", json!([{"count": count}]));
    }
}

impl Drop for LocalChain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Its log goes with its directory: show its warnings, errors and slow blocks'
            // headlines, then its end, beside the failure.
            let log = self.log();
            eprintln!("chopsticks' warnings, errors and block headlines:");
            log.lines()
                .filter(|l| l.starts_with('[') && !l.contains("INFO (rpc)"))
                .for_each(|line| eprintln!("  {line}"));
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("the end of chopsticks' log:");
            tail.iter().rev().for_each(|line| eprintln!("  {line}"));
        }
    }
}
