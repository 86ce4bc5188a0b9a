#!/usr/bin/python3
"""Tiny random checkpoints of today's architectures and their reference logits.

tests/model/arch_reference_test.cc loads each folder tests/reference/arch/<case>/
(config.json + model.safetensors) with fedpeft and compares its logits with
logits.json there. This script writes all three files; the test never runs
Python. The logits come from the NumPy forward of llama_forward_numpy.py
(float64, written from the published architecture definitions, no torch or
transformers), so the fixtures check fedpeft against an independent
implementation, not against itself.

Each case starts from the real config.json of a published model
(assets/configs/<model>/config.json), shrinks it (layers, widths, vocabulary)
and may set rope_scaling; the weights are drawn here with NumPy from a fixed
seed and stored as F16 (exact in float32 and float64, and half the bytes):

  llama3   Llama-3.2-1B, rope_scaling llama3 {factor 32, low 1, high 4,
           original_max_position_embeddings 64 (8192 in the real model, shrunk
           so that an 80-token sequence runs past the low-frequency
           wavelength 64 and one pair falls in the smooth band)}
  qwen3    Qwen3-0.6B: q_norm/k_norm, head_dim 16 with hidden 32 and 4 heads
           (q_proj [64, 32], o_proj [32, 64])
  yarn     Qwen2.5-0.5B (q/k/v biases), rope_scaling {"type": "yarn",
           factor 4, original_max_position_embeddings 32} with
           max_position_embeddings 128 = 4 * 32, so transformers' two readings
           of the factor agree; attention factor 0.1 ln 4 + 1
  linear   SmolLM2-135M, rope_scaling {"type": "linear", factor 4}
  dynamic  Llama-3.2-1B, rope_scaling {dynamic, factor 2},
           max_position_embeddings 48 and an 80-token sequence, so the NTK
           base grows with the length

Regenerate everything (from the repository root; needs only numpy, e.g.
Debian's python3-numpy):

  /usr/bin/python3 tests/reference/make_arch_fixtures.py

Recompute the logits from the committed checkpoints and compare, writing
nothing:

  /usr/bin/python3 tests/reference/make_arch_fixtures.py --check
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_forward_numpy as ref  # noqa: E402

REPO_ROOT = ref.REPO_ROOT
OUT_ROOT = os.path.join(REPO_ROOT, "tests", "reference", "arch")
SEQ_LEN = 80

SHRINK = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "vocab_size": 64,
}

CASES = [
    {
        "name": "llama3",
        "base": "llama-3.2-1b",
        "seed": 1,
        "set": {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            "rope_scaling": {
                "factor": 32.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 64,
                "rope_type": "llama3",
            },
        },
    },
    {
        "name": "qwen3",
        "base": "qwen3-0.6b",
        "seed": 2,
        "set": {
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 256,
        },
    },
    {
        "name": "yarn",
        "base": "qwen2.5-0.5b",
        "seed": 3,
        "set": {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
            "rope_theta": 10000.0,
            "sliding_window": 128,
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    },
    {
        "name": "linear",
        "base": "smollm2-135m",
        "seed": 4,
        "set": {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
            "rope_scaling": {"type": "linear", "factor": 4.0},
        },
    },
    {
        "name": "dynamic",
        "base": "llama-3.2-1b",
        "seed": 5,
        "set": {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 48,
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
        },
    },
]


def shrunk_config(case):
    with open(os.path.join(REPO_ROOT, "assets", "configs", case["base"],
                           "config.json")) as f:
        cfg = json.load(f)
    cfg.update(SHRINK)
    cfg.update(case["set"])
    for key in ("bos_token_id", "eos_token_id"):
        if cfg.get(key) is not None and cfg[key] >= cfg["vocab_size"]:
            cfg[key] = None
    cfg["torch_dtype"] = "float16"
    return cfg


def expected_shapes(cfg):
    dim = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or dim // heads
    hidden = cfg["intermediate_size"]
    shapes = {
        "model.embed_tokens.weight": [cfg["vocab_size"], dim],
        "model.norm.weight": [dim],
    }
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = [cfg["vocab_size"], dim]
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        shapes[p + "input_layernorm.weight"] = [dim]
        shapes[p + "post_attention_layernorm.weight"] = [dim]
        shapes[p + "self_attn.q_proj.weight"] = [heads * head_dim, dim]
        shapes[p + "self_attn.k_proj.weight"] = [kv_heads * head_dim, dim]
        shapes[p + "self_attn.v_proj.weight"] = [kv_heads * head_dim, dim]
        shapes[p + "self_attn.o_proj.weight"] = [dim, heads * head_dim]
        shapes[p + "mlp.gate_proj.weight"] = [hidden, dim]
        shapes[p + "mlp.up_proj.weight"] = [hidden, dim]
        shapes[p + "mlp.down_proj.weight"] = [dim, hidden]
        if cfg["model_type"] == "qwen2":
            for name, rows in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                shapes[p + "self_attn.%s_proj.bias" % name] = [rows * head_dim]
        if cfg["model_type"] == "qwen3":
            shapes[p + "self_attn.q_norm.weight"] = [head_dim]
            shapes[p + "self_attn.k_norm.weight"] = [head_dim]
    return shapes


def random_weights(cfg, seed):
    """F16 tensors: matrices N(0, 1/in) (q_proj twice that scale, for peaked
    attention where positions matter), embeddings N(0, 1), norms 1 + N(0,
    0.2^2), biases N(0, 0.5^2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in sorted(expected_shapes(cfg).items()):
        if name.endswith("norm.weight"):
            t = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            t = 0.5 * rng.standard_normal(shape)
        elif "embed_tokens" in name or name == "lm_head.weight":
            t = rng.standard_normal(shape)
        else:
            t = rng.standard_normal(shape) / np.sqrt(shape[1])
            if "q_proj" in name:
                t *= 2.0
        out[name] = t.astype(np.float16)
    return out


def write_safetensors(path, tensors):
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {
            "dtype": "F16",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f2").tobytes())


def sequence(cfg):
    vocab = cfg["vocab_size"]
    return [(37 * i + 11) % vocab for i in range(SEQ_LEN)]


def compute(case_dir):
    with open(os.path.join(case_dir, "config.json")) as f:
        cfg = json.load(f)
    weights = ref.read_safetensors(os.path.join(case_dir, "model.safetensors"))
    ids = sequence(cfg)
    logits = ref.forward(weights, cfg, ids).astype(np.float32)
    assert np.all(np.isfinite(logits))
    return cfg, ids, logits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="recompute from the committed checkpoints and "
                        "compare with the committed logits (exit 1 above "
                        "1e-5); writes nothing")
    args = parser.parse_args()
    worst = 0.0
    for case in CASES:
        case_dir = os.path.join(OUT_ROOT, case["name"])
        if not args.check:
            os.makedirs(case_dir, exist_ok=True)
            cfg = shrunk_config(case)
            with open(os.path.join(case_dir, "config.json"), "w") as f:
                f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            write_safetensors(os.path.join(case_dir, "model.safetensors"),
                              random_weights(cfg, case["seed"]))
        cfg, ids, logits = compute(case_dir)
        out_path = os.path.join(case_dir, "logits.json")
        if args.check:
            with open(out_path) as f:
                stored = json.load(f)["sequences"][0]
            assert stored["ids"] == ids, case["name"]
            diff = float(np.abs(logits - np.asarray(stored["logits"],
                                                    np.float32)).max())
            print("%s: max |fresh - stored| = %.3g" % (case["name"], diff))
            worst = max(worst, diff)
            continue
        inv_freq, attention = ref.rope_inv_freq(
            cfg, cfg.get("head_dim") or
            cfg["hidden_size"] // cfg["num_attention_heads"], len(ids))
        meta = {
            "description":
                "Logits [T, vocab] of the tiny random %s checkpoint beside "
                "this file (config.json: %s shrunk), from the independent "
                "NumPy forward (float64, stored as float32), positions from "
                "0. Written by tests/reference/make_arch_fixtures.py; read by "
                "tests/model/arch_reference_test.cc." %
                (case["name"], case["base"]),
            "generator": {
                "command": "python3 tests/reference/make_arch_fixtures.py",
                "numpy": np.__version__,
                "seed": case["seed"],
                "compute_dtype": "float64",
                "stored_dtype": "float32",
            },
            "model": {
                "base_config": "assets/configs/%s/config.json" % case["base"],
                "safetensors_sha256": ref.sha256(
                    os.path.join(case_dir, "model.safetensors")),
                "config_sha256": ref.sha256(
                    os.path.join(case_dir, "config.json")),
                "rope_type": ref.rope_type(cfg),
                "rope_inv_freq": [float(v) for v in inv_freq],
                "rope_attention_factor": attention,
            },
        }
        text = ref.to_json(meta, [{"name": case["name"], "ids": ids,
                                   "logits": logits}])
        json.loads(text)
        with open(out_path, "w") as f:
            f.write(text)
        print("wrote %s (%d bytes)" % (ref.relative(out_path), len(text)))
    if args.check:
        sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
