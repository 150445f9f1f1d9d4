//! An in-memory jtel dialler: the documented contact and campaign API on a loopback port,
//! for the demo, the tests and the benchmarks, and for operators to try a config safely.
//!
//! It follows the vendor's documentation where it speaks: Bearer and ClientsID checks
//! (401), an empty-body 404 for endpoints that do not exist and a JSON 404 for objects that
//! do not, mandatory import fields (400), unknown campaigns (404 with a JSON body),
//! `overwriteDuplicates` (false creates duplicates, as the real server does), the
//! `resetContact`/`unlockContact` flags of release 3.39, locks, and "the first one found"
//! for by-UserData functions. Where the documentation is silent it is strict (unknown
//! fields, wrong types and over-long values are a 400), so that a client that passes here
//! sends nothing the real server could misread.
//!
//! A few extra endpoints serve tests and checks, without authentication:
//! `GET /_emulator/state` (every contact with all fields, its lock flag and reset count),
//! `GET /_emulator/requests` (method, path, query, status and JSON body of every API
//! call), and two faults of a whole dialler: `POST /_emulator/reset` forgets every contact
//! (a restore from an empty backup) and `POST /_emulator/renumber` gives each contact the
//! ID of the next (old IDs then hold other contacts).
//!
//! Fault injection ([`Faults`], flags of `dialsync emulator`) makes it a bad network and
//! a struggling server on demand: latency, 5xx answers, 429 with `Retry-After`, dropped
//! connections and calls that are carried out but never answered. Faults are drawn from
//! a seeded sequence, so a run with the same requests in the same order sees the same
//! faults.
//!
//! All data sits behind one mutex: every request holds it only for an in-memory update, so
//! contention costs less than the HTTP handling around it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::fields;

/// What the emulated tenant looks like.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub client_id: u32,
    pub token: String,
    /// Campaigns as (ID, name).
    pub campaigns: Vec<(i64, String)>,
    pub faults: Faults,
    /// How many API calls `GET /_emulator/requests` keeps (the last ones): a long-running
    /// emulator would otherwise grow without bound.
    pub keep_requests: usize,
}

/// The default of [`EmulatorConfig::keep_requests`].
pub const KEEP_REQUESTS: usize = 100_000;

/// Faults to inject into API calls (never into the `/_emulator/` endpoints). The rates
/// are fractions of calls (0.0 to 1.0) and add up: one draw per call picks at most one
/// ([`Faults::check`]). `dialsync emulator` sets them from its flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added to every API answer.
    pub latency: Duration,
    /// Fraction of API calls answered 500/502/503/504 (not carried out).
    pub error_rate: f64,
    /// Fraction of API calls answered 429 with Retry-After (not carried out).
    pub throttle_rate: f64,
    /// The Retry-After of those 429 answers, in seconds.
    pub retry_after: u64,
    /// Fraction of API calls whose connection is dropped (not carried out).
    pub drop_rate: f64,
    /// Fraction of API calls carried out but never answered (the client times out): the
    /// worst case for a client that must not duplicate on retry.
    pub timeout_rate: f64,
    /// Seed of the fault draws (same seed, same requests: same faults).
    pub seed: u64,
}

/// What a draw decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Throttle,
    Error(StatusCode),
    Drop,
    Timeout,
}

impl Faults {
    /// Why these faults cannot be drawn, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let total = self.error_rate + self.throttle_rate + self.drop_rate + self.timeout_rate;
        if total > 1.0 {
            return Err(format!(
                "the fault rates add up to {total}; at most 1 is possible"
            ));
        }
        Ok(())
    }

    pub fn any(&self) -> bool {
        !self.latency.is_zero()
            || self.error_rate + self.throttle_rate + self.drop_rate + self.timeout_rate > 0.0
    }

    /// The fault of draw number `n`.
    fn draw(&self, n: u64) -> Fault {
        let x = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let mut edge = self.throttle_rate;
        if u < edge {
            return Fault::Throttle;
        }
        edge += self.error_rate;
        if u < edge {
            const CODES: [StatusCode; 4] = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ];
            return Fault::Error(CODES[(x & 3) as usize]);
        }
        edge += self.drop_rate;
        if u < edge {
            return Fault::Drop;
        }
        edge += self.timeout_rate;
        if u < edge {
            return Fault::Timeout;
        }
        Fault::None
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            client_id: 7,
            token: "emulator-token".into(),
            campaigns: vec![(538, "My Campaign".into())],
            faults: Faults::default(),
            keep_requests: KEEP_REQUESTS,
        }
    }
}

