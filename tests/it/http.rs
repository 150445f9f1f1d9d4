//! `[job.source] type = "http"`: the export downloaded from a CRM server running in the
//! test (axum on a free port; a raw socket for a body that breaks off), with each kind of
//! auth and pagination, conditional requests, and the faults a download has: a
//! truncated body, a 5xx, a redirect to another host, too many pages.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::common::{count, field, Env, TOKEN};

/// What the CRM holds and what it was asked.
#[derive(Default)]
struct Crm {
    /// Records in the CSV columns of `common::HEADER`.
    records: Vec<[String; 6]>,
    /// Each request: method, path and query, and its Authorization header.
    seen: Vec<(String, Option<String>)>,
    /// Tokens handed out by /oauth/token; a token in `revoked` is refused.
    tokens: u32,
    revoked: Vec<String>,
    /// Records a page (paged endpoints).
    page_size: usize,
    /// /export.csv answers this status instead (a 5xx).
    fail_with: Option<u16>,
}

impl Crm {
    /// The records `from..from + n` as JSON objects.
    fn page(&self, from: usize, n: usize) -> Vec<Value> {
        self.records
            .iter()
            .skip(from)
            .take(n)
            .map(as_json)
            .collect()
    }
}

type Shared = Arc<Mutex<Crm>>;

struct Server {
    crm: Shared,
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn record(i: usize, city: &str) -> [String; 6] {
    [
        format!("K{i}"),
        format!("Name{i}"),
        format!("First{i}"),
        format!("0171 {:07}", 1_000_000 + i),
        city.to_string(),
        "1".to_string(),
    ]
}

const COLUMNS: [&str; 6] = [
    "CustomerNo",
    "LastName",
    "FirstName",
    "Phone",
    "City",
    "Round",
];

fn as_json(r: &[String; 6]) -> Value {
    let mut m = serde_json::Map::new();
    for (c, v) in COLUMNS.iter().zip(r) {
        m.insert((*c).into(), Value::String(v.clone()));
    }
    Value::Object(m)
}

fn csv(records: &[[String; 6]]) -> String {
    let mut text = format!("{}\n", COLUMNS.join(";"));
    for r in records {
        text.push_str(&r.join(";"));
        text.push('\n');
    }
    text
}

/// A weak validator of the content: its length and a simple sum.
fn etag(text: &str) -> String {
    let sum = text
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b.into()));
    format!("\"{}-{sum:x}\"", text.len())
}

fn auth(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
}

fn note(crm: &Shared, method: &str, uri: &axum::http::Uri, headers: &HeaderMap) {
    crm.lock()
        .unwrap()
        .seen
        .push((format!("{method} {uri}"), auth(headers)));
}

/// Basic `crm:s3cret` (base64 of it).
const BASIC: &str = "Basic Y3JtOnMzY3JldA==";

async fn export_csv(
    State(crm): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    note(&crm, "GET", &uri, &headers);
    let c = crm.lock().unwrap();
    if let Some(code) = c.fail_with {
        return StatusCode::from_u16(code).unwrap().into_response();
    }
    if auth(&headers).as_deref() != Some(BASIC) {
        return (StatusCode::UNAUTHORIZED, "wrong user or password").into_response();
    }
    let body = csv(&c.records);
    let tag = etag(&body);
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(tag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [("etag", tag)]).into_response();
    }
    ([("etag", tag), ("content-type", "text/csv".into())], body).into_response()
}

async fn open_csv(State(crm): State<Shared>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    note(&crm, "GET", &uri, &headers);
    csv(&crm.lock().unwrap().records).into_response()
}

async fn redirect(State(crm): State<Shared>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    note(&crm, "GET", &uri, &headers);
    let to = uri.query().unwrap_or("").to_string();
    (StatusCode::FOUND, [("location", to)]).into_response()
}

async fn token(
    State(crm): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    note(&crm, "POST", &uri, &headers);
    // client_id "dialsync", client_secret "cl1ent" (Basic), the grant and the scope.
    if auth(&headers).as_deref() != Some("Basic ZGlhbHN5bmM6Y2wxZW50")
        || !body.contains("grant_type=client_credentials")
        || !body.contains("scope=contacts.read")
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut c = crm.lock().unwrap();
    c.tokens += 1;
    axum::Json(json!({"access_token": format!("tok-{}", c.tokens), "token_type": "Bearer", "expires_in": 3600})).into_response()
}

