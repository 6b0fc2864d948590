//! Fuzz target: `decode_body` with the `kcaudit` format (webhook and file contexts).
//! Checks: see `fuzz/src/lib.rs`. Crashes: `tests/fixtures/fuzz/kcaudit-<name>` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kcaudit_fuzz::run_target("kcaudit", data);
});
