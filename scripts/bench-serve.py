#!/usr/bin/env python3
"""Benchmarks `launch serve` under concurrent clients, with continuous batching and without.

For each batch size (`--batches`, default 1 and 64: one request at a time against continuous
batching) it starts a server over the weights, then for each number of concurrent clients
(`--clients`) every client streams `--requests` completions of `--max-tokens` tokens at
temperature 1; it prints tokens/s over all clients, time to first token and request latency
(p50, p99), and at the end the batched server's tokens/s as a ratio to one at a time.
Standard library only.

    cargo build -p launch
    cargo run -p launch -- sim configs/tiny.toml --out out/tiny
    scripts/bench-serve.py out/tiny/model.safetensors
"""
import argparse
import json
import os
import statistics
import subprocess
import threading
import time
import urllib.request

PROMPTS = ["ROMEO:", "JULIET:\nO ", "First Citizen:\n", "KING HENRY:\n", "Of man's first disobedience"]


def start(launch, weights, batch, queue):
    server = subprocess.Popen(
        [launch, "serve", weights, "--http", "127.0.0.1:0", "--batch", str(batch), "--queue", str(queue)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http://"))
    return server, url


def stream(url, prompt, max_tokens):
    """One streamed completion: (seconds to the first text, seconds in all, tokens)."""
    body = {"model": "sinter", "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    tokens = 0
    request = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - started, tokens


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def load(url, clients, requests, max_tokens):
    results = []
    lock = threading.Lock()

    def client(i):
        for r in range(requests):
            result = stream(url, PROMPTS[(i + r) % len(PROMPTS)], max_tokens)
            with lock:
                results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttft = [r[0] for r in results]
    latency = [r[1] for r in results]
    return {
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": percentile(ttft, 99),
        "latency_p50": statistics.median(latency),
        "latency_p99": percentile(latency, 99),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--launch", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "launch"))
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--requests", type=int, default=4, help="completions per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    table = {}
    print(f"{'batch':>5} {'clients':>7} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>8} {'lat p99':>8}")
    for batch in [int(b) for b in args.batches.split(",")]:
        server, url = start(args.launch, args.weights, batch, max(clients) * 2)
        try:
            stream(url, PROMPTS[0], 4)  # warm up
            for c in clients:
                row = load(url, c, args.requests, args.max_tokens)
                table[(batch, c)] = row
                print(f"{batch:>5} {c:>7} {row['tokens_per_s']:>9.0f} {row['ttft_p50']:>8.3f}s "
                      f"{row['ttft_p99']:>8.3f}s {row['latency_p50']:>7.2f}s {row['latency_p99']:>7.2f}s", flush=True)
        finally:
            server.terminate()
            server.wait()
    batches = sorted({b for b, _ in table})
    if len(batches) > 1:
        low, high = batches[0], batches[-1]
        for c in clients:
            ratio = table[(high, c)]["tokens_per_s"] / table[(low, c)]["tokens_per_s"]
            print(f"{c:>3} clients: batch {high} gives {ratio:.2f}x the tokens/s of batch {low}")


if __name__ == "__main__":
    main()