/// The bearer token is the static one, or one handed out and not revoked.
fn bearer_ok(c: &Crm, headers: &HeaderMap) -> bool {
    match auth(headers)
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
    {
        Some("static-token") => true,
        Some(t) => t.starts_with("tok-") && !c.revoked.iter().any(|r| r == t),
        None => false,
    }
}

/// HubSpot's shape: `results`, and `paging.next.link` while there are more.
async fn hubspot(
    State(crm): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    note(&crm, "GET", &uri, &headers);
    let mut c = crm.lock().unwrap();
    if !bearer_ok(&c, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let after: usize = q.get("after").map_or(0, |a| a.parse().unwrap());
    // The token handed out first stops working after the first page (revoked early).
    if after > 0 && !c.revoked.contains(&"tok-1".to_string()) {
        c.revoked.push("tok-1".into());
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let page = c.page(after, c.page_size);
    let mut body = json!({"results": page});
    if after + c.page_size < c.records.len() {
        body["paging"] = json!({"next": {"after": (after + c.page_size).to_string(),
            "link": format!("/crm/v3/contacts?after={}", after + c.page_size)}});
    }
    axum::Json(body).into_response()
}

/// `Link: <...>; rel="next"`, the records a bare array.
async fn linked(
    State(crm): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    note(&crm, "GET", &uri, &headers);
    let c = crm.lock().unwrap();
    if !bearer_ok(&c, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let n: usize = q.get("p").map_or(1, |a| a.parse().unwrap());
    let page = c.page((n - 1) * c.page_size, c.page_size);
    let mut links = vec![format!(
        "<http://{}/api/linked?p=1>; rel=\"first\"",
        headers["host"].to_str().unwrap()
    )];
    if n * c.page_size < c.records.len() {
        links.push(format!("</api/linked?p={}>; rel=\"next\"", n + 1));
    }
    ([("link", links.join(", "))], axum::Json(Value::Array(page))).into_response()
}

/// A cursor in `meta.next_cursor`, sent back as `cursor`.
async fn cursor(
    State(crm): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    note(&crm, "GET", &uri, &headers);
    let c = crm.lock().unwrap();
    let from: usize = q
        .get("cursor")
        .map_or(0, |a| a.trim_start_matches('c').parse().unwrap());
    let page = c.page(from, c.page_size);
    let next = (from + c.page_size < c.records.len()).then(|| format!("c{}", from + c.page_size));
    axum::Json(json!({"data": page, "meta": {"next_cursor": next}})).into_response()
}

/// `offset`/`limit`, or `page`/`per_page` (from 1): the records in `items`. The server
/// caps a page at `page_size` whatever is asked.
async fn numbered(
    State(crm): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    note(&crm, "GET", &uri, &headers);
    let c = crm.lock().unwrap();
    let asked = |k: &str| q.get(k).map(|v| v.parse::<usize>().unwrap());
    let size = asked("limit")
        .or(asked("per_page"))
        .unwrap_or(100)
        .min(c.page_size);
    let from = match (asked("offset"), asked("page")) {
        (Some(o), _) => o,
        (_, Some(p)) => (p - 1) * size,
        _ => 0,
    };
    let page = c.page(from, size);
    axum::Json(json!({"items": page})).into_response()
}

impl Server {
    fn start(records: usize, page_size: usize) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let crm: Shared = Arc::new(Mutex::new(Crm {
            records: (1..=records).map(|i| record(i, "Köln")).collect(),
            page_size,
            ..Crm::default()
        }));
        let app = Router::new()
            .route("/export.csv", get(export_csv))
            .route("/open.csv", get(open_csv))
            .route("/redirect", get(redirect))
            .route("/oauth/token", post(token))
            .route("/crm/v3/contacts", get(hubspot))
            .route("/api/linked", get(linked))
            .route("/api/cursor", get(cursor))
            .route("/api/numbered", get(numbered))
            .with_state(Arc::clone(&crm));
        // Bound before the test goes on: nothing to wait for.
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        Server { crm, addr, _rt: rt }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut self.crm.lock().unwrap().seen)
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|(p, _)| p).collect()
    }
}

