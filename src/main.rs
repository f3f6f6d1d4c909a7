//! `matrix-tui`: see `matrix-tui --help` and the README.

fn main() -> std::process::ExitCode {
    matrix_tui::cli::main_with(std::env::args_os())
}
