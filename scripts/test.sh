#!/usr/bin/env bash
# The one test command: installs and starts what the tests need, then runs the whole suite.
# Today the suite needs only the Rust toolchain: every test runs against real loopback HTTP and real
# files. Later capabilities add their services here (ClickHouse, a Kafka broker, rsyslog, chdb), and a
# test that needs a service fails (never skips) when that service is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo is not installed; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

echo "==> cargo test (all unit, integration and property tests)"
cargo test --locked --all-targets -- --color never
