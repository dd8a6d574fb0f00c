//! `launch serve` as its users meet it: OpenAI's official Python client (`openai`, in the venv
//! `scripts/setup.sh` makes; `SINTER_SKIP_PYTHON=1` skips this file) against a real server
//! process serving weights a real run wrote: models, completions and chat, streamed and not,
//! temperature 0 equal to `launch generate`, OpenAI-shaped errors, 429 with Retry-After on a
//! full queue, a client that leaves stopping its generation, deadlines, Prometheus metrics;
//! and the axon: signed synapses from `launch ask`, priority by stake from a ledger node's file.

mod common;
#[path = "../../mechanism/tests/python/mod.rs"]
mod python;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{launch, small_config, text};
use serde_json::Value;

const PROMPT: &str = "ROMEO:";

/// A `launch serve` process; killed when dropped.
struct Server {
    child: Child,
    url: String,
    /// With `--axon`: its address and the miner's hotkey, as printed.
    axon: Option<(String, String)>,
}

impl Server {
    fn start(weights: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_launch"));
        command
            .args(["serve", weights.to_str().unwrap(), "--http", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut axon = None;
        let url = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "launch serve ended"
            );
            let words: Vec<&str> = line.split_whitespace().collect();
            // "axon at ADDR for hotkey SS58"
            if let ["axon", "at", addr, "for", "hotkey", hotkey] = words[..] {
                axon = Some((addr.to_string(), hotkey.to_string()));
            }
            if let Some(url) = words.iter().find(|w| w.starts_with("http://")) {
                break url.to_string();
            }
        };
        Self { child, url, axon }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_python(python: &Path, script: &str, args: &[&str]) -> Value {
    let out = python::run(python, script, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Weights from a short real run, and what `launch generate` makes of the prompt greedily.
fn trained(dir: &Path) -> (PathBuf, String) {
    let config = dir.join("small.toml");
    std::fs::write(&config, small_config(8, 2, 4)).unwrap();
    let out_dir = dir.join("run");
    let out = launch(&[
        "sim",
        config.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let weights = out_dir.join("model.safetensors");
    let out = launch(&[
        "generate",
        weights.to_str().unwrap(),
        "--prompt",
        PROMPT,
        "--max-tokens",
        "20",
        "--temperature",
        "0",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    let completion = printed
        .strip_prefix(PROMPT)
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap()
        .to_string();
    (weights, completion)
}

/// A server over weights a short run wrote (and their greedy completion of the prompt by
/// `launch generate`), with the venv's Python to drive it; `None` where Python is skipped.
struct Served {
    python: PathBuf,
    server: Server,
    greedy: String,
    _dir: tempfile::TempDir,
}

fn serving(extra: &[&str], env: &[(&str, &str)]) -> Option<Served> {
    let python = python::bittensor_python()?;
    let dir = tempfile::tempdir().unwrap();
    let (weights, greedy) = trained(dir.path());
    let server = Server::start(&weights, extra, env);
    Some(Served {
        python,
        server,
        greedy,
        _dir: dir,
    })
}

const CLIENT: &str = r#"
import json, sys, urllib.request, urllib.error
from openai import OpenAI, NotFoundError, BadRequestError
base = sys.argv[1]
root = base.removesuffix("/v1")
def get(path):
    return urllib.request.urlopen(root + path).read().decode()
client = OpenAI(base_url=base, api_key="unused")
out = {}
out["models"] = [m.model_dump() for m in client.models.list().data]
c = client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=20, temperature=0)
out["completion"] = c.model_dump()
chunks = list(client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=20,
    temperature=0, stream=True, stream_options={"include_usage": True}))
out["streamed"] = "".join(ch.choices[0].text for ch in chunks if ch.choices)
out["stream_finish"] = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
out["stream_usage"] = chunks[-1].usage.model_dump() if chunks[-1].usage else None
chat = client.chat.completions.create(model="sinter", max_tokens=8, temperature=0,
    messages=[{"role": "user", "content": "Hi"}])
out["chat"] = chat.model_dump()
deltas = list(client.chat.completions.create(model="sinter", max_tokens=8, temperature=0,
    stream=True, messages=[{"role": "user", "content": "Hi"}]))
out["chat_streamed"] = "".join(d.choices[0].delta.content or "" for d in deltas if d.choices)
sampled = [client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=12,
    temperature=1.0, seed=7).choices[0].text for _ in range(2)]
out["seeded_alike"] = sampled[0] == sampled[1]
lp = client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=5, temperature=0, logprobs=3)
out["logprobs"] = lp.choices[0].logprobs.model_dump()
out["logprobs_text"] = lp.choices[0].text
streamed_tokens = []
for ch in client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=5, temperature=0,
        logprobs=3, stream=True):
    if ch.choices and ch.choices[0].logprobs:
        streamed_tokens += ch.choices[0].logprobs.tokens
out["streamed_logprob_tokens"] = streamed_tokens
chat_lp = client.chat.completions.create(model="sinter", max_tokens=4, temperature=0, logprobs=True,
    top_logprobs=2, messages=[{"role": "user", "content": "Hi"}])
out["chat_logprobs"] = chat_lp.choices[0].logprobs.model_dump()
out["chat_logprobs_tokens"] = chat_lp.usage.completion_tokens
multi = client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=6, temperature=1.0,
    seed=11, n=3)
out["n_indices"] = [c.index for c in multi.choices]
out["n_texts"] = [c.text for c in multi.choices]
out["n_usage"] = multi.usage.model_dump()
out["n_alone"] = [client.completions.create(model="sinter", prompt="ROMEO:", max_tokens=6,
    temperature=1.0, seed=11 + i).choices[0].text for i in range(3)]
hi = [{"role": "user", "content": "Hi"}]
out["n_chat"] = [c.message.content for c in client.chat.completions.create(model="sinter",
    max_tokens=5, temperature=1.0, seed=3, n=2, messages=hi).choices]
streamed = ["", ""]
for ch in client.chat.completions.create(model="sinter", max_tokens=5, temperature=1.0, seed=3,
        n=2, stream=True, messages=hi):
    for c in ch.choices:
        streamed[c.index] += c.delta.content or ""
out["n_chat_streamed"] = streamed
errors = {}
try:
    client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
except NotFoundError as e:
    errors["unknown_model"] = [e.status_code, e.body]
for name, body in [("negative_max_tokens", {"model": "sinter", "prompt": "x", "max_tokens": -1}),
                   ("too_long", {"model": "sinter", "prompt": "x" * 40, "max_tokens": 2}),
                   ("bad_temperature", {"model": "sinter", "prompt": "x", "temperature": 3}),
                   ("bad_logprobs", {"model": "sinter", "prompt": "x", "logprobs": 6}),
                   ("too_many_choices", {"model": "sinter", "prompt": "x", "n": 9})]:
    try:
        client.completions.create(**body)
    except BadRequestError as e:
        errors[name] = [e.status_code, e.body]
try:
    urllib.request.urlopen(urllib.request.Request(base + "/completions", data=b"{not json",
        headers={"content-type": "application/json"}))
except urllib.error.HTTPError as e:
    errors["malformed"] = [e.code, json.loads(e.read())]
out["errors"] = errors
out["health"] = get("/health")
out["metrics"] = get("/metrics")
print(json.dumps(out))
"#;

#[test]
fn the_openai_client_completes_chats_and_streams_as_launch_generate_does() {
    let Some(Served {
        python,
        server,
        greedy,
        ..
    }) = serving(&[], &[])
    else {
        return;
    };
    let out = run_python(&python, CLIENT, &[&server.url]);

    let model = &out["models"][0];
    assert_eq!(model["id"], "sinter");
    assert_eq!(model["owned_by"], "sinter");
    assert_eq!(model["metadata"]["tokenizer"], "bytes");
    assert_eq!(model["metadata"]["context_length"], 32);
    assert_eq!(
        model["metadata"]["weights_sha256"].as_str().unwrap().len(),
        64
    );

    // Temperature 0: exactly `launch generate`'s text, whole or streamed.
    let completion = &out["completion"];
    assert_eq!(completion["choices"][0]["text"], greedy.as_str());
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    let usage = &completion["usage"];
    assert_eq!(usage["prompt_tokens"], PROMPT.len());
    assert_eq!(usage["completion_tokens"], 20);
    assert_eq!(usage["total_tokens"], PROMPT.len() + 20);
    assert_eq!(out["streamed"], greedy.as_str());
    assert_eq!(out["stream_finish"], "length");
    assert_eq!(out["stream_usage"]["completion_tokens"], 20);
    assert_eq!(out["seeded_alike"], true, "one seed, one sample");

    // n choices: each the completion its own seed (the request's plus its index) gives alone,
    // the prompt counted once; streamed, the same texts per index.
    assert_eq!(out["n_indices"], serde_json::json!([0, 1, 2]));
    assert_eq!(out["n_texts"], out["n_alone"]);
    assert_eq!(out["n_usage"]["prompt_tokens"], PROMPT.len());
    assert_eq!(out["n_usage"]["completion_tokens"], 18);
    assert_eq!(out["n_chat"], out["n_chat_streamed"]);
    assert_ne!(out["n_texts"][0], out["n_texts"][1], "{}", out["n_texts"]);

    // Log probabilities: greedy picks the most likely of the alternatives, at the offsets
    // where each token's text starts; streamed, the same tokens.
    let logprobs = &out["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 5, "{logprobs}");
    assert_eq!(tokens.concat(), out["logprobs_text"].as_str().unwrap());
    for (i, top) in logprobs["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let top = top.as_object().unwrap();
        let chosen = logprobs["token_logprobs"][i].as_f64().unwrap();
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(top.len() <= 3 && !top.is_empty(), "{logprobs}");
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-6, "{logprobs}");
        assert_eq!(logprobs["text_offset"][i], PROMPT.len() + i, "{logprobs}");
    }
    assert_eq!(out["streamed_logprob_tokens"], logprobs["tokens"]);
    let chat_logprobs = out["chat_logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        chat_logprobs.len() as u64,
        out["chat_logprobs_tokens"].as_u64().unwrap()
    );
    assert!(
        chat_logprobs
            .iter()
            .all(|t| t["top_logprobs"].as_array().unwrap().len() == 2)
    );

    // Chat: the template's assistant turn, whole or streamed alike.
    let chat = &out["chat"]["choices"][0];
    assert_eq!(chat["message"]["role"], "assistant");
    assert_eq!(out["chat_streamed"], chat["message"]["content"]);
    // "User: Hi\nAssistant:", a byte a token.
    assert_eq!(out["chat"]["usage"]["prompt_tokens"], 19);

    // Errors as OpenAI shapes them.
    let errors = &out["errors"];
    let error = |name: &str, status: u64, says: &str| {
        let [code, body] = errors[name].as_array().unwrap().as_slice() else {
            panic!("{name}: {errors}");
        };
        assert_eq!(code, status, "{name}: {body}");
        let message = body["message"].as_str().unwrap_or_else(|| {
            body["error"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no message in {body}"))
        });
        assert!(message.contains(says), "{name}: {message}");
    };
    error("unknown_model", 404, "gpt-4");
    error("negative_max_tokens", 400, "at least 0");
    error("too_long", 400, "maximum context length is 32");
    error("bad_temperature", 400, "between 0 and 2");
    error("bad_logprobs", 400, "from 0 to 5");
    error("too_many_choices", 400, "from 1 to 8");
    error("malformed", 400, "parse the JSON");

    assert_eq!(out["health"], "ok\n");
    let metrics = out["metrics"].as_str().unwrap();
    for name in [
        "sinter_http_requests_total",
        "sinter_tokens_total",
        "sinter_queue_seconds_bucket",
        "sinter_time_to_first_token_seconds_bucket",
        "sinter_time_per_token_seconds_bucket",
        "sinter_batch_size_bucket",
    ] {
        assert!(metrics.contains(name), "{name} not in:\n{metrics}");
    }
    assert!(metrics.contains(r#"status="404""#), "{metrics}");
}

const BUSY: &str = r#"
import json, sys, threading, time, urllib.request, urllib.error
base = sys.argv[1]
def post(body):
    return urllib.request.urlopen(urllib.request.Request(base + "/completions",
        data=json.dumps(body).encode(), headers={"content-type": "application/json"}), timeout=60)
def tokens():
    metrics = urllib.request.urlopen(base.removesuffix("/v1") + "/metrics").read().decode()
    for line in metrics.splitlines():
        if line.startswith('sinter_tokens_total{kind="completion"}'):
            return float(line.split()[-1])
    return 0.0
out = {"statuses": [], "retry_after": [], "bodies": []}
def ask():
    try:
        post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 5}).read()
        out["statuses"].append(200)
    except urllib.error.HTTPError as e:
        out["statuses"].append(e.code)
        out["retry_after"].append(e.headers.get("retry-after"))
        out["bodies"].append(json.loads(e.read()))
threads = [threading.Thread(target=ask) for _ in range(4)]
for t in threads:
    t.start()
    time.sleep(0.05)
for t in threads:
    t.join()
# A streaming client that leaves after its first piece of text. The counter moves once the
# generation ends: poll it for longer than 25 tokens take, with room for a loaded machine.
before = tokens()
r = post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 25, "stream": True})
while not r.readline().startswith(b"data: "):
    pass
r.close()
left = time.monotonic()
while tokens() == before and time.monotonic() - left < 30:
    time.sleep(0.1)
out["left_after_tokens"] = tokens() - before
# Three choices where one can generate and one wait: none is answered.
try:
    post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 5, "n": 3}).read()
    out["three_choices"] = 200
