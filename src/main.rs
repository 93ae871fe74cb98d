//! The `brobygger` binary: a thin shell around the library's command line.

fn main() -> std::process::ExitCode {
    brobygger::cli::run()
}