/// The job's `[job.source]` replaced by `source` (an HTTP source).
fn http_job(env: &Env, source: &str) {
    env.edit_config(
        "type = \"csv\"\npath = \"export.csv\"\nencoding = \"windows-1252\"\n",
        source,
    );
}

/// What no output of dialsync may contain: the secrets of these tests.
const SECRETS: [&str; 5] = [
    "s3cret",
    "cl1ent",
    "tok-1",
    "static-token",
    "Y3JtOnMzY3JldA",
];

fn sync_quietly(env: &Env) -> (Value, i32) {
    let out = env.dialsync(&["sync", "--config", "dialsync.toml", "--output", "json"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    (v["jobs"][0].clone(), out.status.code().unwrap())
}

fn downloads_left(env: &Env) -> usize {
    std::fs::read_dir(env.path("state.downloads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A CSV export URL with basic auth (the password from a file): imported, then asked
/// again with If-None-Match: 304 ends the run with no dialler call, no download and no
/// plan; a change on the CRM is one update. The temporary download is gone after each run.
#[test]
fn a_csv_export_url_with_basic_auth_and_conditional_requests() {
    let crm = Server::start(3, 0);
    let env = Env::new();
    std::fs::write(env.path("crm-password"), "s3cret\n").unwrap();
    http_job(
        &env,
        &format!(
            "type = \"http\"\nurl = \"{}\"\nformat = \"csv\"\n\n[job.source.auth]\ntype = \"basic\"\nusername = \"crm\"\npassword_file = \"crm-password\"\n",
            crm.url("/export.csv")
        ),
    );
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "imported"), 3);
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("downloaded {}", crm.url("/export.csv"))),
        "{report}"
    );
    assert_eq!(field(&env.contact("K2"), "City"), "Köln");
    assert_eq!(downloads_left(&env), 0);
    assert_eq!(crm.seen()[0].1.as_deref(), Some(BASIC));

    // Unchanged: the CRM answers 304, and the dialler hears one read-only call (the
    // token's check). (What a killed run left in the downloads folder goes.)
    std::fs::write(env.path("state.downloads/.dialsync-download-killed"), "K1;").unwrap();
    let before = env.requests().len();
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["export_unchanged"], true, "{report}");
    assert_eq!(count(&report, "rows"), 3, "the last good count stands");
    assert_eq!(count(&report, "unchanged"), 0, "nothing was planned");
    let sent = env.requests_since(before);
    assert!(
        sent.len() == 1 && sent[0].method == "GET" && sent[0].path.ends_with("/campaigns/538"),
        "{sent:?}"
    );
    assert!(
        report["notes"][0].as_str().unwrap().contains("304"),
        "{report}"
    );
    assert_eq!(downloads_left(&env), 0, "the killed run's file is gone");

    // Changed on the CRM: downloaded again, one update.
    crm.crm.lock().unwrap().records[1][4] = "Bonn".into();
    let before = env.requests().len();
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 0, "{report}");
    assert!(report.get("export_unchanged").is_none(), "{report}");
    assert_eq!(
        (count(&report, "updated"), count(&report, "unchanged")),
        (1, 2)
    );
    assert_eq!(env.requests_since(before).len(), 1);
    assert_eq!(field(&env.contact("K2"), "City"), "Bonn");
    assert_eq!(downloads_left(&env), 0);

    // A wrong password: the CRM's 401 stops the run, nothing is locked.
    std::fs::write(env.path("crm-password"), "wrong\n").unwrap();
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 3, "{report}");
    let why = report["aborted"].as_str().unwrap();
    assert!(
        why.contains("401") && why.contains("[job.source.auth]"),
        "{why}"
    );
    assert_eq!(env.contacts().iter().filter(|c| c.locked).count(), 0);
}