except urllib.error.HTTPError as e:
    out["three_choices"] = e.code
print(json.dumps(out))
"#;

#[test]
fn a_full_queue_answers_429_and_a_client_that_leaves_stops_its_generation() {
    // 200 ms a token: a 5-token request holds the model for a second, and the client that
    // leaves has 25 tokens (the model's context) take 5 s, far more than noticing it takes.
    let Some(Served { python, server, .. }) = serving(
        &["--batch", "1", "--queue", "1"],
        &[("SINTER_FAULT_SLOW_TOKEN_MS", "200")],
    ) else {
        return;
    };
    let out = run_python(&python, BUSY, &[&server.url]);
    let statuses: Vec<u64> = out["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    // One generating, one queued, the rest refused.
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 2, "{out}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 2, "{out}");
    assert!(
        out["retry_after"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == "1"),
        "{out}"
    );
    assert_eq!(out["bodies"][0]["error"]["code"], "rate_limit_exceeded");
    let left = out["left_after_tokens"].as_f64().unwrap();
    // The server learns of a closed socket only when a write to it fails, a few tokens later.
    assert!(
        (1.0..25.0).contains(&left),
        "{left} of 25 tokens generated for a client that left after its first (0: never ended)"
    );
    assert_eq!(out["three_choices"], 429, "{out}");
}

const BATCHED: &str = r#"
import json, sys, threading, urllib.request
base = sys.argv[1]
def complete(prompt):
    body = {"model": "sinter", "prompt": prompt, "max_tokens": 10, "temperature": 0}
    r = urllib.request.urlopen(urllib.request.Request(base + "/completions",
        data=json.dumps(body).encode(), headers={"content-type": "application/json"}), timeout=60)
    return json.loads(r.read())["choices"][0]["text"]
prompts = ["ROMEO:", "JULIET: O", "First Citizen:", "KING"]
together = {}
threads = [threading.Thread(target=lambda p=p: together.__setitem__(p, complete(p))) for p in prompts]
for t in threads:
    t.start()
for t in threads:
    t.join()
alone = {p: complete(p) for p in prompts}
metrics = urllib.request.urlopen(base.removesuffix("/v1") + "/metrics").read().decode()
sizes = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
         if l.startswith("sinter_batch_size_sum") or l.startswith("sinter_batch_size_count")}
