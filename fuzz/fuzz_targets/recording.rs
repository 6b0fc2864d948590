//! Fuzz target: `decode_body` with the `recording` format (webhook and file contexts).
//! Checks: see `fuzz/src/lib.rs`. Crashes: `tests/fixtures/fuzz/recording-<name>` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kcaudit_fuzz::run_target("recording", data);
});
