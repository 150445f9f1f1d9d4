//! The command line: subcommands, logging set-up, and printing results.

/// `print!` for results on stdout: a closed pipe (`dialsync status | head -c1`) ends the
/// output quietly instead of panicking; the command's exit code stays its own.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

/// `println!` likewise.
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => { out!("{}\n", format_args!($($arg)*)) };
}

mod bars;
mod daemon;
mod demo;
mod emulator;
mod logging;
mod state;
mod status;
mod sync;
mod validate;

pub(crate) use logging::init_logging;

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use dialsync::Client;
use dialsync::Config;
use dialsync::Exit;
use dialsync::HistoryQuery;
use dialsync::{RunMode, SyncOptions, Trigger, Verify};

const DEFAULT_CONFIG: &str = "/etc/dialsync/dialsync.toml";
/// The version, with the git commit when built from a checkout (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("DIALSYNC_VERSION_SUFFIX"));

#[derive(Debug, Parser)]
#[command(
    name = "dialsync",
    version = VERSION,
    about = "Keeps a jtel ACD dialler campaign in step with a CRM export"
)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log lines on stderr: -v info, -vv debug, -vvv trace (the default is warnings,
    /// info for `run` and `emulator`). RUST_LOG (e.g. RUST_LOG=dialsync=debug) sets the
    /// level per module; -v and -q then set the rest.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Fewer log lines: -q errors only, -qq none.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutcomesOutput {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync now: read each job's export and make the dialler match it.
    Sync {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Show what would be done; change nothing on the dialler or in the state. It still
        /// makes one read-only call (the campaign), so a wrong token, ClientsID or campaign
        /// fails it as it would fail the real run.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: plan without contacting the dialler at all.
        #[arg(long, requires = "dry_run")]
        offline: bool,
        /// Run even if a guard trips (an empty or truncated export, more removals or
        /// resets than the job's limits), and read the export even if it is unchanged since
        /// the last clean run. For this run only.
        #[arg(long)]
        force: bool,
        /// Read the campaign back and check the state against it before planning, whether
        /// or not the job's verify_every has passed.
        #[arg(long)]
        verify: bool,
        /// `human` (a summary per job) or `json` (one JSON object).
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Read each job's campaign back from the dialler and check the state against it:
    /// re-learn IDs that changed, forget contacts the dialler lost (the next sync imports
    /// them again), mark values it holds differently to be sent again. Nothing else is
    /// sent. Stops when the dialler knows most contacts no more (reset, restored, or
    /// another server): check, then --force.
    Verify {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Go on even if the dialler no longer knows most contacts of the state.
        #[arg(long)]
        force: bool,
        /// `human` or `json`.
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Run as a daemon: sync each job on its schedule until SIGTERM (SIGHUP reloads the
    /// config). Manual `sync` runs are handed to it.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Per job: the last run, the last run that changed something, the next scheduled run
    /// and the contacts in the state.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The state database (and the daemon's socket beside it), when not the config's.
        #[arg(long)]
        state: Option<PathBuf>,
        /// For monitoring (Nagios, Icinga): one line per job, the most urgent first, and
        /// exit 0 when every job's last run is ok, 1 when one is partial, 2 when one
        /// stopped early, a guard stops it or it is overdue, 3 when the state cannot be
        /// read or a scheduled job never ran.
        #[arg(long, conflicts_with = "output")]
        check: bool,
        /// `human` or `json`.
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// The runs of each job, newest first (the state keeps the last [state] history_runs
    /// of each), or one run's rejected rows and failed operations.
    History {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The state database (and the daemon's socket beside it), when not the config's.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Only this job's runs.
        #[arg(long)]
        job: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Show this run (its ID as `history` lists it) with its rows.
        #[arg(long, conflicts_with_all = ["job", "limit"])]
        run: Option<String>,
        /// `human` or `json`.
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// A job's dialling outcomes (result code, tries, next try, last call) as the state
    /// holds them from the runs that delivered them, in the job's outcome columns; with
    /// --fetch, read from the dialler now (read-only, nothing is delivered).
    Outcomes {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The state database (and the daemon's socket beside it), when not the config's.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The job.
        #[arg(long)]
        job: String,
        /// Only outcomes first delivered by runs after this one (its ID as `history`
        /// lists it).
        #[arg(long, conflicts_with = "fetch")]
        since: Option<String>,
        /// Read every contact's outcome from the dialler now: one listing of the campaign,
        /// its result codes and, for outcomes not delivered yet, their history.
        #[arg(long)]
        fetch: bool,
        /// `csv` (the job's outcome columns and delimiter, a header first) or `json` (an
        /// array of objects).
        #[arg(long, value_enum, default_value_t = OutcomesOutput::Csv)]
        output: OutcomesOutput,
    },
    /// Check a config file and its token; then each job's export (every mapped column) and
    /// the dialler (token, ClientsID, each job's campaign), read-only.
    Validate {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check the config file (and that the token can be read) alone: no export is
        /// opened, no call made (for CI, and for the service's start before the network).
        #[arg(long)]
        offline: bool,
    },
    /// Serve an in-memory jtel dialler API for trying configs, tests and benchmarks.
    Emulator(emulator::Args),
    /// Show a whole sync cycle against a built-in emulator, with nothing to set up.
    Demo,
    /// Print a shell completion script (from the same definitions as --help), e.g.
    /// `dialsync completions bash > /usr/share/bash-completion/completions/dialsync`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `dialsync man | man -l -`.
    Man,
    /// Work on the state database.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Rebuild a job's state from the dialler (its campaign's contacts, by UserData):
    /// after the state was lost or damaged, on a new server, or before a first sync into
    /// a campaign that already has contacts. A database that cannot be opened is moved
    /// aside first. Stop the daemon before.
    Rebuild {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this job (all jobs when left out).
        #[arg(long)]
        job: Option<String>,
    },
    /// Write the state database afresh with the same records: after runs that rewrote
    /// most contacts (a campaign changed in full, the first sync after a rebuild, mass
    /// removals) sled loads a record of every page's fragments whenever it opens the
    /// state, which makes every later run use more memory (for a million contacts, 100
    /// to 150 MB instead of about 35), and every open writes over the free space such
    /// runs leave in its file. Needs room for two more copies while it runs; a
    /// crash leaves the old state or the complete copy. Stop the daemon before.
    Compact {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// An error with the exit code it maps to.
pub(crate) struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            exit,
            error: error.into(),
        }
    }
}

/// Loads and checks the config. Its warnings (allowed, but probably not meant) are
/// `validate`'s to give, and the daemon's at its start, not every command's.
fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::new(Exit::Config, e))
}

/// Runs the command; its exit code.
pub(crate) async fn run(cli: Cli) -> Result<u8, Failure> {
    let exit = match cli.command {
        Command::Verify {
            config,
            job,
            force,
            output,
        } => {
            let mode = RunMode {
                force,
                verify: Verify::Only,
                ..RunMode::default()
            };
            let opts = SyncOptions {
                job,
                mode,
                handle: None,
            };
            sync::run(&load(&config)?, opts, output).await?
        }
        Command::Sync {
            config,
            job,
            dry_run,
            offline,
            force,
            verify,
            output,
        } => {
            let mode = RunMode {
                dry_run,
                offline,
                force,
                verify: if verify { Verify::Now } else { Verify::WhenDue },
                // A manual sync always proves the token, even with nothing to send.
                credentials_recent: false,
                trigger: Trigger::Manual,
            };
            let opts = SyncOptions {
                job,
                mode,
                handle: None,
            };
            sync::run(&load(&config)?, opts, output).await?
        }
        Command::Run { config } => daemon::run(config).await?,
        Command::Status {
            config,
            state,
            check: true,
            ..
        } => return Ok(status::check(&config, state).await),
        Command::Status {
            config,
            state,
            output,
            ..
        } => return status::run(&config, state, output).await,
        Command::History {
            config,
            state,
            job,
            limit,
            run,
            output,
        } => {
            let query = HistoryQuery { job, limit, run };
            return status::history(&config, state, query, output).await;
        }
        Command::Outcomes {
            config,
            state,
            job,
            since,
            fetch,
            output,
        } => {
            let query = dialsync::OutcomesQuery { job, since, fetch };
            let json = output == OutcomesOutput::Json;
            return status::outcomes(&config, state, query, json).await;
        }
        Command::Validate { config, offline } => validate::run(&config, offline).await?,
        Command::Emulator(args) => emulator::run(args).await?,
        Command::Demo => demo::run()
            .await
            .map_err(|e| Failure::new(Exit::Aborted, e))?,
        Command::State {
            command: StateCommand::Rebuild { config, job },
        } => state::rebuild(&load(&config)?, job.as_deref()).await?,
        Command::State {
            command: StateCommand::Compact { config },
        } => state::compact(&load(&config)?).await?,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dialsync", &mut out);
            out!("{}", String::from_utf8_lossy(&out));
            Exit::Ok
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            out!("{}", String::from_utf8_lossy(&out));
            Exit::Ok
        }
    };
    Ok(exit as u8)
}

/// Connects to the daemon's control socket, if a daemon listens there.
async fn connect(socket: &Path) -> Result<Option<Client>, Failure> {
    Client::connect(socket).await.map_err(|e| {
        Failure::new(
            Exit::Aborted,
            anyhow::Error::from(e).context(format!(
                "cannot reach the daemon on {} (run this command as the service's user, \
                 e.g. `sudo -u dialsync dialsync ...`)",
                socket.display()
            )),
        )
    })
}

/// Writes to stdout. Output nobody reads any more (a closed pipe) is dropped; any other
/// failure (a full disk under a redirect) is said once on stderr.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static FAILED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() != std::io::ErrorKind::BrokenPipe && !FAILED.swap(true, Ordering::Relaxed) {
            eprintln!("error: cannot write to standard output: {e}");
        }
    }
}
