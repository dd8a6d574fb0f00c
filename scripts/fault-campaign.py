#!/usr/bin/env python3
"""A fault-injection campaign: N trials of a 4-peer run with the embedded ledger, each peer in
its own network namespace behind a shaped link (scripts/topology.sh), each trial with one
fault at a random instant:

  kill          SIGKILL a random peer (mid-all-reduce, mid-transfer, mid-checkpoint write,
                mid-ledger write: wherever the instant falls);
  kill-restart  the same, then start it again with --resume from its checkpoints;
  cut           take a random peer's link down for 2-6 s, then up again.

Each trial checks that the peers still running finish with bit-identical parameters, that
every checkpoint of every peer (the killed one's too) verifies, that every ledger replica
verifies, and that nothing panicked. Prints one line per trial and a table at the end; writes
OUT/trials.jsonl. Needs root (ip netns) and a built launch (LAUNCH=… or the debug build).

  scripts/fault-campaign.py [--trials 100] [--seed 1] [--out out/campaign]
                            [--faults kill,kill-restart,cut] [--before SECS]

--faults takes the kinds in turn (one kind: every trial of it); --before SECS draws every
fault instant before SECS into the run (e.g. kills before the first checkpoint).
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = 4
TOPOLOGY = ROOT / "scripts" / "topology.sh"
RUN_LIMIT = 300  # seconds a trial's peers may take

CONFIG = """
[model]
vocab_size = 256
d_model = 64
n_layers = 2
n_heads = 2
n_kv_heads = 2
ffn_hidden = 172
context = 64

[data]
corpus = "shakespeare"
tokenizer = "bytes"
validation_batches = 2
validation_batch_size = 8

[inner]
steps = 320
batch_size = 8
lr = 3e-3

[outer]
mode = "diloco"
workers = 4
inner_steps = 8
lr = 1.0
momentum = 0.0
quant = "int8"

[checkpoint]
every_rounds = 1

[incentives]
tempo = 3
validator_batches = 1

[incentives.scoring]
weights_from = "shapley"
permutations = 64
"""


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


class Campaign:
    def __init__(self, launch, out, seed, before=None):
        self.launch = launch
        self.before = before
        self.out = out
        self.rng = random.Random(seed)
        self.config = out / "run.toml"
        self.wallets = out / "wallets"

    def prepare(self):
        """Wallets for four peers and a genesis in which p1 authors blocks and validates."""
        self.out.mkdir(parents=True, exist_ok=True)
        # The wallets' coldkeys are encrypted; these are test wallets with a known password.
        os.environ.setdefault("SINTER_COLDKEY_PASSWORD", "fault campaign")
        keys = {}
        for p in range(1, PEERS + 1):
            name = f"p{p}"
            if not (self.wallets / name).exists():
                sh(self.launch, "wallet", "new", "--name", name, "--dir", str(self.wallets))
            shown = sh(self.launch, "wallet", "show", "--name", name, "--dir", str(self.wallets)).stdout
            keys[name] = dict(re.findall(r"^(\w+): (\S+)$", shown, re.M))
        neurons = ",\n".join(
            f'    {{ hotkey = "{keys[f"p{p}"]["hotkey"]}", coldkey = "{keys[f"p{p}"]["coldkey"]}", '
            f'stake = {1_000_000_000_000 if p == 1 else 0} }}'
            for p in range(1, PEERS + 1)
        )
        self.config.write_text(
            CONFIG
            + f'\n[incentives.ledger]\nauthor = "{keys["p1"]["hotkey"]}"\nblock_secs = 0.5\n'
            + f"neurons = [\n{neurons},\n]\n"
        )

    def start(self, trial_dir, p, name=None, resume=None, bootstrap=1):
        name = name or f"p{p}"
        args = [
            "ip", "netns", "exec", f"sinter-p{p}", self.launch, "run", str(self.config),
            "--listen", f"/ip4/10.77.0.{p}/tcp/4001",
            "--key", str(trial_dir / f"p{p}.key"),
            "--out", str(trial_dir / name),
            "--wallets", str(self.wallets), "--wallet", f"p{p}",
            "--start-wait", "60",
        ]
        if p != bootstrap:
            args += ["--bootstrap", f"/ip4/10.77.0.{bootstrap}/tcp/4001"]
        if resume:
            args += ["--resume", str(resume)]
        log = open(trial_dir / f"{name}.log", "w")
        stdout = open(trial_dir / f"{name}.out", "w")
        env = dict(os.environ, RUST_LOG="info", RUST_BACKTRACE="1")
        return subprocess.Popen(args, stdout=stdout, stderr=log, env=env)

    def trial(self, n, fault, duration):
        d = self.out / f"trial-{n:03d}"
        d.mkdir(parents=True, exist_ok=True)
        procs = {}
        procs[1] = self.start(d, 1)
        time.sleep(1.0)
        for p in range(2, PEERS + 1):
            procs[p] = self.start(d, p)
        started = time.monotonic()
        victim = self.rng.randint(1, PEERS)
        # A restarted peer needs time left to rejoin the run.
        latest = 0.6 if fault == "kill-restart" else 0.9
        upper = max(3.0, latest * duration)
        if self.before:
            upper = min(upper, self.before)
        at = self.rng.uniform(min(2.0, upper / 2), upper) if fault else None
        record = {"trial": n, "fault": fault or "none", "victim": victim if fault else None,
                  "at_s": round(at, 1) if at else None}
        killed, restarted = set(), {}
        if fault:
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            record["victim_was"] = last_event(d / f"p{victim}.log")
            if procs[victim].poll() is not None:
                record["note"] = "the victim had already finished"
            elif fault.startswith("kill"):
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                killed.add(victim)
                if fault == "kill-restart":
                    time.sleep(self.rng.uniform(1.0, 3.0))
                    ckpts = d / f"p{victim}" / "checkpoints"
                    resume = ckpts if (ckpts / "latest").exists() else None
                    record["resumed"] = resume is not None
                    bootstrap = 1 if victim != 1 else 2
                    name = f"p{victim}-restart"
                    restarted[victim] = name
                    procs[victim] = self.start(d, victim, name, resume, bootstrap)
            else:  # cut
                cut = self.rng.uniform(2.0, 6.0)
                record["cut_s"] = round(cut, 1)
                sh("ip", "link", "set", f"sinter-v{victim}", "down")
                time.sleep(cut)
                sh("ip", "link", "set", f"sinter-v{victim}", "up")
        failures = []
        hashes = {}
        deadline = started + RUN_LIMIT
        for p, proc in procs.items():
            if p in killed and p not in restarted:
                continue
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                failures.append(f"p{p} did not finish within {RUN_LIMIT} s")
                continue
            name = restarted.get(p, f"p{p}")
            if code != 0:
                failures.append(f"{name} exited {code}: {tail(d / f'{name}.log')}")
                continue
            summary = json.loads((d / name / "summary.json").read_text())
            hashes[name] = summary["params_sha256"]
        if len(set(hashes.values())) > 1:
            failures.append(f"parameters differ: {hashes}")
        for log in sorted(d.glob("*.log")):
            text = log.read_text(errors="replace")
            if "panicked" in text:
                failures.append(f"{log.name} panicked: {first_panic(text)}")
        # A `.partial` directory is a write the kill interrupted: never named `latest`, removed
        # by the next write; only complete checkpoints must verify.
        partials = list(d.glob("*/checkpoints/round-*.partial"))
        for ckpt in sorted(d.glob("*/checkpoints/round-*")):
            if ckpt.is_dir() and ckpt not in partials:
                r = sh(self.launch, "checkpoint", "verify", str(ckpt), check=False)
                if r.returncode != 0:
                    failures.append(f"checkpoint {ckpt.relative_to(d)}: {(r.stdout + r.stderr).strip()[-300:]}")
        for ledger in sorted(d.glob("*/*.sntr")):
            r = sh(self.launch, "ledger", "verify", str(ledger), check=False)
            if r.returncode != 0:
                failures.append(f"ledger {ledger.relative_to(d)}: {(r.stdout + r.stderr).strip()[-300:]}")
        record.update(
            seconds=round(time.monotonic() - started, 1),
            finished=len(hashes),
            checkpoints=len(list(d.glob("*/checkpoints/round-*"))) - len(partials),
            interrupted_checkpoint_writes=len(partials),
            ledgers=len(list(d.glob("*/*.sntr"))),
            ok=not failures,
            failures=failures,
        )
        return record


def last_event(log):
    """The victim's last informative log line: where the fault fell."""
    try:
        lines = [l for l in log.read_text(errors="replace").splitlines() if " INFO " in l or " WARN " in l]
    except FileNotFoundError:
        return "not started"
    if not lines:
        return "starting"
    return re.sub(r"^\S+\s+\w+\s+", "", lines[-1])[:160]


