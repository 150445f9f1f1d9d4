//! The sync state: what dialsync knows of each contact it synced, per job, keyed by
//! UserData. Everything sled-specific stays in this module.
//!
//! An entry holds the dialler contact ID, a hash of each mapped field as last confirmed by
//! the dialler (never the personal data itself), the reset-trigger hashes, whether we
//! locked the contact, and what the last run did to it. Entries are written only after the
//! dialler confirmed an operation. sled makes writes durable on `flush`, which the sync
//! calls at the end of each run.
//!
//! Beside the entries, per job: the *pending* imports (the journal: an import is recorded
//! here, durably, before it is sent, and cleared once its contact ID is stored; after a
//! crash the next run looks each one up on the dialler before planning), and how many runs
//! in a row each failing row has failed; and the job's [`Digest`] (a compact copy of the
//! entries' key and row hashes, removed before the entries change and stored again at the
//! end of the run). Per store: the row count of each job's last run that was not aborted
//! (the truncated-export guard compares against it).

pub mod digest;
pub mod hashing;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::key_hash;
use crate::state::digest::Digest;
use crate::state::hashing::{HashKey, KEY_BYTES};

/// Encoding version of [`Entry`] and [`Pending`]; bump when their layout changes (and
/// keep decoding the older ones). Version 3 has the layout of 2 with keyed hashes
/// ([`crate::state::hashing`]); 2 and 1 hold unkeyed ones (`keyed: false`), and an entry read
/// as such is written back as such until a run compares it and stores keyed hashes.
const ENTRY_VERSION: u8 = 3;
/// The version of entries with unkeyed hashes.
const UNKEYED_VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The dialler's contact ID.
    pub id: i64,
    /// Hash per mapped field (field code, hash), in field-code order.
    pub fields: Vec<(u8, u64)>,
    /// Hash per reset-trigger column.
    pub triggers: Vec<(String, u64)>,
    /// Whether dialsync locked the contact (the API does not expose a lock flag).
    pub locked: bool,
    /// What the last run that touched this contact did.
    pub last_op: LastOp,
    /// When that was (Unix seconds).
    pub last_run: i64,
    /// The hash of the CRM row (`Mapper::row_hash`) the dialler's contact reflects in
    /// full, or 0 when not known (after a partial change, a recovery or a rebuild). A row
    /// with this hash is unchanged without being mapped.
    pub row: u64,
    /// Whether the hashes are keyed with the state's secret (false: written by a version
    /// before keyed hashing; the planner migrates it when a row names it).
    #[serde(skip)]
    pub keyed: bool,
}

/// An [`Entry`] as version 1 wrote it (no row hash).
#[derive(Deserialize)]
struct EntryV1 {
    id: i64,
    fields: Vec<(u8, u64)>,
    triggers: Vec<(String, u64)>,
    locked: bool,
    last_op: LastOp,
    last_run: i64,
}

/// An import that was (or was about to be) sent but whose contact ID is not stored yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The field hashes the import sends.
    pub fields: Vec<(u8, u64)>,
    /// The trigger hashes to store with it.
    pub triggers: Vec<(String, u64)>,
    /// The row hash to store with it.
    pub row: u64,
    /// Whether the hashes are keyed (see [`Entry::keyed`]).
    #[serde(skip)]
    pub keyed: bool,
}

/// A [`Pending`] as version 1 wrote it.
#[derive(Deserialize)]
struct PendingV1 {
    fields: Vec<(u8, u64)>,
    triggers: Vec<(String, u64)>,
}

