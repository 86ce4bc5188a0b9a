#!/usr/bin/env python3
"""Reference GGUF Q8_0 blocks of fixed values, written from the GGUF/GGML
format description with NumPy (no code shared with model/gguf_writer.cc),
for tests/model/gguf_test.cc.

Q8_0: blocks of 32 consecutive values; per block the scale
d = max|x| / 127 in float32, stored as IEEE float16 (little-endian), then 32
int8 q = round(x / d) with the quotient taken in float32 and rounded half
away from zero (C's roundf, as ggml and llama.cpp's gguf-py do; NumPy's own
np.round would round half to even), q = 0 for an all-zero block.

The values: a smooth block, an all-zero block, a block with max|x| = 127 so
d = 1 and x / d hits exact halves (2.5 -> 3, -2.5 -> -3, 0.5 -> 1), a
block with one outlier, and a block of tiny values (subnormal-range scale
in float16).

Run with Debian's python3-numpy:
  /usr/bin/python3 tests/reference/make_gguf_q8_0_fixture.py \
      > tests/reference/gguf_q8_0_fixture.json
"""
import json

import numpy as np


def values():
    j = np.arange(32, dtype=np.float64)
    smooth = np.sin(0.7 * j + 0.3) * 0.25
    zero = np.zeros(32)
    halves = np.concatenate([[127.0, -2.5, 2.5, 0.5, -0.5, 1.5, -126.5],
                             np.linspace(-100, 100, 25)])
    outlier = np.cos(1.1 * j) * 0.01
    outlier[9] = -4.0
    tiny = np.sin(2.3 * j) * 1e-6
    return np.concatenate([smooth, zero, halves, outlier, tiny]).astype(
        np.float32)


def round_half_away(q32):
    q = q32.astype(np.float64)  # exact; no float32 rounding in q + 0.5
    return np.sign(q) * np.floor(np.abs(q) + 0.5)


def q8_0(x):
    out = bytearray()
    for block in x.reshape(-1, 32):
        d = np.float32(np.abs(block).max()) / np.float32(127)
        d = np.float32(d)
        if d == 0:
            q = np.zeros(32)
        else:
            q = round_half_away(block / d)  # float32 / float32 -> float32
        q = np.clip(q, -127, 127).astype(np.int8)
        out += np.float16(d).tobytes()  # little-endian on x86
        out += q.tobytes()
    return bytes(out)


def main():
    x = values()
    print(json.dumps({
        "values": [float(v) for v in x],
        "q8_0_hex": q8_0(x).hex(),
    }, indent=1))


if __name__ == "__main__":
    main()
