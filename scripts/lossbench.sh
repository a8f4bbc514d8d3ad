#!/usr/bin/env bash
# The loss-emulation comparison: plain TCP (the kernel's default congestion control, cubic and
# bbr), kcptun and coretun across the same emulated links (bench/src/linkem.rs: two network
# namespaces joined by TUN devices and an impairing relay), measured for goodput (iperf3),
# request/response latency, bytes on the wire and CPU. Writes results.md, results.json and
# SVG plots into bench/results/full (or bench/results/quick).
#
#     scripts/lossbench.sh            # everything: 6 profiles x 6 tunnels, about 13 minutes
#     scripts/lossbench.sh --quick    # 4 profiles x 4 tunnels, short runs, about 2 minutes
#     scripts/lossbench.sh --profiles rtt50-5pct --tunnels tcp-bbr,coretun
#
# Other options go to the lossbench command (target/release/lossbench --help). Needs root;
# installs iperf3, kcptun and iproute2 with apt-get when they are missing, and builds the
# engine and the harness in release mode.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
    echo "lossbench.sh: needs root (network namespaces, TUN devices)" >&2
    exit 1
fi

missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v kcptun-client >/dev/null || missing+=(kcptun)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        echo "lossbench.sh: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    else
        echo "lossbench.sh: missing ${missing[*]}; install them first" >&2
        exit 1
    fi
fi
if [ ! -e /dev/net/tun ]; then
    mkdir -p /dev/net
    mknod /dev/net/tun c 10 200
fi

out=bench/results/full
for arg in "$@"; do
    case "$arg" in
    --quick) out=bench/results/quick ;;
    --out | --out=*) out= ;;
    esac
done

cargo build --release -q -p engine -p bench --bin engine --bin lossbench --bin rr
if [ -n "$out" ]; then
    exec target/release/lossbench --out "$out" "$@"
fi
exec target/release/lossbench "$@"
