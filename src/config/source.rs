//! `[job.source]`: where the CRM export comes from (a file, or an HTTP(S) export with its
//! auth and pagination) and how it is parsed, compiled from the raw table with every
//! mistake named by its key and line.

use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;
use toml::Spanned;

use super::compile::{ca_file_problem, delimiter, secret_source};
use super::raw::{
    self, AuthType, ClientAuth, HttpFormat, HttpMethod, PageType, RawAuth, RawPagination,
    SourceType,
};
use super::{key, Ctx, Seg, SourceConfig, SourceKind, TokenSource};

pub(crate) const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_HTTP_MAX_BYTES: u64 = 4 << 30;
pub(crate) const DEFAULT_HTTP_RETRIES: u32 = 3;
pub(crate) const DEFAULT_HTTP_RETRY_DELAY: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_MAX_PAGES: u32 = 10_000;

/// An export read over HTTP(S): downloaded to a private temporary file, page by page,
/// before it is read like a file.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSource {
    pub url: reqwest::Url,
    pub method: HttpMethod,
    /// POST only.
    pub body: Option<String>,
    /// Extra request headers (names checked, never `Authorization`).
    pub headers: Vec<(String, String)>,
    pub format: HttpFormat,
    pub auth: Option<HttpAuth>,
    pub pagination: Option<Pagination>,
    /// Between two reads of an answer (a large export takes as long as it takes).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// The most the whole export (all pages) may be.
    pub max_bytes: u64,
    /// CAs trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Whether a redirect to another host is followed (never with the credentials).
    pub follow_redirects: bool,
    /// Attempts after the first, for a 5xx, 429, timeout or broken connection.
    pub retries: u32,
    pub retry_delay: Duration,
}

pub(crate) const DEFAULT_SQL_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_SQL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The CRM's rows from a SQL query, read in a read-only transaction from the driver's row
/// stream (never the whole result in memory).
#[derive(Debug, Clone, PartialEq)]
pub struct SqlSource {
    pub dialect: SqlDialect,
    /// `postgres://user:password@host/db?sslmode=require`: read when a run starts, never
    /// logged (messages show it without user and password).
    pub url: TokenSource,
    /// Its columns are the columns the mapping names.
    pub query: String,
    /// Until the first row, and between two rows.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl SqlDialect {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SqlDialect::Postgres => "PostgreSQL",
            SqlDialect::Mysql => "MySQL",
        }
    }

    /// The URL schemes the driver takes.
    pub(crate) fn schemes(self) -> &'static [&'static str] {
        match self {
            SqlDialect::Postgres => &["postgres", "postgresql"],
            SqlDialect::Mysql => &["mysql", "mariadb"],
        }
    }
}

