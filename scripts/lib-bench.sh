# Shell functions shared by the loopback tunnel benchmarks (bench-tunnel.sh, bench-shards.sh):
# free ports, readiness waits, iperf3 runs, kcptun and coretun engine pairs, medians, and the
# cleanup of every process they start. Source it, set BENCH_NAME and call bench_init (which
# makes TMP, PIDS and the exit trap) once the arguments are parsed.
#
# Inputs (environment, with defaults): SECONDS_PER_RUN=10, KCP_FEC=0:0, READY_TIMEOUT=15,
# ROOT (the repository), ENGINE (engine binary), CTL (ctl binary), KEEP_TMP=0 (1: keep the
# scratch directory with the configs and logs).

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
KCP_FEC=${KCP_FEC:-0:0}
READY_TIMEOUT=${READY_TIMEOUT:-15}
ENGINE=${ENGINE:-$ROOT/target/release/engine}
CTL=${CTL:-$ROOT/target/release/ctl}

# Prints lines 2..<last> of <script> (its header comment) without the comment marks.
bench_help() {
    sed -n "2,${2}p" "$1" | sed 's/^# \{0,1\}//'
}

# Rejects an unknown command-line argument.
bench_bad_arg() {
    echo "unknown argument: $1 (see --help)" >&2
    exit 2
}

# The scratch directory, and the trap that ends every process in PIDS and removes it on exit.
bench_init() {
    TMP=$(mktemp -d -t "$BENCH_NAME.XXXXXX")
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "configs and logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}

log() { echo "$BENCH_NAME: $*" >&2; }

# Fails with a hint unless every named tool is on PATH.
require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "missing $tool (apt-get install -y iperf3 kcptun)" >&2
            exit 1
        }
    done
}

# One line naming the machine: cores, CPU model, kernel.
machine_line() {
    local model
    model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
    echo "$(nproc) cores, ${model:-unknown CPU}, kernel $(uname -r)"
}

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