print(json.dumps({"together": together, "alone": alone, "sizes": sizes}))
"#;

/// Requests arriving together are generated together (continuous batching), each getting
/// the text it gets alone.
#[test]
fn concurrent_requests_are_batched_and_each_gets_what_it_gets_alone() {
    let Some(Served { python, server, .. }) =
        serving(&["--batch", "4"], &[("SINTER_FAULT_SLOW_TOKEN_MS", "20")])
    else {
        return;
    };
    let out = run_python(&python, BATCHED, &[&server.url]);
    assert_eq!(out["together"], out["alone"]);
    let sizes = &out["sizes"];
    let mean = sizes["sinter_batch_size_sum"].as_f64().unwrap()
        / sizes["sinter_batch_size_count"].as_f64().unwrap();
    assert!(
        mean > 1.5,
        "requests were not batched: mean batch {mean} ({out})"
    );
}

const RATE_LIMITED: &str = r#"
import json, sys
from openai import OpenAI, RateLimitError
base = sys.argv[1]
def client(key):
    return OpenAI(base_url=base, api_key=key, max_retries=0)
out = {"alice": [], "bob": []}
for name, count in [("alice", 3), ("bob", 1)]:
    for _ in range(count):
        try:
            client(name).completions.create(model="sinter", prompt="ROMEO:", max_tokens=2)
            out[name].append(200)
        except RateLimitError as e:
            out[name].append(e.status_code)
            out["retry_after"] = e.response.headers.get("retry-after")
            out["message"] = e.body["message"]
