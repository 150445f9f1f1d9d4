//! `type = "postgres"` / `"mysql"`: the CRM's rows from a SQL query.
//!
//! The query runs in a read-only transaction on one connection, as plain text (the simple
//! query protocol of PostgreSQL, the text protocol of MySQL), so every value arrives as
//! the database writes it and nothing needs a Rust type: numbers exactly as stored,
//! dates as ISO 8601 (`2026-12-03`, `2026-12-03T09:30:00`, `...+01:00`), booleans as
//! `true`/`false`, NULL and blank as absent. Rows come from the driver's stream one at a
//! time, so the result never sits in memory; a row is numbered by its position in the
//! result.
//!
//! Any failure (the URL, the connection, the query, a connection lost mid-stream, a row
//! that takes longer than `timeout`) makes the export unreadable for this run: the run
//! stops before planning, so nothing is removed, and the message is the database's,
//! with the password taken out.

use std::time::Duration;

use futures_util::StreamExt;
use sqlx::mysql::{MySql, MySqlConnectOptions};
use sqlx::postgres::{PgConnectOptions, Postgres};
use sqlx::{Column, ConnectOptions, Connection, Database, Decode, Row, TypeInfo, ValueRef};

use super::{BadRow, Flow, Item, Record, RowRef, SourceError, Summary};
use crate::config::{sql_display_url, Secret, SourceConfig, SqlDialect, SqlSource};

/// What a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Every row, to the sink.
    Rows,
    /// `validate`: the columns only (the query prepared, then run with `LIMIT 0`).
    Columns,
}

