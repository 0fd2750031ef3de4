fn main() -> std::process::ExitCode {
    casebook_cli::main()
}
