#!/usr/bin/python3
"""PyTorch eager reference for the fedpeft training benchmark.

The same Llama-family decoder (RMSNorm, rotate-half RoPE with optional
rope_scaling, grouped-query attention, SwiGLU MLP, tied or untied output
embedding; Qwen2's q/k/v biases, Qwen3's per-head q/k RMSNorm and explicit
head_dim) and the same LoRA (Hu et al. 2021, PEFT's parametrisation:
y = W x + alpha/r * B A x, B zero-initialised) as fedpeft's C++ LlamaModel +
PeftModel, written the way a competent PyTorch user writes it -- nn.Module,
frozen nn.Linear bases (with bias where the model has one), LoRA A/B as
nn.Parameter, F.cross_entropy, torch.optim.AdamW, clip_grad_norm_ -- with
no fusions the C++ side is not also allowed to make by hand.

Models:
  --preset stories260K|llama-512x8   as bench/bench_train.cc's presets.
  --model HF_DIR   any Hugging Face folder the C++ loader reads as a Llama
      family decoder (model/llama_config.cc): model_type llama / mistral /
      qwen2 / qwen3, config.json + model.safetensors or a sharded
      model.safetensors.index.json, F32/F16/BF16 tensors. As the C++ side
      decides: q/k/v biases iff model_type is qwen2 (Qwen2 configs carry
      no attention_bias key; attention_bias/mlp_bias true is refused),
      q_norm/k_norm iff qwen3, head_dim from "head_dim" else hidden_size /
      heads, rope_scaling linear / dynamic / yarn / llama3 as
      model/rope.cc (the inverse frequencies in float64, then float32).
      --batch/--seq default to the preset's (8 x 256), as in bench_train.cc.

--dtype (the frozen base's dtype; --model only):
  float32   (default) every weight in float32, as `fedpeft_bench_train
            --base-dtype float32`.
  bfloat16  the frozen nn.Linear projections (and their biases), the
            embedding and the LM head are held in bfloat16 and run in
            bfloat16: their input is cast to bfloat16 and their output
            back to float32. The LoRA A/B, the RMSNorm weights, the
            residual stream, attention, softmax and the loss stay float32.
            (fedpeft's --base-dtype bfloat16 only *stores* the base in
            bfloat16 and computes in float32, so first losses differ a
            little.) float16 is not offered: torch 1.13 has no float16
            matmul on CPU.

Presets, models and the token batch match bench/bench_train.cc exactly, so
with the same weights (stories260K, or any --model folder with the C++
side's --base-dtype float32) both print the same first-step loss (LoRA
B = 0, the adapted model equals the base).

Prints one machine-readable line on stdout:
  impl=pytorch preset=stories260K threads=2 batch=8 seq=256 rank=8 steps=20
  step_ms_median=... step_ms_min=... tokens_per_s=... peak_rss_mb=...
  first_loss=... base_dtype=float32 load_s=...
(preset= is the HF_DIR as given with --model, as bench_train.cc prints it;
load_s is building the model and reading its weights.)
Progress and configuration go to stderr.

Needs only Debian's python3-torch (1.13) and numpy: safetensors files are
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

import numpy as np  # noqa: F401  (bench.sh checks both imports)
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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16,
               "BF16": torch.bfloat16}


# --- config -----------------------------------------------------------------

def read_config(model_dir):
    """config.json with the defaults and checks of model/llama_config.cc."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    return check_config(cfg, path)


