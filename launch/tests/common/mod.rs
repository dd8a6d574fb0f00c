//! Helpers shared by the `launch` integration tests.

#[allow(dead_code)] // only the chain tests start a chain
pub mod chain;
pub mod peers;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Checks `state` every 100 ms until it says done (`Ok`), for at most `limit`; then panics
/// saying what did not happen, with the last state seen (`Err`). For events in other
/// processes, which a test can only watch from outside.
#[allow(dead_code)]
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    mut state: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match state() {
            Ok(done) => return done,
            Err(last) if started.elapsed() >= limit => {
                panic!("{what} did not happen within {limit:?}; last seen:\n{last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Asserts that a run's summary has both validation losses, finite, and that the loss fell.
#[allow(dead_code)]
pub fn assert_loss_fell(summary: &serde_json::Value, name: &str) {
    let loss = |key: &str| {
        summary[key]
            .as_f64()
            .filter(|l| l.is_finite())
            .unwrap_or_else(|| panic!("{name}: no finite {key} in {summary}"))
    };
    let (initial, last) = (loss("initial_val_loss"), loss("final_val_loss"));
    assert!(last < initial, "{name}: loss {initial} -> {last}");
}

/// The coldkey password of the tests' wallets (SINTER_COLDKEY_PASSWORD of every `launch`).
#[allow(dead_code)]
pub const PASSWORD: &str = "test coldkey password";

/// Runs `launch ARGS…` to completion.
#[allow(dead_code)] // each test binary uses some of these
pub fn launch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(args)
        .env("SINTER_COLDKEY_PASSWORD", PASSWORD)
        .output()
        .expect("launch runs")
}

/// Runs `launch ARGS…` with `fault` (an environment variable and its value) set, waits until
/// its stderr (kept in `log`) says `marker`, and kills it with SIGKILL there.
#[allow(dead_code)]
pub fn kill_at_fault(args: &[&str], fault: (&str, &str), log: &Path, marker: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(args)
        .env(fault.0, fault.1)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    eventually(
        &format!("{marker:?} in {}", log.display()),
        Duration::from_secs(120),
        || {
            let mut seen = String::new();
            std::fs::File::open(log)
                .unwrap()
                .read_to_string(&mut seen)
                .unwrap();
            assert!(
                child.try_wait().unwrap().is_none(),
                "launch ended before the fault: {seen}"
            );
            if seen.contains(marker) {
                Ok(())
            } else {
                Err(seen)
            }
        },
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// stdout and stderr together, for assertions and failure messages.
#[allow(dead_code)]
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A model small enough that a whole run takes a second: `steps` inner steps per worker,
/// `workers` workers, `h` local steps per round, an evaluation every `h` steps.
#[allow(dead_code)]
pub fn small_config(steps: usize, workers: usize, h: usize) -> String {
    format!(
        r#"
[model]
d_model = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
ffn_hidden = 64
context = 32

[data]
validation_batches = 2
validation_batch_size = 4

[inner]
steps = {steps}
batch_size = 4

[outer]
workers = {workers}
inner_steps = {h}

[eval]
every_steps = {h}
"#
    )
}

/// A wallet `launch wallet new` made: the flags naming it, and its keys' SS58 addresses.
#[allow(dead_code)]
pub struct Wallet {
    pub args: Vec<String>,
    pub coldkey: String,
    pub hotkey: String,
}

/// A new wallet `name` (hotkey `miner`) under `dir`.
#[allow(dead_code)]
pub fn wallet(dir: &std::path::Path, name: &str) -> Wallet {
    let args: Vec<String> = [
        "--wallet-path",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--hotkey",
        "miner",
    ]
    .map(String::from)
    .to_vec();
    let mut new = vec!["wallet", "new"];
    new.extend(args.iter().map(String::as_str));
    assert!(launch(&new).status.success());
    let mut show = vec!["wallet", "show", "--json"];
    show.extend(args.iter().map(String::as_str));
    let shown: serde_json::Value = serde_json::from_slice(&launch(&show).stdout).unwrap();
    Wallet {
        args,
        coldkey: shown["coldkey"].as_str().unwrap().into(),
        hotkey: shown["hotkey"].as_str().unwrap().into(),
    }
}

/// A child process killed when the test ends, however it ends.
#[allow(dead_code)]
pub struct Node(pub std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `launch ledger node ARGS…` and returns it with its first listen address.
#[allow(dead_code)]
pub fn ledger_node(args: &[&str]) -> (Node, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_launch"));
    command
        .args(["ledger", "node", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(args);
    spawn_until(command, "listening on ")
}

/// Spawns `command` and waits until a line of its stdout starts with `prefix`; the process and
/// the rest of that line. Its stdout is read on to the end (a process whose stdout is closed
/// dies at its next line).
#[allow(dead_code)]
pub fn spawn_until(mut command: Command, prefix: &str) -> (Node, String) {
    use std::io::BufRead;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let node = Node(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("the process ended without printing {prefix:?}"));
    std::thread::spawn(move || lines.for_each(drop));
    (node, line[prefix.len()..].to_owned())
}
