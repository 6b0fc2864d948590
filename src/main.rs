//! The `kcaudit` binary: all logic lives in the library; see `kcaudit::cli`.
/// mimalloc: many small short-lived allocations per event (strings of decoded events, enrichment
/// views) are where glibc's allocator spends most of its time; `cargo bench --bench enrich` measures
/// the difference, and the benches use the same allocator as the binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fix_c_heap_mmap_threshold();
    kcaudit::cli::main()
}

/// librdkafka (C) allocates its fetch buffers, up to a MiB each, with glibc's malloc. Once such a
/// buffer is freed, glibc raises its mmap threshold to that size, and from then on the buffers come
/// from the heap arenas, whose pages stay with the process: issue #9 measured a 15 MiB higher peak
/// RSS on the Kafka path. A fixed threshold (glibc's initial 128 KiB) keeps large buffers mmapped,
/// so they go back to the system when freed. Rust's own allocations use mimalloc and are unaffected.
fn fix_c_heap_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a glibc tuning parameter; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
