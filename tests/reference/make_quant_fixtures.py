#!/usr/bin/env python3
"""Reference int8 and NF4 quantization of a fixed matrix, written from the
papers with NumPy (no code shared with model/frozen_weight.cc), for
tests/model/frozen_weight_test.cc.

  * int8: per-row absmax / 127 scales, round half to even, clamp to +-127
    (LLM.int8(), Dettmers et al. 2022, vector-wise quantization).
  * NF4: QLoRA (Dettmers et al. 2023, arXiv 2305.14314): row-major blocks of
    64 values, each divided by its absmax and rounded to the nearest of the
    16 NF4 levels (Appendix E), two codes a byte with element 2i in the low
    nibble; the block absmax values centred on their mean and quantized to
    int8 with one absmax/127 scale per 256 blocks (QLoRA stores these as
    8-bit floats; fedpeft documents its linear int8 choice).

Run with Debian's python3-numpy:
  /usr/bin/python3 tests/reference/make_quant_fixtures.py \
      > tests/reference/quant_fixture.json
"""
import json

import numpy as np

NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0
], dtype=np.float32)


def matrix(rows, cols):
    """Deterministic values with varied row scales, a zero row and an
    outlier, so per-row and per-block scales differ."""
    i = np.arange(rows, dtype=np.float64)[:, None]
    j = np.arange(cols, dtype=np.float64)[None, :]
    w = np.sin(0.37 * i + 1.3 * j) * (1 + (i % 3)) / 10 + 0.01 * np.cos(7 * j)
    w[2, :] = 0.0
    w[5, 17] = 3.0
    return w.astype(np.float32)


def int8(w):
    absmax = np.abs(w).max(axis=1)
    scale = np.where(absmax > 0, absmax / np.float32(127), np.float32(1))
    scale = scale.astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def nf4(w):
    flat = w.reshape(-1)
    n = flat.size
    padded = np.zeros((n + 63) // 64 * 64, dtype=np.float32)
    padded[:n] = flat
    blocks = padded.reshape(-1, 64)
    absmax = np.abs(blocks).max(axis=1)
    safe = np.where(absmax > 0, absmax, np.float32(1)).astype(np.float32)
    normalized = blocks / safe[:, None]
    # Nearest level; a tie goes to the lower level.
    dist = np.abs(normalized[..., None] - NF4[None, None, :])
    codes = dist.argmin(axis=-1).astype(np.uint8).reshape(-1)
    packed = codes[0::2] | (codes[1::2] << 4)
    mean = np.float32(absmax.astype(np.float64).mean())
    centred = (absmax - mean).astype(np.float32)
    nb = absmax.size
    groups = np.zeros((nb + 255) // 256 * 256, dtype=np.float32)
    groups[:nb] = centred
    groups = groups.reshape(-1, 256)
    gmax = np.abs(groups).max(axis=1)
    s2 = np.where(gmax > 0, gmax / np.float32(127), np.float32(1))
    s2 = s2.astype(np.float32)
    acodes = np.clip(np.round(groups / s2[:, None]), -127,
                     127).astype(np.int8).reshape(-1)[:nb]
    # Dequantized values as the format defines them.
    amax = acodes.astype(np.float32) * s2[np.arange(nb) // 256] + mean
    values = (NF4[codes].reshape(-1, 64) * amax[:, None]).reshape(-1)[:n]
    return packed, acodes, s2, float(mean), values.reshape(w.shape)


def main():
    rows, cols = 9, 100  # 900 values: 15 blocks, the last one padded
    w = matrix(rows, cols)
    q, scale = int8(w)
    packed, acodes, s2, mean, values = nf4(w)
    out = {
        "generator": "tests/reference/make_quant_fixtures.py (NumPy " +
                     np.__version__ + ")",
        "rows": rows,
        "cols": cols,
        "w": [float(x) for x in w.reshape(-1)],
        "int8_q": [int(x) for x in q.reshape(-1)],
        "int8_scale": [float(x) for x in scale],
        "nf4_packed": [int(x) for x in packed],
        "nf4_absmax_codes": [int(x) for x in acodes],
        "nf4_absmax_scale": [float(x) for x in s2],
        "nf4_absmax_mean": mean,
        "nf4_values": [float(x) for x in values.reshape(-1)],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
