#!/usr/bin/env bash
# Run every test of the workspace: unit tests, the wire corpus replay, and the multi-node tests in
# tests/ that start real `mirrorkit` processes on a real FUSE mount.
#
# Those start the binary that cargo builds next to the test executables, and `cargo test` alone
# does not build it (it builds the package's unit-test harness, not the binary): hence this script.
# Tests that need root and /dev/fuse skip with a printed reason when run without them, except when
# CI is set, where they fail.
#
# Extra arguments go to the test runner: ./test.sh --no-fail-fast, ./test.sh basic_operations, ...
set -euo pipefail
cd "$(dirname "$0")"

cargo build --bin mirrorkit --bin mirrorkit-demo-app
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace "$@"
fi
echo "test.sh: cargo-nextest not found, using cargo test (cargo install cargo-nextest for a faster, per-test-process run)" >&2
exec cargo test --workspace "$@"
