#!/usr/bin/env bash
# Aggregate goodput of parallel TCP streams (iperf3 -P) through two coretun engines on loopback
# for several shard counts (both engines with the same count), against kcptun, interleaved run
# by run so drifts in machine load hit every set-up alike. Besides goodput it reports, from
# `ctl stats --json` and /proc deltas over each run, the datagrams each shard sent and received
# per second, the forwarded connections each shard took, and each shard thread's CPU use.
# Prints a markdown report to stdout; progress goes to stderr.
#
# Usage: scripts/bench-shards.sh [--gso-compare | --fec-compare | --stats-compare] [-h|--help]
#   (default)      one set-up per entry of SHARDS, plus kcptun, STREAMS parallel streams
#   --gso-compare  one shard each; io_uring with GSO/GRO, io_uring without, epoll with GSO,
#                  epoll without (`io: {backend: ..., gso: ...}`), for 1 and 8 streams
#   --fec-compare  one shard each; `fec: off`, `fec: adaptive` and fixed 10+3 on the clean
#                  loopback: what FEC costs the data path when there is no loss to repair
#   --stats-compare  one engine pair, one shard each; runs without and with a `ctl stats
#                  --watch` (every second) against the client engine, alternating: what
#                  answering stats costs the data path
# Environment:
#   SHARDS="1 2"         shard counts to compare (default mode); e.g. "1 2 4 8" on a bigger box
#   STREAMS=8            iperf3 -P; a list ("1 8") runs each; --gso-compare defaults to "1 8"
#   RUNS=3               repetitions of each measurement
#   SECONDS_PER_RUN=10   iperf3 duration (-t); packet and CPU rates are per this many seconds
#   KCPTUN=1             also measure kcptun (default 0 with the --*-compare modes)
#   SPLIT=0              1: for each shard count S with 2S <= nproc also a set-up with the client
#                        engine's shards on CPUs 0..S-1 and the server's on S..2S-1 (by default
#                        both engines put shard i on CPU i, so they share cores)
#   CLIENT_YAML, SERVER_YAML, BOTH_YAML
#                        extra top-level YAML for the client, server or both engine configs of
#                        every set-up (e.g. CLIENT_YAML='cpus: [0]' SERVER_YAML='cpus: [1]')
#   BUILD=1              build first (cargo build --release -p engine -p ctl); 0 to skip
#   ENGINE=<path>, CTL=<path>  binaries (default: target/release/engine, target/release/ctl)
#   KCP_FEC=0:0          kcptun's Reed-Solomon data:parity shards (0:0: no FEC, like coretun)
#   KEEP_TMP=0           1: keep the scratch directory (configs, engine logs) and say where
#
# Needs iperf3, kcptun (kcptun-client, kcptun-server) and python3: apt-get install -y iperf3 kcptun
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_NAME=bench-shards
# shellcheck source=scripts/lib-bench.sh
. "$ROOT/scripts/lib-bench.sh"

MODE=shards
while [ $# -gt 0 ]; do
    case "$1" in
    --gso-compare) MODE=gso ;;
    --fec-compare) MODE=fec ;;
    --stats-compare) MODE=stats ;;
    -h | --help)
        bench_help "$0" 33
        exit 0
        ;;
    *) bench_bad_arg "$1" ;;
    esac
    shift
done

RUNS=${RUNS:-3}
BUILD=${BUILD:-1}
SHARDS=${SHARDS:-1 2}
if [ "$MODE" != shards ]; then
    STREAMS=${STREAMS:-1 8}
    KCPTUN=${KCPTUN:-0}
else
    STREAMS=${STREAMS:-8}
    KCPTUN=${KCPTUN:-1}
fi
CLIENT_YAML=${CLIENT_YAML:-}
SERVER_YAML=${SERVER_YAML:-}
BOTH_YAML=${BOTH_YAML:-}
SPLIT=${SPLIT:-0}

bench_init

require_tools iperf3 python3 ss
[ "$KCPTUN" = 0 ] || require_tools kcptun-client kcptun-server

# The measurement helpers: snapshots of both engines' counters and shard threads' CPU time,
# one result record per run, and the report.
cat >"$TMP/bench.py" <<'EOF'
import json, os, statistics, subprocess, sys

