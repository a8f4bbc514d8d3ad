#!/usr/bin/env bash
# Fuzz smoke run: for every cargo-fuzz target, replay its checked-in seed corpus, then fuzz it
# for FUZZ_SECONDS (default 20) seconds. Catches parsers that panic on inputs we already know
# about, and shallow new crashes, on every test run.
#
# Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz passes.
#
# FUZZ_SANITIZER (default: none) picks cargo-fuzz's sanitizer; FUZZ_SANITIZER=address for ASan
# (its runtime ships with stable rustc on x86_64 Linux). Without one the targets still run with
# overflow checks and debug assertions, and every panic is a crash; what is lost is ASan's
# detection of memory errors in unsafe code, and the fuzzed code is safe Rust (the C in aws-lc
# is not instrumented either way). In exchange the targets that run whole sessions execute three
# to four times as many inputs in the same time, and a cold build takes about 40% less.
#
# Leaves the repository as it found it: inputs the fuzzer finds go to a scratch directory that
# is deleted afterwards. A crash fails the script and keeps its input in fuzz/artifacts/<target>/
# (git-ignored); reproduce it with
#     RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<crash-file>
#
# Every target needs a seed corpus: fuzz/corpus/<target>/ with at least one small input.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fuzz_seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
# Build and run with the same flags, so that `cargo fuzz run` finds everything built. With 16
# codegen units instead of cargo-fuzz's 1 a cold build took 158 s instead of 194 s here, and the
# targets ran as fast.
fuzz_flags=(--fuzz-dir fuzz --sanitizer "$sanitizer" --codegen-units 16)

shopt -s nullglob
sources=(fuzz/fuzz_targets/*.rs)
shopt -u nullglob
if ((${#sources[@]} == 0)); then
    echo "fuzz-smoke: no targets in fuzz/fuzz_targets, nothing to do"
    exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed; run: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

targets=()
while IFS= read -r target; do
    [[ -n $target ]] && targets+=("$target")
done < <(cargo fuzz list --fuzz-dir fuzz)
if ((${#targets[@]} != ${#sources[@]})); then
    echo "fuzz-smoke: fuzz/fuzz_targets has ${#sources[@]} files but fuzz/Cargo.toml declares" \
        "${#targets[@]} targets (${targets[*]}); add a [[bin]] for each target" >&2
    exit 1
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/coretun-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# libFuzzer is chatty (every new coverage feature, a suggested dictionary); keep its output in a
# log and show the end of it only when something fails.
run_logged() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 100 "$log" >&2
        echo "fuzz-smoke: FAILED: $*" >&2
        return 1
    fi
}

# All targets in one cargo invocation: their compilation overlaps on all cores.
start=$SECONDS
run_logged "$scratch/build.log" cargo fuzz build "${fuzz_flags[@]}"
echo "fuzz: built ${#targets[@]} targets (sanitizer: $sanitizer) in $((SECONDS - start)) s"

for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    if ! compgen -G "$corpus/*" >/dev/null; then
        echo "fuzz-smoke: target $target has no seed inputs in $corpus/" >&2
        exit 1
    fi
    mkdir -p "$scratch/$target/corpus"

    start=$SECONDS
    # -runs=0: execute every seed once, mutate nothing, write nothing.
    run_logged "$scratch/$target.replay.log" \
        cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" -- -runs=0
    echo "fuzz $target: replayed $(find "$corpus" -type f | wc -l) seed inputs" \
        "in $((SECONDS - start)) s"

    start=$SECONDS
    # The first corpus directory is where libFuzzer writes new inputs: the scratch one. The
    # checked-in corpus, second, is only read.
    run_logged "$scratch/$target.fuzz.log" \
        cargo fuzz run "${fuzz_flags[@]}" "$target" "$scratch/$target/corpus" "$corpus" -- \
        -max_total_time="$fuzz_seconds" -print_final_stats=1
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.fuzz.log")
    echo "fuzz $target: ${runs:-?} runs in $((SECONDS - start)) s, no crash" \
        "($(find "$scratch/$target/corpus" -type f | wc -l) new inputs discarded)"
done
