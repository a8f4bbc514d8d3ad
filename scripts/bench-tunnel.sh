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
#   KCP_FEC=0:0          kcptun's Reed-Solomon data:parity shards; 0:0 disables FEC, which
#                        coretun does not have either (kcptun's own default is 10:3)
#
# Needs iperf3, kcptun (kcptun-client, kcptun-server) and python3: apt-get install -y iperf3 kcptun
set -u

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
BUILD=${BUILD:-1}
KCP_FEC=${KCP_FEC:-0:0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENGINE=${ENGINE:-$ROOT/target/release/engine}
IDLE_CONNS=0
READY_TIMEOUT=15

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
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

for tool in iperf3 kcptun-client kcptun-server python3 ss; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (apt-get install -y iperf3 kcptun)" >&2
        exit 1
    }
done

TMP=$(mktemp -d -t bench-tunnel.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "bench-tunnel: $*" >&2; }

# A port the kernel reports free right now (tcp or udp); the window until it is bound again is
# short, and every port is chosen before anything is started.
free_port() {
    python3 - "$1" <<'EOF'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

# Waits until something listens on 127.0.0.1:<port> (tcp|udp) without connecting to it (a probe
# connection through a tunnel would reach iperf3 as a bogus test). Fails if <pid> dies first.
wait_listening() {
    local proto=$1 port=$2 pid=$3 flag i
    [ "$proto" = tcp ] && flag=-Htln || flag=-Huln
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [ -n "$(ss $flag "sport = :$port" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    return 1
}

# Waits for `engine ready` in an engine's log; fails if it exits or takes too long.
wait_engine_ready() {
    local logfile=$1 pid=$2 i
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        grep -q "engine ready" "$logfile" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "?"
}

fmt_mib() {
    case "$1" in
    '' | '?') echo "n/a" ;;
    *) awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }' ;;
    esac
}