TICK = os.sysconf("SC_CLK_TCK")
COUNTERS = ("packets_sent", "packets_received", "bytes_sent", "bytes_received",
            "connections_accepted", "connections_handed_over", "packets_lost",
            "packets_handed_over", "sessions")

def tasks(pid, name):
    """(thread name, contents of /proc/pid/task/*/name) for each thread of process pid."""
    task = "/proc/%s/task" % pid
    for tid in os.listdir(task):
        try:
            yield (open("%s/%s/comm" % (task, tid)).read().strip(),
                   open("%s/%s/%s" % (task, tid, name)).read())
        except OSError:
            continue

def threads(pid):
    """CPU ticks (user + system) per thread name of process pid."""
    out = {}
    for comm, stat in tasks(pid, "stat"):
        fields = stat[stat.rindex(")") + 2:].split()
        out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out

def stats(ctl, sock):
    d = json.loads(subprocess.run([ctl, "-s", sock, "stats", "--json"], check=True,
                                  capture_output=True, text=True).stdout)
    shards = d.get("per_shard") or [d]
    return [{k: s.get(k, 0) for k in COUNTERS} for s in shards]

def snap(out, ctl, *sides):
    # sides: name sock pid, repeated
    res = {}
    for i in range(0, len(sides), 3):
        name, sock, pid = sides[i:i + 3]
        res[name] = {"shards": stats(ctl, sock), "threads": threads(pid)}
    json.dump(res, open(out, "w"))

def record(results, variant, streams, run, gbps, secs, before=None, after=None):
    rec = {"variant": variant, "streams": int(streams), "run": int(run),
           "gbps": None if gbps == "failed" else float(gbps)}
    if before and after:
        secs = float(secs)
        b, a = json.load(open(before)), json.load(open(after))
        for side in a:
            shards = []
            for i, (sa, sb) in enumerate(zip(a[side]["shards"], b[side]["shards"])):
                d = {k: sa[k] - sb[k] for k in COUNTERS}
                d["sessions"] = sa["sessions"]  # a gauge: its value at the end of the run
                name = "shard-%d" % i
                ticks = a[side]["threads"].get(name, 0) - b[side]["threads"].get(name, 0)
                d["cpu"] = ticks / TICK / secs
                shards.append(d)
            rec[side] = {"shards": shards, "secs": secs}
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")

def placement(log, pid):
    """What the engine really runs: its backend (from its `engine ready` log line) and the CPUs
    each shard thread may run on."""
    backend = "?"
    for line in open(log, errors="replace"):
        if "engine ready" in line and 'backend="' in line:
            backend = line.split('backend="', 1)[1].split('"', 1)[0]
    cpus = {}
    for comm, status in tasks(pid, "status"):
        if comm.startswith("shard-"):
            allowed = [l.split(":", 1)[1].strip() for l in status.splitlines()
                       if l.startswith("Cpus_allowed_list:")]
            cpus[int(comm[6:])] = allowed[0] if allowed else "?"
    print("%s, shard CPUs %s" % (backend, " / ".join(cpus[i] for i in sorted(cpus))))

def rate(x):
    if x >= 1e6:
        return "%.2f M" % (x / 1e6)
    return "%.0f k" % (x / 1e3)

def spread(v):
    return "%.3f (%.3f-%.3f)" % (statistics.median(v), min(v), max(v)) if v else "failed"