/// One contact as the emulator holds it.
#[derive(Debug, Clone, Serialize)]
pub struct EmuContact {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "DiallerCampaignsID")]
    pub campaign_id: i64,
    pub fields: Map<String, Value>,
    pub locked: bool,
    pub reset_count: u64,
    /// Dialling attempts so far (the emulator never dials; a reset sets it to 0).
    pub tries: u64,
}

/// One API call received.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// The JSON body, when the request had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// When it arrived: microseconds since the emulator was created.
    #[serde(default)]
    pub at_us: u64,
}

#[derive(Default)]
struct Data {
    next_id: i64,
    contacts: BTreeMap<i64, EmuContact>,
    /// UserData -> contact IDs in ascending order ("the first one found" is the lowest).
    by_user_data: HashMap<String, Vec<i64>>,
    /// The last `keep_requests` API calls, oldest first.
    requests: std::collections::VecDeque<RequestLog>,
    /// Calls to answer 400 instead of carrying out: (path fragment, how many more).
    reject: Vec<(String, usize, String)>,
}

struct Shared {
    cfg: EmulatorConfig,
    data: Mutex<Data>,
    /// API calls so far: the draw number of the next fault.
    draws: AtomicU64,
    started: std::time::Instant,
}

/// A handle on a running emulator's data.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

/// Fields the import takes, beyond the syncable ones.
const IMPORT_ONLY: [&str; 6] = [
    "DiallerCampaignsID",
    "DiallerCampaignsName",
    "RandomSortOrder",
    "ReservedUsersUID",
    "FollowUpUsersUID",
    "FollowUpDateTime",
];
/// Fields the update takes, beyond the syncable ones.
const UPDATE_ONLY: [&str; 4] = ["ID", "UserData2", "UserData3", "Region"];
const REGION_MAX: usize = 256;

impl Emulator {
    pub fn new(cfg: EmulatorConfig) -> Emulator {
        Emulator {
            shared: Arc::new(Shared {
                cfg,
                data: Mutex::new(Data {
                    next_id: 100_001,
                    ..Data::default()
                }),
                draws: AtomicU64::new(0),
                started: std::time::Instant::now(),
            }),
        }
    }

