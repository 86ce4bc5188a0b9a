#!/usr/bin/env bash
# Times the README's two commands as a new user meets them: a fresh clone of
# this repository's HEAD, an empty ccache, then scripts/quickstart.sh and
# scripts/test.sh in that clone, one after the other. Run it on a quiet
# machine (these 2-core machines are shared: other builds inflate it).
#   scripts/measure_fresh.sh [WORKDIR]     (default: a new temp folder)
# Prints "quickstart rc=N seconds=S" and "test rc=N seconds=S"; the logs are
# WORKDIR/quickstart.log and WORKDIR/test.log. Debian packages already
# installed are not reinstalled: the times are build + run.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
git clone -q "$repo" "$work/fedpeft"
# The clone needs shared/ beside it, as the repository has.
[[ -e "$work/shared" ]] || ln -s "$repo/../shared" "$work/shared"
export CCACHE_DIR="$work/ccache"
mkdir -p "$CCACHE_DIR"
cd "$work/fedpeft"
t0=$(date +%s)
scripts/quickstart.sh > "$work/quickstart.log" 2>&1
echo "quickstart rc=$? seconds=$(($(date +%s) - t0))"
t1=$(date +%s)
scripts/test.sh > "$work/test.log" 2>&1
echo "test rc=$? seconds=$(($(date +%s) - t1))"