/// A run killed after the dialler confirmed a change it had no time to store, then the
/// CRM's previous export back (with its previous ETag): the calls in flight make the next
/// run download and plan the export, not take the 304, and the dialler gets the old value
/// back. A 304 says the export is as the last clean run read it, not that the dialler is
/// as that run left it.
#[test]
fn a_304_after_a_killed_run_still_checks_the_calls_in_flight() {
    let crm = Server::start(3, 0);
    let env = Env::new();
    http_job(
        &env,
        &format!(
            "type = \"http\"\nurl = \"{}\"\nformat = \"csv\"\n\n[job.source.auth]\ntype = \"basic\"\nusername = \"crm\"\npassword = \"s3cret\"\n",
            crm.url("/export.csv")
        ),
    );
    assert_eq!(sync_quietly(&env).1, 0);
    crm.crm.lock().unwrap().records[1][4] = "Bonn".into();
    env.sync_killed_at("update-confirmed");
    assert_eq!(field(&env.contact("K2"), "City"), "Bonn");

    crm.crm.lock().unwrap().records[1][4] = "Köln".into();
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 0, "{report}");
    assert!(report.get("export_unchanged").is_none(), "{report}");
    assert_eq!(count(&report, "rechecked"), 1, "{report}");
    assert_eq!(field(&env.contact("K2"), "City"), "Köln");
    // Settled: now the 304 holds.
    let (report, _) = sync_quietly(&env);
    assert_eq!(report["export_unchanged"], true, "{report}");
}

/// HubSpot-style pages (`results`, `paging.next.link`, relative) behind OAuth2 client
/// credentials: one token for the run, a fresh one when the CRM refuses it mid-way, rows
/// numbered by page and record.
#[test]
fn oauth2_and_next_url_pages() {
    let crm = Server::start(5, 2);
    crm.crm.lock().unwrap().records[2][3] = "no number".into(); // K3: page 2, record 1
    let env = Env::new();
    http_job(
        &env,
        &format!(
            "type = \"http\"\nurl = \"{}\"\nformat = \"json\"\nrecord_path = \"results\"\n\n[job.source.auth]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"{}\"\nclient_id = \"dialsync\"\nclient_secret_env = \"CRM_SECRET\"\nscope = \"contacts.read\"\n\n[job.source.pagination]\ntype = \"next_url\"\npath = \"paging.next.link\"\n",
            crm.url("/crm/v3/contacts"),
            crm.url("/oauth/token")
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialsync"))
        .args(["sync", "--config", "dialsync.toml", "--output", "json"])
        .current_dir(env.dir.path())
        .env("CRM_SECRET", "cl1ent")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
    let report: Value = serde_json::from_slice::<Value>(&out.stdout).unwrap()["jobs"][0].clone();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(count(&report, "imported"), 4, "{report}");
    assert_eq!(report["problems"][0]["key"], "K3");
    assert_eq!(
        (
            report["problems"][0]["at"]["page"].as_u64(),
            report["problems"][0]["at"]["row"].as_u64()
        ),
        (Some(2), Some(1)),
        "{report}"
    );
    assert!(
        report["notes"][0].as_str().unwrap().contains("3 pages"),
        "{report}"
    );
    let seen = crm.seen();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "POST /oauth/token",
            "GET /crm/v3/contacts",
            // tok-1 refused on page 2: a fresh token, and page 2 again.
            "GET /crm/v3/contacts?after=2",
            "POST /oauth/token",
            "GET /crm/v3/contacts?after=2",
            "GET /crm/v3/contacts?after=4",
        ]
    );
    assert_eq!(seen[5].1.as_deref(), Some("Bearer tok-2"));
    assert_eq!(downloads_left(&env), 0);
}

