//! `[job.source] type = "http"`: the export is downloaded, whole, to a private temporary
//! file in the state directory before a byte of it is read; the readers then read that
//! file as they read any export. A paged export becomes one file of one JSON record a
//! line, with the page each record came from kept for the row numbers.
//!
//! A download either completes or fails the run: a body shorter than its Content-Length,
//! a broken connection, a 5xx or a timeout that outlasts the retries, too many pages or
//! bytes: each is a [`SourceError`], so nothing is planned and nothing removed. What a
//! failure says names the URL without its query or credentials, and never a secret.

mod auth;
mod pages;

use std::collections::HashSet;
use std::io::{BufReader, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{
    HeaderMap, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LINK, LOCATION,
};
use reqwest::{StatusCode, Url};

use crate::config::{
    display_url, HttpFormat, HttpMethod, HttpSource, PageKind, SourceConfig, SourceKind,
};

use super::{Pages, SourceError};
use auth::Auth;

/// What the CRM said last time an export was downloaded whole, to ask next time whether
/// it changed (`If-None-Match`, `If-Modified-Since`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Validators {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_modified: Option<String>,
}

impl Validators {
    fn of(headers: &HeaderMap) -> Option<Validators> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let v = Validators {
            etag: text(ETAG),
            last_modified: text(LAST_MODIFIED),
        };
        (v.etag.is_some() || v.last_modified.is_some()).then_some(v)
    }
}

/// A finished download.
pub(crate) enum Fetched {
    /// 304 Not Modified: the export is the one the stored validators came with.
    Unchanged,
    Export(Box<Download>),
}

/// The downloaded export, in a temporary file that is removed when this is dropped.
pub(crate) struct Download {
    pub file: tempfile::NamedTempFile,
    /// How to read the file: the job's source, as the file's format.
    pub read_as: SourceConfig,
    pub pages: Pages,
    /// For the next run's conditional request (an unpaged export only).
    pub validators: Option<Validators>,
    pub bytes: u64,
    /// `validate`: only the first page of a paged export was downloaded.
    pub partial: bool,
}

impl Download {
    /// What the report says of it.
    pub(crate) fn note(&self, url: &str, took: Duration) -> String {
        let pages = match self.pages.count() {
            0 => String::new(),
            n => format!("{} page{}, ", n, if n == 1 { "" } else { "s" }),
        };
        format!(
            "downloaded {url} ({pages}{} in {:.1} s)",
            size(self.bytes),
            took.as_secs_f64()
        )
    }
}

/// What a download is for.
pub(crate) struct Request<'a> {
    /// Where the temporary files go (the state directory).
    pub dir: &'a Path,
    /// Ask whether the export changed since these were given (an unpaged export only).
    pub conditional: Option<&'a Validators>,
    /// `validate`: the first page only (an unpaged export is downloaded whole: only its
    /// records show its columns).
    pub sample: bool,
    /// Polled between reads: a stop request ends the download.
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

/// Redirects followed for one request.
const MAX_REDIRECTS: u32 = 10;
/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt: a timeout, a broken connection, a 5xx or 429.
    Passing(String),
    /// Another attempt would fail alike.
    Fatal(String),
    /// A stop was requested.
    Stopped,
}

/// `e` without the URL reqwest puts in its message (its query may hold a secret).
fn without_url(e: reqwest::Error) -> String {
    chain(&e.without_url())
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::engine::outcome::error_chain(e)
}

