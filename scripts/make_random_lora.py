#!/usr/bin/env python3
"""A PEFT LoRA adapter folder with random A and B (B non-zero, so the adapter
changes the answers) for a Hugging Face config.json: for benchmarks of
serving on random-weight models, where training would take long and teach
nothing. Usage: make_random_lora.py CONFIG.json OUT_DIR RANK SEED"""
import json
import os
import random
import struct
import sys


def main():
    config_path, out, rank, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cfg = json.load(open(config_path))
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim", hidden // heads)
    rng = random.Random(seed)

    def normal(rows, cols, std):
        n = rows * cols
        return (rows, cols), struct.pack(f"<{n}f", *(rng.gauss(0.0, std) for _ in range(n)))

    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out_dim in (("q_proj", heads * head_dim), ("v_proj", kv * head_dim)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[key + ".lora_A.weight"] = normal(rank, hidden, hidden ** -0.5)
            tensors[key + ".lora_B.weight"] = normal(out_dim, rank, 0.02)
    header, offset, blobs = {}, 0, []
    for k in sorted(tensors):
        shape, b = tensors[k]
        header[k] = {"dtype": "F32", "shape": list(shape),
                     "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
               "lora_alpha": 2 * rank, "lora_dropout": 0.0,
               "target_modules": ["q_proj", "v_proj"], "bias": "none",
               "base_model_name_or_path": ""},
              open(os.path.join(out, "adapter_config.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