/// How dialsync proves who it is to the CRM. Each secret is read when a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpAuth {
    Bearer(TokenSource),
    Basic {
        username: String,
        password: TokenSource,
    },
    /// A header of the CRM's choosing (`X-API-Key`).
    Header {
        name: String,
        value: TokenSource,
    },
    /// OAuth2 client credentials (RFC 6749 4.4): a token from `token_url`, kept until it
    /// expires.
    OAuth2 {
        token_url: reqwest::Url,
        client_id: String,
        client_secret: TokenSource,
        scope: Option<String>,
        client_auth: ClientAuth,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pagination {
    pub kind: PageKind,
    /// A safety cap: an export with more pages is unreadable (so nothing is removed).
    pub max_pages: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PageKind {
    /// The next page's URL is in the body at `path` (HubSpot `paging.next.link`, OData
    /// `@odata.nextLink`); none there ends the export.
    NextUrl { path: Vec<String> },
    /// RFC 8288 `Link: <...>; rel="next"`.
    LinkHeader,
    /// A cursor in the body at `path`, sent back as the query parameter `param`.
    Cursor { path: Vec<String>, param: String },
    /// `param` = records before the page; `size_param` = `size` when set.
    Offset {
        param: String,
        size: Option<(String, u64)>,
    },
    /// `param` = page number from `start`; `size_param` = `size` when set.
    Page {
        param: String,
        size: Option<(String, u64)>,
        start: u64,
    },
}

/// What `format`, `pagination` and the readers make of `type`.
fn describe(t: SourceType) -> &'static str {
    match t {
        SourceType::Csv => "csv",
        SourceType::Json => "json",
        SourceType::Http => "http",
        SourceType::Postgres => "postgres",
        SourceType::Mysql => "mysql",
    }
}

/// A dotted path into a JSON body (`paging.next.link`); a key with a dot in it
/// (`@odata.nextLink`) is found as a whole too (see the page walker).
fn json_path(text: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = text.split('.').map(str::to_string).collect();
    (!parts.iter().any(|k| k.trim().is_empty())).then_some(parts)
}

/// The URL as messages show it: scheme, host, port and path, without credentials or
/// query (either may hold a secret).
pub(crate) fn display_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// The most lines `skip_header_lines` or `skip_footer_lines` may skip.
const MAX_SKIPPED_LINES: u64 = 1000;

/// Which types of source a key of `[job.source]` applies to (the keys of every type,
/// `type`, `path` and the readers' settings, are checked where they are read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    Http,
    Sql,
    /// HTTP and SQL, not files.
    Remote,
}

