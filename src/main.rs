//! The `kcaudit` binary: all logic lives in the library; see `kcaudit::cli`.
fn main() -> std::process::ExitCode {
    kcaudit::cli::main()
}
