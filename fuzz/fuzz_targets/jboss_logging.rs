//! Fuzz target: `decode_body` with the `jboss_logging` format (webhook and file contexts).
//! Checks: see `fuzz/src/lib.rs`. Crashes: `tests/fixtures/fuzz/jboss_logging-<name>` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kcaudit_fuzz::run_target("jboss_logging", data);
});
