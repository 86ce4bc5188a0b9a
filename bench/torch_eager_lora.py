#!/usr/bin/python3
"""PyTorch eager reference for the fedpeft training benchmark.

The same Llama decoder (RMSNorm, rotate-half RoPE, grouped-query attention,
SwiGLU MLP, tied or untied output embedding) and the same LoRA (Hu et al.
2021, PEFT's parametrisation: y = W x + alpha/r * B A x, B zero-initialised)
as fedpeft's C++ LlamaModel + PeftModel, written the way a competent PyTorch
user writes it -- nn.Module, frozen nn.Linear bases, LoRA A/B as
nn.Parameter, F.cross_entropy, torch.optim.AdamW, clip_grad_norm_ -- with no
fusions the C++ side is not also allowed to make by hand.

Presets and the token batch match bench/bench_train.cc exactly, so on the
shipped stories260K model both print the same first-step loss (LoRA B = 0,
the adapted model equals the base).

Prints one machine-readable line on stdout:
  impl=pytorch preset=stories260K threads=2 batch=8 seq=256 rank=8 steps=20
  step_ms_median=... step_ms_min=... tokens_per_s=... peak_rss_mb=...
  first_loss=...
Progress and configuration go to stderr.

Needs only Debian's python3-torch (1.13) and numpy: the safetensors file is
parsed by hand (8-byte little-endian header length, JSON header, raw data).
"""

import argparse
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Keep in sync with kPresets in bench/bench_train.cc.
PRESETS = {
    # The shipped model: real weights from assets/stories260K.
    "stories260K": dict(path=os.path.join(REPO, "assets", "stories260K"),
                        batch=8, seq=256),
    # A larger randomly initialised Llama (random values do not change
    # timing): Llama-2 style untied head, 32k vocabulary.
    "llama-512x8": dict(config=dict(hidden_size=512, intermediate_size=1376,
                                    num_hidden_layers=8,
                                    num_attention_heads=8,
                                    num_key_value_heads=8, vocab_size=32000,
                                    max_position_embeddings=2048,
                                    rms_norm_eps=1e-5, rope_theta=10000.0,
                                    tie_word_embeddings=False),
                        batch=4, seq=256),
}


def read_safetensors(path):
    """Name -> float32 tensor from a safetensors file (F32/F16/BF16)."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[base + begin:base + end])  # writable copy
        dtype = info["dtype"]
        if dtype == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32)
        elif dtype == "F16":
            t = torch.frombuffer(raw, dtype=torch.float16).float()
        elif dtype == "BF16":
            t = torch.frombuffer(raw, dtype=torch.bfloat16).float()
        else:
            raise ValueError(f"{path}: tensor {name}: dtype {dtype} not "
                             "supported (expected F32, F16 or BF16)")
        out[name] = t.reshape(info["shape"])
    return out


class RMSNorm(nn.Module):

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


class LoraLinear(nn.Module):
    """Frozen nn.Linear plus scale * B(A(x)), as PEFT's lora.Linear."""

    def __init__(self, base: nn.Linear, r, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * \
            self.scaling


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg["num_key_value_heads"]
        dim = cfg["hidden_size"]
        self.head_dim = dim // self.n_heads
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        # torch 1.13 has no scaled_dot_product_attention.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim) + mask
        attn = F.softmax(scores, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(out)


class MLP(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        dim, hidden = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        eps = cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        dim, vocab = cfg["hidden_size"], cfg["vocab_size"]
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(dim, cfg["rms_norm_eps"])
        self.tied = cfg.get("tie_word_embeddings", False)
        if not self.tied:
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        head_dim = dim // cfg["num_attention_heads"]
        inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0)**(
            torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, tokens):
        b, t = tokens.shape
        x = self.embed_tokens(tokens)
        pos = torch.arange(t, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.full((t, t), float("-inf")).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        head = self.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(x, head)


def build_model(preset, rank, alpha, targets, seed):
    spec = PRESETS[preset]
    torch.manual_seed(seed)
    if "path" in spec:
        with open(os.path.join(spec["path"], "config.json")) as f:
            cfg = json.load(f)
        model = Llama(cfg)
        tensors = read_safetensors(
            os.path.join(spec["path"], "model.safetensors"))
        missing, unexpected = model.load_state_dict(
            {k[len("model."):] if k.startswith("model.") else k: v
             for k, v in tensors.items()}, strict=False)
        missing = [m for m in missing if m != "lm_head.weight" or
                   not model.tied]
        if missing or unexpected:
            raise ValueError(f"{spec['path']}: missing {missing}, "
                             f"unexpected {unexpected}; maybe wrong model?")
    else:
        cfg = spec["config"]
        model = Llama(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("layernorm.weight") or name == "norm.weight":
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in targets:
                if hasattr(parent, name):
                    setattr(parent, name,
                            LoraLinear(getattr(parent, name), rank, alpha))
    return model, cfg


def token_batch(batch, seq, vocab):
    """The deterministic batch bench_train.cc also builds."""
    n = batch * seq
    i = torch.arange(n, dtype=torch.int64)
    tokens = ((i * 7919) % vocab).view(batch, seq)
    targets = (((i + 1) * 7919) % vocab).view(batch, seq)
    return tokens, targets


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="stories260K", choices=PRESETS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0, help="0 = preset's")
    ap.add_argument("--seq", type=int, default=0, help="0 = preset's")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--breakdown", action="store_true",
                    help="also time forward+loss, backward and clip+AdamW "
                    "separately (median ms each)")
    ap.add_argument("--show-config", action="store_true",
                    help="print torch.__config__.show() to stderr")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.show_config:
        print(torch.__config__.show(), file=sys.stderr)
    spec = PRESETS[args.preset]
    batch = args.batch or spec["batch"]
    seq = args.seq or spec["seq"]

    model, cfg = build_model(args.preset, args.rank, args.alpha,
                             args.targets.split(","), seed=1234)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    tokens, targets = token_batch(batch, seq, cfg["vocab_size"])
    print(f"pytorch {torch.__version__}: preset {args.preset}, "
          f"{sum(p.numel() for p in params)} trainable in {len(params)} "
          f"tensors, threads {torch.get_num_threads()}", file=sys.stderr)

    times, fwd, bwd, opt_ms = [], [], [], []
    first_loss = None
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)),
                               targets.view(-1), ignore_index=-100)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t3 = time.perf_counter()
        if first_loss is None:
            first_loss = loss.item()
        if step >= args.warmup:
            times.append((t3 - t0) * 1e3)
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            opt_ms.append((t3 - t2) * 1e3)

    med = statistics.median(times)
    fields = [
        "impl=pytorch", f"preset={args.preset}",
        f"threads={torch.get_num_threads()}", f"batch={batch}", f"seq={seq}",
        f"rank={args.rank}", f"steps={args.steps}",
        f"step_ms_median={med:.3f}", f"step_ms_min={min(times):.3f}",
        f"tokens_per_s={batch * seq / (med / 1e3):.1f}",
        f"peak_rss_mb={peak_rss_mb():.1f}", f"first_loss={first_loss:.6f}"
    ]
    if args.breakdown:
        fields += [
            f"fwd_ms={statistics.median(fwd):.3f}",
            f"bwd_ms={statistics.median(bwd):.3f}",
            f"opt_ms={statistics.median(opt_ms):.3f}"
        ]
    print(" ".join(fields), flush=True)


if __name__ == "__main__":
    main()
