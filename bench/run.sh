#!/usr/bin/env bash
# Runs every criterion bench of this crate RUNS times (default 3) and prints, per bench, the
# median time per iteration of each run, the median over the runs, and the packet rate it means.
# The machine is shared and noisy; the median of several runs is what BENCHMARKS.md reports.
#
#     bench/run.sh                      # all benches, 3 runs, 2 s warm-up, 5 s measurement
#     RUNS=5 MEASURE=10 bench/run.sh session_path
#
# Extra arguments are criterion filters. Each run is saved as criterion baseline `runN`
# (target/criterion/<bench>/runN/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${RUNS:-3}
warmup=${WARMUP:-2}
measure=${MEASURE:-5}

cargo bench -p bench --no-run
for i in $(seq 1 "$runs"); do
    echo "==== run $i of $runs"
    cargo bench -p bench -- --warm-up-time "$warmup" --measurement-time "$measure" \
        --save-baseline "run$i" "$@" 2>&1 | grep -E '^[a-z_/0-9]+ *time:|^ +time:|^[a-z_/0-9]+$'
done

python3 - "$runs" <<'PY'
import glob, json, os, statistics, sys

runs = int(sys.argv[1])
rows = {}
for i in range(1, runs + 1):
    for path in glob.glob(f"target/criterion/**/run{i}/benchmark.json", recursive=True):
        d = os.path.dirname(path)
        meta = json.load(open(path))
        est = json.load(open(os.path.join(d, "estimates.json")))
        rows.setdefault(meta["full_id"], (meta["throughput"], {}))[1][i] = est["median"]["point_estimate"]

print()
print(f"{'bench':40} {'runs: median ns/iter':>36} {'median':>10} {'per packet':>11} {'packets/s':>11}")
for name in sorted(rows):
    throughput, by_run = rows[name]
    times = [by_run[i] for i in sorted(by_run)]
    med = statistics.median(times)
    packets = (throughput or {}).get("Elements", 1)
    extra = ""
    if throughput and "Bytes" in throughput:
        extra = f"  {throughput['Bytes'] / med:.2f} GB/s"
    print(f"{name:40} {' / '.join(f'{t:.1f}' for t in times):>36} {med:10.1f} "
          f"{med / packets:9.1f}ns {packets / med * 1e3:9.3f}M{extra}")
PY
