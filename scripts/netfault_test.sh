#!/usr/bin/env bash
# Network faults, for real: every process in its own network namespace,
# joined by veth pairs on bridges, with `tc tbf` shaping links. Two
# federations run side by side on separate bridges:
#
#   flat  a coordinator and three workers on one bridge. worker-2's uplink is
#         shaped to 64 kbit/s, so its ~190 KB fp32 upload (~25 s) cannot beat
#         the 15 s round deadline. Both rounds must complete with worker-0
#         and worker-1 answering and worker-2 dropped as a straggler.
#   hier  a cloud coordinator and an edge aggregator on a "WAN" bridge
#         shaped to 1 Mbit/s each way; the edge (a second interface) and its
#         three workers on a "LAN" bridge, from which the cloud cannot be
#         reached. The edge's worker-2 is shaped to 64 kbit/s. Two cloud
#         rounds of two edge rounds each (hierarchy.edge_rounds = 2): each
#         edge round gets its share of what is left of the cloud's 30 s,
#         capped at the edge's own 10 s (federation.round_deadline_s), which
#         leaves time for the edge's download and upload over the WAN
#         (~1.6 s each). Every edge round must complete with worker-0 and
#         worker-1 and the edge's log must report worker-2 dropped; each
#         cloud round must aggregate one update, the edge's "merge of 2
#         workers over 2 edge rounds"; no worker may reach or register at
#         the cloud; the edge must exit cleanly when the cloud is done. (The
#         edge's first round includes the wait for its workers to start: if
#         that leaves it 6 s or less and it is skipped, as on a loaded
#         machine, the test says so and accepts cloud round 1 merging edge
#         round 2 alone.) Rank heterogeneity and adaptive freezing are off,
#         so every upload is the whole rank-8 adapter (with them on, the
#         edge would cut worker-2's rank after a miss, and it might then
#         make it in time); one small local step a round keeps the good
#         workers well within 10 s on a loaded machine.
#
# Where the kernel has `tc netem`, flat worker-0 also gets 40 ms of delay and
# 1% loss (TCP absorbs both); where it has not, that is said and left out.
# The tbf counters of the shaped links are printed at the end.
#
#   scripts/netfault_test.sh [path/to/fedpeft]     (root: ip netns, tc)
#
# Where it cannot make the namespaces (not root, no iproute2, or a container
# that refuses network namespaces, veth pairs, bridges or tbf) it prints why
# and exits 77: nothing was tested, and ctest, which runs it as
# NetworkFaults.SlowUplinkStragglerIsDropped (~1 minute, SKIP_RETURN_CODE
# 77), reports it as skipped rather than passed.
# KEEP=1 keeps the logs and prints where.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="$(realpath "${1:-build/fedpeft}")"
skip() {
  echo "netfault_test: SKIPPED: $*"
  exit 77
}
if [[ $(id -u) -ne 0 ]] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  skip "needs root, ip (iproute2) and tc to make network namespaces"
fi
[[ -x "$BIN" ]] || { echo "netfault_test: $BIN is not built" >&2; exit 1; }
# Root is not always enough (a container without CAP_SYS_ADMIN, a kernel
# without veth or sch_tbf): try each kind of thing the test makes in a
# throw-away namespace first, so that only a failure of fedpeft fails it.
PROBE="fp$$probe"
if ! {
  ip netns add "$PROBE" &&
    ip netns exec "$PROBE" ip link add fpv0 type veth peer name fpv1 &&
    ip netns exec "$PROBE" ip link add fpbr0 type bridge &&
    ip netns exec "$PROBE" tc qdisc add dev fpv0 root tbf rate 1mbit \
      burst 32kbit latency 60s
} >/dev/null 2>&1; then
  ip netns del "$PROBE" 2>/dev/null || true
  skip "cannot make a network namespace, veth pair, bridge and tbf qdisc here (needs CAP_SYS_ADMIN and CAP_NET_ADMIN, and the veth, bridge and sch_tbf kernel modules)"
fi
ip netns del "$PROBE"

