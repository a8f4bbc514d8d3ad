#!/usr/bin/env bash
# One TCP stream through a tunnel on loopback, measured with iperf3: directly (the baseline),
# through kcptun and through two coretun engines, interleaved run by run so drifts in machine
# load hit all three alike. Prints a markdown report to stdout; progress goes to stderr.
#
# Usage: scripts/bench-tunnel.sh [--idle-conns [N]]
#   --idle-conns [N]  also read both engines' RSS while N (default 1000) idle TCP connections
#                     are forwarded through them
# Environment:
#   RUNS=3               repetitions of each measurement
#   SECONDS_PER_RUN=10   iperf3 duration (-t)
#   BUILD=1              build the engine first (cargo build --release -p engine); 0 to skip
#   ENGINE=<path>        engine binary (default: target/release/engine)
#   KCP_FEC=0:0          kcptun's Reed-Solomon data:parity shards; 0:0 disables FEC (kcptun's
#                        own default is 10:3). coretun runs its default profile's `fec: adaptive`,
#                        which sends no parity for a bulk transfer.
#
# Needs iperf3, kcptun (kcptun-client, kcptun-server) and python3: apt-get install -y iperf3 kcptun
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_NAME=bench-tunnel
# shellcheck source=scripts/lib-bench.sh
. "$ROOT/scripts/lib-bench.sh"

RUNS=${RUNS:-3}
BUILD=${BUILD:-1}
IDLE_CONNS=0

while [ $# -gt 0 ]; do
    case "$1" in
    --idle-conns)
        IDLE_CONNS=1000
        if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then
            IDLE_CONNS=$2
            shift
        fi
        ;;
    -h | --help)
        bench_help "$0" 17
        exit 0
        ;;
    *) bench_bad_arg "$1" ;;
    esac
    shift
done

bench_init

require_tools iperf3 kcptun-client kcptun-server python3 ss

IPERF_PORT=$(free_port tcp)
HOLD_PORT=$(free_port tcp)
HOLD_MAP=$(free_port tcp)

# The 1000 idle connections need 2000 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null

# --- iperf3 server (the target of every tunnel) ---
start_iperf_server "$IPERF_PORT"

# --- kcptun ---
start_kcptun "$IPERF_PORT"

# --- coretun engines ---
ENG_OK=0
if prepare_engine engine &&
    engine_pair_start eng --target "$IPERF_PORT" --hold "$HOLD_PORT" "$HOLD_MAP"; then
    ENG_OK=1
fi
ENG_TCP=${PAIR_MAP[eng]}
ENG_CLIENT_PID=${PAIR_CLIENT_PID[eng]:-}
ENG_SERVER_PID=${PAIR_SERVER_PID[eng]:-}

# Idle memory, before any traffic.
ENG_RSS_IDLE_CLIENT=
ENG_RSS_IDLE_SERVER=
if [ "$ENG_OK" = 1 ]; then
    sleep 1
    ENG_RSS_IDLE_CLIENT=$(rss_kib "$ENG_CLIENT_PID")
    ENG_RSS_IDLE_SERVER=$(rss_kib "$ENG_SERVER_PID")
fi
KCP_RSS_IDLE_CLIENT=
KCP_RSS_IDLE_SERVER=
if [ "$KCP_OK" = 1 ]; then
    KCP_RSS_IDLE_CLIENT=$(rss_kib "$KCP_CLIENT_PID")
    KCP_RSS_IDLE_SERVER=$(rss_kib "$KCP_SERVER_PID")
fi

# --- the runs, interleaved ---
declare -a R_DIRECT R_KCP R_ENG
for ((run = 1; run <= RUNS; run++)); do
    log "run $run/$RUNS: direct"
    R_DIRECT+=("$(iperf_run "$IPERF_PORT")")
    if [ "$KCP_OK" = 1 ]; then
        log "run $run/$RUNS: kcptun"
        R_KCP+=("$(iperf_run "$KCP_TCP")")
    else
        R_KCP+=(failed)
    fi
    if engine_pair_alive eng; then
        log "run $run/$RUNS: coretun"
        R_ENG+=("$(iperf_run "$ENG_TCP")")
    else
        R_ENG+=(failed)
    fi
done