# One iperf3 run against 127.0.0.1:<port> with [streams] parallel streams (default 1); prints
# Gbit/s received (summed over the streams), or "failed".
iperf_run() {
    local port=$1 streams=${2:-1} out=$TMP/iperf.json
    if timeout $((SECONDS_PER_RUN + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$SECONDS_PER_RUN" \
        -P "$streams" -J --connect-timeout 5000 >"$out" 2>"$TMP/iperf.err"; then
        python3 - "$out" <<'EOF' || echo failed
import json, sys
d = json.load(open(sys.argv[1]))
print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
EOF
    else
        echo failed
    fi
}

# Median of the arguments, ignoring "failed"; "failed" if none is left.
median() {
    python3 - "$@" <<'EOF'
import statistics, sys
v = [float(x) for x in sys.argv[1:] if x != "failed"]
print("%.3f" % statistics.median(v) if v else "failed")
EOF
}

# Starts an iperf3 server on 127.0.0.1:<port>; exits the script if it does not come up.
start_iperf_server() {
    local port=$1
    iperf3 -s -B 127.0.0.1 -p "$port" >"$TMP/iperf3-server-$port.log" 2>&1 &
    PIDS+=($!)
    if ! wait_listening tcp "$port" "$!"; then
        log "iperf3 server did not start"
        cat "$TMP/iperf3-server-$port.log" >&2
        exit 1
    fi
}

# kcptun client and server forwarding 127.0.0.1:KCP_TCP to 127.0.0.1:<target port> over
# 127.0.0.1:KCP_UDP (both chosen here). Sets KCP_OK (1 when both run), KCP_TCP,
# KCP_CLIENT_PID, KCP_SERVER_PID and KCP_DESC (its settings, for reports).
start_kcptun() {
    local target=$1 key
    KCP_UDP=$(free_port udp)
    KCP_TCP=$(free_port tcp)
    key=$(python3 -c 'import os, base64; print(base64.b64encode(os.urandom(24)).decode())')
    local opts=(--key "$key" --crypt aes --mode fast2 --nocomp --mtu 1400
        --sndwnd 4096 --rcvwnd 4096 --ds "${KCP_FEC%%:*}" --ps "${KCP_FEC##*:}" --quiet)
    KCP_DESC="aes, fast2, nocomp, mtu 1400, wnd 4096, FEC $KCP_FEC, --conn 1"
    kcptun-server -l "127.0.0.1:$KCP_UDP" -t "127.0.0.1:$target" "${opts[@]}" \
        >"$TMP/kcptun-server.log" 2>&1 &
    KCP_SERVER_PID=$!
    PIDS+=($!)
    kcptun-client -l "127.0.0.1:$KCP_TCP" -r "127.0.0.1:$KCP_UDP" --conn 1 "${opts[@]}" \
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
}

# Builds the given packages in release mode when BUILD=1 (the default), checks that ENGINE
# exists and makes the shared key ENG_KEY. Returns non-zero (after logging why) on failure.
prepare_engine() {
    if [ "${BUILD:-1}" = 1 ]; then
        local pkgs=() p
        for p in "$@"; do pkgs+=(-p "$p"); done
        log "building (cargo build --release ${pkgs[*]})"
        if ! (cd "$ROOT" && cargo build --release "${pkgs[@]}" >"$TMP/build.log" 2>&1); then
            log "build failed:"
            tail -n 20 "$TMP/build.log" >&2
            return 1
        fi
    fi
    if [ ! -x "$ENGINE" ]; then
        log "no engine binary at $ENGINE"
        return 1
    fi
    ENG_KEY=$("$ENGINE" genkey 2>"$TMP/genkey.err")
    if [ -z "${ENG_KEY:-}" ]; then
        log "engine genkey failed: $(cat "$TMP/genkey.err")"
        return 1
    fi
}

# Starts a coretun server engine and a client engine that dials it, on loopback:
#   engine_pair_start TAG --target PORT [--shards N] [--hold TARGET MAP] [--both YAML]
#                     [--client YAML] [--server YAML]
# Map 1 forwards a fresh client port (PAIR_MAP[TAG]) to 127.0.0.1:PORT; --hold adds map 2 from
# 127.0.0.1:MAP to 127.0.0.1:TARGET. --both/--client/--server append top-level YAML to both
# configs, the client's or the server's. Control sockets: $TMP/TAG-client.sock and
# $TMP/TAG-server.sock. Sets PAIR_OK[TAG] (1 when both are up), PAIR_CLIENT_PID[TAG],
# PAIR_SERVER_PID[TAG]. Needs ENG_KEY (prepare_engine).
declare -A PAIR_OK PAIR_MAP PAIR_CLIENT_PID PAIR_SERVER_PID
engine_pair_start() {
    local tag=$1 target= shards=1 hold_target= hold_map= both= client_extra= server_extra=
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
        --target) target=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --hold) hold_target=$2; hold_map=$3; shift 3 ;;
        --both) both=$2; shift 2 ;;
        --client) client_extra=$2; shift 2 ;;
        --server) server_extra=$2; shift 2 ;;
        *) log "engine_pair_start: unknown argument $1"; return 2 ;;
        esac
    done
    local udp map
    udp=$(free_port udp)
    map=$(free_port tcp)
    PAIR_MAP[$tag]=$map
    PAIR_OK[$tag]=0
    {
        echo "listen: 127.0.0.1:$udp"
        echo "key: \"$ENG_KEY\""
        echo "shards: $shards"
        echo "allow:"
        echo "  - id: 1"
        echo "    target: 127.0.0.1:$target"
        if [ -n "$hold_target" ]; then
            echo "  - id: 2"
            echo "    target: 127.0.0.1:$hold_target"
        fi
        yaml_tail "$TMP/$tag-server.sock" "$both" "$server_extra"
    } >"$TMP/$tag-server.yaml"
    {
        echo "name: client"
        echo "key: \"$ENG_KEY\""
        echo "shards: $shards"
        echo "peers:"
        echo "  - name: server"
        echo "    addr: 127.0.0.1:$udp"
        echo "maps:"
        echo "  - id: 1"
        echo "    listen: 127.0.0.1:$map"
        echo "    peer: server"
        if [ -n "$hold_map" ]; then
            echo "  - id: 2"
            echo "    listen: 127.0.0.1:$hold_map"
            echo "    peer: server"
        fi
        yaml_tail "$TMP/$tag-client.sock" "$both" "$client_extra"
    } >"$TMP/$tag-client.yaml"
    local side
    for side in server client; do
        if ! "$ENGINE" check -c "$TMP/$tag-$side.yaml" >"$TMP/$tag-$side.check" 2>&1; then
            log "engine $tag $side: config rejected: $(tail -n 3 "$TMP/$tag-$side.check")"
            return 1
        fi
    done
    "$ENGINE" -c "$TMP/$tag-server.yaml" >"$TMP/$tag-engine-server.log" 2>&1 &
    PAIR_SERVER_PID[$tag]=$!
    PIDS+=($!)
    if ! wait_engine_ready "$TMP/$tag-engine-server.log" "$!"; then
        log "engine $tag server: failed to start"
        tail -n 5 "$TMP/$tag-engine-server.log" >&2
        return 1
    fi
    "$ENGINE" -c "$TMP/$tag-client.yaml" >"$TMP/$tag-engine-client.log" 2>&1 &
    PAIR_CLIENT_PID[$tag]=$!
    PIDS+=($!)
    if ! wait_engine_ready "$TMP/$tag-engine-client.log" "$!" ||
        ! wait_listening tcp "$map" "$!"; then
        log "engine $tag client: failed to start"
        tail -n 5 "$TMP/$tag-engine-client.log" >&2
        return 1
    fi
    PAIR_OK[$tag]=1
}

# The end of an engine config: its control socket, then the extra top-level YAML given.
yaml_tail() {
    local sock=$1 extra
    shift
    echo "control:"
    echo "  socket: $sock"
    for extra in "$@"; do
        [ -z "$extra" ] || echo "$extra"
    done
}

# Whether both engines of pair TAG still run.
engine_pair_alive() {
    [ "${PAIR_OK[$1]:-0}" = 1 ] && kill -0 "${PAIR_CLIENT_PID[$1]}" 2>/dev/null &&
        kill -0 "${PAIR_SERVER_PID[$1]}" 2>/dev/null
}