def check_config(cfg, source):
    cfg = dict(cfg)
    model_type = cfg.setdefault("model_type", "llama")
    if model_type not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ValueError(f"{source}: model_type {model_type!r}: only "
                         "llama, mistral, qwen2 and qwen3 are supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {cfg['hidden_act']!r}: only "
                         "SwiGLU (silu) MLPs are supported")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key) is True:
            raise ValueError(f"{source}: {key} true is not supported (nor "
                             "by the C++ loader)")
    # Defaults as LlamaConfig::FromHfJson.
    cfg["num_key_value_heads"] = (cfg.get("num_key_value_heads")
                                  or cfg["num_attention_heads"])
    if cfg.get("rms_norm_eps") is None:
        cfg["rms_norm_eps"] = 1e-6
    if cfg.get("rope_theta") is None:
        cfg["rope_theta"] = 10000.0
    if cfg.get("max_position_embeddings") is None:
        cfg["max_position_embeddings"] = 2048
    if cfg.get("head_dim") is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["qkv_bias"] = model_type == "qwen2"
    cfg["qk_norm"] = model_type == "qwen3"
    # A sliding window caps the context at its length (as the C++ loader).
    sliding = (model_type == "mistral" or
               (model_type in ("qwen2", "qwen3") and
                bool(cfg.get("use_sliding_window"))))
    window = cfg.get("sliding_window")
    if sliding and window and window < cfg["max_position_embeddings"]:
        cfg["max_position_embeddings"] = window
    return cfg


def context_length(cfg):
    scaling = cfg.get("rope_scaling") or {}
    if rope_type(scaling) == "dynamic":
        return max(cfg["max_position_embeddings"],
                   math.floor(scaling["factor"] *
                              cfg["max_position_embeddings"]))
    return cfg["max_position_embeddings"]


def rope_type(scaling):
    t = scaling.get("rope_type", scaling.get("type")) if scaling else None
    return None if t in (None, "default") else t


def rope_frequencies(cfg, seq_len):
    """(inv_freq [head_dim/2] float32, attention_factor) for a forward of
    seq_len positions: transformers' ROPE_INIT_FUNCTIONS as model/rope.cc
    implements them (float64, then float32)."""
    d = cfg["head_dim"]
    theta = float(cfg["rope_theta"])
    max_pos = cfg["max_position_embeddings"]
    s = cfg.get("rope_scaling") or {}
    kind = rope_type(s)
    if kind not in (None, "linear", "dynamic", "yarn", "llama3"):
        raise ValueError(f"rope_scaling type {kind!r} is not supported")
    base = theta
    if kind == "dynamic" and seq_len > max_pos:
        base = theta * (s["factor"] * seq_len / max_pos -
                        (s["factor"] - 1.0))**(d / (d - 2.0))
    inv = 1.0 / base**(torch.arange(0, d, 2, dtype=torch.float64) / d)
    attention_factor = 1.0
    if kind == "linear":
        inv = inv / s["factor"]
    elif kind == "llama3":
        factor, low, high = (s["factor"], s["low_freq_factor"],
                             s["high_freq_factor"])
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old_len / wavelen - low) / (high - low)
        mixed = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > old_len / low, inv / factor,
                          torch.where(wavelen < old_len / high, inv, mixed))
    elif kind == "yarn":
        factor = s["factor"]
        original = max_pos
        if s.get("original_max_position_embeddings"):
            original = s["original_max_position_embeddings"]
            factor = max_pos / original

        def mscale(scale, m):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if s.get("attention_factor"):
            attention_factor = s["attention_factor"]
        elif s.get("mscale") and s.get("mscale_all_dim"):
            attention_factor = (mscale(factor, s["mscale"]) /
                                mscale(factor, s["mscale_all_dim"]))
        else:
            attention_factor = mscale(factor, 1.0)

        def correction_dim(rot):
            return (d * math.log(original / (rot * 2 * math.pi)) /
                    (2 * math.log(theta)))

        low = correction_dim(s.get("beta_fast") or 32.0)
        high = correction_dim(s.get("beta_slow") or 1.0)
        if s.get("truncate") is not False:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) /
                (high - low)).clamp(0, 1)
        extrapolate = 1 - ramp
        inv = inv / factor * (1 - extrapolate) + inv * extrapolate
    return inv.float(), attention_factor


# --- weights ----------------------------------------------------------------

def safetensors_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, s) for s in shards]
    return [os.path.join(model_dir, "model.safetensors")]