/// Each key of `[job.source]` that applies to some types only, and whether it is set.
fn typed_keys(s: &raw::RawSource) -> [(&'static str, Applies, bool); 18] {
    use Applies::{Http, Remote, Sql};
    [
        ("url", Remote, s.url.is_some()),
        ("timeout", Remote, s.timeout.is_some()),
        ("connect_timeout", Remote, s.connect_timeout.is_some()),
        ("method", Http, s.method.is_some()),
        ("body", Http, s.body.is_some()),
        ("headers", Http, s.headers.is_some()),
        ("format", Http, s.format.is_some()),
        ("max_bytes", Http, s.max_bytes.is_some()),
        ("ca_file", Http, s.ca_file.is_some()),
        ("follow_redirects", Http, s.follow_redirects.is_some()),
        ("retries", Http, s.retries.is_some()),
        ("retry_delay", Http, s.retry_delay.is_some()),
        ("auth", Http, s.auth.is_some()),
        ("pagination", Http, s.pagination.is_some()),
        ("query", Sql, s.query.is_some()),
        ("url_file", Sql, s.url_file.is_some()),
        ("url_env", Sql, s.url_env.is_some()),
        ("url_credential", Sql, s.url_credential.is_some()),
    ]
}

/// Reports each key set in `s` that a source of type `t` does not take, saying which
/// types take it.
fn misplaced_keys(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    s: &raw::RawSource,
    t: SourceType,
) {
    let remote = matches!(
        t,
        SourceType::Http | SourceType::Postgres | SourceType::Mysql
    );
    let sql = matches!(t, SourceType::Postgres | SourceType::Mysql);
    for (name, applies, set) in typed_keys(s) {
        let fits = match applies {
            Applies::Http => t == SourceType::Http,
            Applies::Sql => sql,
            Applies::Remote => remote,
        };
        if !set || fits {
            continue;
        }
        let mut why = match applies {
            Applies::Http => "only applies to type = \"http\"".to_string(),
            Applies::Sql => "only applies to type = \"postgres\" or \"mysql\"".to_string(),
            Applies::Remote => "only applies to an HTTP or SQL source".to_string(),
        };
        if !remote {
            why.push_str(&format!(" (this source is a {} file)", describe(t)));
        } else if sql && name == "ca_file" {
            why.push_str(" (a database's TLS is set in its URL: sslmode=verify-full&sslrootcert=... for PostgreSQL, ssl-mode=VERIFY_IDENTITY&ssl-ca=... for MySQL)");
        }
        let path: Vec<Seg> = prefix.iter().cloned().chain([key(name)]).collect();
        ctx.at(root, &path, why);
    }
}

pub(super) fn compile_source(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    mut s: raw::RawSource,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<SourceConfig> {
    let at = |k: &str| -> Vec<Seg> { prefix.iter().cloned().chain([key(k)]).collect() };
    let start = ctx.problems.len();
    match s.kind {
        None => ctx.missing(
            root,
            prefix,
            "type",
            "missing key `type` (\"csv\" or \"json\" for a file, \"http\" for an export URL, \"postgres\" or \"mysql\" for a query)",
        ),
        Some(SourceType::Http) => {
            if s.path.is_some() {
                ctx.at(
                    root,
                    &at("path"),
                    "an HTTP source has a `url`, not a `path`",
                );
            }
            if s.format.is_none() {
                ctx.missing(
                    root,
                    prefix,
                    "format",
                    "missing key `format` (\"csv\", \"json\" or \"ndjson\": what the URL returns)",
                );
            }
        }
        Some(SourceType::Postgres | SourceType::Mysql) => {
            if s.path.is_some() {
                ctx.at(
                    root,
                    &at("path"),
                    "a SQL source has a `url` and a `query`, not a `path`",
                );
            }
        }
        Some(t) => {
            if s.path.is_none() {
                ctx.missing(
                    root,
                    prefix,
                    "path",
                    "missing key `path` (where the CRM export is)",
                );
            }
            misplaced_keys(ctx, root, prefix, &s, t);
        }
    }
    // What the reader parses.
    let kind = match (s.kind, s.format) {
        (Some(SourceType::Csv), _) | (Some(SourceType::Http), Some(HttpFormat::Csv)) => {
            Some(SourceKind::Csv)
        }
        (Some(SourceType::Json), _) | (Some(SourceType::Http), Some(_)) => Some(SourceKind::Json),
        (Some(SourceType::Postgres | SourceType::Mysql), _) => Some(SourceKind::Sql),
        _ => None,
    };
    let delimiter = s
        .delimiter
        .as_deref()
        .and_then(|d| delimiter(ctx, root, &at("delimiter"), d));
    if delimiter.is_some() && matches!(kind, Some(SourceKind::Json | SourceKind::Sql)) {
        ctx.at(root, &at("delimiter"), "only applies to CSV sources");
    }
    let encoding = s.encoding.as_deref().and_then(|e| {
        match encoding_rs::Encoding::for_label(e.trim().as_bytes()) {
            Some(enc) if enc == encoding_rs::UTF_8 => None,
            Some(enc) if enc.output_encoding() == enc => Some(enc),
            _ => {
                ctx.at(
                    root,
                    &at("encoding"),
                    format!("`{e}` is not a supported encoding: use \"utf-8\", \"windows-1252\" or \"iso-8859-1\" (any WHATWG label works)"),
                );
                None
            }
        }
    });
    let comment = s.comment.as_deref().and_then(|c| {
        let ok = c.len() == 1 && c.is_ascii() && !matches!(c, "\"" | "\n" | "\r" | " ");
        let byte = c.as_bytes().first().copied().filter(|_| ok);
        if byte.is_none() || byte == delimiter {
            ctx.at(
                root,
                &at("comment"),
                format!("`{c}` cannot start a comment: use one character such as \"#\", not the delimiter"),
            );
            return None;
        }
        byte
    });
    for (name, n) in [
        ("skip_header_lines", s.skip_header_lines),
        ("skip_footer_lines", s.skip_footer_lines),
    ] {
        if n.is_some_and(|n| n > MAX_SKIPPED_LINES) {
            ctx.at(
                root,
                &at(name),
                format!("at most {MAX_SKIPPED_LINES} lines can be skipped"),
            );
        }
    }
    let record_path: Vec<String> = match s.record_path.as_deref() {
        None => Vec::new(),
        Some(p) => {
            let parts = json_path(p).unwrap_or_else(|| {
                ctx.at(
                    root,
                    &at("record_path"),
                    format!("`{p}` is not a path: keys separated by dots, e.g. \"results\" or \"data.items\""),
                );
                Vec::new()
            });
            if matches!(kind, Some(SourceKind::Csv | SourceKind::Sql)) {
                ctx.at(root, &at("record_path"), "only applies to JSON sources");
            }
            if s.format == Some(HttpFormat::Ndjson) {
                ctx.at(
                    root,
                    &at("record_path"),
                    "only applies to format = \"json\" (NDJSON lines are the records)",
                );
            }
            parts
        }
    };
    if matches!(kind, Some(SourceKind::Json | SourceKind::Sql)) {
        for (name, set) in [
            ("skip_header_lines", s.skip_header_lines.is_some()),
            ("skip_footer_lines", s.skip_footer_lines.is_some()),
            ("comment", s.comment.is_some()),
        ] {
            if set {
                ctx.at(root, &at(name), "only applies to CSV sources");
            }
        }
    }
    if kind == Some(SourceKind::Sql) && s.encoding.is_some() {
        ctx.at(
            root,
            &at("encoding"),
            "only applies to files and HTTP exports (the database's driver hands over UTF-8)",
        );
    }
    let http = match s.kind {
        Some(SourceType::Http) => compile_http(ctx, root, prefix, &mut s, resolve),
        _ => None,
    };
    let sql = match s.kind {
        Some(SourceType::Postgres) => {
            compile_sql(ctx, root, prefix, &mut s, SqlDialect::Postgres, resolve)
        }
        Some(SourceType::Mysql) => {
            compile_sql(ctx, root, prefix, &mut s, SqlDialect::Mysql, resolve)
        }
        Some(SourceType::Http) => {
            misplaced_keys(ctx, root, prefix, &s, SourceType::Http);
            None
        }
        _ => None,
    };
    if ctx.problems.len() > start {
        return None;
    }
    let path = match (&http, &sql) {
        (Some(h), _) => PathBuf::from(display_url(&h.url)),
        (_, Some(q)) => PathBuf::from(sql_label(q)),
        _ => resolve(s.path?),
    };
    Some(SourceConfig {
        kind: kind?,
        path,
        delimiter,
        encoding,
        record_path,
        skip_header_lines: s.skip_header_lines.unwrap_or(0),
        skip_footer_lines: s.skip_footer_lines.unwrap_or(0),
        comment,
        http: http.map(Box::new),
        sql: sql.map(Box::new),
    })
}

/// What messages call a SQL source before its URL is read: the URL without user and
/// password when it is in the config, else the dialect and where the URL is.
pub(crate) fn sql_label(q: &SqlSource) -> String {
    match &q.url {
        TokenSource::Inline(url) => sql_display_url(url.expose()),
        TokenSource::File(p) => format!("{} query (URL in {})", q.dialect.name(), p.display()),
        TokenSource::Env(v) => format!("{} query (URL in ${v})", q.dialect.name()),
        TokenSource::Credential(c) => format!("{} query (URL in credential {c})", q.dialect.name()),
    }
}

/// A database URL as messages show it: scheme, host, port and database, without user,
/// password or parameters.
pub(crate) fn sql_display_url(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => {
            let mut shown = format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""));
            if let Some(port) = u.port() {
                shown.push_str(&format!(":{port}"));
            }
            shown.push_str(u.path());
            shown
        }
        Err(_) => "a database URL that does not parse".into(),
    }
}

