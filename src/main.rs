fn main() -> std::process::ExitCode {
    accelerate_relay::cli::main()
}