impl Pending {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![if self.keyed {
            ENTRY_VERSION
        } else {
            UNKEYED_VERSION
        }];
        out.extend(postcard::to_stdvec(self).expect("a Pending always serializes"));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Pending> {
        match bytes.split_first() {
            Some((&v @ (ENTRY_VERSION | UNKEYED_VERSION), rest)) => {
                postcard::from_bytes(rest).ok().map(|p| Pending {
                    keyed: v == ENTRY_VERSION,
                    ..p
                })
            }
            Some((1, rest)) => postcard::from_bytes::<PendingV1>(rest)
                .ok()
                .map(|p| Pending {
                    fields: p.fields,
                    triggers: p.triggers,
                    row: 0,
                    keyed: false,
                }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastOp {
    Imported,
    Updated,
    Reset,
    Locked,
    Unlocked,
    /// Hashes recorded without a call (a field or trigger newly added to the config).
    Baseline,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![if self.keyed {
            ENTRY_VERSION
        } else {
            UNKEYED_VERSION
        }];
        out.extend(postcard::to_stdvec(self).expect("an Entry always serializes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        match bytes.split_first() {
            Some((&v @ (ENTRY_VERSION | UNKEYED_VERSION), rest)) => {
                postcard::from_bytes(rest).ok().map(|e| Entry {
                    keyed: v == ENTRY_VERSION,
                    ..e
                })
            }
            Some((1, rest)) => postcard::from_bytes::<EntryV1>(rest).ok().map(|e| Entry {
                id: e.id,
                fields: e.fields,
                triggers: e.triggers,
                locked: e.locked,
                last_op: e.last_op,
                last_run: e.last_run,
                row: 0,
                keyed: false,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state database {path} is in use by another dialsync process; \
         if the daemon is running, stop it or let it run the sync"
    )]
    Locked { path: PathBuf },
    #[error(
        "the state database {path} belongs to user {owner}; run this command as that user \
         (`sudo -u {owner} dialsync ...`), or start the service, which takes manual syncs over \
         its control socket. Run as root it would write files the service cannot open"
    )]
    ForeignOwner { path: PathBuf, owner: String },
    #[error(
        "cannot open the state database {path}; if it is damaged, `dialsync state rebuild` \
         moves it aside and rebuilds it from the dialler"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "cannot open the state database {path} ({broken}), nor restore it from its snapshots; \
         `dialsync state rebuild` moves it aside and rebuilds it from the dialler"
    )]
    Restore {
        path: PathBuf,
        broken: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the state's snapshot in {path}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or create the state's key file {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state database failed")]
    Db(#[from] sled::Error),
    #[error("the state entry for UserData {key:?} is unreadable (written by a newer dialsync?)")]
    Corrupt { key: String },
}

/// Read access to one job's state: what the planner needs.
pub trait StateView {
    fn get(&self, key: &str) -> Result<Option<Entry>, StateError>;
    /// Calls `f` for every entry, in key order.
    fn for_each(&self, f: &mut dyn FnMut(&str, Entry)) -> Result<(), StateError>;
}

impl StateView for BTreeMap<String, Entry> {
    fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, Entry)) -> Result<(), StateError> {
        for (k, v) in self {
            f(k, v.clone());
        }
        Ok(())
    }
}

/// Makes the state's writes durable, one flush at a time. sled 0.34's `flush_async` can
/// hang for good when several run at once (spacejam/sled#1308: fixed on a branch that
/// was never released), which a run does (the journal's flush beside re-imports that
/// each flush): so every flush goes through here, as a blocking `flush` behind one lock,
/// on a blocking thread. A flush makes every write before it durable, so one that waited
/// for another has little left to do.
#[derive(Clone)]
struct Flusher {
    db: sled::Db,
    gate: Arc<Mutex<()>>,
}

impl Flusher {
    /// Flushes on this thread.
    fn now(&self) -> Result<(), StateError> {
        let _one = crate::locking::lock(&self.gate);
        self.db.flush()?;
        Ok(())
    }

    /// Flushes on a blocking thread.
    async fn run(&self) -> Result<(), StateError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.now())
            .await
            .map_err(|e| StateError::Db(sled::Error::Io(std::io::Error::other(e))))?
    }
}

/// The state database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flusher: Flusher,
    path: PathBuf,
    /// The state's secret (see [`crate::state::hashing`]), from [`key_path`].
    key: Arc<HashKey>,
    /// Writes to job state (entries, journal, failure counts) through this handle.
    writes: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the state database at `path`. The state says who is called and
    /// when, so it is private whatever the umask: the directory 0700, every file in it
    /// 0600 (a state created by an older version is narrowed now), and the process's umask
    /// becomes 077, so that what sled creates later is private too.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        refuse_as_root(path)?;
        let io = |e: std::io::Error| StateError::Open {
            path: path.to_path_buf(),
            source: sled::Error::Io(e),
        };
        // SAFETY: umask has no preconditions and cannot fail.
        #[allow(unsafe_code)]
        unsafe {
            libc::umask(0o077)
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io)?;
        make_private(path).map_err(io)?;
        let key = load_or_create_key(path).map_err(|source| StateError::Key {
            path: key_path(path),
            source,
        })?;
        match sled::Config::new().path(path).open() {
            Ok(db) => {
                let store = Store::on(db, path, key);
                store.check_key()?;
                Ok(store)
            }
            Err(e) if held_elsewhere(&e) => Err(StateError::Locked {
                path: path.to_path_buf(),
            }),
            Err(source) if is_damage(&source) && !snapshot::jobs(path).is_empty() => {
                Store::restore(path, key, source)
            }
            Err(source) => Err(StateError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A store on the open database `db` at `path`, with the state's secret.
    fn on(db: sled::Db, path: &Path, key: HashKey) -> Store {
        Store {
            flusher: Flusher {
                db: db.clone(),
                gate: Arc::default(),
            },
            db,
            path: path.to_path_buf(),
            key: Arc::new(key),
            writes: Arc::default(),
        }
    }

    /// The database at `path` cannot be opened (`broken`), but snapshots exist: moves it
    /// aside, opens a new one and restores each job from its snapshot (see
    /// [`crate::state::snapshot`]). Every restored job is verified against the dialler by its
    /// next run; one whose snapshot was older than its state has every contact's lock
    /// state marked unknown, and its imports look first.
    fn restore(path: &Path, key: HashKey, broken: sled::Error) -> Result<Store, StateError> {
        let failed = |source: std::io::Error| StateError::Restore {
            path: path.to_path_buf(),
            broken: broken.to_string(),
            source,
        };
        // Every snapshot is read before anything is moved: a damaged one leaves all as is.
        let mut snapshots = Vec::new();
        for job in snapshot::jobs(path) {
            let sections = snapshot::read(&snapshot::file(path, &job)).map_err(failed)?;
            let stale = snapshot::dirty_marker(path, &job).exists();
            snapshots.push((job, sections, stale));
        }
        let aside = move_aside(path).map_err(failed)?;
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            Err(e) => {
                // Put the old one back as it was: nothing is lost by trying.
                let _ = std::fs::remove_dir_all(path);
                let _ = std::fs::rename(&aside, path);
                return Err(failed(std::io::Error::other(e)));
            }
        };
        let store = Store::on(db, path, key);
        for (job, sections, stale) in snapshots {
            store.load_snapshot(&job, sections, stale)?;
            tracing::warn!(
                job = %job,
                broken = %broken,
                moved_to = %aside.display(),
                snapshot_older_than_state = stale,
                "the state database could not be opened: moved aside and restored from the job's \
                 snapshot; its next run verifies it against the dialler{}",
                if stale {
                    ", sets every contact's lock as the export says and looks each import up first"
                } else {
                    ""
                }
            );
        }
        store.check_key()?;
        store.db.flush()?;
        Ok(store)
    }

    /// Puts a job's snapshot into this (new) database.
    fn load_snapshot(
        &self,
        job: &str,
        sections: snapshot::Sections,
        stale: bool,
    ) -> Result<(), StateError> {
        for (name, items) in sections.0 {
            if name == "records" {
                for (record, value) in items {
                    let tree = match record.as_slice() {
                        b"good_rows" => "good_rows",
                        b"last_run" => "runs",
                        _ => continue,
                    };
                    self.db.open_tree(tree)?.insert(job, value)?;
                }
                continue;
            }
            let tree = self.db.open_tree(format!("{name}/{job}"))?;
            for (k, v) in items {
                tree.insert(k, v)?;
            }
        }
        if stale {
            let state = self.job(job)?;
            let mut keys = Vec::new();
            state.for_each(&mut |k, _| keys.push(k.to_string()))?;
            for k in keys {
                let bits = state.in_flight.get(&k)?.and_then(|v| v.first().copied());
                state.put_in_flight(&k, bits.unwrap_or(0) | in_doubt::LOCK)?;
            }
            self.db
                .open_tree("meta")?
                .insert(format!("imports_unsure/{job}"), &[1])?;
        }
        Ok(())
    }

    /// Whether the imports of `job`'s next run must look the contact up first (its state
    /// was restored from a snapshot older than it: an import may have reached the dialler
    /// unrecorded).
    pub fn imports_unsure(&self, job: &str) -> Result<bool, StateError> {
        Ok(self
            .db
            .open_tree("meta")?
            .contains_key(format!("imports_unsure/{job}"))?)
    }

    pub fn clear_imports_unsure(&self, job: &str) -> Result<(), StateError> {
        self.db
            .open_tree("meta")?
            .remove(format!("imports_unsure/{job}"))?;
        Ok(())
    }

    /// Writes the snapshot of `job` when it changed since the last one and that one is
    /// older than `every` (or there is none); see [`crate::state::snapshot`]. After the run's
    /// state is flushed.
    pub fn snapshot_if_due(&self, job: &str, every: Duration) -> Result<bool, StateError> {
        let file = snapshot::file(&self.path, job);
        let dirty = snapshot::dirty_marker(&self.path, job);
        let age = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| t.elapsed().unwrap_or_default());
        let due = match age {
            None => !self.job(job)?.is_empty(),
            Some(age) => dirty.exists() && age >= every,
        };
        if !due {
            return Ok(false);
        }
        self.write_snapshot(job)?;
        match std::fs::remove_file(&dirty) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.snapshot_error(e)),
        }
        Ok(true)
    }

    /// Writes the snapshot of `job` now.
    pub fn write_snapshot(&self, job: &str) -> Result<(), StateError> {
        let tree_items = |tree: sled::Tree| -> snapshot::Items<'static> {
            Box::new(tree.iter().map(|kv| {
                kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(std::io::Error::other)
            }))
        };
        let mut sections: Vec<(String, snapshot::Items<'static>)> = Vec::new();
        for name in ["job", "pending", "inflight", "failures"] {
            let tree = self.db.open_tree(format!("{name}/{job}"))?;
            sections.push((name.to_string(), tree_items(tree)));
        }
        let mut records = Vec::new();
        if let Some(v) = self.db.open_tree("good_rows")?.get(job)? {
            records.push((b"good_rows".to_vec(), v.to_vec()));
        }
        if let Some(v) = self.db.open_tree("runs")?.get(job)? {
            records.push((b"last_run".to_vec(), v.to_vec()));
        }
        sections.push(("records".into(), Box::new(records.into_iter().map(Ok))));
        snapshot::write(&snapshot::file(&self.path, job), sections)
            .map_err(|e| self.snapshot_error(e))
    }

    fn snapshot_error(&self, source: std::io::Error) -> StateError {
        StateError::Snapshot {
            path: snapshot::dir(&self.path),
            source,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state's secret, which every stored hash of a value is keyed with.
    pub fn hash_key(&self) -> Arc<HashKey> {
        Arc::clone(&self.key)
    }

    /// Notes the key's fingerprint in the database, or warns when it is not the one the
    /// state was made with (the key file was lost or replaced): every stored hash then
    /// misses, and the next run sends every contact's fields once.
    fn check_key(&self) -> Result<(), StateError> {
        let meta = self.db.open_tree("meta")?;
        let check = self.key.check().to_le_bytes();
        match meta.get("key_check")? {
            Some(stored) if stored.as_ref() == check => {}
            Some(_) => {
                tracing::warn!(
                    key = %key_path(&self.path).display(),
                    "the state's key file is not the one its hashes were made with (lost or \
                     replaced?): every contact is compared anew, and each one in the export is \
                     sent its fields once"
                );
                meta.insert("key_check", &check)?;
            }
            None => {
                meta.insert("key_check", &check)?;
            }
        }
        Ok(())
    }

    /// Writes to job state so far (entries, journal, failure counts; not run records).
    pub fn job_writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The state of job `name`.
    pub fn job(&self, name: &str) -> Result<JobState, StateError> {
        Ok(JobState {
            flusher: self.flusher.clone(),
            key: Arc::clone(&self.key),
            tree: self.db.open_tree(format!("job/{name}"))?,
            pending: self.db.open_tree(format!("pending/{name}"))?,
            in_flight: self.db.open_tree(format!("inflight/{name}"))?,
            failures: self.db.open_tree(format!("failures/{name}"))?,
            digests: self.db.open_tree("digest")?,
            name: name.to_string(),
            digest: Arc::default(),
            writes: Arc::clone(&self.writes),
            state_path: self.path.clone(),
            dirty: Arc::default(),
        })
    }

    /// The rows of job `name`'s last run that was not aborted.
    pub fn good_rows(&self, job: &str) -> Result<Option<u64>, StateError> {
        Ok(self
            .db
            .open_tree("good_rows")?
            .get(job)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_le_bytes))
    }

    pub fn set_good_rows(&self, job: &str, rows: u64) -> Result<(), StateError> {
        self.db
            .open_tree("good_rows")?
            .insert(job, &rows.to_le_bytes())?;
        Ok(())
    }

    /// The guard that has stopped every run of `job` since it first tripped, if one has.
    pub fn guard_trip(&self, job: &str) -> Result<Option<GuardTrip>, StateError> {
        Ok(self
            .db
            .open_tree("guards")?
            .get(job)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Records that a guard stops `job`'s runs (`None`: it no longer does).
    pub fn set_guard_trip(&self, job: &str, trip: Option<&GuardTrip>) -> Result<(), StateError> {
        let tree = self.db.open_tree("guards")?;
        match trip {
            Some(t) => tree.insert(job, serde_json::to_vec(t).expect("serializes"))?,
            None => tree.remove(job)?,
        };
        Ok(())
    }

    /// What the last read-back verification of `job` found, if one ran.
    pub fn verification(&self, job: &str) -> Result<Option<Verified>, StateError> {
        Ok(self
            .db
            .open_tree("verified")?
            .get(job)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn set_verification(&self, job: &str, v: &Verified) -> Result<(), StateError> {
        self.db
            .open_tree("verified")?
            .insert(job, serde_json::to_vec(v).expect("serializes"))?;
        Ok(())
    }

    /// Stores the summary of a job's latest run (JSON, for `status`).
    pub fn put_last_run(&self, job: &str, summary: &[u8]) -> Result<(), StateError> {
        self.db.open_tree("runs")?.insert(job, summary)?;
        Ok(())
    }

    pub fn last_run(&self, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.open_tree("runs")?.get(job)?.map(|v| v.to_vec()))
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StateError> {
        self.flusher.run().await
    }
}

/// What a read-back verification of a job's state against its campaign found and fixed
/// (see `reconcile::verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Verified {
    /// When it ran (RFC 3339).
    pub at: String,
    /// Contacts of the campaign the dialler listed.
    pub listed: u64,
    /// Contacts in the state, checked.
    pub checked: u64,
    /// Of those, found under their stored ID.
    pub confirmed: u64,
    /// Found under another ID: the ID was re-learned (and the lock state is unknown).
    pub relearned: u64,
    /// Not on the dialler at all: forgotten, so a contact still in the export is imported
    /// again.
    pub missing: u64,
    /// Found under their ID with other values than the state says were sent: those
    /// fields are sent again.
    pub values_differ: u64,
}

/// A guard that stops a job's runs, since when (for `status`, and to log it once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardTrip {
    /// When it first stopped a run (RFC 3339).
    pub since: String,
    /// What it said the last time.
    pub guard: String,
}

/// Whether sled could not open the database because another process holds it. sled says
/// so only in its message; this is the one place that reads it, and
/// `tests::second_open_is_a_clear_error_and_state_persists` fails if sled's wording
/// changes.
fn held_elsewhere(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Whether sled's failure to open a database means the database is damaged (restore it),
/// not that the disk is full or the files cannot be reached (try again later, move
/// nothing).
fn is_damage(e: &sled::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => true,
        sled::Error::Io(io) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

/// Moves a database that cannot be opened out of the way, to
/// `<path>.broken-<time>` (with a number added if that is taken); where it went.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stem = format!(
        "{}.broken-{}",
        path.display(),
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let mut aside = PathBuf::from(&stem);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = PathBuf::from(format!("{stem}-{n}"));
    }
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Where the secret of the state at `state` is kept: beside the database, not in it
/// (`/var/lib/dialsync/state.key` for `/var/lib/dialsync/state`), so that a copy of the
/// database alone reveals no value.
pub fn key_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".key");
    PathBuf::from(p)
}

/// The state's secret: read, or made (32 random bytes, 0600, written durably) when there
/// is none.
fn load_or_create_key(state: &Path) -> std::io::Result<HashKey> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = key_path(state);
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mut bytes = [0u8; KEY_BYTES];
            f.read_exact(&mut bytes).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("the key file is damaged ({e}); move it aside and run again: a new key is made, and each contact is sent its fields once"),
                )
            })?;
            Ok(HashKey::from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = HashKey::generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(key.bytes())?;
            f.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Narrows `dir` to 0700 and what is in it to 0700 (directories) or 0600 (files).
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let narrow = |p: &Path, mode: u32| -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(p)?;
        if meta.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    narrow(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_private(&entry.path())?;
        } else if kind.is_file() {
            narrow(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

/// Root opening a state that belongs to the service's user would leave root-owned files
/// in it, and the service could not open it any more: refuse, and say as whom to run.
fn refuse_as_root(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    Err(StateError::ForeignOwner {
        path: path.to_path_buf(),
        owner: user_name(meta.uid()).unwrap_or_else(|| format!("#{}", meta.uid())),
    })
}

/// The name of user `uid` from /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// What may have changed on the dialler while an operation was in flight (bits of a
/// mark, see [`JobState::put_in_flight`]).
pub mod in_doubt {
    /// An update or reset was sent: the contact's fields and counters are unknown.
    pub const FIELDS: u8 = 1;
    /// A lock or unlock was sent: whether the contact is locked is unknown.
    pub const LOCK: u8 = 2;
    /// A delete was sent: whether the contact still exists is unknown.
    pub const GONE: u8 = 4;
}

/// One job's entries, pending imports, in-flight marks, failure counts and digest.
#[derive(Clone)]
pub struct JobState {
    flusher: Flusher,
    /// The store's secret (see [`Store::hash_key`]).
    key: Arc<HashKey>,
    tree: sled::Tree,
    pending: sled::Tree,
    /// UserData -> [`in_doubt`] bits of the operations sent (or about to be) whose outcome
    /// is not stored yet.
    in_flight: sled::Tree,
    failures: sled::Tree,
    /// Every job's stored digest, by job name.
    digests: sled::Tree,
    name: String,
    digest: Arc<Mutex<DigestCache>>,
    writes: Arc<AtomicU64>,
    /// The store's path (for the job's snapshot and its marker).
    state_path: PathBuf,
    /// Whether this handle made sure the snapshot is marked as older than the state.
    dirty: Arc<std::sync::atomic::AtomicBool>,
}

/// The job's digest as this handle knows it: the stored one (read at the first need) and
/// the entries written since.
#[derive(Default)]
struct DigestCache {
    loaded: bool,
    /// The digest stored when this handle first needed it (`None`: none, or unreadable).
    base: Option<Arc<Digest>>,
    /// Whether a readable copy is still stored (it is removed before the first entry
    /// write; an unreadable one is replaced at the end of the run).
    stored: bool,
    /// Entries written since, by key hash: (row hash, locked), or `None` if removed.
    changes: HashMap<u64, Option<(u64, bool)>>,
}

impl JobState {
    /// The state's secret, which every stored hash of a value is keyed with.
    pub fn hash_key(&self) -> &Arc<HashKey> {
        &self.key
    }

    /// Before each write to the job's state: counted, and the first one of this handle
    /// marks the job's snapshot, if it has one, as older than the state (durably, before
    /// the write).
    fn wrote(&self) -> Result<(), StateError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let marker = snapshot::dirty_marker(&self.state_path, &self.name);
        if snapshot::file(&self.state_path, &self.name).exists() && !marker.exists() {
            let made = std::fs::File::create(&marker)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::File::open(snapshot::dir(&self.state_path))?.sync_all());
            made.map_err(|source| StateError::Snapshot {
                path: marker.clone(),
                source,
            })?;
        }
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn cache(&self) -> Result<std::sync::MutexGuard<'_, DigestCache>, StateError> {
        let mut cache = crate::locking::lock(&self.digest);
        if !cache.loaded {
            let stored = self.digests.get(&self.name)?;
            cache.base = stored.and_then(|b| Digest::decode(&b)).map(Arc::new);
            cache.stored = cache.base.is_some();
            cache.loaded = true;
        }
        Ok(cache)
    }

    /// Before an entry changes: the stored digest goes, durably, so that no crash can leave
    /// a digest that does not match the entries.
    fn before_entry_write(&self) -> Result<(), StateError> {
        self.wrote()?;
        let mut cache = self.cache()?;
        if cache.stored {
            self.digests.remove(&self.name)?;
            self.flusher.now()?;
            cache.stored = false;
        }
        Ok(())
    }

    fn after_entry_write(&self, key: &str, now: Option<&Entry>) -> Result<(), StateError> {
        self.cache()?
            .changes
            .insert(key_hash(key), now.map(|e| (e.row, e.locked)));
        Ok(())
    }

    /// The digest of the entries as they are now, if the job has one (see [`Digest`]).
    pub fn digest(&self) -> Result<Option<Arc<Digest>>, StateError> {
        let cache = self.cache()?;
        Ok(match &cache.base {
            Some(base) if cache.changes.is_empty() => Some(Arc::clone(base)),
            Some(base) => base.with_changes(&cache.changes).map(Arc::new),
            None => None,
        })
    }

    /// Stores the digest of the entries as they are now, unless the stored one still
    /// matches: from what was stored and what changed since, or else (no usable digest was
    /// stored) by reading every entry. Called at the end of a run, after its writes.
    pub async fn save_digest(&self) -> Result<(), StateError> {
        if self.cache()?.stored {
            return Ok(());
        }
        let digest = match self.digest()? {
            Some(d) => Some(d),
            None if self.cache()?.base.is_some() => None, // a key hash collision
            None => {
                let mut items = Vec::new();
                self.for_each(&mut |key, e| items.push((key_hash(key), e.row, e.locked)))?;
                Digest::build(items).map(Arc::new)
            }
        };
        let Some(digest) = digest else {
            tracing::debug!(job = %self.name, "two UserData values share a hash: no digest, every row is compared in full");
            return Ok(());
        };
        // The entries first: the digest must never be durable before what it describes.
        self.flusher.run().await?;
        self.digests.insert(self.name.as_str(), digest.encode())?;
        let mut cache = self.cache()?;
        cache.base = Some(digest);
        cache.stored = true;
        cache.changes.clear();
        Ok(())
    }

    /// Records an import about to be sent; durable after the next [`JobState::flush`].
    pub fn put_pending(&self, key: &str, p: &Pending) -> Result<(), StateError> {
        self.wrote()?;
        self.pending.insert(key, p.encode())?;
        Ok(())
    }

    pub fn clear_pending(&self, key: &str) -> Result<(), StateError> {
        self.wrote()?;
        self.pending.remove(key)?;
        Ok(())
    }

    /// Every pending import, in key order.
    pub fn pending(&self) -> Result<Vec<(String, Pending)>, StateError> {
        self.pending
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k).into_owned();
                match Pending::decode(&v) {
                    Some(p) => Ok((key, p)),
                    None => Err(StateError::Corrupt { key }),
                }
            })
            .collect()
    }

    /// Marks `key` as having an operation in flight (`bits`, see [`in_doubt`]): until the
    /// mark is cleared, what the dialler holds for it is unknown. Durable after the next
    /// [`JobState::flush`], which comes before the operation is sent.
    pub fn put_in_flight(&self, key: &str, bits: u8) -> Result<(), StateError> {
        self.wrote()?;
        self.in_flight.insert(key, &[bits])?;
        Ok(())
    }

    /// Clears the mark of `key`: its operation's outcome is stored (or it was refused).
    pub fn clear_in_flight(&self, key: &str) -> Result<(), StateError> {
        self.wrote()?;
        self.in_flight.remove(key)?;
        Ok(())
    }

    /// Every in-flight mark: UserData -> [`in_doubt`] bits.
    pub fn in_flight(&self) -> Result<HashMap<String, u8>, StateError> {
        self.in_flight
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                // An unknown mark (another version's) doubts everything.
                let bits = v.first().copied().unwrap_or(u8::MAX);
                Ok((String::from_utf8_lossy(&k).into_owned(), bits))
            })
            .collect()
    }

    /// Runs in a row in which each failing row failed.
    pub fn failure_counts(&self) -> Result<std::collections::HashMap<String, u32>, StateError> {
        self.failures
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let n = <[u8; 4]>::try_from(v.as_ref()).map_or(1, u32::from_le_bytes);
                Ok((String::from_utf8_lossy(&k).into_owned(), n))
            })
            .collect()
    }

    pub fn set_failures(&self, key: &str, runs: u32) -> Result<(), StateError> {
        self.wrote()?;
        self.failures.insert(key, &runs.to_le_bytes())?;
        Ok(())
    }

    pub fn clear_failures(&self, key: &str) -> Result<(), StateError> {
        self.wrote()?;
        self.failures.remove(key)?;
        Ok(())
    }

    /// Empties the job's state (entries, pending imports, in-flight marks, failure counts).
    pub fn clear(&self) -> Result<(), StateError> {
        self.before_entry_write()?;
        self.tree.clear()?;
        self.pending.clear()?;
        self.in_flight.clear()?;
        self.failures.clear()?;
        let mut cache = self.cache()?;
        cache.base = Some(Arc::default());
        cache.changes.clear();
        Ok(())
    }

    /// Makes every write so far durable (of the whole store).
    pub async fn flush(&self) -> Result<(), StateError> {
        self.flusher.run().await
    }

    pub fn put(&self, key: &str, entry: &Entry) -> Result<(), StateError> {
        self.before_entry_write()?;
        self.tree.insert(key, entry.encode())?;
        self.after_entry_write(key, Some(entry))
    }

    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.before_entry_write()?;
        self.tree.remove(key)?;
        self.after_entry_write(key, None)
    }

    /// The number of entries: from the digest when the job has one (reading a million
    /// entries takes a second), else by counting.
    pub fn len(&self) -> usize {
        if let Ok(Some(d)) = self.digest() {
            return d.len();
        }
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

impl StateView for JobState {
    fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(v) => Entry::decode(&v)
                .map(Some)
                .ok_or_else(|| StateError::Corrupt { key: key.into() }),
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(&str, Entry)) -> Result<(), StateError> {
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k);
            let entry = Entry::decode(&v).ok_or_else(|| StateError::Corrupt {
                key: key.to_string(),
            })?;
            f(&key, entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: 100_001,
            fields: vec![(4, 42), (20, 7)],
            triggers: vec![("Round".into(), 9)],
            locked: true,
            last_op: LastOp::Locked,
            last_run: 1_700_000_000,
            row: 0x1234_5678_9abc_def0,
            keyed: true,
        }
    }

    #[test]
    fn entries_round_trip_and_stay_small() {
        let e = entry();
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes), Some(e));
        assert!(bytes.len() < 48, "{} bytes", bytes.len());
        assert_eq!(Entry::decode(&[99, 1, 2]), None);
    }

    #[test]
    fn second_open_is_a_clear_error_and_state_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let store = Store::open(&path).unwrap();
            store.job("a").unwrap().put("K1", &entry()).unwrap();
            let err = Store::open(&path).err().unwrap();
            assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
            assert!(err
                .to_string()
                .contains("in use by another dialsync process"));
        }
        // sled's background threads may hold the dropped database (and its file lock) a
        // moment longer; within one process there is nothing to wait on but the lock.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(&path) {
                Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        let job = store.job("a").unwrap();
        assert_eq!(job.get("K1").unwrap(), Some(entry()));
        assert!(store.job("b").unwrap().is_empty());
    }

    /// Promise: the state is private, whatever the umask, also one an older version
    /// created world-readable.
    #[test]
    fn the_state_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(path.join("old-file"), b"x").unwrap();
        std::fs::set_permissions(
            path.join("old-file"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        // SAFETY: umask has no preconditions; Store::open narrows it again.
        #[allow(unsafe_code)]
        unsafe {
            libc::umask(0o022)
        };
        let store = Store::open(&path).unwrap();
        store.job("a").unwrap().put("K1", &entry()).unwrap();
        store.db.flush().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        let mut files = 0;
        let mut stack = vec![path.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{}", p.display());
                    stack.push(p);
                } else {
                    assert_eq!(mode(&p), 0o600, "{}", p.display());
                    files += 1;
                }
            }
        }
        assert!(files >= 3, "sled's files and the old one: {files}");
    }

    #[test]
    fn root_does_not_open_a_state_owned_by_the_service_user() {
        // Only root can hand a directory to another user; as anyone else this test has
        // nothing to check (CI runs as root).
        #[allow(unsafe_code)]
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let err = Store::open(&path).err().expect("refused");
        let msg = err.to_string();
        assert!(matches!(err, StateError::ForeignOwner { .. }), "{msg}");
        assert!(msg.contains("sudo -u"), "{msg}");
        // Nothing was written into it.
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    }

    #[test]
    fn version_1_entries_and_journal_still_decode() {
        let e = entry();
        #[derive(Serialize)]
        struct V1<'a>(i64, &'a [(u8, u64)], &'a [(String, u64)], bool, LastOp, i64);
        let mut bytes = vec![1u8];
        bytes.extend(
            postcard::to_stdvec(&V1(
                e.id,
                &e.fields,
                &e.triggers,
                e.locked,
                e.last_op,
                e.last_run,
            ))
            .unwrap(),
        );
        assert_eq!(
            Entry::decode(&bytes),
            Some(Entry {
                row: 0,
                keyed: false,
                ..e.clone()
            })
        );
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_stdvec(&(&e.fields, &e.triggers)).unwrap());
        assert_eq!(
            Pending::decode(&bytes),
            Some(Pending {
                fields: e.fields.clone(),
                triggers: e.triggers.clone(),
                row: 0,
                keyed: false,
            })
        );
    }

    /// Entries with unkeyed hashes (version 2) read as such and are written back as such
    /// until the planner migrates them; keyed ones are version 3.
    #[test]
    fn unkeyed_entries_keep_their_version_until_migrated() {
        let keyed = entry();
        let bytes = keyed.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(Entry::decode(&bytes), Some(keyed.clone()));
        let old = Entry {
            keyed: false,
            ..keyed
        };
        let bytes = old.encode();
        assert_eq!(bytes[0], 2);
        assert_eq!(Entry::decode(&bytes), Some(old));
    }

    /// The secret lives beside the database, 0600, and a store opened again uses it.
    #[test]
    fn the_key_is_kept_beside_the_database() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let first = Store::open(&path).unwrap().hash_key().bytes().to_owned();
        let key = key_path(&path);
        assert_eq!(key, dir.path().join("state.key"));
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(
            (meta.len(), meta.permissions().mode() & 0o777),
            (KEY_BYTES as u64, 0o600)
        );
        assert!(!path.join("state.key").exists());
        let again = HashKey::from_bytes(first);
        assert_eq!(load_or_create_key(&path).unwrap().check(), again.check());
    }

    /// The stored digest always matches the entries: it goes (durably) before the first
    /// entry write, comes back at the end of the run, and a handle that finds none
    /// rebuilds it from the entries.
    #[tokio::test]
    async fn the_digest_follows_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let digest_of = |job: &JobState| -> Vec<(u64, u64, bool)> {
            let d = job.digest().unwrap().expect("a digest").probe();
            let mut items = Vec::new();
            job.for_each(&mut |k, e| {
                let i = d.find(key_hash(k)).expect("every entry is in the digest");
                assert_eq!((d.row(i), d.locked(i)), (e.row, e.locked));
                items.push((key_hash(k), e.row, e.locked));
            })
            .unwrap();
            assert_eq!(d.len(), items.len());
            items
        };

        let job = store.job("a").unwrap();
        assert!(job.digest().unwrap().is_none(), "none before the first run");
        job.put("K1", &entry()).unwrap();
        job.put(
            "K2",
            &Entry {
                locked: false,
                row: 7,
                ..entry()
            },
        )
        .unwrap();
        job.save_digest().await.unwrap();
        assert_eq!(digest_of(&job).len(), 2);
        assert_eq!(store.job("a").unwrap().len(), 2, "counted from the digest");

        // A new handle (the next run) reads it; its first write removes the stored copy.
        let next = store.job("a").unwrap();
        assert_eq!(digest_of(&next).len(), 2);
        next.remove("K1").unwrap();
        next.put("K3", &Entry { row: 9, ..entry() }).unwrap();
        assert!(
            store.job("a").unwrap().digest().unwrap().is_none(),
            "stored copy gone"
        );
        assert_eq!(
            digest_of(&next).len(),
            2,
            "K2 and K3, from the old one and the changes"
        );
        next.save_digest().await.unwrap();
        assert_eq!(digest_of(&store.job("a").unwrap()).len(), 2);

        // A run that stopped before storing it: the next one builds it from the entries.
        let interrupted = store.job("a").unwrap();
        interrupted.put("K4", &entry()).unwrap();
        drop(interrupted);
        let after = store.job("a").unwrap();
        assert!(after.digest().unwrap().is_none());
        after.save_digest().await.unwrap();
        assert_eq!(digest_of(&store.job("a").unwrap()).len(), 3);

        // A stored digest that cannot be read (damaged, or another version's) is not
        // used, and the next run stores a good one even when it writes nothing else.
        store
            .db
            .open_tree("digest")
            .unwrap()
            .insert("a", &b"garbage"[..])
            .unwrap();
        let damaged = store.job("a").unwrap();
        assert!(damaged.digest().unwrap().is_none());
        assert_eq!(damaged.len(), 3, "counted without a digest");
        damaged.save_digest().await.unwrap();
        assert_eq!(digest_of(&store.job("a").unwrap()).len(), 3);

        // Emptied (state rebuild): an empty digest plus what is written after.
        let rebuilt = store.job("a").unwrap();
        rebuilt.clear().unwrap();
        rebuilt.put("K9", &entry()).unwrap();
        assert_eq!(digest_of(&rebuilt).len(), 1);
    }
}