    /// The axum router serving the API.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` (port 0 for a free one), serves in a background task and returns the
    /// bound address. The server stops when the runtime does.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(local)
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.cfg
    }

    /// Every contact, by ID.
    pub fn contacts(&self) -> Vec<EmuContact> {
        crate::locking::lock(&self.shared.data)
            .contacts
            .values()
            .cloned()
            .collect()
    }

    /// Every API call received so far.
    pub fn requests(&self) -> Vec<RequestLog> {
        crate::locking::lock(&self.shared.data)
            .requests
            .iter()
            .cloned()
            .collect()
    }

    /// Removes a contact as someone in the jtel portal would (tests of a contact gone).
    pub fn remove_contact(&self, id: i64) -> bool {
        let mut d = crate::locking::lock(&self.shared.data);
        match d.contacts.remove(&id) {
            Some(c) => {
                unindex(&mut d, &c);
                true
            }
            None => false,
        }
    }

    /// Answers the next `n` API calls whose path contains `fragment` with 400 and does not
    /// carry them out (tests of a permanent error on one operation).
    pub fn reject_next(&self, fragment: &str, n: usize) {
        self.reject_next_with(fragment, n, "rejected (injected)");
    }

    /// [`Emulator::reject_next`] with `message` as the error text of the answers.
    pub fn reject_next_with(&self, fragment: &str, n: usize, message: &str) {
        let mut d = crate::locking::lock(&self.shared.data);
        d.reject
            .push((fragment.to_string(), n, message.to_string()));
    }

    /// Forgets every contact, as a dialler restored from an empty backup or a wiped test
    /// system would (IDs go on from where they were). The request log stays.
    pub fn reset(&self) {
        let mut d = crate::locking::lock(&self.shared.data);
        d.contacts.clear();
        d.by_user_data.clear();
    }

    /// Gives every contact the ID of the next one (the last gets the first's), so that each
    /// old ID now holds another contact, as after a restore into a database that numbers
    /// anew. Returns how many contacts were renumbered.
    pub fn renumber(&self) -> usize {
        let mut d = crate::locking::lock(&self.shared.data);
        let ids: Vec<i64> = d.contacts.keys().copied().collect();
        if ids.len() < 2 {
            return 0;
        }
        let mut old = std::mem::take(&mut d.contacts);
        d.by_user_data.clear();
        for (i, id) in ids.iter().enumerate() {
            let mut c = old.remove(id).expect("listed");
            c.id = ids[(i + 1) % ids.len()];
            index(&mut d, &c);
            d.contacts.insert(c.id, c);
        }
        ids.len()
    }

    /// Simulates calls: adds `n` dialling attempts to the contact (tests of reset).
    pub fn add_tries(&self, id: i64, n: u64) {
        if let Some(c) = crate::locking::lock(&self.shared.data)
            .contacts
            .get_mut(&id)
        {
            c.tries += n;
        }
    }
}

type Reply = (StatusCode, Option<Value>);

fn ok(v: Value) -> Reply {
    (StatusCode::OK, Some(v))
}

fn fail(status: StatusCode, msg: impl Into<String>) -> Reply {
    (
        status,
        Some(json!({"status": status.as_u16(), "error": msg.into()})),
    )
}

fn no_endpoint() -> Reply {
    (StatusCode::NOT_FOUND, None)
}

fn records(items: Vec<Value>) -> Value {
    json!({"count": items.len(), "records": items, "status": 200})
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = shared.started.elapsed().as_micros() as u64;
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let params: HashMap<String, String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(&query)
            .unwrap_or_default()
            .into_iter()
            .collect();

    if let Some(rest) = path.strip_prefix("/_emulator/") {
        let emulator = Emulator {
            shared: Arc::clone(&shared),
        };
        match (&method, rest) {
            (&Method::POST, "reset") => {
                emulator.reset();
                return respond(ok(json!({"status": 200})));
            }
            (&Method::POST, "renumber") => {
                let n = emulator.renumber();
                return respond(ok(json!({"status": 200, "renumbered": n})));
            }
            _ => {}
        }
        let data = crate::locking::lock(&shared.data);
        let reply = match (&method, rest) {
            (&Method::GET, "state") => ok(json!({
                "contacts": data.contacts.values().collect::<Vec<_>>(),
                "campaigns": shared.cfg.campaigns.iter().map(|(id, n)| json!({"ID": id, "Name": n})).collect::<Vec<_>>(),
            })),
            (&Method::GET, "requests") => ok(json!(data.requests)),
            _ => no_endpoint(),
        };
        return respond(reply);
    }

    let faults = &shared.cfg.faults;
    let fault = if faults.any() {
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        faults.draw(shared.draws.fetch_add(1, Ordering::Relaxed))
    } else {
        Fault::None
    };
    let log = |data: &mut Data, status: u16| {
        tracing::debug!(%method, %path, status, "request");
        if data.requests.len() >= shared.cfg.keep_requests.max(1) {
            data.requests.pop_front();
        }
        data.requests.push_back(RequestLog {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            status,
            body: serde_json::from_slice(&body).ok(),
            at_us: arrived,
        })
    };
    match fault {
        Fault::None | Fault::Timeout => {}
        Fault::Throttle => {
            log(&mut crate::locking::lock(&shared.data), 429);
            let mut r = respond(fail(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests (injected)",
            ));
            r.headers_mut().insert(
                "retry-after",
                faults.retry_after.to_string().parse().expect("a number"),
            );
            return r;
        }
        Fault::Error(code) => {
            log(&mut crate::locking::lock(&shared.data), code.as_u16());
            return respond(fail(code, "server error (injected)"));
        }
        Fault::Drop => {
            // Logged as status 0: no answer. Headers go out, then a body that fails, so
            // the server closes the connection mid-answer.
            log(&mut crate::locking::lock(&shared.data), 0);
            return Response::new(Body::from_stream(futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("connection dropped (injected)"))
            })));
        }
    }

    // One lock per request: the call and its log entry are one step.
    let reply = {
        let mut data = crate::locking::lock(&shared.data);
        let rejected = data
            .reject
            .iter_mut()
            .find(|(fragment, n, _)| *n > 0 && path.contains(fragment.as_str()));
        let reply = match rejected {
            Some((_, n, message)) => {
                *n -= 1;
                fail(StatusCode::BAD_REQUEST, message.clone())
            }
            None => api(
                &shared.cfg,
                &mut data,
                &method,
                &path,
                &params,
                &headers,
                &body,
            ),
        };
        log(&mut data, reply.0.as_u16());
        reply
    };
    if fault == Fault::Timeout {
        // Carried out, never answered; the connection ends when the client gives up.
        std::future::pending::<()>().await;
    }
    respond(reply)
}

