//! Fuzz target: the webhook request path: method, path, headers (Content-Encoding, signatures, bearer token) and body, through the axum router, the decoders and the pipeline.
//! Checks: see `fuzz/src/lib.rs`. Crashes: `tests/fixtures/fuzz/webhook-<name>` (replayed by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kcaudit_fuzz::run_target("webhook", data);
});
