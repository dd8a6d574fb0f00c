#!/usr/bin/env python3
"""The reference for sinter's training speed: sinter's model in PyTorch, trained the same way.

Reads a sinter run config (TOML) and trains the model its `[model]` section describes with
its `[inner]` optimiser (AdamW, warmup then cosine, gradient clipping) on windows of its
batch size and context, then prints tokens/s (and, on CUDA, model FLOPs utilization) as one
JSON line. The model is sinter's (trainer/src/model.rs): token embedding, pre-norm decoder
layers of RMSNorm, attention with rotate-half RoPE and grouped-query heads, SwiGLU, a final
RMSNorm and a tied or untied head, no biases. Tokens are drawn uniformly from the vocabulary:
speed does not depend on the text.

    python3 scripts/torch-llama.py configs/parity.toml --device cpu --threads 2 --steps 60 --evals
    python3 scripts/torch-llama.py configs/125m.toml --device cuda --steps 200
    python3 scripts/torch-llama.py configs/125m.toml --mfu-of OUT/summary.json   # sinter's MFU

Only for measurement; not part of sinter.
"""

import argparse
import json
import math
import resource
import sys
import time
import tomllib

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # --mfu-of needs no torch
    torch = None
    nn = type("nn", (), {"Module": object})

MODEL_DEFAULTS = dict(
    vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=344,
    context=128, rope_theta=10000.0, rms_eps=1e-5, tie_embeddings=False, init_std=0.02,
)
INNER_DEFAULTS = dict(
    batch_size=16, lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
    warmup_fraction=0.05, min_lr_fraction=0.1, grad_clip=1.0,
)


class RmsNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, head_dim, theta, device):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(seq, device=device).float(), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Layer(nn.Module):
    def __init__(self, m):
        super().__init__()
        d, h, kv = m["d_model"], m["n_heads"], m["n_kv_heads"]
        self.h, self.kv, self.hd = h, kv, d // h
        self.attn_norm = RmsNorm(d, m["rms_eps"])
        self.wq = nn.Linear(d, h * self.hd, bias=False)
        self.wk = nn.Linear(d, kv * self.hd, bias=False)
        self.wv = nn.Linear(d, kv * self.hd, bias=False)
        self.wo = nn.Linear(h * self.hd, d, bias=False)
        self.ffn_norm = RmsNorm(d, m["rms_eps"])
        self.gate = nn.Linear(d, m["ffn_hidden"], bias=False)
        self.up = nn.Linear(d, m["ffn_hidden"], bias=False)
        self.down = nn.Linear(m["ffn_hidden"], d, bias=False)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        y = self.attn_norm(x)
        q = self.wq(y).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.wk(y).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.wv(y).view(b, s, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        x = x + self.wo(a.transpose(1, 2).reshape(b, s, -1))
        y = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Llama(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        self.embedding = nn.Embedding(m["vocab_size"], m["d_model"])
        self.layers = nn.ModuleList(Layer(m) for _ in range(m["n_layers"]))
        self.norm = RmsNorm(m["d_model"], m["rms_eps"])
        self.head = None if m["tie_embeddings"] else nn.Linear(m["d_model"], m["vocab_size"], bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=m["init_std"])

    def forward(self, tokens):
        s = tokens.shape[1]
        cos, sin = rope_tables(s, self.m["d_model"] // self.m["n_heads"], self.m["rope_theta"], tokens.device)
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)
        return self.head(x) if self.head is not None else x @ self.embedding.weight.T


def matrix_params(m):
    """Parameters that multiply: the layers' projections and the head (not the lookup table)."""
    d, hd = m["d_model"], m["d_model"] // m["n_heads"]
    attention = d * hd * (2 * m["n_heads"] + 2 * m["n_kv_heads"])
    ffn = 3 * d * m["ffn_hidden"]
    return m["n_layers"] * (attention + ffn) + d * m["vocab_size"]


def flops_per_token(m):
    """PaLM's count (appendix B): 6 per multiplying parameter plus causal attention's 12·L·d·s."""
    return 6 * matrix_params(m) + 12 * m["n_layers"] * m["d_model"] * m["context"]


def sinter_mfu(m, summary_path, peak_tflops):
    with open(summary_path) as f:
        summary = json.load(f)
    achieved = summary["tokens_per_sec"] * flops_per_token(m)
    return {
        "framework": "sinter",
        "summary": summary_path,
        "tokens_per_sec": round(summary["tokens_per_sec"], 1),
        "model_tflops": round(achieved / 1e12, 2),
        "mfu": round(achieved / (peak_tflops * 1e12), 4),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch", type=int, help="windows per step (default: inner.batch_size)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: autocast the forward and backward (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--evals", action="store_true",
                    help="evaluate as `launch train` does (timed): at step 0, every eval.every_steps "
                         "and at the end, each data.validation_batches forward passes")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's peak for MFU (H100/H200 dense bf16: 989)")
    ap.add_argument("--mfu-of", metavar="SUMMARY",
                    help="print the MFU of a sinter run (its summary.json) of this config instead")
    args = ap.parse_args()

    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    m = {**MODEL_DEFAULTS, **config.get("model", {})}
    if args.mfu_of:
        print(json.dumps(sinter_mfu(m, args.mfu_of, args.peak_tflops)))
        return
    inner = {**INNER_DEFAULTS, **config.get("inner", {})}
    batch = args.batch or inner["batch_size"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    model = Llama(m).to(device)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": inner["weight_decay"]}, {"params": other, "weight_decay": 0.0}],
        lr=inner["lr"], betas=(inner["beta1"], inner["beta2"]), eps=inner["eps"],
        fused=args.device == "cuda",
    )
    total = args.warmup + args.steps
    warm = max(1, int(inner["warmup_fraction"] * total))

    def lr_at(step):
        if step < warm:
            return inner["lr"] * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        floor = inner["min_lr_fraction"]
        return inner["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))

    data = {"validation_batches": 20, "validation_batch_size": 16, **config.get("data", {})}
    every = config.get("eval", {}).get("every_steps", 50)
    eval_gen = torch.Generator(device="cpu").manual_seed(2)

    def evaluate():
        with torch.no_grad(), autocast:
            for _ in range(data["validation_batches"]):
                tokens = torch.randint(0, m["vocab_size"], (data["validation_batch_size"], m["context"] + 1),
                                       generator=eval_gen).to(device)
                logits = step_fn(tokens[:, :-1])
                F.cross_entropy(logits.float().reshape(-1, m["vocab_size"]), tokens[:, 1:].reshape(-1)).item()

    step_fn = torch.compile(model) if args.compile else model
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    gen = torch.Generator(device="cpu").manual_seed(1)

    def step(i):
        tokens = torch.randint(0, m["vocab_size"], (batch, m["context"] + 1), generator=gen).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        with autocast:
            logits = step_fn(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, m["vocab_size"]), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), inner["grad_clip"])
        opt.step()
        return loss

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    evals = 0
    for i in range(args.warmup, total):
        done = i - args.warmup
        if args.evals and done % every == 0:
            evaluate()
            evals += 1
        loss = step(i)
    if args.evals and args.steps % every != 0:
        evaluate()
        evals += 1
    sync()
    secs = time.perf_counter() - start
    tokens_per_sec = args.steps * batch * m["context"] / secs
    out = {
        "framework": f"torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{args.threads}",
        "dtype": args.dtype,
        "params": params,
        "batch": batch,
        "context": m["context"],
        "steps": args.steps,
        "evals": evals,
        "secs": round(secs, 3),
        "tokens_per_sec": round(tokens_per_sec, 1),
        "last_loss": round(float(loss), 4),
        "peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.device == "cuda":
        achieved = tokens_per_sec * flops_per_token(m)
        out["peak_device_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["model_tflops"] = round(achieved / 1e12, 2)
        out["mfu"] = round(achieved / (args.peak_tflops * 1e12), 4)
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