fn respond((status, body): Reply) -> Response {
    match body {
        Some(v) => (
            status,
            [("content-type", "application/json")],
            Body::from(serde_json::to_vec(&v).unwrap()),
        )
            .into_response(),
        None => status.into_response(),
    }
}

fn api(
    cfg: &EmulatorConfig,
    d: &mut Data,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let Some(rest) = path.strip_prefix("/rest/v1.0/") else {
        return no_endpoint();
    };
    let mut segs: Vec<&str> = rest.split('/').collect();
    if segs.last() == Some(&"") {
        segs.pop();
    }
    let Some((client, segs)) = segs.split_first() else {
        return no_endpoint();
    };
    let expected = format!("Bearer {}", cfg.token);
    let auth_ok =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    if !auth_ok || client.parse::<u32>().ok() != Some(cfg.client_id) {
        return fail(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let ud = || params.get("userData").cloned();
    let id_of = |s: &str| s.parse::<i64>().ok();
    use Method as M;
    match (method, segs) {
        (&M::GET, ["dialler", "contacts"]) => {
            let campaign = params
                .get("diallerCampaignsID")
                .and_then(|c| c.parse::<i64>().ok());
            let items: Vec<Value> = d
                .contacts
                .values()
                .filter(|c| campaign.is_none_or(|id| c.campaign_id == id))
                .map(contact_json)
                .collect();
            ok(json!({
                "filter": "", "limitStart": 0, "limitPageSize": -1, "count": items.len(),
                "records": items, "orderBy": "ID", "ascending": true, "status": 200
            }))
        }
        (&M::POST, ["dialler", "contacts"]) => batch_read(d, body),
        (&M::POST, ["dialler", "contacts", "import"]) => import(cfg, d, params, headers, body),
        (&M::POST, ["dialler", "contacts", "update"]) => update(d, headers, body),
        (&M::GET, ["dialler", "contacts", "contact"]) => match ud() {
            None => fail(StatusCode::BAD_REQUEST, "Missing parameter userData"),
            Some(u) => {
                let items: Vec<Value> = d
                    .by_user_data
                    .get(&u)
                    .into_iter()
                    .flatten()
                    .map(|id| contact_json(&d.contacts[id]))
                    .collect();
                if items.is_empty() {
                    fail(StatusCode::NOT_FOUND, "Dialler contact not found")
                } else {
                    ok(records(items))
                }
            }
        },
        (&M::DELETE, ["dialler", "contacts", "contact"]) => with_first(d, ud(), delete),
        (&M::PATCH, ["dialler", "contacts", "contact", action @ ("lock" | "unlock" | "reset")]) => {
            with_first(d, ud(), |d, id| act(d, id, action))
        }
        (&M::GET, ["dialler", "contacts", "contact", "history"]) => {
            with_first(d, ud(), |_, _| ok(records(vec![])))
        }
        (&M::GET, ["dialler", "contacts", id]) => {
            match id_of(id).and_then(|id| d.contacts.get(&id)) {
                Some(c) => ok(records(vec![contact_json(c)])),
                None => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
            }
        }
        (&M::DELETE, ["dialler", "contacts", "contact", id]) => by_id(d, id, delete),
        (
            &M::PATCH,
            ["dialler", "contacts", "contact", id, action @ ("lock" | "unlock" | "reset")],
        ) => by_id(d, id, |d, id| act(d, id, action)),
        (&M::GET, ["dialler", "contacts", "contact", id, "history"]) => {
            by_id(d, id, |_, _| ok(records(vec![])))
        }
        (&M::GET, ["dialler", "campaigns"]) => ok(records(
            cfg.campaigns
                .iter()
                .map(|(id, n)| campaign_json(cfg, *id, n))
                .collect(),
        )),
        (&M::GET, ["dialler", "campaigns", "campaign"]) => {
            let name = params
                .get("name")
                .map(|n| n.to_lowercase())
                .unwrap_or_default();
            let items: Vec<Value> = cfg
                .campaigns
                .iter()
                .filter(|(_, n)| n.to_lowercase().contains(&name))
                .map(|(id, n)| campaign_json(cfg, *id, n))
                .collect();
            if items.is_empty() {
                fail(StatusCode::NOT_FOUND, "Dialler campaign not found")
            } else {
                ok(records(items))
            }
        }
        (&M::GET, ["dialler", "campaigns", id]) => {
            match cfg.campaigns.iter().find(|(c, _)| Some(*c) == id_of(id)) {
                Some((id, n)) => ok(records(vec![campaign_json(cfg, *id, n)])),
                None => fail(StatusCode::NOT_FOUND, "Dialler campaign not found"),
            }
        }
        _ => no_endpoint(),
    }
}

fn campaign_json(cfg: &EmulatorConfig, id: i64, name: &str) -> Value {
    json!({"ID": id, "Name": name, "ClientsID": cfg.client_id})
}

fn contact_json(c: &EmuContact) -> Value {
    let mut m = c.fields.clone();
    m.insert("ID".into(), json!(c.id));
    m.insert("DiallerCampaignsID".into(), json!(c.campaign_id));
    for i in 1..=6 {
        m.insert(
            format!("nTriesPhoneNumber{i}"),
            json!(if i == 1 { c.tries } else { 0 }),
        );
    }
    m.insert("dtNextTry".into(), Value::Null);
    m.insert("DiallerCampaignsResultCodesID".into(), Value::Null);
    Value::Object(m)
}

fn by_id(d: &mut Data, id: &str, f: impl FnOnce(&mut Data, i64) -> Reply) -> Reply {
    match id.parse::<i64>() {
        Ok(id) if d.contacts.contains_key(&id) => f(d, id),
        Ok(_) => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
        Err(_) => no_endpoint(),
    }
}

fn with_first(
    d: &mut Data,
    user_data: Option<String>,
    f: impl FnOnce(&mut Data, i64) -> Reply,
) -> Reply {
    let Some(u) = user_data else {
        return fail(StatusCode::BAD_REQUEST, "Missing parameter userData");
    };
    match d.by_user_data.get(&u).and_then(|ids| ids.first()).copied() {
        Some(id) => f(d, id),
        None => fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
    }
}

fn act(d: &mut Data, id: i64, action: &str) -> Reply {
    let c = d.contacts.get_mut(&id).expect("caller checked");
    match action {
        "lock" => c.locked = true,
        "unlock" => c.locked = false,
        _ => reset(c),
    }
    ok(json!({"status": 200}))
}

fn reset(c: &mut EmuContact) {
    c.tries = 0;
    c.reset_count += 1;
}

fn delete(d: &mut Data, id: i64) -> Reply {
    if let Some(c) = d.contacts.remove(&id) {
        unindex(d, &c);
    }
    ok(json!({"status": 200}))
}

fn user_data_of(c: &EmuContact) -> Option<String> {
    c.fields
        .get("UserData")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn index(d: &mut Data, c: &EmuContact) {
    if let Some(u) = user_data_of(c) {
        let ids = d.by_user_data.entry(u).or_default();
        let pos = ids.partition_point(|x| *x < c.id);
        ids.insert(pos, c.id);
    }
}

fn unindex(d: &mut Data, c: &EmuContact) {
    if let Some(u) = user_data_of(c) {
        if let Some(ids) = d.by_user_data.get_mut(&u) {
            ids.retain(|x| *x != c.id);
            if ids.is_empty() {
                d.by_user_data.remove(&u);
            }
        }
    }
}

/// Parses a JSON object body, checking the content type the API requires.
fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Reply> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(fail(
            StatusCode::BAD_REQUEST,
            "The body must be a JSON object",
        )),
        Err(e) => Err(fail(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}"))),
    }
}

/// Checks the names, types and lengths of contact fields.
fn check_fields(m: &Map<String, Value>, extra: &[&str]) -> Result<(), Reply> {
    for (k, v) in m {
        let field = fields::by_name(k);
        if field.is_none() && !extra.contains(&k.as_str()) {
            return Err(fail(StatusCode::BAD_REQUEST, format!("Unknown field {k}")));
        }
        let type_ok = match (k.as_str(), v) {
            (_, Value::Null) => k != "ID" && k != "DiallerCampaignsID",
            ("Amount", Value::Number(_)) => true,
            ("ID" | "DiallerCampaignsID" | "RandomSortOrder", Value::Number(n)) => n.is_i64(),
            ("Amount" | "ID" | "DiallerCampaignsID" | "RandomSortOrder", _) => false,
            (_, Value::String(_)) => true,
            _ => false,
        };
        if !type_ok {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("Field {k} has the wrong type"),
            ));
        }
        if let Value::String(s) = v {
            let max = field
                .and_then(|f| f.max_len)
                .or((k == "Region").then_some(REGION_MAX));
            if max.is_some_and(|max| s.chars().count() > max) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("Field {k} is too long"),
                ));
            }
            if field.is_some_and(|f| f.kind == fields::Kind::DateTime)
                && chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_err()
            {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("Field {k} is not a date YYYY-MM-DDTHH:MM:SS"),
                ));
            }
        }
    }
    Ok(())
}