# One iperf3 run against 127.0.0.1:<port>; prints Gbit/s received, or "failed".
iperf_run() {
    local port=$1 out=$TMP/iperf.json
    if timeout $((SECONDS_PER_RUN + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$SECONDS_PER_RUN" \
        -J --connect-timeout 5000 >"$out" 2>"$TMP/iperf.err"; then
        python3 - "$out" <<'EOF' || echo failed
import json, sys
d = json.load(open(sys.argv[1]))
print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
EOF
    else
        echo failed
    fi
}

IPERF_PORT=$(free_port tcp)
KCP_UDP=$(free_port udp)
KCP_TCP=$(free_port tcp)
ENG_UDP=$(free_port udp)
ENG_TCP=$(free_port tcp)
HOLD_PORT=$(free_port tcp)
HOLD_MAP=$(free_port tcp)

# The 1000 idle connections need 2000 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null

# --- iperf3 server (the target of every tunnel) ---
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$TMP/iperf3-server.log" 2>&1 &
PIDS+=($!)
if ! wait_listening tcp "$IPERF_PORT" "$!"; then
    log "iperf3 server did not start"
    cat "$TMP/iperf3-server.log" >&2
    exit 1
fi

# --- kcptun ---
KCP_KEY=$(python3 -c 'import os, base64; print(base64.b64encode(os.urandom(24)).decode())')
KCP_OPTS=(--key "$KCP_KEY" --crypt aes --mode fast2 --nocomp --mtu 1400
    --sndwnd 4096 --rcvwnd 4096 --ds "${KCP_FEC%%:*}" --ps "${KCP_FEC##*:}" --quiet)
kcptun-server -l "127.0.0.1:$KCP_UDP" -t "127.0.0.1:$IPERF_PORT" "${KCP_OPTS[@]}" \
    >"$TMP/kcptun-server.log" 2>&1 &
KCP_SERVER_PID=$!
PIDS+=($!)
kcptun-client -l "127.0.0.1:$KCP_TCP" -r "127.0.0.1:$KCP_UDP" --conn 1 "${KCP_OPTS[@]}" \
    >"$TMP/kcptun-client.log" 2>&1 &
KCP_CLIENT_PID=$!
PIDS+=($!)
KCP_OK=1
if ! wait_listening udp "$KCP_UDP" "$KCP_SERVER_PID" ||
    ! wait_listening tcp "$KCP_TCP" "$KCP_CLIENT_PID"; then
    log "kcptun: failed to start"
    tail -n 5 "$TMP"/kcptun-*.log >&2
    KCP_OK=0
fi

# --- coretun engines ---
ENG_OK=1
ENG_SERVER_PID=
ENG_CLIENT_PID=
if [ "$BUILD" = 1 ]; then
    log "building the engine (cargo build --release -p engine)"
    if ! (cd "$ROOT" && cargo build --release -p engine >"$TMP/build.log" 2>&1); then
        log "engine build failed:"
        tail -n 20 "$TMP/build.log" >&2
        ENG_OK=0
    fi
fi
if [ "$ENG_OK" = 1 ] && [ ! -x "$ENGINE" ]; then
    log "no engine binary at $ENGINE"
    ENG_OK=0
fi
if [ "$ENG_OK" = 1 ]; then
    ENG_KEY=$("$ENGINE" genkey 2>"$TMP/genkey.err") || ENG_OK=0
    [ -n "${ENG_KEY:-}" ] || ENG_OK=0
    [ "$ENG_OK" = 1 ] || log "engine genkey failed: $(cat "$TMP/genkey.err")"
fi
if [ "$ENG_OK" = 1 ]; then
    cat >"$TMP/server.yaml" <<EOF
listen: 127.0.0.1:$ENG_UDP
key: "$ENG_KEY"
shards: 1
allow:
  - id: 1
    target: 127.0.0.1:$IPERF_PORT
  - id: 2
    target: 127.0.0.1:$HOLD_PORT
control:
  socket: $TMP/server.sock
EOF
    cat >"$TMP/client.yaml" <<EOF
name: client
key: "$ENG_KEY"
shards: 1
peers:
  - name: server
    addr: 127.0.0.1:$ENG_UDP
maps:
  - id: 1
    listen: 127.0.0.1:$ENG_TCP
    peer: server
  - id: 2
    listen: 127.0.0.1:$HOLD_MAP
    peer: server
control:
  socket: $TMP/client.sock
EOF
    "$ENGINE" -c "$TMP/server.yaml" >"$TMP/engine-server.log" 2>&1 &
    ENG_SERVER_PID=$!
    PIDS+=($!)
    if wait_engine_ready "$TMP/engine-server.log" "$ENG_SERVER_PID"; then
        "$ENGINE" -c "$TMP/client.yaml" >"$TMP/engine-client.log" 2>&1 &
        ENG_CLIENT_PID=$!
        PIDS+=($!)
        if ! wait_engine_ready "$TMP/engine-client.log" "$ENG_CLIENT_PID" ||
            ! wait_listening tcp "$ENG_TCP" "$ENG_CLIENT_PID"; then
            log "engine client: failed to start"
            tail -n 5 "$TMP/engine-client.log" >&2
            ENG_OK=0
        fi
    else
        log "engine server: failed to start"
        tail -n 5 "$TMP/engine-server.log" >&2
        ENG_OK=0
    fi
fi

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
    if [ "$ENG_OK" = 1 ] && kill -0 "$ENG_CLIENT_PID" 2>/dev/null &&
        kill -0 "$ENG_SERVER_PID" 2>/dev/null; then
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
median() {
    python3 - "$@" <<'EOF'
import statistics, sys
v = [float(x) for x in sys.argv[1:] if x != "failed"]
print("%.3f" % statistics.median(v) if v else "failed")
EOF
}
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
echo "$(nproc) cores, $(uname -r); kcptun: aes, fast2, nocomp, mtu 1400, wnd 4096, FEC $KCP_FEC"
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