def tail(log, n=3):
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-n:])[-400:]
    except FileNotFoundError:
        return "(no log)"


def first_panic(text):
    i = text.find("panicked")
    return text[max(0, i - 100): i + 300].replace("\n", " ")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "campaign")
    ap.add_argument("--mbit", type=int, default=50)
    ap.add_argument("--faults", default="kill,kill-restart,cut")
    ap.add_argument("--before", type=float, default=None)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    launch = os.environ.get("LAUNCH", str(Path(target) / "debug" / "launch"))
    if not os.access(launch, os.X_OK):
        sys.exit(f"no launch binary at {launch} (cargo build -p launch, or set LAUNCH=…)")
    if os.geteuid() != 0:
        sys.exit("the campaign needs root (ip netns)")
    faults = args.faults.split(",")
    unknown = set(faults) - {"kill", "kill-restart", "cut"}
    if unknown:
        sys.exit(f"unknown faults {sorted(unknown)}: kill, kill-restart, cut")
    campaign = Campaign(launch, args.out.resolve(), args.seed, args.before)
    campaign.prepare()
    sh(str(TOPOLOGY), "up", str(PEERS), str(args.mbit))
    results = []
    try:
        baseline = campaign.trial(0, None, 0)
        print(json.dumps(baseline), flush=True)
        if not baseline["ok"]:
            sys.exit("the fault-free baseline failed: fix that first")
        duration = baseline["seconds"]
        with open(campaign.out / "trials.jsonl", "w") as f:
            f.write(json.dumps(baseline) + "\n")
            for n in range(1, args.trials + 1):
                record = campaign.trial(n, faults[(n - 1) % len(faults)], duration)
                results.append(record)
                f.write(json.dumps(record) + "\n")
                f.flush()
                print(json.dumps(record), flush=True)
    finally:
        sh(str(TOPOLOGY), "down", str(PEERS), check=False)
    by_fault = Counter(r["fault"] for r in results)
    ok = Counter(r["fault"] for r in results if r["ok"])
    print(f"\n{'fault':<14} {'trials':>6} {'passed':>6}")
    for fault in sorted(by_fault):
        print(f"{fault:<14} {by_fault[fault]:>6} {ok[fault]:>6}")
    print(f"{'all':<14} {len(results):>6} {sum(ok.values()):>6}   (baseline run {duration:.0f} s)")
    for r in results:
        if not r["ok"]:
            print(f"trial {r['trial']} ({r['fault']} p{r['victim']} at {r['at_s']} s): {r['failures']}")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