fn bool_param(params: &HashMap<String, String>, name: &str) -> Result<Option<bool>, Reply> {
    match params.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(fail(
            StatusCode::BAD_REQUEST,
            format!("Parameter {name} must be true or false, not {other}"),
        )),
    }
}

/// A checked import request: the contact's fields, its campaign and the flags.
struct ImportRequest {
    fields: Map<String, Value>,
    campaign_id: i64,
    overwrite: bool,
    reset: Option<bool>,
    unlock: Option<bool>,
}

fn import_request(
    cfg: &EmulatorConfig,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<ImportRequest, Reply> {
    let mut m = json_body(headers, body)?;
    check_fields(&m, &IMPORT_ONLY)?;
    let overwrite = bool_param(params, "overwriteDuplicates")?.unwrap_or(false);
    let reset = bool_param(params, "resetContact")?;
    let unlock = bool_param(params, "unlockContact")?;
    let nonempty = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    if !nonempty("Name") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Missing mandatory field Name",
        ));
    }
    if !(1..=6).any(|i| nonempty(&format!("PhoneNumber{i}"))) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "At least one of PhoneNumber1 ... PhoneNumber6 is mandatory",
        ));
    }
    let campaign = match (
        m.remove("DiallerCampaignsID"),
        m.remove("DiallerCampaignsName"),
    ) {
        (Some(Value::Number(n)), _) => cfg.campaigns.iter().find(|(id, _)| Some(*id) == n.as_i64()),
        (_, Some(Value::String(name))) => cfg.campaigns.iter().find(|(_, n)| *n == name),
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "Missing mandatory field DiallerCampaignsID or DiallerCampaignsName",
            ))
        }
    };
    let Some((campaign_id, _)) = campaign else {
        return Err(fail(StatusCode::NOT_FOUND, "Dialler campaign not found"));
    };
    Ok(ImportRequest {
        fields: m,
        campaign_id: *campaign_id,
        overwrite,
        reset,
        unlock,
    })
}