/// Reads the rows of the query of `cfg` (a SQL source) into `sink`, keeping `columns`.
/// Blocks: call it from a blocking thread of the runtime (or from outside any runtime).
pub(crate) fn read(
    cfg: &SourceConfig,
    columns: &[String],
    what: Read,
    sink: &mut dyn FnMut(Item<'_>) -> Flow,
) -> Result<Summary, SourceError> {
    let q = cfg
        .sql
        .as_deref()
        .expect("sql::read is only called for a SQL source");
    let shown = cfg.path.display().to_string();
    let url = q
        .url
        .resolve_as("job.source.url")
        .map_err(|e| SourceError::Database {
            db: shown.clone(),
            message: crate::engine::outcome::error_chain(&e),
        })?;
    let reading = Reading {
        q,
        shown: sql_display_url(url.expose()),
        redact: Redact::new(&url),
        columns,
        what,
    };
    let work = async {
        match q.dialect {
            SqlDialect::Postgres => {
                let opts: PgConnectOptions =
                    url.expose().trim().parse().map_err(|e| reading.fail(&e))?;
                let opts = opts
                    .application_name("dialsync")
                    .log_statements(log::LevelFilter::Off)
                    .log_slow_statements(log::LevelFilter::Off, Duration::MAX);
                reading.run::<Postgres>(opts, sink).await
            }
            SqlDialect::Mysql => {
                let opts: MySqlConnectOptions =
                    url.expose().trim().parse().map_err(|e| reading.fail(&e))?;
                let opts = opts
                    .charset("utf8mb4")
                    .log_statements(log::LevelFilter::Off)
                    .log_slow_statements(log::LevelFilter::Off, Duration::MAX);
                reading.run::<MySql>(opts, sink).await
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        // Only a multi-threaded runtime drives the connection's IO while this thread
        // waits in block_on (a current-thread one would never wake it).
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread => {
            Err(SourceError::Database {
                db: shown.clone(),
                message: "a SQL source is read on a multi-threaded tokio runtime (dialsync's own); this one is current-thread".into(),
            })
        }
        Ok(handle) => handle.block_on(work),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError::Database {
                db: shown.clone(),
                message: format!("cannot start the async runtime: {e}"),
            })?
            .block_on(work),
    }
}

/// Takes the database URL's password (and the URL itself) out of a message.
struct Redact {
    secrets: Vec<String>,
}

impl Redact {
    fn new(url: &Secret) -> Redact {
        let mut secrets = vec![url.expose().trim().to_string()];
        if let Ok(u) = reqwest::Url::parse(url.expose().trim()) {
            if let Some(p) = u.password().filter(|p| !p.is_empty()) {
                secrets.push(p.to_string());
                if let Ok(decoded) = percent_encoding::percent_decode_str(p).decode_utf8() {
                    secrets.push(decoded.into_owned());
                }
            }
        }
        secrets.retain(|s| s.len() >= 3);
        // The longest first: the URL before the password inside it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redact { secrets }
    }

    fn apply(&self, message: String) -> String {
        let mut message = message;
        for s in &self.secrets {
            if message.contains(s.as_str()) {
                message = message.replace(s.as_str(), "<redacted>");
            }
        }
        message
    }
}

struct Reading<'a> {
    q: &'a SqlSource,
    /// The URL without user, password or parameters.
    shown: String,
    redact: Redact,
    columns: &'a [String],
    what: Read,
}

/// How a dialect opens its read-only transaction.
trait Dialect: Database {
    const BEGIN: &'static str;
    /// Whether a text value of a column of this type is a PostgreSQL boolean (`t`/`f`).
    fn is_bool(type_name: &str) -> bool;
    /// Whether a column of this type holds a date with a time (written `date time`).
    fn is_timestamp(type_name: &str) -> bool;
}

impl Dialect for Postgres {
    // DateStyle ISO: dates as 2026-12-03 whatever the server's default.
    const BEGIN: &'static str =
        "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL DateStyle = 'ISO, YMD'";
    fn is_bool(type_name: &str) -> bool {
        type_name == "BOOL"
    }
    fn is_timestamp(type_name: &str) -> bool {
        matches!(type_name, "TIMESTAMP" | "TIMESTAMPTZ")
    }
}

impl Dialect for MySql {
    const BEGIN: &'static str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
    fn is_bool(_: &str) -> bool {
        false
    }
    fn is_timestamp(type_name: &str) -> bool {
        matches!(type_name, "DATETIME" | "TIMESTAMP")
    }
}

impl Reading<'_> {
    fn fail(&self, e: &dyn std::fmt::Display) -> SourceError {
        SourceError::Database {
            db: self.shown.clone(),
            message: self.redact.apply(e.to_string()),
        }
    }

    fn timed_out(&self, what: &str, after: Duration) -> SourceError {
        SourceError::Database {
            db: self.shown.clone(),
            message: format!(
                "{what} took longer than {} (timeout in [job.source])",
                humantime::format_duration(after)
            ),
        }
    }

    async fn run<DB>(
        &self,
        opts: <DB::Connection as Connection>::Options,
        sink: &mut dyn FnMut(Item<'_>) -> Flow,
    ) -> Result<Summary, SourceError>
    where
        DB: Dialect,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'r> &'r str: Decode<'r, DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let q = self.q;
        let mut conn = tokio::time::timeout(q.connect_timeout, DB::Connection::connect_with(&opts))
            .await
            .map_err(|_| self.timed_out("connecting", q.connect_timeout))?
            .map_err(|e| self.fail(&e))?;
        let within = |what: &'static str| move |_| self.timed_out(what, q.timeout);
        tokio::time::timeout(q.timeout, sqlx::raw_sql(DB::BEGIN).execute(&mut conn))
            .await
            .map_err(within("starting a read-only transaction"))?
            .map_err(|e| self.fail(&e))?;
        let summary = match self.what {
            Read::Rows => self.rows::<DB>(&mut conn, sink).await,
            Read::Columns => self.columns_only::<DB>(&mut conn).await,
        };
        if summary.is_ok() {
            // Read-only: nothing to keep. A failure here changes nothing read.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
            let _ = conn.close().await;
        }
        summary
    }

    /// Where each wanted column is among the result's `names`.
    fn index(&self, names: &[&str]) -> Result<Vec<usize>, SourceError> {
        let mut index = Vec::with_capacity(self.columns.len());
        let mut missing = Vec::new();
        let mut folded = Vec::new();
        for c in self.columns {
            let at: Vec<usize> = (0..names.len()).filter(|&i| names[i] == c).collect();
            match at.as_slice() {
                [i] => index.push(*i),
                [] => {
                    if let Some(n) = names.iter().find(|n| n.eq_ignore_ascii_case(c)) {
                        folded.push(format!("`{c}` (there is `{n}`)"));
                    }
                    missing.push(c.clone());
                }
                many => {
                    return Err(SourceError::AmbiguousColumn {
                        path: self.shown.clone().into(),
                        column: c.clone(),
                        positions: many.iter().map(|i| i + 1).collect(),
                    })
                }
            }
        }
        if !folded.is_empty() {
            return Err(SourceError::Database {
                db: self.shown.clone(),
                message: format!(
                    "the query returns no column {}: a column name is matched exactly, and {} folds names without double quotes to lower case; write `AS \"{}\"` in the query",
                    folded.join(", "),
                    self.q.dialect.name(),
                    missing[0],
                ),
            });
        }
        if !missing.is_empty() {
            return Err(SourceError::MissingColumns {
                path: format!("{} (the query)", self.shown).into(),
                missing,
                available: names.iter().map(|n| n.to_string()).collect(),
            });
        }
        Ok(index)
    }

    /// `validate`: the query's columns (prepared), and the query run with `LIMIT 0` (its
    /// tables and rights), reading no data.
    async fn columns_only<DB>(&self, conn: &mut DB::Connection) -> Result<Summary, SourceError>
    where
        DB: Dialect,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        use sqlx::{Executor, Statement};
        let q = self.q;
        let timeout = |what: &'static str| move |_| self.timed_out(what, q.timeout);
        let statement = tokio::time::timeout(q.timeout, (&mut *conn).prepare(&q.query))
            .await
            .map_err(timeout("preparing the query"))?
            .map_err(|e| self.fail(&e))?;
        let names: Vec<&str> = statement.columns().iter().map(Column::name).collect();
        self.index(&names)?;
        let limited = format!("SELECT * FROM ({}) AS dialsync_validate LIMIT 0", q.query);
        tokio::time::timeout(q.timeout, sqlx::raw_sql(&limited).execute(&mut *conn))
            .await
            .map_err(timeout("the query with LIMIT 0"))?
            .map_err(|e| self.fail(&e))?;
        Ok(Summary::default())
    }

    async fn rows<DB>(
        &self,
        conn: &mut DB::Connection,
        sink: &mut dyn FnMut(Item<'_>) -> Flow,
    ) -> Result<Summary, SourceError>
    where
        DB: Dialect,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'r> &'r str: Decode<'r, DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let q = self.q;
        let mut stream = sqlx::raw_sql(&q.query).fetch(conn);
        let mut summary = Summary::default();
        // Per wanted column: its place in the row, and how its text is written.
        let mut layout: Option<Vec<(usize, Kind)>> = None;
        let mut text = String::new();
        let mut spans: Vec<Option<(usize, usize)>> = Vec::new();
        let mut values: Vec<Option<&str>> = Vec::new();
        let mut n: u64 = 0;
        loop {
            let row = match tokio::time::timeout(q.timeout, stream.next()).await {
                Err(_) => {
                    let what = if n == 0 {
                        "the first row"
                    } else {
                        "the next row"
                    };
                    return Err(self.timed_out(what, q.timeout));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let mut e = self.fail(&e);
                    if let SourceError::Database { message, .. } = &mut e {
                        if n > 0 {
                            message.push_str(&format!(" (after {n} rows)"));
                        }
                    }
                    return Err(e);
                }
                Ok(Some(Ok(row))) => row,
            };
            n += 1;
            let layout = match &layout {
                Some(l) => l,
                None => {
                    let names: Vec<&str> = row.columns().iter().map(Column::name).collect();
                    let index = self.index(&names)?;
                    let kinds = index
                        .into_iter()
                        .map(|i| {
                            let t = row.columns()[i].type_info();
                            let kind = if DB::is_bool(t.name()) {
                                Kind::Bool
                            } else if DB::is_timestamp(t.name()) {
                                Kind::Timestamp
                            } else {
                                Kind::Text
                            };
                            (i, kind)
                        })
                        .collect();
                    layout.insert(kinds)
                }
            };
            text.clear();
            spans.clear();
            let mut bad: Option<String> = None;
            for (c, &(i, kind)) in layout.iter().enumerate() {
                let raw = match row.try_get_raw(i) {
                    Ok(v) => v,
                    Err(e) => return Err(self.fail(&e)),
                };
                if raw.is_null() {
                    spans.push(None);
                    continue;
                }
                // Text protocol: every value is the database's text; only bytes that
                // are not UTF-8 (a BLOB) fail to decode.
                let Ok(value) = <&str as Decode<DB>>::decode(raw) else {
                    bad.get_or_insert_with(|| {
                        format!(
                            "column `{}` is not text (binary data, not UTF-8): convert it in the query",
                            self.columns[c]
                        )
                    });
                    spans.push(None);
                    continue;
                };
                let value = value.trim();
                if value.is_empty() {
                    spans.push(None);
                    continue;
                }
                let start = text.len();
                kind.write(value, &mut text);
                spans.push(Some((start, text.len())));
            }
            values.clear();
            values.extend(spans.iter().map(|s| s.map(|(a, b)| &text[a..b])));
            let at = RowRef::at(n);
            let flow = match bad {
                None => {
                    summary.records += 1;
                    sink(Item::Record(Record {
                        at,
                        values: &values,
                        text: Some(&text),
                    }))
                }
                Some(reason) => {
                    summary.bad += 1;
                    sink(Item::Bad(BadRow {
                        at,
                        key: values.first().copied().flatten().map(str::to_string),
                        reason,
                    }))
                }
            };
            values = super::recycle(values);
            if flow.is_break() {
                break;
            }
        }
        Ok(summary)
    }
}

