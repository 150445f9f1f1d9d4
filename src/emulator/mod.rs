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
//! ID of the next (old IDs then hold other contacts). `POST /_emulator/calls` records an
//! agent's call on a contact (see `dialling`): its history, tries and result code, as
//! the campaign's result codes (`GET .../resultCodes`) describe them.
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
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

mod contacts;
mod dialling;
mod faults;
mod routes;

pub use dialling::{default_result_codes, Call, CallError, CallRecord, ResultCode, ResultKind};
pub use faults::Faults;

use contacts::{
    act, batch_read, by_id, campaign_json, contact_json, delete, import, index, unindex, update,
    users_json, with_first,
};
use faults::Fault;
use routes::{fail, handle, no_endpoint, ok, records, Reply};

/// What the emulated tenant looks like.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub client_id: u32,
    pub token: String,
    /// Campaigns as (ID, name).
    pub campaigns: Vec<(i64, String)>,
    /// The users' logins (UID), served by `GET /users` with IDs from 1 in this order. An
    /// import naming another UID in `ReservedUsersUID` or `FollowUpUsersUID` fails (400).
    pub users: Vec<String>,
    /// Result codes beyond each campaign's four defaults ([`default_result_codes`]).
    pub result_codes: Vec<ResultCode>,
    pub faults: Faults,
    /// How many API calls `GET /_emulator/requests` keeps (the last ones): a long-running
    /// emulator would otherwise grow without bound.
    pub keep_requests: usize,
}

/// The default of [`EmulatorConfig::users`].
pub(crate) const DEFAULT_USERS: [&str; 3] = ["agent1", "agent2", "supervisor"];

/// The default of [`EmulatorConfig::keep_requests`].
pub const KEEP_REQUESTS: usize = 100_000;

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            client_id: 7,
            token: "emulator-token".into(),
            campaigns: vec![(538, "My Campaign".into())],
            users: DEFAULT_USERS.iter().map(|u| u.to_string()).collect(),
            result_codes: Vec::new(),
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
    /// Dialling attempts so far (calls recorded with [`Emulator::record_call`]; a reset
    /// sets it to 0).
    pub tries: u64,
    /// The result code of the last call (a reset deletes it).
    pub result_code: Option<i64>,
    /// When a call-back code asks for the next try (`dtNextTry`).
    pub next_try: Option<String>,
    /// The calls, oldest first (kept by a reset, gone with the contact).
    pub history: Vec<CallRecord>,
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
pub(super) struct Data {
    pub(super) next_id: i64,
    pub(super) contacts: BTreeMap<i64, EmuContact>,
    /// UserData -> contact IDs in ascending order ("the first one found" is the lowest).
    pub(super) by_user_data: HashMap<String, Vec<i64>>,
    /// The last `keep_requests` API calls, oldest first.
    pub(super) requests: std::collections::VecDeque<RequestLog>,
    /// Calls to answer 400 instead of carrying out: (path fragment, how many more).
    pub(super) reject: Vec<(String, usize, String)>,
    /// The ID of the next call's history entry.
    pub(super) next_history_id: i64,
}

pub(super) struct Shared {
    pub(super) cfg: EmulatorConfig,
    pub(super) data: Mutex<Data>,
    /// API calls so far: the draw number of the next fault.
    pub(super) draws: AtomicU64,
    pub(super) started: std::time::Instant,
}

/// A handle on a running emulator's data.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

/// Fields the import takes, beyond the syncable ones.
pub(super) const IMPORT_ONLY: [&str; 4] = [
    "DiallerCampaignsID",
    "DiallerCampaignsName",
    "RandomSortOrder",
    "FollowUpDateTime",
];
/// Fields the update takes, beyond the syncable ones.
pub(super) const UPDATE_ONLY: [&str; 4] = ["ID", "UserData2", "UserData3", "Region"];
pub(super) const REGION_MAX: usize = 256;

impl Emulator {
    pub fn new(cfg: EmulatorConfig) -> Emulator {
        Emulator {
            shared: Arc::new(Shared {
                cfg,
                data: Mutex::new(Data {
                    next_id: 100_001,
                    next_history_id: 1136,
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

    /// The IDs of the first `n` contacts, in order (without copying the contacts).
    pub fn ids(&self, n: usize) -> Vec<i64> {
        crate::locking::lock(&self.shared.data)
            .contacts
            .keys()
            .copied()
            .take(n)
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

    /// Locks or unlocks a contact as someone in the jtel portal would (tests of a lock
    /// the state does not know of).
    pub fn set_locked(&self, id: i64, locked: bool) -> bool {
        let mut d = crate::locking::lock(&self.shared.data);
        match d.contacts.get_mut(&id) {
            Some(c) => {
                c.locked = locked;
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

    /// Records an agent's call on a contact now, as `POST /_emulator/calls` does: a
    /// history entry (returned), one more try, the result code, `dtNextTry` for a
    /// call-back code.
    pub fn record_call(&self, call: &Call) -> Result<Value, CallError> {
        let mut d = crate::locking::lock(&self.shared.data);
        dialling::record_call(&self.shared.cfg, &mut d, call)
    }

    /// Calls contacts on its own, `per_second` calls a second, until the runtime stops:
    /// each the next contact still to be called (round-robin by ID; not locked, no done
    /// or aborted result), with a result drawn from its campaign's codes (`seed`: the
    /// same draws each time).
    pub async fn dial(&self, per_second: f64, seed: u64) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / per_second));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut after = 0;
        loop {
            tick.tick().await;
            let mut d = crate::locking::lock(&self.shared.data);
            dialling::dial_next(&self.shared.cfg, &mut d, &mut after, &mut rng);
        }
    }

    /// One call as [`Emulator::dial`] makes it; the history entry, or `None` when no
    /// contact is left to call.
    pub fn dial_once(&self, after: &mut i64, rng: &mut fastrand::Rng) -> Option<Value> {
        let mut d = crate::locking::lock(&self.shared.data);
        dialling::dial_next(&self.shared.cfg, &mut d, after, rng)
    }

    /// Every result code of the tenant: each campaign's defaults, then the extras.
    pub fn result_codes(&self) -> Vec<ResultCode> {
        dialling::all_codes(&self.shared.cfg).collect()
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
