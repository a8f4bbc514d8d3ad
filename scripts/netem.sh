#!/usr/bin/env bash
# The loss-emulation profiles with the kernel's own `tc netem`, for boxes whose kernel has
# sch_netem (this project's development box does not: there, bench::linkem emulates the same
# links in user space). Impairs both directions of one interface: egress with netem on the
# interface itself, ingress by redirecting it through an ifb device with its own netem.
#
# Usage:
#   scripts/netem.sh list                      the profiles and what they set
#   scripts/netem.sh apply PROFILE DEV         replace DEV's qdiscs with the profile
#   scripts/netem.sh clear DEV                 remove what `apply` added
#   DRY_RUN=1 scripts/netem.sh apply ...       print the tc/ip commands instead of running them
#
# The profiles are lossbench's (bench/src/lossbench/model.rs, same names): each one-way delay is
# half the profile's RTT; the rate is the profile's in each direction; the queue is the
# profile's (one RTT, at least 20 ms) at that rate (netem's limit is in packets: rate x queue /
# 1500 bytes). One difference remains: netem drops lost packets before its rate limit, linkem
# after its bottleneck (a lost packet has used its share of the rate), so on netem a lossy
# profile's capacity is the full rate rather than rate x (1 - loss).
set -euo pipefail

# name | one-way delay | rate | queue in ms | loss (netem syntax)
PROFILES='clean|0ms|200mbit|20|
rtt50|25ms|100mbit|50|
rtt50-1pct|25ms|100mbit|50|loss random 1%
rtt50-5pct|25ms|100mbit|50|loss random 5%
rtt100-10pct|50ms|50mbit|100|loss random 10%
rtt50-burst3pct|25ms|100mbit|50|loss gemodel 1.03% 33.3% 100% 0%'

run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "$*"
    else
        "$@"
    fi
}

profile() {
    local line
    line=$(printf '%s\n' "$PROFILES" | awk -F'|' -v p="$1" '$1 == p')
    if [ -z "$line" ]; then
        echo "netem.sh: unknown profile $1 (see: scripts/netem.sh list)" >&2
        exit 2
    fi
    echo "$line"
}

# Packets in QUEUE_MS at RATE (e.g. 100mbit), at 1500 bytes each; at least 10.
limit_for() {
    local mbit=${1%mbit} queue_ms=$2
    local packets=$((mbit * 1000000 / 8 * queue_ms / 1000 / 1500))
    echo $((packets > 10 ? packets : 10))
}

netem_args() {
    local delay=$1 rate=$2 queue_ms=$3 loss=$4
    echo "delay $delay rate $rate limit $(limit_for "$rate" "$queue_ms") $loss"
}

case "${1:-}" in
list)
    printf '%s\n' "$PROFILES" | awk -F'|' '{printf "%-16s one-way delay %-5s rate %-8s queue %3s ms  %s\n", $1, $2, $3, $4, ($5 == "" ? "no loss" : $5)}'
    ;;
apply)
    [ $# -eq 3 ] || { echo "usage: scripts/netem.sh apply PROFILE DEV" >&2; exit 2; }
    line=$(profile "$2") || exit 2
    IFS='|' read -r _ delay rate queue_ms loss <<<"$line"
    dev=$3
    ifb="ifb-${dev:0:11}"
    args=$(netem_args "$delay" "$rate" "$queue_ms" "$loss")
    run modprobe sch_netem
    run modprobe ifb
    # Egress.
    run tc qdisc replace dev "$dev" root netem $args
    # Ingress: redirect to an ifb device and impair its egress.
    run ip link add "$ifb" type ifb 2>/dev/null || true
    run ip link set "$ifb" up
    run tc qdisc replace dev "$dev" handle ffff: ingress
    run tc filter replace dev "$dev" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev "$ifb"
    run tc qdisc replace dev "$ifb" root netem $args
    ;;
clear)
    [ $# -eq 2 ] || { echo "usage: scripts/netem.sh clear DEV" >&2; exit 2; }
    dev=$2
    ifb="ifb-${dev:0:11}"
    run tc qdisc del dev "$dev" root 2>/dev/null || true
    run tc qdisc del dev "$dev" ingress 2>/dev/null || true
    run ip link del "$ifb" 2>/dev/null || true
    ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
