#!/usr/bin/env bash
# Set-up, build, and the main job on the embedded defaults: a federated
# LoRA fine-tuning of the shipped stories260K model by a coordinator and 4
# worker processes on 127.0.0.1, tiny-shakespeare split by speaker (non-IID),
# heterogeneous workers. Prints eval loss per round, bytes moved, and a
# greedy sample from the base model and from base + the merged adapter.
# Everything lands in out/quickstart/ (override with $1): logs/,
# metrics.jsonl, checkpoints/, adapter/ (Hugging Face PEFT format).
# Builds only build/fedpeft (not the tests and benchmarks: scripts/test.sh
# adds those).
set -euo pipefail
cd "$(dirname "$0")/.."
FEDPEFT_SETUP=cli scripts/setup.sh
OUT="${1:-out/quickstart}"
BUILD_DIR="${FEDPEFT_BUILD_DIR:-build}"
"$BUILD_DIR/fedpeft" simulate --config configs/quickstart.yaml --out "$OUT"
echo
echo "Next:"
echo "  $BUILD_DIR/fedpeft generate --adapter $OUT/adapter --prompt 'ROMEO:' --max-tokens 60"
echo "  $BUILD_DIR/fedpeft export --checkpoint $OUT/checkpoints --merge --out $OUT/merged"
echo "  $BUILD_DIR/fedpeft train --config configs/local_train.yaml --out $OUT/centralized   # the baseline"