def iter_safetensors(path):
    """(name, tensor) of a safetensors file, one tensor in memory at a
    time, in the file's dtype (F32/F16/BF16)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = FILE_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: tensor {name}: dtype "
                                 f"{info['dtype']} not supported (expected "
                                 "F32, F16 or BF16)")
            begin, end = info["data_offsets"]
            raw = bytearray(end - begin)  # writable, for torch.frombuffer
            f.seek(base + begin)
            if f.readinto(raw) != len(raw):
                raise ValueError(f"{path}: tensor {name} is truncated")
            t = torch.frombuffer(raw, dtype=dtype) if raw else \
                torch.empty(0, dtype=dtype)
            yield name, t.reshape(info["shape"])


def load_weights(model, model_dir):
    """Copies every tensor of the folder into the model's parameters (each
    converted to its parameter's dtype); refuses missing or unexpected
    tensors and shape mismatches."""
    params = dict(model.named_parameters())
    todo = set(params)
    unexpected = []
    for path in safetensors_files(model_dir):
        for name, t in iter_safetensors(path):
            key = name[len("model."):] if name.startswith("model.") else name
            if key.endswith("rotary_emb.inv_freq") or (
                    key == "lm_head.weight" and model.tied):
                continue
            p = params.get(key)
            if p is None:
                unexpected.append(name)
                continue
            if tuple(p.shape) != tuple(t.shape):
                raise ValueError(f"{path}: tensor {name} has shape "
                                 f"{list(t.shape)}, the config implies "
                                 f"{list(p.shape)}; maybe wrong model?")
            with torch.no_grad():
                p.copy_(t)
            todo.discard(key)
    if todo or unexpected:
        raise ValueError(f"{model_dir}: missing {sorted(todo)}, unexpected "
                         f"{unexpected}; maybe wrong model?")


# --- model ------------------------------------------------------------------

class RMSNorm(nn.Module):

    def __init__(self, dim, eps, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device),
                                   requires_grad=False)
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(var + self.eps)) * self.weight


class Linear(nn.Linear):
    """nn.Linear that runs in its weight's dtype: a bfloat16 base gets its
    input cast to bfloat16 and returns float32 (no-ops in float32)."""

    def forward(self, x):
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


class LoraLinear(nn.Module):
    """Frozen Linear plus scale * B(A(x)), as PEFT's lora.Linear."""

    def __init__(self, base: nn.Linear, r, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
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

    def __init__(self, cfg, dtype=None, device=None):
        super().__init__()
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        dim, hd, bias = cfg["hidden_size"], self.head_dim, cfg["qkv_bias"]
        kw = dict(dtype=dtype, device=device)
        self.q_proj = Linear(dim, self.n_heads * hd, bias=bias, **kw)
        self.k_proj = Linear(dim, self.n_kv * hd, bias=bias, **kw)
        self.v_proj = Linear(dim, self.n_kv * hd, bias=bias, **kw)
        self.o_proj = Linear(self.n_heads * hd, dim, bias=False, **kw)
        if cfg["qk_norm"]:  # Qwen3: RMSNorm over each head before RoPE
            self.q_norm = RMSNorm(hd, cfg["rms_norm_eps"], device=device)
            self.k_norm = RMSNorm(hd, cfg["rms_norm_eps"], device=device)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
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

    def __init__(self, cfg, dtype=None, device=None):
        super().__init__()
        dim, hidden = cfg["hidden_size"], cfg["intermediate_size"]
        kw = dict(bias=False, dtype=dtype, device=device)
        self.gate_proj = Linear(dim, hidden, **kw)
        self.up_proj = Linear(dim, hidden, **kw)
        self.down_proj = Linear(hidden, dim, **kw)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):

    def __init__(self, cfg, dtype=None, device=None):
        super().__init__()
        eps, dim = cfg["rms_norm_eps"], cfg["hidden_size"]
        self.input_layernorm = RMSNorm(dim, eps, device=device)
        self.self_attn = Attention(cfg, dtype, device)
        self.post_attention_layernorm = RMSNorm(dim, eps, device=device)
        self.mlp = MLP(cfg, dtype, device)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """The decoder in float32 with the big frozen matrices (projections,
    embedding, LM head) in `dtype`. device="meta" builds it without
    allocating or initialising anything (to_empty() then load_weights())."""

    def __init__(self, cfg, dtype=torch.float32, device=None):
        super().__init__()
        self.cfg = cfg
        dim, vocab = cfg["hidden_size"], cfg["vocab_size"]
        self.embed_tokens = nn.Embedding(vocab, dim, dtype=dtype,
                                         device=device)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, dtype, device)
            for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(dim, cfg["rms_norm_eps"], device=device)
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = Linear(dim, vocab, bias=False, dtype=dtype,
                                  device=device)

    def forward(self, tokens):
        b, t = tokens.shape
        x = self.embed_tokens(tokens).float()
        inv_freq, attention_factor = rope_frequencies(self.cfg, t)
        pos = torch.arange(t, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if attention_factor != 1.0:
            cos, sin = cos * attention_factor, sin * attention_factor
        mask = torch.full((t, t), float("-inf")).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        head = self.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(x.to(head.dtype), head).float()


def add_lora(model, rank, alpha, targets):
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in targets:
                if isinstance(getattr(parent, name, None), nn.Linear):
                    setattr(parent, name,
                            LoraLinear(getattr(parent, name), rank, alpha))


def build_model(args, seed):
    """(model with LoRA, config, batch, seq, load seconds)."""
    torch.manual_seed(seed)
    spec = PRESETS[args.preset]
    t0 = time.perf_counter()
    if args.model:
        cfg = read_config(args.model)
        # Built on the meta device: nothing is allocated or initialised
        # until to_empty(), then each tensor is read straight into place.
        model = Llama(cfg, DTYPES[args.dtype], device="meta")
        model.to_empty(device="cpu")
        load_weights(model, args.model)
    else:
        if "path" in spec:
            cfg = read_config(spec["path"])
            model = Llama(cfg)
            load_weights(model, spec["path"])
        else:
            cfg = check_config(spec["config"], args.preset)
            model = Llama(cfg)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("norm.weight"):
                        p.fill_(1.0)
                    else:
                        p.normal_(0.0, 0.02)
    # --model keeps the preset's shape, as bench_train.cc does.
    batch, seq = spec["batch"], spec["seq"]
    load_s = time.perf_counter() - t0
    add_lora(model, args.rank, args.alpha, args.targets.split(","))
    return model, cfg, batch, seq, load_s


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
    ap.add_argument("--model", default="", metavar="HF_DIR",
                    help="a Hugging Face folder (config.json + safetensors) "
                    "instead of the preset's weights (the preset's batch and "
                    "seq stay the defaults, as in bench_train.cc)")
    ap.add_argument("--dtype", default="float32", choices=DTYPES,
                    help="dtype of the frozen base with --model (see above)")
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
    if args.dtype != "float32" and not args.model:
        ap.error("--dtype applies to --model only")

    torch.set_num_threads(args.threads)
    if args.show_config:
        print(torch.__config__.show(), file=sys.stderr)

    model, cfg, batch, seq, load_s = build_model(args, seed=1234)
    batch = args.batch or batch
    seq = args.seq or seq
    if seq > context_length(cfg):
        raise SystemExit(f"--seq {seq} exceeds the model's context of "
                         f"{context_length(cfg)}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    tokens, targets = token_batch(batch, seq, cfg["vocab_size"])
    name = args.model or args.preset
    print(f"pytorch {torch.__version__}: {name} ({cfg['model_type']}, "
          f"base {args.dtype}, loaded in {load_s:.2f} s), "
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
        "impl=pytorch", f"preset={name}",
        f"threads={torch.get_num_threads()}", f"batch={batch}", f"seq={seq}",
        f"rank={args.rank}", f"steps={args.steps}",
        f"step_ms_median={med:.3f}", f"step_ms_min={min(times):.3f}",
        f"tokens_per_s={batch * seq / (med / 1e3):.1f}",
        f"peak_rss_mb={peak_rss_mb():.1f}", f"first_loss={first_loss:.6f}",
        f"base_dtype={args.dtype}", f"load_s={load_s:.2f}"
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