def report(results, labels_json, kcp):
    labels = json.loads(labels_json)  # [[tag, label], ...]
    kcp = kcp == "1"
    recs = [json.loads(l) for l in open(results)]
    for streams in sorted({r["streams"] for r in recs}):
        rs = [r for r in recs if r["streams"] == streams]
        def gb(tag):
            return [r["gbps"] for r in rs if r["variant"] == tag and r["gbps"] is not None]
        med = {t: statistics.median(gb(t)) if gb(t) else None for t, _ in labels + [["kcptun", ""]]}
        base_tag, base_label = labels[0]
        print("#### %d parallel stream%s (iperf3 -P %d)" % (streams, "s" * (streams > 1), streams))
        print()
        head = "| set-up | goodput Gbit/s, median (min-max) | runs (packets the sender's ARQ declared lost) | vs %s |" % base_label
        sep = "|---|---|---|---|"
        if kcp:
            head += " vs kcptun |"
            sep += "---|"
        print(head)
        print(sep)
        for tag, label in labels + ([["kcptun", "kcptun"]] if kcp else []):
            v = gb(tag)
            def one(r):
                if r["gbps"] is None:
                    return "failed"
                lost = sum(s["packets_lost"] for s in r["client"]["shards"]) if "client" in r else 0
                return "%.3f" % r["gbps"] + (" (%d lost)" % lost if lost else "")
            runs = " / ".join(one(r) for r in rs if r["variant"] == tag)
            def ratio(other):
                if med.get(tag) is None or not med.get(other):
                    return "n/a"
                return "%.2f" % (med[tag] / med[other])
            row = "| %s | %s | %s | %s |" % (label, spread(v), runs,
                                            "1.00" if tag == base_tag else ratio(base_tag))
            if kcp:
                row += " %s |" % ratio("kcptun")
            print(row)
        print()
        print("Per shard, medians over the runs (sender = the engine iperf3's data enters, "
              "receiver = the one that delivers it; datagrams/s over the %g s of each run):"
              % rs[0].get("client", {}).get("secs", 0))
        print()
        print("| set-up | sender datagrams sent/s: sum (per shard) | receiver datagrams "
              "received/s (per shard) | receiver ACK datagrams/s | bytes/datagram | "
              "sessions per shard, sender / receiver | connections per shard (sender) | shard CPU, sender / receiver | sender "
              "datagrams per shard CPU-second |")
        print("|---|---|---|---|---|---|---|---|---|")
        for tag, label in labels:
            runs = [r for r in rs if r["variant"] == tag and "client" in r]
            if not runs:
                print("| %s | failed | | | | | | | |" % label)
                continue
            n = len(runs[0]["client"]["shards"])
            def per(side, key, div=True):
                return [statistics.median(
                    r[side]["shards"][i][key] / (r[side]["secs"] if div else 1) for r in runs)
                    for i in range(n)]
            sent = per("client", "packets_sent")
            recv = per("server", "packets_received")
            acks = per("server", "packets_sent")
            conns = per("client", "connections_accepted", div=False)
            moved = per("client", "connections_handed_over", div=False)
            sess_c = per("client", "sessions", div=False)
            sess_s = per("server", "sessions", div=False)
            cpu_c = per("client", "cpu", div=False)
            cpu_s = per("server", "cpu", div=False)
            byts = statistics.median(
                sum(s["bytes_sent"] for s in r["client"]["shards"]) /
                max(1, sum(s["packets_sent"] for s in r["client"]["shards"])) for r in runs)
            eff = [s / c if c > 0 else 0 for s, c in zip(sent, cpu_c)]
            lost = statistics.median(sum(s["packets_lost"] for s in r["client"]["shards"])
                                     for r in runs)
            handed = statistics.median(
                sum(s["packets_handed_over"] for side in ("client", "server")
                    for s in r[side]["shards"]) for r in runs)
            print("| %s | %s (%s) | %s (%s) | %s | %.0f | %s / %s | %s | %s / %s | %s |" % (
                label, rate(sum(sent)), " + ".join(rate(x) for x in sent),
                rate(sum(recv)), " + ".join(rate(x) for x in recv),
                rate(sum(acks)), byts, " + ".join("%.0f" % c for c in sess_c),
                " + ".join("%.0f" % c for c in sess_s),
                " + ".join("%.0f" % c + (" (%.0f handed over)" % m if m else "")
                           for c, m in zip(conns, moved)),
                " + ".join("%.0f%%" % (100 * c) for c in cpu_c),
                " + ".join("%.0f%%" % (100 * c) for c in cpu_s),
                " + ".join(rate(x) for x in eff)))
            if lost or handed:
                print("|  | (median per run: %d packets lost, %d datagrams handed over) |"
                      " | | | | | | |" % (lost, handed))
        print()

cmd = sys.argv[1]
if cmd == "snap":
    snap(*sys.argv[2:])
elif cmd == "record":
    record(*sys.argv[2:])
elif cmd == "placement":
    placement(*sys.argv[2:])
elif cmd == "report":
    report(*sys.argv[2:])
EOF

