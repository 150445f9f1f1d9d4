//! The `dialsync` command: parse the command line, set up logging, run the command from
//! the library, print the error chain and return the documented exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(dialsync::Exit::Aborted as u8);
        }
    };
    let result = runtime.block_on(cli::run(args));
    // Work left behind (a daemon that quit at a second signal abandons its calls in
    // flight) is not waited for.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.exit as u8)
        }
    }
}