out["models_still_listed"] = len(client("alice").models.list().data)
print(json.dumps(out))
"#;

#[test]
fn each_caller_gets_its_own_rate_limit() {
    let Some(Served { python, server, .. }) = serving(&["--rate-limit", "2"], &[]) else {
        return;
    };
    let out = run_python(&python, RATE_LIMITED, &[&server.url]);
    assert_eq!(out["alice"], serde_json::json!([200, 200, 429]), "{out}");
    assert_eq!(
        out["bob"],
        serde_json::json!([200]),
        "another key, another allowance: {out}"
    );
    assert_eq!(
        out["retry_after"], "30",
        "2 a minute: one every 30 s: {out}"
    );
    assert!(
        out["message"].as_str().unwrap().contains("this caller"),
        "{out}"
    );
    assert_eq!(out["models_still_listed"], 1);
}

const DEADLINES: &str = r#"
import json, sys, threading, time, urllib.request, urllib.error
from openai import OpenAI, APITimeoutError, APIStatusError
base = sys.argv[1]
def post(body, timeout=None):
    headers = {"content-type": "application/json"}
    if timeout is not None:
        headers["x-request-timeout"] = str(timeout)
    return urllib.request.urlopen(urllib.request.Request(base + "/completions",
        data=json.dumps(body).encode(), headers=headers), timeout=60)
