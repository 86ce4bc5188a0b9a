#!/usr/bin/python3
"""Reference logits of stories260K from an independent NumPy Llama forward.

The forward here also covers the families of make_arch_fixtures.py (its
sibling, which writes the fixtures of tests/model/arch_reference_test.cc):
Qwen2 q/k/v biases, Qwen3 per-head q/k RMSNorm and an explicit head_dim, and
rope_scaling of type linear, dynamic, yarn and llama3.

tests/model/reference_test.cc compares fedpeft's LibTorch forward (both
loaders: the Hugging Face folder and the llama2.c .bin) with the fixture this
script writes, tests/reference/stories260K_logits.json. The C++ test reads
only the committed fixture; it never runs Python.

The implementation here shares no code with fedpeft: it is written from the
published Llama architecture as Hugging Face transformers defines it
(LlamaForCausalLM), reads the safetensors file with json + numpy.frombuffer
(no torch, no transformers, no safetensors package) and computes in float64,
so the fixture is the exact forward up to float64 rounding; the stored
float32 values then round-trip exactly.

  h = embed[ids]
  per layer:  h += o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))
              with n = rmsnorm(h, input_layernorm)
              h += down_proj(silu(gate_proj(n)) * up_proj(n))
              with n = rmsnorm(h, post_attention_layernorm)
  logits = rmsnorm(h, norm) @ (lm_head or embed_tokens when tied)^T

  rmsnorm(x, w) = x / sqrt(mean(x^2) + rms_norm_eps) * w
  rope: rotate-half convention (q/k rows of each head in halves), angle of
        position p and pair i = p * inv_freq_i, inv_freq_i =
        rope_theta^(-2i / head_dim) unless rope_scaling says otherwise
        (rope_inv_freq below, from the definitions in transformers'
        modeling_rope_utils.py and the Llama 3.1 / YaRN papers); cos and sin
        are multiplied by YaRN's attention factor
  qwen2: q/k/v_proj add their biases
  qwen3: q and k are RMS-normalized per head (q_norm, k_norm: [head_dim],
        eps rms_norm_eps) before rope; head_dim may differ from
        hidden_size / num_attention_heads (q_proj: [heads * head_dim, hidden])
  attention: causal, softmax(q k^T / sqrt(head_dim)); query head h reads
        key/value head h // (num_attention_heads / num_key_value_heads)

Regenerate the fixture (from the repository root; needs only numpy, e.g.
Debian's python3-numpy):

  /usr/bin/python3 tests/reference/llama_forward_numpy.py

Check the committed fixture against a fresh computation without writing:

  /usr/bin/python3 tests/reference/llama_forward_numpy.py --check

Regenerate only when the shipped model changes; the fixture records the
SHA-256 of the files it was computed from.
"""

import argparse
import hashlib
import json
import os
import platform
import struct
import sys

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_MODEL_DIR = os.path.join(REPO_ROOT, "assets", "stories260K")
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "reference",
                           "stories260K_logits.json")