/// How a column's text is written for the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// PostgreSQL's `t`/`f`.
    Bool,
    /// `2026-12-03 09:30:00[+01]`: ISO 8601 with a `T` (and an offset with minutes).
    Timestamp,
}

impl Kind {
    fn write(self, value: &str, out: &mut String) {
        match self {
            Kind::Text => out.push_str(value),
            Kind::Bool => out.push_str(match value {
                "t" => "true",
                "f" => "false",
                other => other,
            }),
            Kind::Timestamp => {
                let start = out.len();
                out.push_str(value);
                if value.len() > 10 && value.as_bytes()[10] == b' ' {
                    out.replace_range(start + 10..start + 11, "T");
                }
                // PostgreSQL writes a whole-hour offset as +01: ISO 8601 and RFC 3339 agree
                // on +01:00.
                let b = value.as_bytes();
                if b.len() > 19
                    && matches!(b[b.len() - 3], b'+' | b'-')
                    && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
                {
                    out.push_str(":00");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(kind: Kind, value: &str) -> String {
        let mut out = String::new();
        kind.write(value, &mut out);
        out
    }

    #[test]
    fn values_are_written_as_iso_8601_and_words() {
        assert_eq!(
            written(Kind::Timestamp, "2026-12-03 09:30:00"),
            "2026-12-03T09:30:00"
        );
        assert_eq!(
            written(Kind::Timestamp, "2026-12-03 09:30:00.25+01"),
            "2026-12-03T09:30:00.25+01:00"
        );
        assert_eq!(
            written(Kind::Timestamp, "2026-12-03 09:30:00+05:30"),
            "2026-12-03T09:30:00+05:30"
        );
        assert_eq!(written(Kind::Bool, "t"), "true");
        assert_eq!(written(Kind::Bool, "f"), "false");
        assert_eq!(written(Kind::Text, "12.50"), "12.50");
    }

    #[test]
    fn the_password_never_shows() {
        let url = Secret::new("postgres://dialsync:s%40cret!@db.example:5432/crm");
        let r = Redact::new(&url);
        let said = r.apply(
            "connecting to postgres://dialsync:s%40cret!@db.example:5432/crm with s@cret! and s%40cret!".into(),
        );
        assert!(!said.contains("cret"), "{said}");
        assert_eq!(
            sql_display_url(url.expose()),
            "postgres://db.example:5432/crm"
        );
    }
}