# --- memory with idle forwarded connections ---
ENG_RSS_CONNS_CLIENT=
ENG_RSS_CONNS_SERVER=
CONNS_NOTE=
if [ "$IDLE_CONNS" -gt 0 ] && [ "$ENG_OK" = 1 ]; then
    log "opening $IDLE_CONNS idle connections through the engines"
    # Holds a listener on HOLD_PORT (the server engine's allow target 2), opens the connections
    # through the client engine's map 2, reports how many arrived end to end, then holds them
    # all until its stdin closes.
    mkfifo "$TMP/hold.in"
    cat >"$TMP/hold.py" <<'EOF'
import resource, socket, sys, threading, time
hold_port, map_port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", hold_port))
srv.listen(4096)
accepted = []
def accept():
    while True:
        try:
            accepted.append(srv.accept()[0])
        except OSError:
            return
threading.Thread(target=accept, daemon=True).start()
clients = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", map_port), timeout=10)
    clients.append(c)
deadline = time.time() + 60
while len(accepted) < n and time.time() < deadline:
    time.sleep(0.05)
print("ready", len(clients), len(accepted), flush=True)
sys.stdin.read()
EOF
    python3 "$TMP/hold.py" "$HOLD_PORT" "$HOLD_MAP" "$IDLE_CONNS" <"$TMP/hold.in" >"$TMP/hold.out" 2>&1 &
    HOLD_PID=$!
    PIDS+=($!)
    exec 7>"$TMP/hold.in"
    for ((i = 0; i < 900; i++)); do
        grep -q "^ready" "$TMP/hold.out" 2>/dev/null && break
        kill -0 "$HOLD_PID" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q "^ready" "$TMP/hold.out"; then
        read -r _ opened arrived <"$TMP/hold.out"
        sleep 2
        ENG_RSS_CONNS_CLIENT=$(rss_kib "$ENG_CLIENT_PID")
        ENG_RSS_CONNS_SERVER=$(rss_kib "$ENG_SERVER_PID")
        CONNS_NOTE="$opened opened, $arrived arrived at the target"
    else
        CONNS_NOTE="failed: $(tail -n 1 "$TMP/hold.out")"
    fi
    exec 7>&-
fi

# --- report ---
M_DIRECT=$(median "${R_DIRECT[@]}")
M_KCP=$(median "${R_KCP[@]}")
M_ENG=$(median "${R_ENG[@]}")
RATIO=$(python3 -c '
import sys
try: print("%.2f" % (float(sys.argv[2]) / float(sys.argv[1])))
except (ValueError, ZeroDivisionError): print("n/a")' "$M_KCP" "$M_ENG")

ENG_LABEL="coretun"
[ "$ENG_OK" = 1 ] || ENG_LABEL="coretun (engine: failed)"
echo "## Single TCP stream on loopback (iperf3, ${SECONDS_PER_RUN} s per run)"
echo
echo "$(machine_line); kcptun: $KCP_DESC"
echo
echo "| run | direct (Gbit/s) | kcptun (Gbit/s) | $ENG_LABEL (Gbit/s) |"
echo "|---|---|---|---|"
for ((i = 0; i < RUNS; i++)); do
    echo "| $((i + 1)) | ${R_DIRECT[$i]} | ${R_KCP[$i]} | ${R_ENG[$i]} |"
done
echo "| **median** | **$M_DIRECT** | **$M_KCP** | **$M_ENG** |"
echo
echo "coretun / kcptun (medians): **$RATIO**"
[ "$ENG_OK" = 1 ] || echo "engine: failed (its log is summarised on stderr)"
echo
echo "| memory (VmRSS) | client | server |"
echo "|---|---|---|"
echo "| kcptun, idle after start | $(fmt_mib "$KCP_RSS_IDLE_CLIENT") | $(fmt_mib "$KCP_RSS_IDLE_SERVER") |"
if [ "$ENG_OK" = 1 ]; then
    echo "| coretun, idle after start | $(fmt_mib "$ENG_RSS_IDLE_CLIENT") | $(fmt_mib "$ENG_RSS_IDLE_SERVER") |"
else
    echo "| coretun, idle after start | engine: failed | engine: failed |"
fi
if [ "$IDLE_CONNS" -gt 0 ]; then
    if [ -n "$ENG_RSS_CONNS_CLIENT" ]; then
        echo "| coretun, $IDLE_CONNS idle connections ($CONNS_NOTE) | $(fmt_mib "$ENG_RSS_CONNS_CLIENT") | $(fmt_mib "$ENG_RSS_CONNS_SERVER") |"
    else
        echo "| coretun, $IDLE_CONNS idle connections | ${CONNS_NOTE:-engine: failed} | |"
    fi
fi