/// Downloads the export of `cfg` (an HTTP source).
pub(crate) async fn download(cfg: &SourceConfig, req: Request<'_>) -> Result<Fetched, SourceError> {
    let http = cfg
        .http
        .as_deref()
        .expect("download is called for HTTP sources");
    let shown = display_url(&http.url);
    let fail = |message: String| SourceError::Download {
        url: shown.clone(),
        message,
    };
    let mut session = Session::new(http, &req).map_err(|f| match f {
        Failure::Stopped => SourceError::Stopped,
        Failure::Passing(m) | Failure::Fatal(m) => fail(m),
    })?;
    let temp = |what: &str| {
        tempfile::Builder::new()
            .prefix(&format!(".dialsync-{what}-"))
            .tempfile_in(req.dir)
            .map_err(|e| {
                fail(format!(
                    "cannot create a temporary file in {}: {e}",
                    req.dir.display()
                ))
            })
    };
    let mut file = temp("download")?;
    let fetched = match &http.pagination {
        None => {
            let answer = session
                .get(http.url.clone(), file.as_file_mut(), req.conditional)
                .await;
            match answer {
                Ok(Answer::NotModified) => return Ok(Fetched::Unchanged),
                Ok(Answer::Body { headers, .. }) => Download {
                    read_as: SourceConfig {
                        kind: match http.format {
                            HttpFormat::Csv => SourceKind::Csv,
                            HttpFormat::Json | HttpFormat::Ndjson => SourceKind::Json,
                        },
                        http: None,
                        ..cfg.clone()
                    },
                    pages: Pages::default(),
                    validators: Validators::of(&headers),
                    bytes: session.received,
                    partial: false,
                    file,
                },
                Err(f) => return Err(session.failed(f, &fail)),
            }
        }
        Some(paging) => {
            let mut scratch = temp("page")?;
            let walked = session
                .pages(cfg, http, paging, &mut scratch, file.as_file_mut())
                .await;
            match walked {
                Ok(pages) => Download {
                    read_as: SourceConfig {
                        kind: SourceKind::Json,
                        record_path: Vec::new(),
                        http: None,
                        ..cfg.clone()
                    },
                    partial: req.sample,
                    pages,
                    validators: None,
                    bytes: session.received,
                    file,
                },
                Err(f) => return Err(session.failed(f, &fail)),
            }
        }
    };
    let mut fetched = fetched;
    fetched
        .file
        .as_file_mut()
        .rewind()
        .map_err(|e| fail(format!("cannot read the download back: {e}")))?;
    Ok(Fetched::Export(Box::new(fetched)))
}

enum Answer {
    NotModified,
    Body {
        headers: HeaderMap,
        /// The URL that answered (after redirects), for relative links.
        url: Url,
    },
}

struct Session<'a> {
    http: &'a HttpSource,
    client: reqwest::Client,
    auth: Auth,
    sample: bool,
    stop: &'a (dyn Fn() -> bool + Sync),
    /// Bytes received so far, of every page.
    received: u64,
    /// Which page is being read (for messages; 0: not paged).
    page: u32,
}