fn import(
    cfg: &EmulatorConfig,
    d: &mut Data,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let ImportRequest {
        fields: m,
        campaign_id,
        overwrite,
        reset: reset_flag,
        unlock: unlock_flag,
    } = match import_request(cfg, params, headers, body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let existing = m
        .get("UserData")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .and_then(|u| d.by_user_data.get(u))
        .and_then(|ids| {
            ids.iter()
                .find(|id| d.contacts[id].campaign_id == campaign_id)
        })
        .copied();
    if let (true, Some(id)) = (overwrite, existing) {
        let c = d.contacts.get_mut(&id).unwrap();
        for (k, v) in m {
            c.fields.insert(k, v);
        }
        if reset_flag == Some(true) {
            reset(c);
        }
        // Absent = the behaviour before 3.39: the contact is unlocked.
        if unlock_flag != Some(false) {
            c.locked = false;
        }
        return ok(records(vec![contact_json(c)]));
    }
    let id = d.next_id;
    d.next_id += 1;
    let c = EmuContact {
        id,
        campaign_id,
        fields: m,
        locked: false,
        reset_count: 0,
        tries: 0,
    };
    index(d, &c);
    let reply = ok(records(vec![contact_json(&c)]));
    d.contacts.insert(id, c);
    reply
}

fn update(d: &mut Data, headers: &HeaderMap, body: &Bytes) -> Reply {
    let mut m = match json_body(headers, body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(r) = check_fields(&m, &UPDATE_ONLY) {
        return r;
    }
    let id = match (m.remove("ID"), m.get("UserData").and_then(Value::as_str)) {
        (Some(Value::Number(n)), _) => match n.as_i64().filter(|id| d.contacts.contains_key(id)) {
            Some(id) => id,
            None => return fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
        },
        (_, Some(u)) => match d.by_user_data.get(u).and_then(|ids| ids.first()) {
            Some(id) => *id,
            None => return fail(StatusCode::NOT_FOUND, "Dialler contact not found"),
        },
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                "Missing mandatory field ID or UserData",
            )
        }
    };
    let mut c = d.contacts.remove(&id).unwrap();
    unindex(d, &c);
    for (k, v) in m {
        c.fields.insert(k, v);
    }
    index(d, &c);
    let reply = ok(records(vec![contact_json(&c)]));
    d.contacts.insert(id, c);
    reply
}

/// The batch read of the vendor wiki: contacts by `UserDataList` and/or `IDList`.
fn batch_read(d: &Data, body: &Bytes) -> Reply {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return fail(StatusCode::BAD_REQUEST, "The body must be a JSON object");
    };
    let mut ids: Vec<i64> = Vec::new();
    if let Some(Value::Array(list)) = m.get("IDList") {
        ids.extend(
            list.iter()
                .filter_map(Value::as_i64)
                .filter(|id| d.contacts.contains_key(id)),
        );
    }
    if let Some(Value::Array(list)) = m.get("UserDataList") {
        for u in list.iter().filter_map(Value::as_str) {
            ids.extend(d.by_user_data.get(u).into_iter().flatten());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ok(records(
        ids.iter().map(|id| contact_json(&d.contacts[id])).collect(),
    ))
}
