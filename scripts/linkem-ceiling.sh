#!/usr/bin/env bash
# The link emulator's own ceiling and timing: one iperf3 TCP stream (the kernel's default
# congestion control) from namespace A to namespace B through `linkem`, with the given
# impairment options, RUNS times; prints iperf3's goodput and retransmits, and the emulator's
# counters per direction (late_releases: packets released more than 1 ms after their time).
#
# Usage: scripts/linkem-ceiling.sh [linkem options...]     e.g. --rate 200mbit
# Environment: RUNS=3, SECS=8 (iperf3 -t), BUILD=1 (cargo build --release -p bench first).
# Needs root, iproute2, iperf3 and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-8}
if [ "${BUILD:-1}" = 1 ]; then
    cargo build --release -q -p bench --bin linkem
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/linkem-ceiling.XXXXXX")
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$scratch"
}
trap cleanup EXIT
echo "linkem $*: $(nproc) cores, $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
for run in $(seq "$RUNS"); do
    target/release/linkem "$@" >"$scratch/names" 2>"$scratch/counters" &
    pid=$!
    for _ in $(seq 50); do
        [ "$(wc -l <"$scratch/names")" -ge 2 ] && break
        sleep 0.1
    done
    a=$(awk '/namespace-a/{print $2}' "$scratch/names")
    b=$(awk '/namespace-b/{print $2}' "$scratch/names")
    ip netns exec "$b" iperf3 -s -1 -D -B 10.201.0.2 >/dev/null
    sleep 0.3
    result=$(timeout $((SECS + 30)) ip netns exec "$a" iperf3 -c 10.201.0.2 -t "$SECS" -J |
        python3 -c 'import json, sys
d = json.load(sys.stdin)["end"]
print("%.0f Mbit/s, %d retransmits" % (d["sum_received"]["bits_per_second"] / 1e6,
                                       d["sum_sent"].get("retransmits", 0)))')
    kill "$pid"
    wait "$pid" || true
    pid=
    echo "run $run: $result"
    sed 's/^/    /' "$scratch/counters"
done