bench() { python3 "$TMP/bench.py" "$@"; }

# --- the set-ups: tag, label, engine_pair_start arguments ---
TAGS=()
declare -A LABEL ARGS SPLIT_CLIENT SPLIT_SERVER
if [ "$MODE" = gso ]; then
    add_setup() { TAGS+=("$1"); LABEL[$1]=$2; ARGS[$1]="io: { backend: $3, gso: $4 }"; }
    add_setup uring-gso "io_uring, GSO/GRO on" io_uring true
    add_setup uring-nogso "io_uring, GSO/GRO off" io_uring false
    add_setup epoll-gso "epoll, GSO/GRO on" epoll true
    add_setup epoll-nogso "epoll, GSO/GRO off" epoll false
elif [ "$MODE" = fec ]; then
    add_fec() { TAGS+=("$1"); LABEL[$1]=$2; ARGS[$1]=$3; }
    add_fec fec-off "FEC off" "fec: off"
    add_fec fec-adaptive "FEC adaptive" "fec: adaptive"
    add_fec fec-fixed "FEC fixed 10+3" "fec: { mode: fixed, data: 10, parity: 3 }"
elif [ "$MODE" = stats ]; then
    # One engine pair; its runs are recorded as two variants (see VARIANTS below).
    TAGS+=(stats)
    LABEL[stats]="one shard each"
    ARGS[stats]=""
else
    for s in $SHARDS; do
        TAGS+=("s$s")
        if [ "$s" = 1 ]; then LABEL[s$s]="1 shard"; else LABEL[s$s]="$s shards"; fi
        if [ "$SPLIT" = 1 ] && [ $((2 * s)) -le "$(nproc)" ]; then
            TAGS+=("x$s")
            LABEL[x$s]="${LABEL[s$s]}, engines on separate CPUs"
            SPLIT_CLIENT[x$s]="cpus: \"0-$((s - 1))\""
            SPLIT_SERVER[x$s]="cpus: \"$s-$((2 * s - 1))\""
        fi
    done
fi

IPERF_PORT=$(free_port tcp)
start_iperf_server "$IPERF_PORT"

KCP_OK=0
if [ "$KCPTUN" != 0 ]; then
    start_kcptun "$IPERF_PORT"
fi