/// The other paginations: `Link` headers, a cursor, offset and page numbers (a server
/// that caps the page below the size asked for: the first empty page ends the export,
/// not the first short one).
#[test]
fn link_header_cursor_offset_and_page_pagination() {
    for (path, source, expected) in [
        (
            "/api/linked",
            "format = \"json\"\n\n[job.source.auth]\ntype = \"bearer\"\ntoken = \"static-token\"\n\n[job.source.pagination]\ntype = \"link_header\"\n",
            vec!["/api/linked", "/api/linked?p=2", "/api/linked?p=3"],
        ),
        (
            "/api/cursor",
            "format = \"json\"\nrecord_path = \"data\"\n\n[job.source.pagination]\ntype = \"cursor\"\npath = \"meta.next_cursor\"\nparam = \"cursor\"\n",
            vec!["/api/cursor", "/api/cursor?cursor=c2", "/api/cursor?cursor=c4"],
        ),
        (
            "/api/numbered?view=all",
            "format = \"json\"\nrecord_path = \"items\"\n\n[job.source.pagination]\ntype = \"offset\"\nparam = \"offset\"\nsize_param = \"limit\"\nsize = 3\n",
            vec![
                "/api/numbered?view=all&limit=3&offset=0",
                "/api/numbered?view=all&limit=3&offset=2",
                "/api/numbered?view=all&limit=3&offset=4",
                "/api/numbered?view=all&limit=3&offset=5",
            ],
        ),
        (
            "/api/numbered",
            "format = \"json\"\nrecord_path = \"items\"\n\n[job.source.pagination]\ntype = \"page\"\nparam = \"page\"\nsize_param = \"per_page\"\nsize = 2\n",
            vec![
                "/api/numbered?per_page=2&page=1",
                "/api/numbered?per_page=2&page=2",
                "/api/numbered?per_page=2&page=3",
                "/api/numbered?per_page=2&page=4",
            ],
        ),
    ] {
        let crm = Server::start(5, 2);
        let env = Env::new();
        http_job(
            &env,
            &format!("type = \"http\"\nurl = \"{}\"\n{source}", crm.url(path)),
        );
        let (report, code) = sync_quietly(&env);
        assert_eq!(code, 0, "{path}: {report}");
        assert_eq!(count(&report, "imported"), 5, "{path}: {report}");
        let got: Vec<String> = crm.paths().into_iter().map(|p| p.trim_start_matches("GET ").to_string()).collect();
        assert_eq!(got, expected, "{path}");
        env.contact("K5");

        // One record fewer on the CRM: a lock, after every page was read.
        crm.crm.lock().unwrap().records.remove(0);
        let (report, code) = sync_quietly(&env);
        assert_eq!(code, 0, "{path}: {report}");
        assert_eq!((count(&report, "locked"), count(&report, "unchanged")), (1, 4), "{path}");
        assert!(env.contact("K1").locked);
    }
}

/// A server on a raw socket whose answers announce `length` bytes and send `body`
/// (shorter: the connection closes early), one connection after another.
fn raw_server(answers: Vec<(usize, String)>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (length, body) in answers {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
            );
        }
    });
    addr
}

/// A body that ends before its Content-Length (on every attempt), and a CRM that
/// answers 503: the export is unreadable, the run stops, and nothing is locked.
#[test]
fn a_truncated_body_or_a_5xx_removes_nothing() {
    let whole = csv(&(1..=3).map(|i| record(i, "Köln")).collect::<Vec<_>>());
    let cut = csv(&[record(1, "Köln")]);
    let addr = raw_server(vec![
        (whole.len(), whole.clone()),
        (whole.len(), cut.clone()),
        (whole.len(), cut),
    ]);
    let env = Env::new();
    http_job(
        &env,
        &format!("type = \"http\"\nurl = \"http://{addr}/export.csv\"\nformat = \"csv\"\nretries = 1\nretry_delay = \"10ms\"\n"),
    );
    let (report, code) = sync_quietly(&env);
    assert_eq!((code, count(&report, "imported")), (0, 3), "{report}");
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 3, "{report}");
    let why = report["aborted"].as_str().unwrap();
    assert!(
        why.contains("Content-Length") && why.contains("tried 2 times"),
        "{why}"
    );
    assert_eq!(count(&report, "locked"), 0);
    assert_eq!(env.contacts().iter().filter(|c| c.locked).count(), 0);
    assert_eq!(downloads_left(&env), 0);

    let crm = Server::start(3, 0);
    crm.crm.lock().unwrap().fail_with = Some(503);
    env.edit_config(
        &format!("http://{addr}/export.csv"),
        &crm.url("/export.csv"),
    );
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 3, "{report}");
    assert!(
        report["aborted"].as_str().unwrap().contains("503"),
        "{report}"
    );
    assert_eq!(crm.paths().len(), 2, "one retry");
    assert_eq!(env.contacts().iter().filter(|c| c.locked).count(), 0);
}

