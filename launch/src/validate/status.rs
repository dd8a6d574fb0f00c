//! `launch status --validator DIR`: the miners as a validator last saw them, from the last
//! whole line of its `validate.jsonl` (a line being written is skipped).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Prints the validator's last round: a table, or its JSON line.
pub fn status(dir: &Path, json: bool) -> Result<()> {
    let path = dir.join("validate.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a `launch validate --out` directory?)",
            path.display(),
            dir.display()
        )
    })?;
    let Some(round) = text
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
    else {
        bail!(
            "{} has no round yet: the validator is on its first",
            path.display()
        );
    };
    if json {
        println!("{round}");
        return Ok(());
    }
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "validator round {} (ledger block {}): {} examples, mixture loss {} (uniform {:.3}), {:.1} s",
        round["round"],
        round["block"],
        round["examples"],
        round["mixture_loss"]
            .as_f64()
            .map_or("-".into(), |l| format!("{l:.3}")),
        number(&round["uniform_loss"]),
        number(&round["seconds"]),
    );
    println!(
        "{:>4} {:<50} {:>8} {:>8} {:>9} {:>9} {:>6}  misses",
        "uid", "hotkey", "score", "value", "answered", "latency", "gate"
    );
    for m in round["miners"].as_array().into_iter().flatten() {
        let misses: Vec<String> = m["misses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let mut notes = misses.join(", ");
        if let Some(original) = m["copy_of"].as_u64() {
            notes.push_str(&format!(" (copies uid {original})"));
        }
        if let Some(why) = m["last_miss"].as_str() {
            notes.push_str(&format!("; last: {why}"));
        }
        println!(
            "{:>4} {:<50} {:>8.4} {:>8.4} {:>9} {:>8.2}s {:>6.2}  {}",
            m["uid"].as_u64().map_or("?".into(), |uid| uid.to_string()),
            m["hotkey"].as_str().unwrap_or("?"),
            number(&m["score"]),
            number(&m["value"]),
            format!("{}/{}", m["answered"], m["asked"]),
            number(&m["mean_latency_s"]),
            number(&m["gate_share"]),
            if notes.is_empty() { "-" } else { &notes },
        );
    }
    Ok(())
}