/// The keys of `type = "postgres"` / `"mysql"` (problems reported; `None` when one is
/// wrong).
fn compile_sql(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    s: &mut raw::RawSource,
    dialect: SqlDialect,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<SqlSource> {
    let at = |k: &str| -> Vec<Seg> { prefix.iter().cloned().chain([key(k)]).collect() };
    let start = ctx.problems.len();
    let kind = match dialect {
        SqlDialect::Postgres => SourceType::Postgres,
        SqlDialect::Mysql => SourceType::Mysql,
    };
    misplaced_keys(ctx, root, prefix, s, kind);
    let schemes = dialect.schemes();
    let example = match dialect {
        SqlDialect::Postgres => "postgres://dialsync@crm-db.example/crm?sslmode=verify-full",
        SqlDialect::Mysql => "mysql://dialsync@crm-db.example/crm?ssl-mode=VERIFY_IDENTITY",
    };
    let given = [s.url.take(), s.url_env.take(), s.url_credential.take()];
    let none_given = given.iter().all(Option::is_none) && s.url_file.is_none();
    let url = secret_source(
        ctx,
        root,
        prefix,
        "url",
        given,
        s.url_file.take().map(resolve),
        |u| match reqwest::Url::parse(u) {
            Ok(url) if schemes.contains(&url.scheme()) => None,
            _ => Some(match dialect {
                SqlDialect::Postgres => {
                    "is not a PostgreSQL URL, e.g. \"postgres://dialsync@crm-db.example/crm\""
                }
                SqlDialect::Mysql => {
                    "is not a MySQL URL, e.g. \"mysql://dialsync@crm-db.example/crm\""
                }
            }),
        },
    );
    if none_given {
        ctx.missing(
            root,
            prefix,
            "url",
            &format!("missing key `url` (or `url_file`, `url_env`, `url_credential`: the database URL holds its password), e.g. \"{example}\""),
        );
    }
    let query = match s.query.take() {
        Some(q) if q.trim().trim_end_matches(';').trim().is_empty() => {
            ctx.at(
                root,
                &at("query"),
                "is empty: the SELECT whose columns the mapping names",
            );
            None
        }
        Some(q) => Some(q.trim().trim_end_matches(';').trim_end().to_string()),
        None => {
            ctx.missing(
                root,
                prefix,
                "query",
                "missing key `query` (the SELECT whose columns are the columns [job.fields] names)",
            );
            None
        }
    };
    if ctx.problems.len() > start {
        return None;
    }
    Some(SqlSource {
        dialect,
        url: url?,
        query: query?,
        timeout: s.timeout.map_or(DEFAULT_SQL_TIMEOUT, |d| d.0),
        connect_timeout: s
            .connect_timeout
            .map_or(DEFAULT_SQL_CONNECT_TIMEOUT, |d| d.0),
    })
}

/// The keys of `type = "http"` (problems reported; `None` when one is wrong).
fn compile_http(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    s: &mut raw::RawSource,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<HttpSource> {
    let at = |k: &str| -> Vec<Seg> { prefix.iter().cloned().chain([key(k)]).collect() };
    let start = ctx.problems.len();
    let url = match s.url.as_deref() {
        None => {
            ctx.missing(
                root,
                prefix,
                "url",
                "missing key `url` (the CRM's export address, https://...)",
            );
            None
        }
        Some(u) => {
            match reqwest::Url::parse(u.trim()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    if !url.username().is_empty() || url.password().is_some() {
                        ctx.at(
                        root,
                        &at("url"),
                        "holds a user name or password: move them to [job.source.auth] (type = \"basic\"), where they can come from a file or a credential and are never logged",
                    );
                        None
                    } else {
                        Some(url)
                    }
                }
                _ => {
                    ctx.at(
                    root,
                    &at("url"),
                    format!("`{u}` is not an http(s) URL, e.g. \"https://crm.example.com/export.csv\""),
                );
                    None
                }
            }
        }
    };
    let method = s.method.unwrap_or(HttpMethod::Get);
    if s.body.is_some() && method == HttpMethod::Get {
        ctx.at(
            root,
            &at("body"),
            "a GET request has no body: set method = \"POST\" to send one",
        );
    }
    let mut headers = Vec::new();
    for (name, value) in s.headers.take().unwrap_or_default() {
        let path: Vec<Seg> = at("headers").into_iter().chain([key(&name)]).collect();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ctx.at(root, &path, format!("`{name}` is not a header name"));
        } else if reqwest::header::HeaderValue::from_str(&value).is_err() {
            ctx.at(
                root,
                &path,
                "is not a header value (one line of visible characters)",
            );
        } else if name.eq_ignore_ascii_case("authorization") {
            ctx.at(
                root,
                &path,
                "the Authorization header comes from [job.source.auth] (type = \"bearer\", \"basic\" or \"header\"), where the secret can come from a file or a credential and is never logged",
            );
        } else {
            headers.push((name, value));
        }
    }
    let ca_file = s.ca_file.take().map(resolve);
    if let Some(why) = ca_file.as_deref().and_then(ca_file_problem) {
        ctx.at(root, &at("ca_file"), why);
    }
    let retries = ctx
        .ranged(root, &at("retries"), s.retries, 0..=10, "")
        .map_or(DEFAULT_HTTP_RETRIES, |n| n as u32);
    let auth = s
        .auth
        .take()
        .and_then(|a| compile_auth(ctx, root, &at("auth"), a, resolve));
    let format = s.format?;
    let pagination = s
        .pagination
        .take()
        .and_then(|p| compile_pagination(ctx, root, &at("pagination"), p, format));
    if ctx.problems.len() > start {
        return None;
    }
    Some(HttpSource {
        url: url?,
        method,
        body: s.body.take(),
        headers,
        format,
        auth,
        pagination,
        timeout: s.timeout.map_or(DEFAULT_HTTP_TIMEOUT, |d| d.0),
        connect_timeout: s
            .connect_timeout
            .map_or(DEFAULT_HTTP_CONNECT_TIMEOUT, |d| d.0),
        max_bytes: s.max_bytes.map_or(DEFAULT_HTTP_MAX_BYTES, |b| b.0),
        ca_file,
        follow_redirects: s.follow_redirects.unwrap_or(false),
        retries,
        retry_delay: s.retry_delay.map_or(DEFAULT_HTTP_RETRY_DELAY, |d| d.0),
    })
}

