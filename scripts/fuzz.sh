#!/usr/bin/env bash
# Fuzz every decoder and the webhook request path for a bounded time (cargo-fuzz + libFuzzer).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 10 s each, every target
#
# Installs what it needs when missing: the nightly toolchain (rustup, minimal profile) and cargo-fuzz.
# Builds once into ${KCAUDIT_FUZZ_TARGET:-~/.cache/kcaudit/fuzz-target} (shared by every clone; the
# first build takes 15-20 minutes on 2 cores, a rebuild after a change in src/ a few minutes). Each
# target starts from its committed seeds (fuzz/corpus/<target>/, never written to). Runs of 60 s or
# more also start from, and add to, what earlier long runs discovered
# (${KCAUDIT_FUZZ_CORPUS:-~/.cache/kcaudit/fuzz-corpus}/<target>/); shorter runs use a throw-away
# directory, so their time stays bounded (replaying a grown corpus alone takes longer than a few
# seconds). Set KCAUDIT_FUZZ_CORPUS to use a persistent corpus for short runs too.
#
# Exits non-zero if any target crashed, timed out (-timeout=10 s per input) or went over 2 GB RSS, and
# prints the crashing input's path (fuzz/artifacts/<target>/...). What to do with it: fuzz/README.md.
# Extra libFuzzer flags: KCAUDIT_FUZZ_ARGS="-jobs=2 -workers=2" (long runs; see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
[ $# -gt 0 ] && shift
case "$secs" in '' | *[!0-9]*) echo "scripts/fuzz.sh: SECONDS_PER_TARGET must be a whole number, got '$secs'" >&2; exit 2 ;; esac

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v rustup >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: rustup is needed for the nightly toolchain cargo-fuzz uses (https://rustup.rs)" >&2
    exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "==> installing the nightly toolchain (cargo-fuzz needs -Z flags; minimal profile)"
    if ! rustup toolchain install nightly --profile minimal; then
        echo "scripts/fuzz.sh: could not install the nightly toolchain; fuzzing needs it (rustup toolchain install nightly)" >&2
        exit 1
    fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (once per machine)"
    cargo +stable install cargo-fuzz --version 0.13.2 --locked
fi

cache="$HOME/.cache/kcaudit"
export CARGO_TARGET_DIR="${KCAUDIT_FUZZ_TARGET:-$cache/fuzz-target}"
logs="$cache/fuzz-logs"
if [ -n "${KCAUDIT_FUZZ_CORPUS:-}" ] || [ "$secs" -ge 60 ]; then
    corpus_root="${KCAUDIT_FUZZ_CORPUS:-$cache/fuzz-corpus}"
else
    corpus_root=$(mktemp -d "${TMPDIR:-/tmp}/kcaudit-fuzz-corpus.XXXXXX")
    trap 'rm -rf "$corpus_root"' EXIT
fi
mkdir -p "$CARGO_TARGET_DIR" "$corpus_root" "$logs"

# Release build with debug assertions and overflow checks. No sanitizer: kcaudit has no unsafe code,
# so AddressSanitizer would only slow every target down (use -s address by hand if that changes).
flags=(--release --debug-assertions --sanitizer none --target-dir "$CARGO_TARGET_DIR")

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "==> building the fuzz targets (${targets[*]}) into $CARGO_TARGET_DIR"
build_start=$SECONDS
cargo +nightly fuzz build "${flags[@]}" >"$logs/build.log" 2>&1 || { tail -n 40 "$logs/build.log" >&2; echo "scripts/fuzz.sh: build failed (full log: $logs/build.log)" >&2; exit 1; }
echo "    built in $((SECONDS - build_start)) s"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$corpus_root/$t" "fuzz/artifacts/$t"
    before=$(ls -1 "fuzz/artifacts/$t" | wc -l)
    log="$logs/$t.log"
    # shellcheck disable=SC2086  # KCAUDIT_FUZZ_ARGS is a list of flags
    if cargo +nightly fuzz run "${flags[@]}" "$t" "$corpus_root/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -dict=fuzz/kcaudit.dict -print_final_stats=1 \
        ${KCAUDIT_FUZZ_ARGS:-} >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
        rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)
        printf '    %-15s ok: %s runs in %s s (%s/s), peak RSS %s MB\n' "$t" "${runs:-?}" "$secs" "${rate:-?}" "${rss:-?}"
    else
        failed+=("$t")
        echo "    $t FAILED; from $log:" >&2
        # The panic message and libFuzzer's verdict (cargo-fuzz's own wrapper starts at a line of box rules).
        report=$({ grep -m1 -A4 'panicked at' "$log"; sed -n '/^────/q;p' "$log" |
            grep -E '^==[0-9]+== ERROR|^SUMMARY|Test unit written|ParseDictionaryFile|^error'; } || true)
        if [ -n "$report" ]; then echo "$report" >&2; else tail -n 25 "$log" >&2; fi
        new=$(ls -1t "fuzz/artifacts/$t" | head -n $(( $(ls -1 "fuzz/artifacts/$t" | wc -l) - before )) )
        for a in $new; do
            echo "    crashing input: fuzz/artifacts/$t/$a" >&2
            echo "      reproduce: cargo +nightly fuzz run ${flags[*]} $t fuzz/artifacts/$t/$a" >&2
            echo "      minimise:  cargo +nightly fuzz tmin ${flags[*]} $t fuzz/artifacts/$t/$a" >&2
        done
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "scripts/fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]} (logs in $logs; see fuzz/README.md for turning a crash into a regression test)" >&2
    exit 1
fi
echo "==> fuzzing: all ${#targets[@]} targets ran ${secs} s each without a crash"
