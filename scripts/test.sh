#!/usr/bin/env bash
# THE test command, for people and for CI (.ci/run ends by running it):
# formatting, lints, every test in the workspace, the engine's integration suite again on the
# epoll backend and again with two shards per engine, then a short fuzz run of every fuzz target.
#
# FUZZ_SECONDS=N sets how long each fuzz target runs (default 20).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
    printf '\n==== %s\n' "$*"
}

started=$SECONDS
step() {
    local name=$1
    shift
    section "$name"
    local start=$SECONDS
    "$@"
    printf '==== %s: ok in %d s\n' "$name" $((SECONDS - start))
}

step "format" cargo fmt --all -- --check
# The fuzz crate is a workspace of its own, so `--all` above does not reach it.
step "format (fuzz)" cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
step "clippy" cargo clippy --workspace --all-targets -- -D warnings
step "tests" cargo test --workspace
# The integration tests are written once; the harness picks the backend and shard count up
# from the environment, so the same suite proves both backends and the multi-shard paths.
step "integration tests, epoll backend" env CORETUN_TEST_BACKEND=epoll cargo test -p engine --tests
step "integration tests, two shards" env CORETUN_TEST_SHARDS=2 cargo test -p engine --tests
step "fuzz smoke" scripts/fuzz-smoke.sh

section "all checks passed in $((SECONDS - started)) s"
