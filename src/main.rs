//! The `dialsync` command: parse the command line, set up logging, run the command from
//! the library, print the error chain and return the documented exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc raises its mmap threshold to the size of every large block freed (up to
/// 32 MB), so that after the first of sled's segment buffers or the digest's arrays is
/// freed, such blocks come from the heap and their pages stay with the process: a 1M
/// import peaked at 408 MB where 226 MB were needed. A fixed threshold (glibc's starting
/// value, 128 KiB) keeps large blocks in their own mappings, given back when freed.
///
/// glibc also gives every thread that allocates its own arena (up to 8 per core), and
/// each keeps the pages of its freed small blocks: a daemon with 20 jobs idled at 38 MB,
/// 22 MB of it anonymous memory spread over nine arenas of 0.7-3.2 MB. With two arenas
/// (the main one and one shared by the other threads) the same daemon idled at 20 MB
/// after 40 runs on `* * * * *` that mostly had nothing to do.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets parameters of the allocator; called before any thread
    // starts, and a refused setting (it returns 0) leaves the default in place.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
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
    let result = runtime.block_on(async {
        match tokio::spawn(cli::run(args)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    });
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