[ -x "$CTL" ] || [ "$BUILD" = 1 ] || {
    log "no ctl binary at $CTL"
    exit 1
}
prepare_engine engine ctl || exit 1
for tag in "${TAGS[@]}"; do
    if [ "$MODE" != shards ]; then
        both="${ARGS[$tag]}"$'\n'"$BOTH_YAML"
        shards=1
    else
        both=$BOTH_YAML
        shards=${tag#[sx]}
    fi
    log "starting engines: ${LABEL[$tag]}"
    engine_pair_start "$tag" --target "$IPERF_PORT" --shards "$shards" --both "$both" \
        --client "$CLIENT_YAML"$'\n'"${SPLIT_CLIENT[$tag]:-}" \
        --server "$SERVER_YAML"$'\n'"${SPLIT_SERVER[$tag]:-}" || log "${LABEL[$tag]}: not measured"
done

# What each set-up really runs (a config key the engine accepts but does not apply shows here).
PLACEMENT=$TMP/placement.md
: >"$PLACEMENT"
for tag in "${TAGS[@]}"; do
    engine_pair_alive "$tag" || continue
    echo "- ${LABEL[$tag]}: client $(bench placement "$TMP/$tag-engine-client.log" \
        "${PAIR_CLIENT_PID[$tag]}"); server $(bench placement "$TMP/$tag-engine-server.log" \
        "${PAIR_SERVER_PID[$tag]}")" >>"$PLACEMENT"
done

# --- the runs, interleaved ---
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
for ((run = 1; run <= RUNS; run++)); do
    for p in $STREAMS; do
        for tag in "${TAGS[@]}"; do
            variants=("$tag")
            if [ "$MODE" = stats ]; then
                # Alternate which goes first, so neither always follows the other.
                if [ $((run % 2)) = 1 ]; then variants=(quiet watched); else variants=(watched quiet); fi
            fi
            for variant in "${variants[@]}"; do
                if ! engine_pair_alive "$tag"; then
                    bench record "$RESULTS" "$variant" "$p" "$run" failed 0
                    continue
                fi
                log "run $run/$RUNS, -P $p: ${LABEL[$variant]:-${LABEL[$tag]}}"
                sides=(client "$TMP/$tag-client.sock" "${PAIR_CLIENT_PID[$tag]}"
                    server "$TMP/$tag-server.sock" "${PAIR_SERVER_PID[$tag]}")
                if ! bench snap "$TMP/before.json" "$CTL" "${sides[@]}" 2>"$TMP/snap.err"; then
                    log "ctl stats failed: $(tail -n 1 "$TMP/snap.err")"
                    bench record "$RESULTS" "$variant" "$p" "$run" "$(iperf_run "${PAIR_MAP[$tag]}" "$p")" 0
                    continue
                fi
                WATCH_PID=
                if [ "$variant" = watched ]; then
                    "$CTL" -s "$TMP/$tag-client.sock" stats --watch >"$TMP/watch.out" 2>&1 &
                    WATCH_PID=$!
                fi
                gbps=$(iperf_run "${PAIR_MAP[$tag]}" "$p")
                if [ -n "$WATCH_PID" ]; then
                    kill "$WATCH_PID" 2>/dev/null
                    wait "$WATCH_PID" 2>/dev/null
                    # One line per sample after the header: the watcher really ran.
                    log "ctl stats --watch took $(($(wc -l <"$TMP/watch.out") - 1)) samples"
                fi
                if bench snap "$TMP/after.json" "$CTL" "${sides[@]}" 2>"$TMP/snap.err"; then
                    bench record "$RESULTS" "$variant" "$p" "$run" "$gbps" "$SECONDS_PER_RUN" \
                        "$TMP/before.json" "$TMP/after.json"
                else
                    bench record "$RESULTS" "$variant" "$p" "$run" "$gbps" 0
                fi
            done
        done
        if [ "$KCP_OK" = 1 ]; then
            log "run $run/$RUNS, -P $p: kcptun"
            bench record "$RESULTS" kcptun "$p" "$run" "$(iperf_run "$KCP_TCP" "$p")" 0
        elif [ "$KCPTUN" != 0 ]; then
            bench record "$RESULTS" kcptun "$p" "$run" failed 0
        fi
    done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ---
if [ "$MODE" = stats ]; then
    LABEL[quiet]="without ctl"
    LABEL[watched]="with \`ctl stats --watch\` on the client engine"
    TAGS=(quiet watched)
fi
LABELS=$(for tag in "${TAGS[@]}"; do printf '%s\t%s\n' "$tag" "${LABEL[$tag]}"; done |
    python3 -c 'import json, sys; print(json.dumps([l.rstrip("\n").split("\t") for l in sys.stdin]))')
if [ "$MODE" = gso ]; then
    echo "### GSO/GRO and I/O backend, one shard per engine (iperf3, ${SECONDS_PER_RUN} s per run)"
elif [ "$MODE" = fec ]; then
    echo "### FEC settings on a clean loopback, one shard per engine (iperf3, ${SECONDS_PER_RUN} s per run)"
elif [ "$MODE" = stats ]; then
    echo "### ctl stats cost: one engine pair, one shard each, with and without \`ctl stats --watch\` (iperf3, ${SECONDS_PER_RUN} s per run)"
else
    echo "### Shards: parallel TCP streams through two engines (iperf3, ${SECONDS_PER_RUN} s per run)"
fi
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(machine_line); $RUNS runs per set-up, interleaved;"
echo "load average $LOAD_BEFORE before the runs, $LOAD_AFTER after."
[ "$KCPTUN" = 0 ] || echo "kcptun: ${KCP_DESC:-not started}"
[ -z "$CLIENT_YAML$SERVER_YAML$BOTH_YAML" ] ||
    echo "extra config: client \`${CLIENT_YAML:-}\`, server \`${SERVER_YAML:-}\`, both \`${BOTH_YAML:-}\`"
echo
echo "Engines as running (backend from their log, CPUs each shard thread may use):"
echo
cat "$PLACEMENT"
echo
KCP_COLUMN=1
[ "$KCPTUN" != 0 ] || KCP_COLUMN=0
bench report "$RESULTS" "$LABELS" "$KCP_COLUMN"
