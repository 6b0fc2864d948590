//! The `kcaudit` binary: all logic lives in the library; see `kcaudit::cli`.
/// mimalloc: many small short-lived allocations per event (strings of decoded events, enrichment
/// views) are where glibc's allocator spends most of its time; `cargo bench --bench enrich` measures
/// the difference, and the benches use the same allocator as the binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kcaudit::process_memory::tune();
    kcaudit::cli::main()
}