/// A redirect to another host (`localhost` is not `127.0.0.1`) is refused unless
/// follow_redirects is set, and then followed without the credentials.
#[test]
fn a_redirect_to_another_host_is_refused_unless_allowed() {
    let crm = Server::start(2, 0);
    let env = Env::new();
    let target = format!("http://localhost:{}/open.csv", crm.addr.port());
    http_job(
        &env,
        &format!(
            "type = \"http\"\nurl = \"{}?{target}\"\nformat = \"csv\"\n\n[job.source.auth]\ntype = \"bearer\"\ntoken = \"static-token\"\n",
            crm.url("/redirect")
        ),
    );
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 3, "{report}");
    let why = report["aborted"].as_str().unwrap();
    assert!(
        why.contains("another host") && why.contains("follow_redirects = true"),
        "{why}"
    );
    assert_eq!(crm.paths(), [format!("GET /redirect?{target}")]);
    assert!(env.contacts().is_empty());

    env.edit_config(
        "format = \"csv\"\n",
        "format = \"csv\"\nfollow_redirects = true\n",
    );
    let (report, code) = sync_quietly(&env);
    assert_eq!((code, count(&report, "imported")), (0, 2), "{report}");
    let seen = crm.seen();
    assert_eq!(seen[0].1.as_deref(), Some("Bearer static-token"));
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.as_deref()),
        ("GET /open.csv", None),
        "no credentials to another host"
    );
}

/// More pages than max_pages: unreadable, nothing removed; `validate` reads the first
/// page only.
#[test]
fn max_pages_makes_the_export_unreadable_and_validate_reads_one_page() {
    let crm = Server::start(5, 2);
    let env = Env::new();
    http_job(
        &env,
        &format!(
            "type = \"http\"\nurl = \"{}\"\nformat = \"json\"\nrecord_path = \"data\"\n\n[job.source.pagination]\ntype = \"cursor\"\npath = \"meta.next_cursor\"\nparam = \"cursor\"\nmax_pages = 3\n",
            crm.url("/api/cursor")
        ),
    );
    assert_eq!(sync_quietly(&env).1, 0);
    crm.crm
        .lock()
        .unwrap()
        .records
        .extend((6..=7).map(|i| record(i, "Bonn")));
    crm.seen();
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 3, "{report}");
    assert!(
        report["aborted"]
            .as_str()
            .unwrap()
            .contains("max_pages = 3"),
        "{report}"
    );
    assert_eq!(env.contacts().len(), 5);
    assert_eq!(env.contacts().iter().filter(|c| c.locked).count(), 0);

    let out = env.dialsync(&["validate", "--config", "dialsync.toml"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("2 rows of its first page, every mapped column present"),
        "{text}"
    );
    assert_eq!(
        crm.paths().len(),
        3 + 1,
        "the failed sync's 3 pages, validate's 1"
    );
    let _ = TOKEN;
}

/// An HTTPS CRM whose certificate is signed by a CA of its own (tests/data): refused
/// without `ca_file`, the run stopping on the certificate with nothing changed; trusted
/// with the certificate in `ca_file`.
#[test]
fn an_https_export_is_trusted_with_its_ca_file_only() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = csv(&(1..=2).map(|i| record(i, "Köln")).collect::<Vec<_>>());
    let port = rt.block_on(crate::common::tls_server("text/csv", body.into_bytes()));
    let env = Env::new();
    let source = format!(
        "type = \"http\"\nurl = \"https://127.0.0.1:{port}/export.csv\"\nformat = \"csv\"\nretries = 0\n"
    );
    http_job(&env, &source);
    let (report, code) = sync_quietly(&env);
    assert_eq!(code, 3, "{report}");
    let why = report["aborted"].as_str().unwrap();
    assert!(why.contains("certificate"), "{why}");
    assert!(env.contacts().is_empty());

    env.edit_config(
        &source,
        &format!(
            "{source}ca_file = \"{}\"\n",
            data.join("untrusted-cert.pem").display()
        ),
    );
    let (report, code) = sync_quietly(&env);
    assert_eq!((code, count(&report, "imported")), (0, 2), "{report}");
}