def metric(name):
    metrics = urllib.request.urlopen(base.removesuffix("/v1") + "/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(name))
out = {}
# The model busy for 2.5 s; behind it, requests whose deadlines pass while they wait.
long = threading.Thread(target=lambda: post({"model": "sinter", "prompt": "ROMEO:",
    "max_tokens": 25}).read())
long.start()
time.sleep(0.1)
started = time.time()
try:
    post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 3}, timeout=0.4).read()
    out["queued"] = [200]
except urllib.error.HTTPError as e:
    out["queued"] = [e.code, json.loads(e.read()), time.time() - started]
r = post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 3, "stream": True}, timeout=0.3)
out["streamed"] = [line.decode().strip() for line in r if line.strip()]
try:
    post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 3}, timeout="soon").read()
except urllib.error.HTTPError as e:
    out["bad_header"] = [e.code, json.loads(e.read())]
# OpenAI's client sends its timeout: its request, queued too, is dropped as expired when its
# turn comes (had the server not known the deadline, it would only have found it abandoned).
client = OpenAI(base_url=base, api_key="unused", max_retries=0)
try:
    client.with_options(timeout=0.5).completions.create(model="sinter", prompt="ROMEO:",
        max_tokens=3)
    out["client"] = "answered"
except APITimeoutError:
    out["client"] = "timeout"
except APIStatusError as e:
    out["client"] = e.status_code
long.join()
# A request generating when its deadline passes stops there.
r = post({"model": "sinter", "prompt": "ROMEO:", "max_tokens": 20, "stream": True}, timeout=0.35)
out["cut_short"] = [line.decode().strip() for line in r if line.strip()]
time.sleep(0.3)
out["deadline_failures"] = metric('sinter_requests_failed_total{reason="deadline"}')
print(json.dumps(out))
"#;