fn compile_auth(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    section: &[Seg],
    a: RawAuth,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<HttpAuth> {
    let at = |k: &str| -> Vec<Seg> { section.iter().cloned().chain([key(k)]).collect() };
    let Some(kind) = a.kind else {
        ctx.missing(
            root,
            section,
            "type",
            "missing key `type` (\"bearer\", \"basic\", \"header\" or \"oauth2_client_credentials\")",
        );
        return None;
    };
    let not_blank = |v: &str| v.is_empty().then_some("is empty");
    let secret =
        |ctx: &mut Ctx<'_>, name: &str, given: [Option<String>; 3], file: Option<PathBuf>| {
            let set = given.iter().any(Option::is_some) || file.is_some();
            let found = secret_source(ctx, root, section, name, given, file, not_blank);
            if !set {
                ctx.missing(
                    root,
                    section,
                    name,
                    &format!(
                    "missing key `{name}` (or `{name}_file`, `{name}_env`, `{name}_credential`)"
                ),
                );
            }
            found
        };
    let uses = |kind: AuthType| -> &'static [&'static str] {
        match kind {
            AuthType::Bearer => &["token"],
            AuthType::Basic => &["username", "password"],
            AuthType::Header => &["name", "value"],
            AuthType::OAuth2ClientCredentials => &[
                "token_url",
                "client_id",
                "client_secret",
                "scope",
                "client_auth",
            ],
        }
    };
    let given: [(&str, bool); 10] = [
        (
            "token",
            a.token.is_some()
                || a.token_file.is_some()
                || a.token_env.is_some()
                || a.token_credential.is_some(),
        ),
        ("username", a.username.is_some()),
        (
            "password",
            a.password.is_some()
                || a.password_file.is_some()
                || a.password_env.is_some()
                || a.password_credential.is_some(),
        ),
        ("name", a.name.is_some()),
        (
            "value",
            a.value.is_some()
                || a.value_file.is_some()
                || a.value_env.is_some()
                || a.value_credential.is_some(),
        ),
        ("token_url", a.token_url.is_some()),
        ("client_id", a.client_id.is_some()),
        (
            "client_secret",
            a.client_secret.is_some()
                || a.client_secret_file.is_some()
                || a.client_secret_env.is_some()
                || a.client_secret_credential.is_some(),
        ),
        ("scope", a.scope.is_some()),
        ("client_auth", a.client_auth.is_some()),
    ];
    let start = ctx.problems.len();
    for (name, set) in given {
        if set && !uses(kind).contains(&name) {
            ctx.at(
                root,
                &at(name),
                format!(
                    "does not apply to this type of auth (it takes {})",
                    uses(kind).join(", ")
                ),
            );
        }
    }
    let auth = match kind {
        AuthType::Bearer => secret(
            ctx,
            "token",
            [a.token, a.token_env, a.token_credential],
            a.token_file.map(resolve),
        )
        .map(HttpAuth::Bearer),
        AuthType::Basic => {
            let username = a.username.or_else(|| {
                ctx.missing(root, section, "username", "missing key `username`");
                None
            });
            let password = secret(
                ctx,
                "password",
                [a.password, a.password_env, a.password_credential],
                a.password_file.map(resolve),
            );
            if username.as_deref().is_some_and(|u| u.contains(':')) {
                ctx.at(root, &at("username"), "a Basic user name cannot hold `:`");
            }
            Some(HttpAuth::Basic {
                username: username?,
                password: password?,
            })
        }
        AuthType::Header => {
            let name = a.name.or_else(|| {
                ctx.missing(
                    root,
                    section,
                    "name",
                    "missing key `name` (the header, e.g. \"X-API-Key\")",
                );
                None
            });
            if let Some(n) = &name {
                if reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    ctx.at(root, &at("name"), format!("`{n}` is not a header name"));
                }
            }
            let value = secret(
                ctx,
                "value",
                [a.value, a.value_env, a.value_credential],
                a.value_file.map(resolve),
            );
            Some(HttpAuth::Header {
                name: name?,
                value: value?,
            })
        }
        AuthType::OAuth2ClientCredentials => {
            let token_url = match a.token_url.as_deref() {
                None => {
                    ctx.missing(
                        root,
                        section,
                        "token_url",
                        "missing key `token_url` (the OAuth2 token endpoint)",
                    );
                    None
                }
                Some(u) => reqwest::Url::parse(u)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .or_else(|| {
                        ctx.at(
                            root,
                            &at("token_url"),
                            format!("`{u}` is not an http(s) URL"),
                        );
                        None
                    }),
            };
            let client_id = a.client_id.or_else(|| {
                ctx.missing(root, section, "client_id", "missing key `client_id`");
                None
            });
            let client_secret = secret(
                ctx,
                "client_secret",
                [
                    a.client_secret,
                    a.client_secret_env,
                    a.client_secret_credential,
                ],
                a.client_secret_file.map(resolve),
            );
            Some(HttpAuth::OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scope: a.scope,
                client_auth: a.client_auth.unwrap_or(ClientAuth::Basic),
            })
        }
    };
    if ctx.problems.len() > start {
        return None;
    }
    auth
}

