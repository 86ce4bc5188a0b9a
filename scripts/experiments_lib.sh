# Shared by the experiment scripts (scripts/experiments_*.sh), which set
# BIN (the fedpeft executable), BASE (the base config), OUT (the runs'
# folder) and die() before sourcing it.

# run NAME KEY=VALUE...: one federation into $OUT/NAME (skipped when it
# already finished, unless FORCE=1).
run() {
  local name="$1" dir="$OUT/$1"
  shift
  if [[ -s "$dir/metrics.jsonl" && -f "$dir/wall_s" && -z "${FORCE:-}" ]]; then
    echo "== $name: done before (FORCE=1 reruns it)" >&2
    return
  fi
  local sets=()
  for kv in "$@"; do sets+=(--set "$kv"); done
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "== $name: $BIN simulate --config $BASE --out $dir ${sets[*]}" >&2
  local t0 t1
  t0="$(date +%s.%N)"
  "$BIN" simulate --config "$BASE" --out "$dir" "${sets[@]}" \
    >"$dir/simulate.txt" 2>&1 || die "$name failed; see $dir/simulate.txt"
  t1="$(date +%s.%N)"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' >"$dir/wall_s"
  printf '%s\n' "$@" >"$dir/overrides.txt"
  tail -n 3 "$dir/simulate.txt" >&2
}
