#!/usr/bin/env bash
# Set-up, build, and the main job on the embedded default: LoRA fine-tuning
# of the shipped stories260K model on the shipped tiny-shakespeare, printing
# the eval loss before/after and a greedy sample from base and base+adapter.
# Everything lands in out/quickstart/ (override with $1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT="${1:-out/quickstart}"
BUILD_DIR="${FEDPEFT_BUILD_DIR:-build}"
"$BUILD_DIR/fedpeft" train --config configs/local_train.yaml --out "$OUT"
echo
echo "Try the adapter:"
echo "  $BUILD_DIR/fedpeft generate --adapter $OUT --prompt 'ROMEO:' --max-tokens 60"
echo "  $BUILD_DIR/fedpeft eval --adapter $OUT --config configs/local_train.yaml --split eval"
echo "  $BUILD_DIR/fedpeft export --adapter $OUT --merge --out $OUT/merged"
