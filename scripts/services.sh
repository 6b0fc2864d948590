#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/bench.sh: what installs the real services they run on
# loopback, when missing, so that either works on a fresh Debian machine. Nothing here starts a
# service; the tests and examples/bench_services.rs start private instances on free ports.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# True when Debian's ClickHouse server is not installed.
clickhouse_missing() {
    ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ]
}

# Install Debian packages (one apt-get run for all of them); nothing when given none.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    echo "==> installing $* (Debian packages)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# Build the tansu Kafka-protocol broker from crates.io when missing (once per machine: 15-25 minutes
# on 2 cores), and export KCAUDIT_TANSU, the binary the tests and benchmarks start.
ensure_tansu() {
    local tansu="${KCAUDIT_TANSU:-$HOME/.cache/kcaudit/tansu/bin/tansu}"
    if [ ! -x "$tansu" ]; then
        echo "==> building the tansu Kafka-protocol broker (once per machine; cached in ~/.cache/kcaudit/tansu)"
        cargo install tansu --version 0.6.0 --features dynostore --root "$HOME/.cache/kcaudit/tansu" --locked
        tansu="$HOME/.cache/kcaudit/tansu/bin/tansu"
    fi
    export KCAUDIT_TANSU="$tansu"
}

# Export KCAUDIT_CLICKHOUSE_SERVER, the ClickHouse server binary (installed by apt_install).
clickhouse_server_path() {
    KCAUDIT_CLICKHOUSE_SERVER="$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"
    export KCAUDIT_CLICKHOUSE_SERVER
}