impl<'a> Session<'a> {
    fn new(http: &'a HttpSource, req: &Request<'a>) -> Result<Session<'a>, Failure> {
        let mut builder = crate::tls::with_system_roots(reqwest::Client::builder())
            .user_agent(concat!("dialsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(http.connect_timeout)
            // Between two reads, not for the whole export: a large one takes its time.
            .read_timeout(http.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &http.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Failure::Fatal(format!("ca_file {}: cannot read it: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Failure::Fatal(format!(
                    "ca_file {}: not a PEM certificate bundle: {}",
                    path.display(),
                    without_url(e)
                ))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        Ok(Session {
            http,
            client: builder
                .build()
                .map_err(|e| Failure::Fatal(format!("cannot set up HTTPS: {}", without_url(e))))?,
            auth: Auth::resolve(http.auth.as_ref())?,
            sample: req.sample,
            stop: req.stop,
            received: 0,
            page: 0,
        })
    }

    fn failed(&self, f: Failure, fail: &dyn Fn(String) -> SourceError) -> SourceError {
        let on_page = |m: String| match self.page {
            0 => m,
            n => format!("page {n}: {m}"),
        };
        match f {
            Failure::Stopped => SourceError::Stopped,
            Failure::Passing(m) => fail(on_page(match self.http.retries {
                0 => m,
                n => format!("{m} (tried {} times)", n + 1),
            })),
            Failure::Fatal(m) => fail(on_page(m)),
        }
    }

    /// Every page, one after the other, into `out`.
    async fn pages(
        &mut self,
        cfg: &SourceConfig,
        http: &HttpSource,
        paging: &crate::config::Pagination,
        scratch: &mut tempfile::NamedTempFile,
        out: &mut std::fs::File,
    ) -> Result<Pages, Failure> {
        let mut starts = Vec::new();
        let mut records = 0u64;
        let mut url = match &paging.kind {
            PageKind::Offset { param, size } => first_numbered(&http.url, param, 0, size),
            PageKind::Page { param, size, start } => first_numbered(&http.url, param, *start, size),
            _ => http.url.clone(),
        };
        let mut seen = HashSet::new();
        let mut number = match &paging.kind {
            PageKind::Page { start, .. } => *start,
            _ => 0,
        };
        let mut writer = std::io::BufWriter::with_capacity(256 * 1024, out);
        let write_error = |e: std::io::Error| {
            Failure::Fatal(format!(
                "cannot write the download to the state directory: {e}"
            ))
        };
        loop {
            if self.page >= paging.max_pages {
                return Err(Failure::Fatal(format!(
                    "the export has more than max_pages = {} pages: raise max_pages in [job.source.pagination] if it is meant to be this long (nothing was read)",
                    paging.max_pages
                )));
            }
            seen.insert(url.to_string());
            self.page += 1;
            let Answer::Body {
                headers,
                url: answered,
                ..
            } = self.get(url.clone(), scratch.as_file_mut(), None).await?
            else {
                return Err(Failure::Fatal(
                    "304 Not Modified to a request that did not ask for it".into(),
                ));
            };
            let file = scratch.as_file_mut();
            file.rewind().map_err(write_error)?;
            let input = BufReader::with_capacity(256 * 1024, &mut *file);
            let next_path = match &paging.kind {
                PageKind::NextUrl { path } | PageKind::Cursor { path, .. } => Some(path.as_slice()),
                _ => None,
            };
            let page = match http.format {
                HttpFormat::Json => {
                    pages::json_page(input, &cfg.record_path, next_path, &mut writer)
                }
                HttpFormat::Ndjson => pages::ndjson_page(input, &mut writer),
                HttpFormat::Csv => unreachable!("CSV exports have no pagination (config)"),
            }
            .map_err(|e| match e {
                pages::PageError::Write(e) => write_error(e),
                pages::PageError::Content(m) => Failure::Fatal(format!("the page is {m}")),
            })?;
            starts.push(records);
            records += page.records;
            tracing::debug!(page = self.page, records = page.records, "page downloaded");
            if self.sample {
                break;
            }
            let next = match &paging.kind {
                PageKind::NextUrl { .. } => match page.next {
                    Some(link) => Some(answered.join(&link).map_err(|e| {
                        Failure::Fatal(format!("its next page's link is not a URL ({e})"))
                    })?),
                    None => None,
                },
                PageKind::LinkHeader => {
                    let values = headers.get_all(LINK).iter().filter_map(|v| v.to_str().ok());
                    match pages::link_next(values) {
                        Some(link) => Some(answered.join(&link).map_err(|e| {
                            Failure::Fatal(format!(
                                "its Link header's next target is not a URL ({e})"
                            ))
                        })?),
                        None => None,
                    }
                }
                PageKind::Cursor { param, .. } => page
                    .next
                    .map(|cursor| with_param(&http.url, param, &cursor)),
                // The first empty page ends the export: a page shorter than `size` may be
                // the server's own limit, not the end.
                PageKind::Offset { param, .. } => {
                    (page.records > 0).then(|| with_param(&url, param, &records.to_string()))
                }
                PageKind::Page { param, .. } => (page.records > 0).then(|| {
                    number += 1;
                    with_param(&url, param, &number.to_string())
                }),
            };
            let Some(next) = next else { break };
            if seen.contains(next.as_str()) {
                return Err(Failure::Fatal(format!(
                    "its next page is a page already read ({}): the CRM's paging goes round in a circle",
                    display_url(&next)
                )));
            }
            url = next;
        }
        writer.flush().map_err(write_error)?;
        Ok(Pages::new(starts))
    }

    /// One request, with its retries, its body into `file`.
    async fn get(
        &mut self,
        url: Url,
        file: &mut std::fs::File,
        conditional: Option<&Validators>,
    ) -> Result<Answer, Failure> {
        let mut attempt = 0;
        loop {
            let before = self.received;
            match self.attempt(url.clone(), file, conditional).await {
                Err(Failure::Passing(why)) if attempt < self.http.retries => {
                    self.received = before;
                    let delay = self
                        .http
                        .retry_delay
                        .saturating_mul(1 << attempt.min(16))
                        .min(MAX_RETRY_DELAY);
                    attempt += 1;
                    tracing::warn!(url = %display_url(&url), page = self.page, error = %why, retry_in = ?delay, "the CRM export's download failed; trying again");
                    self.pause(delay).await?;
                }
                other => return other,
            }
        }
    }

    async fn pause(&self, delay: Duration) -> Result<(), Failure> {
        let until = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < until {
            if (self.stop)() {
                return Err(Failure::Stopped);
            }
            tokio::time::sleep_until(
                until.min(tokio::time::Instant::now() + Duration::from_millis(200)),
            )
            .await;
        }
        Ok(())
    }

    /// One attempt: the request, its redirects and a fresh OAuth2 token if the cached
    /// one is refused, then the body.
    async fn attempt(
        &mut self,
        mut url: Url,
        file: &mut std::fs::File,
        conditional: Option<&Validators>,
    ) -> Result<Answer, Failure> {
        let http = self.http;
        let mut method = match http.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
        };
        let mut body = http.body.clone();
        // Credentials go to the configured origin only.
        let mut credentials = true;
        let mut fresh_token = false;
        let mut hops = 0;
        let response = loop {
            if (self.stop)() {
                return Err(Failure::Stopped);
            }
            let mut request = self.client.request(method.clone(), url.clone());
            for (name, value) in &http.headers {
                request = request.header(name, value);
            }
            if credentials {
                if let Some((name, value)) = self.auth.header(&self.client, fresh_token).await? {
                    request = request.header(name, value);
                }
            }
            if let Some(v) = conditional {
                if let Some(etag) = &v.etag {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                if let Some(date) = &v.last_modified {
                    request = request.header(IF_MODIFIED_SINCE, date);
                }
            }
            if let Some(body) = &body {
                if !http
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                {
                    let json = serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok();
                    request = request.header(
                        CONTENT_TYPE,
                        if json {
                            "application/json"
                        } else {
                            "application/x-www-form-urlencoded"
                        },
                    );
                }
                request = request.body(body.clone());
            }
            let response = request.send().await.map_err(|e| {
                let why = if e.is_timeout() {
                    "no answer in time".to_string()
                } else if e.is_connect() {
                    format!("cannot connect: {}", without_url(e))
                } else {
                    without_url(e)
                };
                Failure::Passing(why)
            })?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(Failure::Fatal(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                let target = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| {
                        Failure::Fatal(format!("a redirect ({status}) without a usable Location"))
                    })?;
                if url.scheme() == "https" && target.scheme() != "https" {
                    return Err(Failure::Fatal(format!(
                        "a redirect ({status}) from HTTPS to {}: never followed",
                        display_url(&target)
                    )));
                }
                if target.origin() != http.url.origin() {
                    if !http.follow_redirects {
                        return Err(Failure::Fatal(format!(
                            "a redirect ({status}) to another host, {}: set follow_redirects = true in [job.source] if that host serves the export (it is never sent the credentials), or give its URL as url",
                            display_url(&target)
                        )));
                    }
                    credentials = false;
                }
                // As browsers do: 303, and 301/302 after a POST, fetch the target with GET.
                if status == StatusCode::SEE_OTHER
                    || (method == reqwest::Method::POST
                        && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
                {
                    method = reqwest::Method::GET;
                    body = None;
                }
                tracing::debug!(%status, to = %display_url(&target), "redirected");
                url = target;
                continue;
            }
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                && credentials
                && self.auth.refreshes()
                && !fresh_token
            {
                // The cached token may have been revoked before it expired.
                fresh_token = true;
                continue;
            }
            break response;
        };
        let status = response.status();
        match status {
            StatusCode::NOT_MODIFIED if conditional.is_some() => return Ok(Answer::NotModified),
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Failure::Fatal(format!(
                    "the CRM refused the credentials ({status}): check [job.source.auth]{}",
                    if credentials {
                        ""
                    } else {
                        " (a redirect to another host is sent none)"
                    }
                )))
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                return Err(Failure::Passing(format!("the CRM answered {status}")))
            }
            _ => {
                let text = snippet(response).await;
                return Err(Failure::Fatal(format!("the CRM answered {status}{text}")));
            }
        }
        self.body(response, url, file).await
    }

    /// The body of a successful answer into `file` (from its start).
    async fn body(
        &mut self,
        mut response: reqwest::Response,
        url: Url,
        file: &mut std::fs::File,
    ) -> Result<Answer, Failure> {
        let max = self.http.max_bytes;
        let too_large = || {
            Failure::Fatal(format!(
                "the export is larger than max_bytes = {}: raise max_bytes in [job.source] if it is meant to be this large",
                size(max)
            ))
        };
        let write_error = |e: std::io::Error| {
            Failure::Fatal(format!(
                "cannot write the download to the state directory: {e}"
            ))
        };
        let length = response.content_length();
        if length.is_some_and(|n| self.received.saturating_add(n) > max) {
            return Err(too_large());
        }
        file.set_len(0).map_err(write_error)?;
        file.rewind().map_err(write_error)?;
        let headers = response.headers().clone();
        let mut got = 0u64;
        let started = Instant::now();
        let mut writer = std::io::BufWriter::with_capacity(256 * 1024, &mut *file);
        loop {
            if (self.stop)() {
                return Err(Failure::Stopped);
            }
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let why = if e.is_timeout() {
                        format!(
                            "the answer stalled for {} after {got} bytes",
                            humantime::format_duration(self.http.timeout)
                        )
                    } else if let Some(n) = length.filter(|&n| got < n) {
                        format!("the answer broke off after {got} of the {n} bytes its Content-Length announced")
                    } else {
                        format!("the answer broke off after {got} bytes: {}", without_url(e))
                    };
                    return Err(Failure::Passing(why));
                }
            };
            got += chunk.len() as u64;
            self.received += chunk.len() as u64;
            if self.received > max {
                return Err(too_large());
            }
            writer.write_all(&chunk).map_err(write_error)?;
        }
        writer.flush().map_err(write_error)?;
        drop(writer);
        if let Some(n) = length.filter(|&n| got < n) {
            return Err(Failure::Passing(format!(
                "the answer ended after {got} of the {n} bytes its Content-Length announced"
            )));
        }
        tracing::debug!(bytes = got, took = ?started.elapsed(), "answer received");
        Ok(Answer::Body { headers, url })
    }
}

