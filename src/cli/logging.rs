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
        LogFormat::Json => builder.json().map_event_format(ListsAsArrays).init(),
        LogFormat::Text if journald => builder.fmt_fields(one_line_fields()).without_time().init(),
        LogFormat::Text => builder.fmt_fields(one_line_fields()).init(),
    }
}

/// The fields that hold lists (of job names, IDs): tracing records them as their Debug
/// text, and JSON logs would carry `"[\"a\", \"b\"]"`; these are written as arrays.
/// By name, so that a UserData that happens to look like a list stays a string.
const LIST_FIELDS: [&str; 6] = ["scheduled", "jobs", "rerun", "campaigns", "others", "notes"];

/// The JSON event format with [`LIST_FIELDS`] as JSON arrays (numbers already are numbers).
struct ListsAsArrays<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for ListsAsArrays<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        writer.write_str(&lists_as_arrays(line))
    }
}

/// One JSON log line with its list fields as arrays; any other line as it is. The line
/// is spliced, not written anew, so its keys keep their order.
fn lists_as_arrays(mut line: String) -> String {
    use serde_json::Value;
    let Ok(v) = serde_json::from_str::<Value>(&line) else {
        return line;
    };
    let Some(fields) = v.get("fields").and_then(Value::as_object) else {
        return line;
    };
    for name in LIST_FIELDS {
        let Some(Value::String(text)) = fields.get(name) else {
            continue;
        };
        if let Ok(list @ Value::Array(_)) = serde_json::from_str::<Value>(text) {
            // The event's fields come before its spans' in the line: the first match.
            let was = format!("\"{name}\":{}", Value::String(text.clone()));
            line = line.replacen(&was, &format!("\"{name}\":{list}"), 1);
        }
    }
    line
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_write_lists_as_arrays_and_numbers_as_numbers() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .json()
            .map_event_format(super::ListsAsArrays)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("sync", job = "leads");
            let _entered = span.enter();
            let scheduled = vec!["leads", "b2b"];
            tracing::info!(jobs = 2, scheduled = ?scheduled, "daemon started");
            tracing::info!(jobs = ?vec!["leads"], user_data = %"[1]", "config reloaded");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["fields"]["scheduled"], json!(["leads", "b2b"]));
        assert_eq!(lines[0]["fields"]["jobs"], json!(2));
        assert_eq!(lines[0]["fields"]["message"], json!("daemon started"));
        assert_eq!(lines[0]["span"]["job"], json!("leads"));
        assert!(
            text.starts_with("{\"timestamp\":"),
            "the keys keep their order: {text}"
        );
        assert_eq!(lines[1]["fields"]["jobs"], json!(["leads"]));
        // Not a list field: a value that looks like one stays a string.
        assert_eq!(lines[1]["fields"]["user_data"], json!("[1]"));
    }
}
