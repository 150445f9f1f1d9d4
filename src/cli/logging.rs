//! Logging set-up: stderr, text or JSON, control characters escaped.

use std::io::IsTerminal;

use super::{Cli, Command, LogFormat};

/// Logs go to stderr: no colours unless it is a terminal, no timestamps under journald
/// (it adds its own), JSON on request. Interactive commands log warnings and errors by
/// default (their summary is on stdout); long-running ones also log at INFO.
pub(crate) fn init_logging(cli: &Cli) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::EnvFilter;
    const LEVELS: [LevelFilter; 6] = [
        LevelFilter::OFF,
        LevelFilter::ERROR,
        LevelFilter::WARN,
        LevelFilter::INFO,
        LevelFilter::DEBUG,
        LevelFilter::TRACE,
    ];
    let default: usize = match cli.command {
        Command::Emulator(_) | Command::Run { .. } => 3,
        // The demo's report already shows every skipped row.
        Command::Demo => 1,
        _ => 2,
    };
    let level = LEVELS[(default + usize::from(cli.verbose))
        .saturating_sub(usize::from(cli.quiet))
        .min(LEVELS.len() - 1)];
    let flags = cli.verbose > 0 || cli.quiet > 0;
    // RUST_LOG's directives stand; the level of everything it does not name is the
    // flags' (or, without flags, RUST_LOG's own or the command's default).
    let filter = match EnvFilter::try_from_default_env() {
        Ok(env) if flags => env.add_directive(level.into()),
        Ok(env) => env,
        Err(_) => EnvFilter::default().add_directive(level.into()),
    };
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
        let text = dialsync::printable(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}