fn compile_pagination(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    section: &[Seg],
    p: RawPagination,
    format: HttpFormat,
) -> Option<Pagination> {
    let at = |k: &str| -> Vec<Seg> { section.iter().cloned().chain([key(k)]).collect() };
    let start = ctx.problems.len();
    let Some(kind) = p.kind else {
        ctx.missing(
            root,
            section,
            "type",
            "missing key `type` (\"next_url\", \"link_header\", \"cursor\", \"offset\" or \"page\")",
        );
        return None;
    };
    if format == HttpFormat::Csv {
        ctx.at(
            root,
            &at("type"),
            "pagination applies to format = \"json\" or \"ndjson\": a CSV export URL is one document",
        );
    }
    if format == HttpFormat::Ndjson && matches!(kind, PageType::NextUrl | PageType::Cursor) {
        ctx.at(
            root,
            &at("type"),
            "an NDJSON page has no wrapper to hold the next page's link or cursor: use \"link_header\", \"offset\" or \"page\"",
        );
    }
    let uses: &[&str] = match kind {
        PageType::NextUrl => &["path"],
        PageType::LinkHeader => &[],
        PageType::Cursor => &["path", "param"],
        PageType::Offset => &["param", "size_param", "size"],
        PageType::Page => &["param", "size_param", "size", "start"],
    };
    for (name, set) in [
        ("path", p.path.is_some()),
        ("param", p.param.is_some()),
        ("size_param", p.size_param.is_some()),
        ("size", p.size.is_some()),
        ("start", p.start.is_some()),
    ] {
        if set && !uses.contains(&name) {
            ctx.at(root, &at(name), "does not apply to this type of pagination");
        }
    }
    let path = |ctx: &mut Ctx<'_>| match p.path.as_deref() {
        None => {
            ctx.missing(
                root,
                section,
                "path",
                "missing key `path` (where the body holds it, e.g. \"paging.next.link\")",
            );
            None
        }
        Some(text) => json_path(text).or_else(|| {
            ctx.at(
                root,
                &at("path"),
                format!(
                    "`{text}` is not a path: keys separated by dots, e.g. \"paging.next.after\""
                ),
            );
            None
        }),
    };
    let param = |ctx: &mut Ctx<'_>, example: &str| match p.param.as_deref() {
        None | Some("") => {
            ctx.missing(
                root,
                section,
                "param",
                &format!("missing key `param` (the query parameter, e.g. \"{example}\")"),
            );
            None
        }
        Some(v) => Some(v.to_string()),
    };
    let size = |ctx: &mut Ctx<'_>| -> Option<(String, u64)> {
        let n = ctx.ranged(root, &at("size"), p.size, 1..=1_000_000, "");
        match (&p.size_param, n) {
            (Some(name), Some(n)) => Some((name.clone(), n as u64)),
            (None, None) => None,
            (Some(_), None) if p.size.is_none() => {
                ctx.missing(
                    root,
                    section,
                    "size",
                    "missing key `size` (records per page, sent as size_param)",
                );
                None
            }
            (None, Some(_)) => {
                ctx.missing(
                    root,
                    section,
                    "size_param",
                    "missing key `size_param` (the query parameter that sends `size`)",
                );
                None
            }
            _ => None,
        }
    };
    let max_pages = ctx
        .ranged(root, &at("max_pages"), p.max_pages, 1..=1_000_000, "")
        .map_or(DEFAULT_MAX_PAGES, |n| n as u32);
    let kind = match kind {
        PageType::NextUrl => path(ctx).map(|path| PageKind::NextUrl { path }),
        PageType::LinkHeader => Some(PageKind::LinkHeader),
        PageType::Cursor => {
            let (path, param) = (path(ctx), param(ctx, "after"));
            Some(PageKind::Cursor {
                path: path?,
                param: param?,
            })
        }
        PageType::Offset => {
            let (param, size) = (param(ctx, "offset"), size(ctx));
            Some(PageKind::Offset {
                param: param?,
                size,
            })
        }
        PageType::Page => {
            let (param, size) = (param(ctx, "page"), size(ctx));
            let first = ctx
                .ranged(
                    root,
                    &at("start"),
                    p.start,
                    0..=1,
                    " (the number of the first page)",
                )
                .unwrap_or(1);
            Some(PageKind::Page {
                param: param?,
                size,
                start: first as u64,
            })
        }
    };
    if ctx.problems.len() > start {
        return None;
    }
    Some(Pagination {
        kind: kind?,
        max_pages,
    })
}