# Names unique to this run (interface names stay within 15 characters).
TAG="fp$$"
SUBNET=$(($$ % 200 + 20))
FLAT=10.78.$SUBNET  # flat: coordinator and workers
WAN=10.79.$SUBNET   # hier: cloud and edge
LAN=10.80.$SUBNET   # hier: edge and its workers
WORK="$(mktemp -d /tmp/fedpeft_netfault.XXXXXX)"
NAMESPACES=()
LINKS=()  # bridges and the host ends of veth pairs
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do { wait "$pid"; } 2>/dev/null || true; done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  for l in "${LINKS[@]}"; do ip link del "$l" 2>/dev/null || true; done
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "netfault_test: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# netns NAME: a network namespace ${TAG}NAME with its loopback up.
netns() {
  ip netns add "${TAG}$1"
  NAMESPACES+=("${TAG}$1")
  ip netns exec "${TAG}$1" ip link set lo up
}
# bridge NAME: a bridge ${TAG}NAME in the host namespace.
bridge() {
  ip link add "${TAG}$1" type bridge
  LINKS+=("${TAG}$1")
  ip link set "${TAG}$1" up
}
# plug NS IF BRIDGE ADDRESS: a veth pair, ${TAG}IFc inside namespace NS with
# ADDRESS/24, ${TAG}IFh on the bridge.
plug() {
  local ns="${TAG}$1" inside="${TAG}$2c" outside="${TAG}$2h"
  ip link add "$outside" type veth peer name "$inside"
  LINKS+=("$outside")
  ip link set "$inside" netns "$ns"
  ip link set "$outside" master "${TAG}$3"
  ip link set "$outside" up
  ip netns exec "$ns" ip addr add "$4/24" dev "$inside"
  ip netns exec "$ns" ip link set "$inside" up
}
# shape NS IF RATE BURST: a token bucket on what NS sends on ${TAG}IFc. The
# queue holds a minute of traffic, so shaping delays and never drops.
shape() {
  ip netns exec "${TAG}$1" tc qdisc add dev "${TAG}$2c" root tbf rate "$3" \
    burst "$4" latency 60s
}
# tbf_stats NS IF: the qdisc's counters, on one line.
tbf_stats() {
  ip netns exec "${TAG}$1" tc -s qdisc show dev "${TAG}$2c" 2>/dev/null |
    tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}
# spawn LOG NS ARGS...: runs the binary in namespace NS, output to
# $WORK/LOG.log; its pid in $SPAWNED.
spawn() {
  local log="$WORK/$1.log" ns="${TAG}$2"
  shift 2
  ip netns exec "$ns" "$BIN" "$@" >"$log" 2>&1 &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}

# ---- flat: coordinator and three workers ---------------------------------
bridge br
netns coord
plug coord coord br "$FLAT.10"
for w in 0 1 2; do
  netns "w$w"
  plug "w$w" "w$w" br "$FLAT.$((11 + w))"
done
# worker-2's uplink: 64 kbit/s (its ~190 KB fp32 upload takes ~25 s).
shape w2 w2 64kbit 16kbit
if ip netns exec "${TAG}w0" tc qdisc add dev "${TAG}w0c" root netem \
  delay 40ms loss 1% 2>/dev/null; then
  echo "netfault_test: flat worker-0: netem delay 40ms, loss 1%"
else
  echo "netfault_test: tc netem is not available in this kernel: delay and loss are not exercised (the slow uplinks are, with tbf)"
fi

# ---- hier: cloud -- WAN -- edge -- LAN -- three workers ------------------
bridge wan
bridge lan
netns hc
plug hc hc wan "$WAN.10"
netns he
plug he hew wan "$WAN.11"
plug he hel lan "$LAN.10"
for w in 0 1 2; do
  netns "hw$w"
  plug "hw$w" "hw$w" lan "$LAN.$((11 + w))"
done
# The WAN at 1 Mbit/s each way: the edge's ~190 KB merge takes ~1.6 s.
shape he hew 1mbit 32kbit
shape hc hc 1mbit 32kbit
shape hw2 hw2 64kbit 16kbit