/// A request's deadline (`X-Request-Timeout`, or the timeout OpenAI's client sends) is kept:
/// a request waiting behind a long one is answered 504 when it passes, not when its turn
/// comes; a streamed one ends with OpenAI's error event; the model stops working on both.
#[test]
fn requests_past_their_deadline_get_504_and_the_model_stops_on_them() {
    let Some(Served { python, server, .. }) = serving(
        &["--batch", "1", "--queue", "4"],
        &[("SINTER_FAULT_SLOW_TOKEN_MS", "100")],
    ) else {
        return;
    };
    let out = run_python(&python, DEADLINES, &[&server.url]);
    assert_eq!(out["queued"][0], 504, "{out}");
    assert_eq!(
        out["queued"][1]["error"]["code"], "deadline_exceeded",
        "{out}"
    );
    let waited = out["queued"][2].as_f64().unwrap();
    assert!(
        waited < 1.2,
        "answered after {waited} s: when its turn came (2.4 s), not at its deadline (0.4 s)"
    );
    let streamed = out["streamed"].as_array().unwrap();
    let last = streamed.last().and_then(|l| l.as_str()).unwrap_or_default();
    let error: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(error["error"]["code"], "deadline_exceeded", "{out}");
    assert_eq!(out["bad_header"][0], 400, "{out}");
    assert!(
        out["bad_header"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-request-timeout"),
        "{out}"
    );
    assert!(out["client"] == "timeout" || out["client"] == 504, "{out}");
    let cut_short = out["cut_short"].as_array().unwrap();
    // However few tokens a loaded machine made in 0.35 s (none may be whole characters yet),
    // the stream ends with the error, well before its 20 tokens.
    assert!(cut_short.len() < 15, "not cut short: {out}");
    assert!(
        cut_short
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("deadline_exceeded"),
        "{out}"
    );
    // The three queued requests, found expired when their turn came, and the one generating.
    assert!(
        out["deadline_failures"].as_f64().unwrap() >= 4.0,
        "the model did not stop for deadlines: {out}"
    );
}

/// The axon: a validator's synapses, signed by its hotkey, reach the model over libp2p and
/// come back signed by the miner's. A greedy generation is `launch generate`'s text; the
/// next token's distribution puts that text's first token first; a request addressed to
/// another hotkey, or from a caller the ledger does not know where the miner refuses those,
/// is refused, and `launch ask` exits 1 saying why.
#[test]
fn the_axon_answers_signed_synapses_as_launch_generate_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, greedy) = trained(dir.path());
    let wallets = dir.path().join("wallets");
    let (miner, validator) = (
        common::wallet(&wallets, "miner"),
        common::wallet(&wallets, "validator"),
    );
    let axon_key = dir.path().join("axon.key");
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--axon",
            "/ip4/127.0.0.1/tcp/0",
            "--axon-key",
            axon_key.to_str().unwrap(),
        ];
        args.extend(miner.args.iter().map(String::as_str));
        args.extend(extra);
        Server::start(&weights, &args, &[])
    };
    let server = start(&[]);
    let (axon, hotkey) = server.axon.clone().expect("no axon address printed");
    assert_eq!(hotkey, miner.hotkey);
    let ask = |to: &str, extra: &[&str]| {
        let mut args = vec![
            "ask",
            "--axon",
            &axon,
            "--miner",
            to,
            weights.to_str().unwrap(),
            "--prompt",
            PROMPT,
            "--json",
        ];
        args.extend(validator.args.iter().map(String::as_str));
        args.extend(extra);
        launch(&args)
    };
    let out = ask(&hotkey, &["--max-tokens", "20"]);
    assert!(out.status.success(), "{}", text(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["text"], greedy.as_str(), "{answer}");
    let out = ask(&hotkey, &["--next", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = answer["top"].as_array().unwrap();
    assert_eq!(top.len(), 5, "{answer}");
    let first = top[0]["text"].as_str().unwrap();
    assert!(
        greedy.starts_with(first),
        "{first:?} does not start {greedy:?}"
    );
    let probs: Vec<f64> = top.iter().map(|t| t["p"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{answer}");
    let total = probs.iter().sum::<f64>() + answer["rest"].as_f64().unwrap();
    assert!((total - 1.0).abs() < 0.02, "{answer}");
    // Addressed to another hotkey: refused (and the refusal, signed by the miner, is not
    // the claimed callee's either).
    let out = ask(&validator.hotkey, &["--max-tokens", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    drop(server);
    // A miner that serves only callers its ledger knows, with no ledger: refused, by name.
    let server = start(&["--axon-refuse-unknown"]);
    let (axon_again, _) = server.axon.clone().unwrap();
    assert_eq!(
        axon_again.rsplit('/').next(),
        axon.rsplit('/').next(),
        "same key, same peer id"
    );
    let mut args = vec![
        "ask",
        "--axon",
        &axon_again,
        "--miner",
        &hotkey,
        weights.to_str().unwrap(),
        "--max-tokens",
        "2",
    ];
    args.extend(validator.args.iter().map(String::as_str));
    let out = launch(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not registered"), "{}", text(&out));
}

const OPEN_TRAFFIC: &str = r#"
import json, subprocess, sys, threading, time, urllib.request, urllib.error
base, ask = sys.argv[1], json.loads(sys.argv[2])
out = {}
def complete(name, tokens):
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/completions",
            data=json.dumps({"model": "sinter", "prompt": "ROMEO:", "max_tokens": tokens}).encode(),
            headers={"content-type": "application/json"}), timeout=60).read()
        out[name] = 200
    except urllib.error.HTTPError as e:
        out[name] = e.code
running = threading.Thread(target=complete, args=("running", 24))
running.start()
time.sleep(0.3)
waiting = threading.Thread(target=complete, args=("waiting", 3))
waiting.start()
time.sleep(0.3)
# The queue (one place) is full: the validator's synapse comes now.
asked = subprocess.run(ask, capture_output=True, text=True)
out["validator"] = [asked.returncode, asked.stdout, asked.stderr[-2000:]]
running.join()
waiting.join()
print(json.dumps(out))
"#;

/// Validators by stake first, from the ledger: a caller the miner's ledger file does not know
/// is refused (`--axon-refuse-unknown`); a validator it knows with stake, arriving when the
/// queue is full of open HTTP traffic, takes the place of the request waiting (which gets 429)
/// and is answered.
#[test]
fn a_validator_with_stake_on_the_ledger_displaces_open_traffic_from_a_full_queue() {
    let Some(python) = python::bittensor_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (weights, _) = trained(dir.path());
    let wallets = dir.path().join("wallets");
    let [miner, validator, stranger] =
        ["miner", "validator", "stranger"].map(|name| common::wallet(&wallets, name));
    let genesis = dir.path().join("genesis.json");
    std::fs::write(
        &genesis,
        serde_json::json!({
            "author": miner.hotkey, "tempo": 100, "burn": 1, "emission_per_epoch": 1000,
            "balances": [],
            "neurons": [{"hotkey": validator.hotkey, "coldkey": validator.coldkey, "stake": 1000}],
        })
        .to_string(),
    )
    .unwrap();
    let ledger = dir.path().join("miner.ledger");
    let author_key = wallets.join("miner/hotkeys/miner");
    let _node = common::ledger_node(&[
        "--genesis",
        genesis.to_str().unwrap(),
        "--ledger",
        ledger.to_str().unwrap(),
        "--author-key",
        author_key.to_str().unwrap(),
        "--block-secs",
        "0.3",
    ]);
    common::eventually(
        "the ledger file",
        Duration::from_secs(30),
        || match ledger.exists() {
            true => Ok(()),
            false => Err("not yet".into()),
        },
    );
    let axon_key = dir.path().join("axon.key");
    let mut args = vec![
        "--axon",
        "/ip4/127.0.0.1/tcp/0",
        "--axon-key",
        axon_key.to_str().unwrap(),
        "--ledger",
        ledger.to_str().unwrap(),
        "--axon-refuse-unknown",
        "--batch",
        "1",
        "--queue",
        "1",
    ];
    args.extend(miner.args.iter().map(String::as_str));
    let server = Server::start(&weights, &args, &[("SINTER_FAULT_SLOW_TOKEN_MS", "100")]);
    let (axon, hotkey) = server.axon.clone().unwrap();
    let ask = |caller: &common::Wallet| {
        let mut args = vec![
            env!("CARGO_BIN_EXE_launch").to_string(),
            "ask".into(),
            "--axon".into(),
            axon.clone(),
            "--miner".into(),
            hotkey.clone(),
            weights.to_str().unwrap().into(),
            "--max-tokens".into(),
            "2".into(),
        ];
        args.extend(caller.args.iter().cloned());
        args
    };
    let stranger_ask = ask(&stranger);
    let out = Command::new(&stranger_ask[0])
        .args(&stranger_ask[1..])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not registered"), "{}", text(&out));
    let asked = serde_json::to_string(&ask(&validator)).unwrap();
    let out = run_python(&python, OPEN_TRAFFIC, &[&server.url, &asked]);
    assert_eq!(out["validator"][0], 0, "{out}");
    assert_eq!(out["running"], 200, "{out}");
    assert_eq!(out["waiting"], 429, "displaced by the validator: {out}");
}