/// The start of an error answer's text, for the message: one line, at most 200
/// characters (a CRM's error text, not its data).
async fn snippet(response: reqwest::Response) -> String {
    let Ok(bytes) = response.bytes().await else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.chars().count() {
        0 => String::new(),
        n if n > 200 => format!(": {}…", line.chars().take(200).collect::<String>()),
        _ => format!(": {line}"),
    }
}

/// `n` bytes as people read them: 812 bytes, 4.2 MB, 1.1 GB.
fn size(n: u64) -> String {
    match n {
        n if n < 1000 => format!("{n} bytes"),
        n if n < 1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.1} GB", n as f64 / 1e9),
    }
}

/// `url` with the query parameter `name` set to `value` (replacing it if present).
fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut next = url.clone();
    next.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
    next
}

fn first_numbered(url: &Url, param: &str, first: u64, size: &Option<(String, u64)>) -> Url {
    let url = match size {
        Some((name, n)) => with_param(url, name, &n.to_string()),
        None => url.clone(),
    };
    with_param(&url, param, &first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_set_once() {
        let url = Url::parse("https://crm.example/api?key=a%20b&offset=7").unwrap();
        assert_eq!(
            with_param(&url, "offset", "100").as_str(),
            "https://crm.example/api?key=a+b&offset=100"
        );
        assert_eq!(
            first_numbered(&url, "page", 1, &Some(("per_page".into(), 500))).as_str(),
            "https://crm.example/api?key=a+b&offset=7&per_page=500&page=1"
        );
    }
}