# "Once upon a time, there was a little girl named Lily. She liked to play in
# the p", BOS first, as the stories260K tokenizer splits it.
SEQUENCE_STORY = [
    1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
    426, 338, 397, 355, 267, 337, 322, 265, 282
]
# 72 ids, BOS first: longer than one 64-row query block of fedpeft's
# attention, reaching both ends of the vocabulary (0 = <unk>, 2 = </s>, 511).
SEQUENCE_SPREAD = [1] + [(97 * i + 3) % 512 for i in range(68)] + [0, 2, 511]

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path):
    """Name -> float64 array, from the safetensors layout: u64 LE header
    length, JSON header {name: {dtype, shape, data_offsets}}, data buffer."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]])
                                  .newbyteorder("<"))
        tensors[name] = array.reshape(info["shape"]).astype(np.float64)
    return tensors


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_type(cfg):
    scaling = cfg.get("rope_scaling") or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def rope_inv_freq(cfg, head_dim, seq_len):
    """(inv_freq [head_dim / 2], attention factor) for a forward of seq_len
    positions, per the config's rope_scaling."""
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or {}
    kind = rope_type(cfg)
    max_pos = cfg["max_position_embeddings"]
    d = float(head_dim)
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / d
    if kind == "default":
        return theta**-exponents, 1.0
    factor = float(scaling["factor"])
    if kind == "linear":  # positions divided by factor
        return theta**-exponents / factor, 1.0
    if kind == "dynamic":  # NTK-aware base, grown with the sequence
        if seq_len > max_pos:
            theta *= (factor * seq_len / max_pos - (factor - 1))**(d / (d - 2))
        return theta**-exponents, 1.0
    if kind == "llama3":
        inv = theta**-exponents
        old = float(scaling["original_max_position_embeddings"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        wavelength = 2 * np.pi / inv
        smooth = (old / wavelength - low) / (high - low)
        mixed = (1 - smooth) * inv / factor + smooth * inv
        out = np.where(wavelength < old / high, inv,
                       np.where(wavelength > old / low, inv / factor, mixed))
        return out, 1.0
    if kind == "yarn":
        original = scaling.get("original_max_position_embeddings")
        if original:  # transformers: the factor is the length ratio then
            factor = max_pos / float(original)
        else:
            original = max_pos
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1 else 0.1 * np.log(factor) + 1.0
        beta_fast = scaling.get("beta_fast") or 32.0
        beta_slow = scaling.get("beta_slow") or 1.0

        def dim_of(rotations):  # the pair index turning `rotations` times
            return d * np.log(original / (rotations * 2 * np.pi)) / (
                2 * np.log(theta))

        lo, hi = dim_of(beta_fast), dim_of(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = np.floor(lo), np.ceil(hi)
        lo, hi = max(lo, 0.0), min(hi, d - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(head_dim // 2) - lo) / (hi - lo), 0, 1)
        inv = theta**-exponents
        # ramp 0: keep (extrapolate) ... ramp 1: divide by factor.
        return inv * (1 - ramp) + inv / factor * ramp, float(attention)
    sys.exit("rope_scaling type %r is not implemented here" % kind)


def rope(x, inv_freq, attention=1.0):
    """x: [heads, T, head_dim], positions 0..T-1."""
    angles = np.outer(np.arange(x.shape[1], dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)  # [T, head_dim]
    return (x * np.cos(angles) + rotate_half(x) * np.sin(angles)) * attention


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(w, cfg, ids):
    """Logits [T, vocab] (float64) of one sequence starting at position 0."""
    dim = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_heads)
    head_dim = cfg.get("head_dim") or dim // n_heads
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    inv_freq, attention = rope_inv_freq(cfg, head_dim, T)
    qwen2 = cfg["model_type"] == "qwen2"
    qwen3 = cfg["model_type"] == "qwen3"

    def proj(x, name):  # q/k/v_proj of Qwen2 carry biases
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if qwen2 else y

    h = w["model.embed_tokens.weight"][np.asarray(ids)]  # [T, dim]
    causal = np.triu(np.ones((T, T), dtype=bool), k=1)  # True above diagonal
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        n = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = proj(n, p + "self_attn.q_proj").reshape(T, n_heads, head_dim)
        k = proj(n, p + "self_attn.k_proj").reshape(T, n_kv, head_dim)
        v = proj(n, p + "self_attn.v_proj").reshape(T, n_kv, head_dim)
        if qwen3:  # per-head RMSNorm over head_dim, before rope
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        # [heads, T, head_dim]
        q = rope(q.transpose(1, 0, 2), inv_freq, attention)
        k = rope(k.transpose(1, 0, 2), inv_freq, attention)
        v = v.transpose(1, 0, 2)
        out = np.empty((n_heads, T, head_dim))
        for head in range(n_heads):
            kv = head // (n_heads // n_kv)
            scores = q[head] @ k[kv].T / np.sqrt(head_dim)  # [T, T]
            scores[causal] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            out[head] = probs @ v[kv]
        attn = out.transpose(1, 0, 2).reshape(T, n_heads * head_dim)
        h = h + attn @ w[p + "self_attn.o_proj.weight"].T

        n = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = n @ w[p + "mlp.gate_proj.weight"].T
        up = n @ w[p + "mlp.up_proj.weight"].T
        h = h + (silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T

    h = rms_norm(h, w["model.norm.weight"], eps)
    if cfg.get("tie_word_embeddings", False):
        head = w["model.embed_tokens.weight"]
    else:
        head = w["lm_head.weight"]
    return h @ head.T


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def relative(path):
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)


def to_json(meta, sequences):
    """JSON with one logits row per line; each float32 value in numpy's
    shortest form that reads back to the same float32."""
    meta_text = json.dumps(meta, indent=2)
    parts = [meta_text[:-1].rstrip() + ',\n  "sequences": [\n']
    for s, seq in enumerate(sequences):
        rows = [
            "        [" + ",".join(str(v) for v in row) + "]"
            for row in seq["logits"]
        ]
        parts.append('    {\n      "name": %s,\n      "ids": %s,\n'
                     '      "logits": [\n%s\n      ]\n    }%s\n' %
                     (json.dumps(seq["name"]), json.dumps(seq["ids"]),
                      ",\n".join(rows), "," if s + 1 < len(sequences) else ""))
    parts.append("  ]\n}\n")
    return "".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help="Hugging Face folder: config.json and "
                        "model.safetensors (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="fixture to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the existing --out instead of "
                        "writing it; exit 1 on any difference above 1e-5 "
                        "(about one float32 ulp of the largest logits)")
    args = parser.parse_args()

    config_path = os.path.join(args.model_dir, "config.json")
    model_path = os.path.join(args.model_dir, "model.safetensors")
    with open(config_path) as f:
        cfg = json.load(f)
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        sys.exit("attention_bias/mlp_bias are not implemented here")
    weights = read_safetensors(model_path)

    sequences = []
    for name, ids in (("story", SEQUENCE_STORY), ("spread", SEQUENCE_SPREAD)):
        logits = forward(weights, cfg, ids).astype(np.float32)
        assert np.all(np.isfinite(logits)), name
        sequences.append({"name": name, "ids": ids, "logits": logits})

    if args.check:
        with open(args.out) as f:
            stored = json.load(f)["sequences"]
        worst = 0.0
        for seq, old in zip(sequences, stored):
            assert seq["ids"] == old["ids"], seq["name"]
            diff = np.abs(seq["logits"] -
                          np.asarray(old["logits"], dtype=np.float32)).max()
            print("%s: max |fresh - stored| = %.3g" % (seq["name"], diff))
            worst = max(worst, diff)
        sys.exit(0 if worst <= 1e-5 and len(stored) == len(sequences) else 1)

    meta = {
        "description":
            "Logits [T, vocab] of stories260K from an independent NumPy "
            "Llama forward (float64, stored as float32), one object per "
            "sequence, positions from 0. Written by "
            "tests/reference/llama_forward_numpy.py; read by "
            "tests/model/reference_test.cc.",
        "generator": {
            "command": " ".join(["python3"] + [
                relative(a) if os.path.exists(a) else a for a in sys.argv
            ]),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "compute_dtype": "float64",
            "stored_dtype": "float32",
        },
        "model": {
            "safetensors": relative(model_path),
            "safetensors_sha256": sha256(model_path),
            "config": relative(config_path),
            "config_sha256": sha256(config_path),
            "vocab_size": cfg["vocab_size"],
            "rope_theta": cfg.get("rope_theta", 10000.0),
            "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
        },
    }
    text = to_json(meta, sequences)
    json.loads(text)  # well-formed
    with open(args.out, "w") as f:
        f.write(text)
    print("wrote %s (%d bytes)" % (relative(args.out), len(text)))


if __name__ == "__main__":
    main()
