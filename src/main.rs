//! `expllm`: see `expllm --help` and README.md.
fn main() -> std::process::ExitCode {
    expllm_edge::cli::main()
}
