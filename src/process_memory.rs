//! How the process uses memory: settings made once, first thing in `main`, before any thread starts.
//! The benches that measure resident memory make the same settings, so they measure what runs.

/// Both settings below; the binary's `main` calls this before anything else.
pub fn tune() {
    fix_c_heap_mmap_threshold();
    keep_heap_in_small_pages();
}

/// librdkafka (C) allocates its fetch buffers, up to a MiB each, with glibc's malloc. Once such a
/// buffer is freed, glibc raises its mmap threshold to that size, and from then on the buffers come
/// from the heap arenas, whose pages stay with the process: issue #9 measured a 15 MiB higher peak
/// RSS on the Kafka path. A fixed threshold (glibc's initial 128 KiB) keeps large buffers mmapped,
/// so they go back to the system when freed. Rust's own allocations use mimalloc and are unaffected.
pub fn fix_c_heap_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a glibc tuning parameter; `tune` runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// mimalloc (v2) asks for transparent huge pages on the memory it maps (`madvise(MADV_HUGEPAGE)`),
/// so a 2 MiB page is resident in full as soon as one byte of it is touched, and the 64 KiB pages
/// mimalloc gives back after a burst stay resident inside their huge page. Issue #9 measured peak RSS
/// 104-116 MiB with them and 92-99 without on the Kafka path (200k events, three alternated runs),
/// 106-108 against 87-89 for NDJSON batches into the audit log, with no more CPU (the Kafka runs took
/// 13-14 CPU s per 1M events instead of 14-15: fewer 2 MiB pages to zero). This does for the whole
/// process what mimalloc's own `MIMALLOC_ALLOW_THP=0` does; setting that variable (to 0 or 1) leaves
/// the choice to the operator.
pub fn keep_heap_in_small_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process's address space.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}
