//! The command line: subcommands, logging set-up, and printing results.

mod bars;
mod demo;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use dialsync::config::{Config, TokenSource};
use dialsync::daemon::control::{self, Client, Event, Request};
use dialsync::daemon::status;
use dialsync::dialler::Dialler;
use dialsync::emulator::{Emulator, EmulatorConfig, Faults};
use dialsync::engine::progress::RunHandle;
use dialsync::engine::reconcile;
use dialsync::engine::run::{select_jobs, sync, SyncOptions, Verify};
use dialsync::engine::{outcome::Exit, report};
use dialsync::state::{StateError, Store};

use bars::Bars;

const DEFAULT_CONFIG: &str = "/etc/dialsync/dialsync.toml";

#[derive(Debug, Parser)]
#[command(
    name = "dialsync",
    version,
    about = "Keeps a jtel ACD dialler campaign in step with a CRM export"
)]
pub struct Cli {
    /// Log format on stderr (the level comes from RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
        /// Show what would be done; change nothing on the dialler or in the state.
        #[arg(long)]
        dry_run: bool,
        /// Run even if a guard trips (an empty or truncated export, more removals or
        /// resets than the job's limits). For this run only.
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
    /// Per job: the last run, the next scheduled run and the contacts in the state.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// `human` or `json`.
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Check a config file (and that its token can be read) without contacting the dialler.
    Validate {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Serve an in-memory jtel dialler API for trying configs, tests and benchmarks.
    Emulator {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The ClientsID the emulated tenant answers to.
        #[arg(long, default_value_t = 7)]
        client_id: u32,
        /// The bearer token it accepts.
        #[arg(long, default_value = "emulator-token")]
        token: String,
        /// A campaign as ID:NAME, e.g. 538:"My Campaign" (repeatable; default 538:My Campaign).
        #[arg(long = "campaign", value_parser = parse_campaign)]
        campaigns: Vec<(i64, String)>,
        /// How many API calls GET /_emulator/requests keeps: the last N; older ones are
        /// dropped, so a long-running emulator does not grow.
        #[arg(long, default_value_t = dialsync::emulator::KEEP_REQUESTS)]
        keep_requests: usize,
        #[command(flatten)]
        faults: FaultFlags,
    },
    /// Show a whole sync cycle against a built-in emulator, with nothing to set up.
    Demo,
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
}

/// The emulator's fault injection flags (see [`Faults`]).
#[derive(Debug, Clone, clap::Args)]
struct FaultFlags {
    /// Fault injection: added to every API answer, e.g. 20ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Fraction of API calls answered 500/502/503/504 (not carried out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,
    /// Fraction of API calls answered 429 with Retry-After (not carried out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    throttle_rate: f64,
    /// The Retry-After of those 429 answers, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Fraction of API calls whose connection is dropped (not carried out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    drop_rate: f64,
    /// Fraction of API calls carried out but never answered (the client times out): the
    /// worst case for a client that must not duplicate on retry.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    timeout_rate: f64,
    /// Seed of the fault draws (same seed, same requests: same faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl From<FaultFlags> for Faults {
    fn from(f: FaultFlags) -> Faults {
        Faults {
            latency: f.latency,
            error_rate: f.error_rate,
            throttle_rate: f.throttle_rate,
            retry_after: f.retry_after,
            drop_rate: f.drop_rate,
            timeout_rate: f.timeout_rate,
            seed: f.seed,
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}` is not a fraction between 0 and 1 (e.g. 0.1 for 10%)"
        )),
    }
}

fn parse_campaign(s: &str) -> Result<(i64, String), String> {
    let (id, name) = s
        .split_once(':')
        .ok_or("write a campaign as ID:NAME, e.g. 538:\"My Campaign\"")?;
    let id = id
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("`{id}` is not a campaign ID"))?;
    let name = name.trim().trim_matches('"').to_string();
    if name.is_empty() {
        return Err("the campaign name is empty".into());
    }
    Ok((id, name))
}

/// Logs go to stderr: no colours unless it is a terminal, no timestamps under journald
/// (it adds its own), JSON on request. Interactive commands log warnings and errors by
/// default (their summary is on stdout); long-running ones also log at INFO.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        Command::Emulator { .. } | Command::Run { .. } => "info",
        // The demo's report already shows every skipped row.
        Command::Demo => "error",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match cli.log_format {
        // JSON strings escape control characters themselves.
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if journald => builder.fmt_fields(one_line_fields()).without_time().init(),
        LogFormat::Text => builder.fmt_fields(one_line_fields()).init(),
    }
}

/// Text log fields with their control characters escaped (see [`dialsync::escape`]): a
/// UserData or a dialler message with a newline cannot start a forged log line.
fn one_line_fields(
) -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = dialsync::escape::printable(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// An error with the exit code it maps to.
pub struct Failure {
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

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    let config = Config::load(path).map_err(|e| Failure::new(Exit::Config, e))?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(config)
}

pub async fn run(cli: Cli) -> Result<Exit, Failure> {
    match cli.command {
        Command::Verify {
            config,
            job,
            force,
            output,
        } => {
            let config = load(&config)?;
            let opts = SyncOptions {
                job,
                force,
                verify: Verify::Only,
                ..SyncOptions::default()
            };
            sync_command(&config, opts, output).await
        }
        Command::Sync {
            config,
            job,
            dry_run,
            force,
            verify,
            output,
        } => {
            let config = load(&config)?;
            let opts = SyncOptions {
                job,
                dry_run,
                force,
                verify: if verify { Verify::Now } else { Verify::WhenDue },
                handle: None,
            };
            sync_command(&config, opts, output).await
        }
        Command::Run { config } => {
            let path = std::path::absolute(&config).unwrap_or(config);
            let signals = daemon_signals().map_err(|e| Failure::new(Exit::Aborted, e))?;
            // Either way the daemon ends with exit 0: after a second stop it quit with
            // calls in flight, which `main` does not wait for.
            dialsync::daemon::run(&path, signals, || {})
                .await
                .map_err(|e| Failure::new(e.exit(), e))?;
            Ok(Exit::Ok)
        }
        Command::Status { config, output } => {
            let cfg = load(&config)?;
            let socket = control::socket_path(&cfg.state.path);
            let status = match connect(&socket).await? {
                Some(mut client) => {
                    client
                        .send(&Request::Status)
                        .await
                        .map_err(|e| Failure::new(Exit::Aborted, e))?;
                    match client.next().await {
                        Ok(Some(Event::Status(s))) => s,
                        Ok(Some(Event::Error { exit, message })) => {
                            return Err(Failure::new(exit, anyhow::anyhow!(message)))
                        }
                        other => {
                            return Err(Failure::new(
                                Exit::Aborted,
                                anyhow::anyhow!("the daemon gave no status ({other:?})"),
                            ))
                        }
                    }
                }
                None => {
                    let store =
                        Store::open(&cfg.state.path).map_err(|e| Failure::new(Exit::Aborted, e))?;
                    status::collect(&cfg, &store, chrono::Utc::now())
                        .map_err(|e| Failure::new(Exit::Aborted, e))?
                }
            };
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serializes")
                ),
                Output::Human => print!("{}", status.human()),
            }
            Ok(Exit::Ok)
        }
        Command::Validate { config } => {
            let cfg = load(&config)?;
            let credential_elsewhere = matches!(cfg.dialler.token, TokenSource::Credential(_))
                && std::env::var_os("CREDENTIALS_DIRECTORY").is_none();
            if credential_elsewhere {
                // Outside the service the credential is not there to read; systemd runs
                // `validate` again before every start and reload, with it.
                eprintln!("note: the token (token_credential) is checked when the service starts");
            } else {
                cfg.dialler.token.resolve().map_err(|e| {
                    Failure::new(
                        Exit::Config,
                        anyhow::Error::from(e)
                            .context(format!("{} is not usable", config.display())),
                    )
                })?;
            }
            let names: Vec<&str> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
            println!(
                "{}: OK ({} job{}: {})",
                config.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            Ok(Exit::Ok)
        }
        Command::Emulator {
            listen,
            client_id,
            token,
            campaigns,
            keep_requests,
            faults,
        } => {
            let faults = Faults::from(faults);
            faults
                .check()
                .map_err(|e| Failure::new(Exit::Config, anyhow::anyhow!(e)))?;
            let mut cfg = EmulatorConfig {
                client_id,
                token,
                faults,
                keep_requests,
                ..EmulatorConfig::default()
            };
            if !campaigns.is_empty() {
                cfg.campaigns = campaigns;
            }
            let emulator = Emulator::new(cfg.clone());
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            // One line on stdout, flushed, so scripts and tests can wait for it.
            println!(
                "dialsync emulator listening on http://{addr}/rest/v1.0/{}",
                cfg.client_id
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            tracing::info!(%addr, client_id = cfg.client_id, campaigns = ?cfg.campaigns, faults = ?cfg.faults, "emulator ready");
            let shutdown = shutdown_signal().map_err(|e| Failure::new(Exit::Aborted, e))?;
            emulator
                .serve(listener, shutdown)
                .await
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            Ok(Exit::Ok)
        }
        Command::Demo => demo::run()
            .await
            .map_err(|e| Failure::new(Exit::Aborted, e)),
        Command::State {
            command: StateCommand::Rebuild { config, job },
        } => rebuild(&load(&config)?, job.as_deref()).await,
    }
}

/// `state rebuild`: each selected job's state from its campaign on the dialler.
async fn rebuild(cfg: &Config, job: Option<&str>) -> Result<Exit, Failure> {
    let path = &cfg.state.path;
    let socket = control::socket_path(path);
    if connect(&socket).await?.is_some() {
        return Err(Failure::new(
            Exit::Aborted,
            anyhow::anyhow!(
                "the daemon is running on this state ({}): stop it (`systemctl stop dialsync`), \
                 rebuild, then start it again",
                path.display()
            ),
        ));
    }
    let jobs = select_jobs(cfg, job).map_err(|e| Failure::new(e.exit(), e))?;
    let token = cfg
        .dialler
        .token
        .resolve()
        .map_err(|e| Failure::new(Exit::Config, e))?;
    let dialler = Dialler::new(&cfg.dialler, &token).map_err(|e| Failure::new(Exit::Config, e))?;
    let store = match Store::open(path) {
        Ok(s) => s,
        Err(e @ (StateError::Open { .. } | StateError::Restore { .. })) if path.exists() => {
            let source = e;
            let aside = dialsync::state::move_aside(path)
                .with_context(|| format!("cannot move {} aside", path.display()))
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            eprintln!(
                "the state database {} could not be opened ({source}); moved it to {} and \
                 starting a new one",
                path.display(),
                aside.display()
            );
            if job.is_some() && cfg.jobs.len() > 1 {
                eprintln!(
                    "note: it held the state of every job: rebuild the others too \
                     (`dialsync state rebuild` without --job rebuilds all)"
                );
            }
            Store::open(path).map_err(|e| Failure::new(Exit::Aborted, e))?
        }
        Err(e) => return Err(Failure::new(Exit::Aborted, e)),
    };
    for job in jobs {
        let state = store
            .job(&job.name)
            .map_err(|e| Failure::new(Exit::Aborted, e))?;
        let r = reconcile::rebuild(&dialler, job, &state)
            .await
            .map_err(|e| {
                let unauthorized = matches!(
                    &e,
                    reconcile::ReconcileError::Dialler(d) if d.is_unauthorized()
                );
                let exit = if unauthorized {
                    Exit::Unauthorized
                } else {
                    Exit::Aborted
                };
                Failure::new(
                    exit,
                    anyhow::Error::from(e).context(format!("job {}", job.name)),
                )
            })?;
        if let Err(e) = store.set_verification(&job.name, &r.as_verified()) {
            tracing::warn!(error = %e, "could not record the rebuild as a verification");
        }
        println!(
            "job {}: rebuilt from campaign {}: {} contacts",
            job.name, r.campaign, r.contacts
        );
        if r.without_user_data > 0 {
            println!(
                "  {} contacts of the campaign have no UserData and were left out",
                r.without_user_data
            );
        }
        for (key, ids) in r.shared.iter().take(10) {
            println!(
                "  UserData {} is on {} contacts (IDs {ids:?}); the first is kept, remove the \
                 others in the jtel portal",
                dialsync::escape::printable(key),
                ids.len()
            );
        }
        println!(
            "  the dialler does not show which contacts are locked: {} locks were kept from the \
             old state; for the other {} the next sync unlocks each one that is in the export and \
             locks (or deletes, per on_missing) each one that is not, one call each",
            r.locked_kept, r.lock_unknown
        );
    }
    println!(
        "the next sync sends what differs between the export and the dialler; \
         `dialsync sync --dry-run` shows it first"
    );
    Ok(Exit::Ok)
}

fn print_reports(reports: &[report::JobReport], output: Output) {
    match output {
        Output::Json => println!("{}", report::json(reports)),
        Output::Human => {
            for r in reports {
                print!("{}", r.human());
            }
        }
    }
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

/// A manual sync carried out by the running daemon: its progress on the terminal, its
/// report on stdout, its exit code.
async fn sync_in_daemon(
    mut client: Client,
    request: Request,
    output: Output,
) -> Result<Exit, Failure> {
    let lost = |e: std::io::Error| {
        Failure::new(
            Exit::Aborted,
            anyhow::Error::from(e).context("lost the connection to the daemon"),
        )
    };
    let mut bars = Bars::new();
    bars.note(
        "dialsync: the daemon is running; this sync runs in it, with the config it loaded \
         (Ctrl-C stops it after the calls in flight)",
    );
    client.send(&request).await.map_err(lost)?;
    loop {
        match client.next().await.map_err(lost)? {
            Some(Event::Progress(s)) => bars.update(&s),
            Some(Event::Waiting { job }) => bars.note(&format!(
                "dialsync: job {job} is running on its schedule; this run starts when that one ends"
            )),
            Some(Event::Done { exit, json, human }) => {
                bars.finish();
                match output {
                    Output::Json => println!("{json}"),
                    Output::Human => print!("{human}"),
                }
                return Ok(exit);
            }
            Some(Event::Error { exit, message }) => {
                bars.finish();
                return Err(Failure::new(exit, anyhow::anyhow!(message)));
            }
            Some(Event::Status(_)) => {}
            None => {
                bars.finish();
                return Err(Failure::new(
                    Exit::Aborted,
                    anyhow::anyhow!(
                        "the daemon closed the connection before the run ended (was it stopped?); \
                         `dialsync status` shows what the run did"
                    ),
                ));
            }
        }
    }
}

/// Draws the progress of a local run until `done`.
async fn show_progress(handle: Arc<RunHandle>, mut done: tokio::sync::oneshot::Receiver<()>) {
    let mut bars = Bars::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => bars.update(&handle.snapshot()),
            _ = &mut done => break,
        }
    }
    bars.finish();
}

/// Ctrl-C stops the run after the calls in flight (each bounded by the HTTP timeout), so
/// that every confirmed call is in the state.
async fn stop_on_ctrl_c(handle: Arc<RunHandle>) {
    let mut first = true;
    while tokio::signal::ctrl_c().await.is_ok() {
        handle.request_stop();
        if first {
            eprintln!("\ndialsync: stopping after the calls in flight; no new call starts");
        } else {
            eprintln!(
                "dialsync: still waiting for the calls in flight (at most the dialler timeout)"
            );
        }
        first = false;
    }
}

/// Completes on SIGINT or SIGTERM (the handlers are installed now).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// `sync` and `verify`: handed to the daemon when one runs for this state, else run here
/// with progress bars and Ctrl-C.
async fn sync_command(config: &Config, opts: SyncOptions, output: Output) -> Result<Exit, Failure> {
    let socket = control::socket_path(&config.state.path);
    if let Some(client) = connect(&socket).await? {
        let request = Request::Sync {
            job: opts.job,
            dry_run: opts.dry_run,
            force: opts.force,
            verify: opts.verify,
        };
        return sync_in_daemon(client, request, output).await;
    }
    let handle = Arc::new(RunHandle::new());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(show_progress(Arc::clone(&handle), done_rx));
    let ctrl_c = tokio::spawn(stop_on_ctrl_c(Arc::clone(&handle)));
    let result = sync(
        config,
        &SyncOptions {
            handle: Some(handle),
            ..opts
        },
    )
    .await;
    ctrl_c.abort();
    let _ = done_tx.send(());
    let _ = progress.await;
    let reports = result.map_err(|e| match e {
        dialsync::engine::run::SyncError::State(dialsync::state::StateError::Locked { path }) => {
            Failure::new(
                Exit::Aborted,
                anyhow::anyhow!(
                    "the state database {} is in use by another dialsync process, and no \
                     daemon answers on {}: another manual sync, `status` or `state` \
                     command is probably running. Wait for it to end and run this again",
                    path.display(),
                    socket.display()
                ),
            )
        }
        e => Failure::new(e.exit(), e),
    })?;
    print_reports(&reports, output);
    Ok(report::exit_of(&reports))
}

/// The daemon's requests from real signals: SIGTERM and SIGINT stop it, SIGHUP reloads
/// its config.
fn daemon_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<dialsync::daemon::Signal>> {
    use dialsync::daemon::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for (kind, name, request) in [
        (SignalKind::terminate(), "SIGTERM", Signal::Stop),
        (SignalKind::interrupt(), "SIGINT", Signal::Stop),
        (SignalKind::hangup(), "SIGHUP", Signal::Reload),
    ] {
        let mut stream =
            signal(kind).with_context(|| format!("cannot install the {name} handler"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(request).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}