# ---- run both ------------------------------------------------------------
FAILURES=()
expect() { FAILURES+=("$*"); }
show_failures() {
  for f in "$WORK"/*.log; do echo "==== $f" >&2; tail -n 30 "$f" >&2; done
  for m in "${FAILURES[@]}"; do echo "netfault_test: FAILED: $m" >&2; done
  exit 1
}
# started PID LOG PATTERN WHAT: waits up to 60 s for PATTERN in
# $WORK/LOG.log while PID runs.
started() {
  for _ in $(seq 1 600); do
    grep -q "$3" "$WORK/$2.log" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$1" 2>/dev/null; then
    expect "$4: no '$3' in $2.log within 60 s"
  else
    expect "$4: it exited before '$3' appeared in $2.log"
  fi
  show_failures
}

# A client that dials before its server listens connects only seconds after
# the server is up (gRPC's reconnect backoff), so clients start once their
# server listens, except the edge's workers: the cloud's first round starts
# when the edge registers, and the edge's first round waits for its workers
# within its own deadline, so they start as soon as the edge has loaded (its
# first log line). By the time they have loaded, read their data and timed
# their CPU, and dial, the edge serves. For the same reason the hierarchy
# starts first, alone.
# The cloud's 30 s round holds the edge's download (~1.6 s over the WAN),
# two 10 s edge rounds and the edge's upload (~1.6 s). One small local step
# a round: on a loaded machine a worker's round must stay well within 10 s.
spawn hier-cloud hc coordinator --config configs/hier/coordinator.yaml \
  --set "server.address=$WAN.10:50051" --set federation.rounds=2 \
  --set federation.min_available=1 --set federation.round_deadline_s=30 \
  --set federation.quorum=0.5 --set federation.on_quorum_miss=skip \
  --set federation.worker_timeout_s=30 --set federation.task_wait_ms=1000 \
  --set federation.shutdown_grace_s=3 --set federation.heartbeat_interval_ms=500 \
  --set hierarchy.edge_rounds=2 --set heterogeneity.enabled=false \
  --set freezing.apf.enabled=false --set train.local_steps=1 \
  --set train.batch_size=4 \
  --set eval.data.max_records=300 --set eval.data.max_seq_len=64 \
  --set "checkpoint.dir=$WORK/hier-ckpt" \
  --set "logging.metrics_file=$WORK/hier-metrics.jsonl"
CLOUD_PID=$SPAWNED
started "$CLOUD_PID" hier-cloud "listening on" "hier: the cloud coordinator did not start"
if ip netns exec "${TAG}hw0" timeout 3 bash -c "exec 3<>/dev/tcp/$WAN.10/50051" 2>/dev/null; then
  expect "hier: worker-0 reached the cloud at $WAN.10:50051 (its LAN must reach only the edge)"
fi
# The edge's own deadline caps each edge round's share of the cloud round:
# without it the last edge round would take all that is left, and the
# edge's upload would come after the cloud's deadline.
spawn hier-edge he edge --config configs/hier/edge.yaml --set edge.id=edge-0 \
  --set "upstream.address=$WAN.10:50051" --set upstream.task_wait_ms=1000 \
  --set upstream.backoff_max_ms=1000 --set "server.address=$LAN.10:50061" \
  --set federation.min_available=3 --set federation.round_deadline_s=10 \
  --set federation.worker_timeout_s=30 --set federation.task_wait_ms=1000 \
  --set federation.shutdown_grace_s=3 --set federation.heartbeat_interval_ms=500
EDGE_PID=$SPAWNED
started "$EDGE_PID" hier-edge "." "hier: the edge did not start"
for w in 0 1 2; do
  spawn "hier-worker-$w" "hw$w" worker --config configs/hier/worker.yaml \
    --set "worker.id=worker-$w" --set "data.shard=$w/3" \
    --set data.max_records=600 --set data.max_seq_len=64 \
    --set "server.address=$LAN.10:50061" --set server.task_wait_ms=1000 \
    --set server.backoff_max_ms=1000
  disown "$SPAWNED"  # killed at cleanup: no job-control noise
done
started "$EDGE_PID" hier-edge "serving workers" "hier: the edge did not register with the cloud and serve"
started "$EDGE_PID" hier-edge "; 3 registered" "hier: the edge's 3 workers did not all register"

spawn flat-coordinator coord coordinator --config configs/flat/coordinator.yaml \
  --set "server.address=$FLAT.10:50051" --set federation.rounds=2 \
  --set federation.min_available=3 --set federation.round_deadline_s=15 \
  --set federation.quorum=0.5 --set federation.on_quorum_miss=skip \
  --set federation.worker_timeout_s=30 --set federation.task_wait_ms=1000 \
  --set federation.shutdown_grace_s=3 --set federation.heartbeat_interval_ms=500 \
  --set train.local_steps=2 \
  --set eval.data.max_records=300 --set eval.data.max_seq_len=64 \
  --set "checkpoint.dir=$WORK/flat-ckpt" \
  --set "logging.metrics_file=$WORK/flat-metrics.jsonl"
FLAT_PID=$SPAWNED
started "$FLAT_PID" flat-coordinator "listening on" "flat: the coordinator did not start"
for w in 0 1 2; do
  spawn "flat-worker-$w" "w$w" worker --config configs/flat/worker.yaml \
    --set "worker.id=worker-$w" --set "data.shard=$w/3" \
    --set data.max_records=600 --set data.max_seq_len=64 \
    --set "server.address=$FLAT.10:50051" --set server.task_wait_ms=1000 \
    --set server.backoff_max_ms=1000
  disown "$SPAWNED"
done

# ---- wait ----------------------------------------------------------------
# finish PID NAME SECONDS: waits for PID to exit 0.
finish() {
  local pid=$1 name=$2
  for _ in $(seq 1 $((4 * $3))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    expect "$name did not finish in $3 s"
  elif ! wait "$pid"; then
    expect "$name exited non-zero"
  fi
}
finish "$CLOUD_PID" "hier: the cloud coordinator" 240
finish "$FLAT_PID" "flat: the coordinator" 240
# The edge stops when the cloud says so (within its shutdown grace).
finish "$EDGE_PID" "hier: the edge (after the cloud finished)" 30
STATS_FLAT_W2="$(tbf_stats w2 w2)"
STATS_HIER_W2="$(tbf_stats hw2 hw2)"
STATS_EDGE_UP="$(tbf_stats he hew)"
STATS_CLOUD_DOWN="$(tbf_stats hc hc)"
[[ ${#FAILURES[@]} -eq 0 ]] || show_failures

# ---- check ---------------------------------------------------------------
log="$WORK/flat-coordinator.log"
rounds=$(grep -c '"aggregated":true' "$WORK/flat-metrics.jsonl" || true)
[[ "$rounds" == 2 ]] || expect "flat: expected 2 aggregated rounds, got $rounds"
grep -q "no answer from 'worker-2' (dropped)" "$log" ||
  expect "flat: worker-2 (64 kbit/s uplink) was not dropped as a straggler"
for r in 1 2; do
  grep -q "round $r/2 done: selected [23] answered 2" "$log" ||
    expect "flat: round $r: expected 'round $r/2 done: selected 3 (or 2) answered 2' (worker-0 and worker-1)"
done

cloud="$WORK/hier-cloud.log"
edge="$WORK/hier-edge.log"
rows=$(grep '"aggregated":true' "$WORK/hier-metrics.jsonl" 2>/dev/null |
  grep -c '"edges_answered":1' || true)
[[ "$rows" == 2 ]] ||
  expect "hier: expected 2 aggregated cloud rounds with edges_answered 1, got $rows"
# Edge round 1 waits for the workers to register within its own deadline:
# on a loaded machine their start-up can leave too little of it (6 s or
# less), and the edge skips that round; cloud round 1 then merges edge
# round 2 alone. Only then is edge round 1 let off.
merged=([1]=2 [2]=2)  # edge rounds in each cloud round's merge
edge_rounds="1 2 3 4"
if grep -q "edge round 1 skipped" "$edge" &&
  grep -q "round 1: deadline ([0-6]s) reached" "$edge"; then
  merged[1]=1
  edge_rounds="2 3 4"
  NOTE="hier: edge round 1 was skipped: its workers' start-up left it $(sed -n 's/.*round 1: deadline (\([0-9]*\)s) reached.*/\1/p' "$edge") s of its 10 s"
fi
for r in 1 2; do
  grep -q "round $r/2 done: selected 1 answered 1 dropped 0 edges 1" "$cloud" ||
    expect "hier: cloud round $r: expected 'round $r/2 done: selected 1 answered 1 dropped 0 edges 1' (the edge's merge)"
  grep -q "cloud round $r: uploaded the merge of 2 workers over ${merged[$r]} edge rounds" "$edge" ||
    expect "hier: cloud round $r: expected the edge to upload 'the merge of 2 workers over ${merged[$r]} edge rounds'"
done
for e in $edge_rounds; do
  grep -q "edge round $e done: selected [23] answered 2" "$edge" ||
    expect "hier: edge round $e: expected 'edge round $e done: selected 3 (or 2) answered 2' (worker-0 and worker-1)"
done
grep -q "edge round 5" "$edge" && expect "hier: expected 4 edge rounds (2 cloud rounds x 2), saw an edge round 5"
grep -q "no answer from 'worker-2' (dropped)" "$edge" ||
  expect "hier: the edge did not report worker-2 (64 kbit/s uplink) dropped"
grep -q "worker '[^']*' registered" "$cloud" &&
  expect "hier: only edge-0 may register at the cloud (the workers are behind the edge)"
[[ ${#FAILURES[@]} -eq 0 ]] || show_failures

say() { sed 's/^[0-9-]* [0-9:.]* [A-Z] /netfault_test: /'; }
echo "netfault_test: flat:"
grep "done: selected" "$log" | say
echo "netfault_test: hier:"
grep -E "edge round [0-9]+ (done|skipped)|uploaded the merge" "$edge" | say
grep "done: selected" "$cloud" | say
echo "netfault_test: tbf: flat worker-2 up: $STATS_FLAT_W2"
echo "netfault_test: tbf: hier worker-2 up: $STATS_HIER_W2"
echo "netfault_test: tbf: edge to cloud:    $STATS_EDGE_UP"
echo "netfault_test: tbf: cloud to edge:    $STATS_CLOUD_DOWN"
[[ -z "${NOTE:-}" ]] || echo "netfault_test: note: $NOTE"
echo "netfault_test: PASSED in ${SECONDS} s (flat: coordinator and 3 workers, worker-2 at 64 kbit/s dropped at the 15 s deadline; hier: cloud, edge and 3 workers over a 1 Mbit/s WAN, worker-2 at 64 kbit/s dropped at the edge's 10 s deadline, both cloud rounds merged from 2 workers)"
