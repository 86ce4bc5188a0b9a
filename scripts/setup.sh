#!/usr/bin/env bash
# Installs every Debian package fedpeft needs (non-interactive, idempotent)
# and builds the project into build/ (Ninja and ccache when present).
#   scripts/setup.sh            install if anything is missing, then build
#                               everything (library, CLI, tests, benches)
#   FEDPEFT_SETUP=cli ...       only what `build/fedpeft` needs: no test or
#                               fuzz packages, only the fedpeft target (the
#                               quickstart; a later full set-up adds the rest)
#   FEDPEFT_SKIP_BUILD=1 ...    install only
#   FEDPEFT_BUILD_DIR=DIR ...   build elsewhere (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git
  # tensors: Debian's LibTorch (CPU) and the BLAS that makes it fast; Gloo's
  # headers, which LibTorch's c10d ProcessGroupGloo.hpp includes (a worker
  # over several processes, worker/distributed.h)
  libtorch-dev libopenblas0-pthread libgloo-dev
  # transport and security
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev
  # configs, CLI, JSON, logging (tokenizer.model is read by our own code:
  # Debian's libsentencepiece bundles a protobuf that crashes next to
  # LibTorch's, see docs/design.md)
  libyaml-cpp-dev libboost-program-options-dev nlohmann-json3-dev
  libspdlog-dev
  # tokenizer.json (model/hf_tokenizer.h): PCRE2 for the Split regexes
  # (Unicode classes, look-ahead), utf8proc for NFC
  libpcre2-dev libutf8proc-dev
  # `fedpeft serve`'s HTTP server (compiled with OpenSSL, zlib, brotli)
  libcpp-httplib-dev
)
SETUP="${FEDPEFT_SETUP:-all}"
if [[ "$SETUP" != cli ]]; then
  # tests, and the libFuzzer targets of fuzz/ (scripts/fuzz.sh); Python
  # gRPC for tests/integration/hostile_client.py, a client that is not
  # fedpeft (its stubs are generated from proto/fedpeft.proto at run time)
  PACKAGES+=(libgtest-dev libgmock-dev clang libclang-rt-14-dev
             python3-grpcio python3-protobuf python3-grpc-tools)
fi
if [[ "${FEDPEFT_WITH_BENCH:-0}" == 1 ]]; then
  PACKAGES+=(python3-torch python3-numpy)  # the PyTorch eager baseline
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} Debian packages present"
fi

[[ "${FEDPEFT_SKIP_BUILD:-0}" == 1 ]] && exit 0

BUILD_DIR="${FEDPEFT_BUILD_DIR:-build}"
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
TESTS=ON
[[ "$SETUP" == cli ]] && TESTS=OFF
# (ccache's settings for precompiled headers live in CMakeLists.txt.)
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFEDPEFT_BUILD_TESTS="$TESTS"
elif [[ "$TESTS" == ON ]] &&
     grep -q '^FEDPEFT_BUILD_TESTS:BOOL=OFF' "$BUILD_DIR/CMakeCache.txt"; then
  # Set up for the quickstart before: add the tests now.
  cmake -S . -B "$BUILD_DIR" -DFEDPEFT_BUILD_TESTS=ON
fi
if [[ "$TESTS" == ON ]]; then
  # The Llama-3 and SentencePiece-in-JSON tokenizers the tokenizer tests
  # compare against; their licenses keep them out of the repository. In CI
  # a failed fetch fails setup (the tests would only be skipped).
  if ! FEDPEFT_BUILD_DIR="$BUILD_DIR" scripts/fetch_tokenizers.sh; then
    [[ -n "${CI:-}" ]] && exit 1
    echo "setup: tokenizers not fetched; their tests will be SKIPPED" >&2
  fi
  # The GGUF check's llama.cpp and GGUF parser (scripts/gguf_check.sh):
  # npm packages pinned by tests/gguf/package-lock.json, the linux-x64 CPU
  # binary only (~90 MB, ~8 s); and OpenAI's Node client for
  # scripts/serve_check.sh (tests/serve, 14 MB). node >= 20 is not in
  # Debian 12; without it these checks are SKIPPED.
  if command -v npm >/dev/null &&
     node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
    for dir in tests/gguf tests/serve; do
      (cd "$dir" && npm install --omit=optional --ignore-scripts \
         --no-audit --no-fund --loglevel=error) ||
        { [[ -n "${CI:-}" ]] && exit 1
          echo "setup: npm install in $dir failed; its check will be SKIPPED" >&2; }
    done
  else
    echo "setup: no node >= 20 with npm; the GGUF and serve checks will be SKIPPED" >&2
  fi
fi
if [[ "$SETUP" == cli ]]; then
  cmake --build "$BUILD_DIR" -j "$(nproc)" --target fedpeft
else
  cmake --build "$BUILD_DIR" -j "$(nproc)"
fi
