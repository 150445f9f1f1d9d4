//! The state database: opened (or restored from its snapshots), flushed one flush at a
//! time, and the per-job records beside the entries (last run, guard, verification).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::outcomes::{self, DeliveredDb};
use super::{
    held_elsewhere, in_doubt, is_damage, key_path, load_or_create_key, make_private, move_aside,
    refuse_as_root, snapshot, JobState, StateError, StateView,
};
use crate::state::digest::ReadAhead;
use crate::state::hashing::HashKey;
use crate::state::job::DigestCache;

/// Makes the state's writes durable, one flush at a time. sled 0.34's `flush_async` can
/// hang for good when several run at once (spacejam/sled#1308: fixed on a branch that
/// was never released), which a run does (the journal's flush beside re-imports that
/// each flush): so every flush goes through here, as a blocking `flush` behind one lock,
/// on a blocking thread. A flush makes every write before it durable, so one that waited
/// for another has little left to do.
#[derive(Clone)]
pub(super) struct Flusher {
    pub(super) db: sled::Db,
    /// Flushed too while it is open.
    pub(super) delivered: DeliveredDb,
    pub(super) gate: Arc<Mutex<()>>,
}

impl Flusher {
    /// Flushes on this thread.
    pub(super) fn now(&self) -> Result<(), StateError> {
        let _one = crate::locking::lock(&self.gate);
        self.db.flush()?;
        if let Some(delivered) = self.delivered.if_open() {
            delivered.flush()?;
        }
        Ok(())
    }

    /// Flushes on a blocking thread.
    pub(super) async fn run(&self) -> Result<(), StateError> {
        let me = self.clone();
        blocking(move || me.now()).await
    }
}

/// `f`, a state operation that blocks (a flush, a repack, a verification's writes), on a
/// blocking thread, in the caller's tracing span (its log lines keep the job and run).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .unwrap_or_else(|e| Err(StateError::from(sled::Error::Io(std::io::Error::other(e)))))
}

/// Opens the sled database at `path`, waiting up to 2 s while its file lock is held:
/// sled lets go of it a moment after a database's last handle is dropped, once its I/O
/// threads are done, so an open right after a close in the same process can find it
/// still held, for milliseconds. Held by another process, it fails 2 s later.
pub(super) fn open_waiting(path: &Path, cache_mb: u64) -> sled::Result<sled::Db> {
    let mut opened = sled_config(path, cache_mb).open();
    for _ in 0..200 {
        match &opened {
            Err(e) if super::held_elsewhere(e) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                opened = sled_config(path, cache_mb).open();
            }
            _ => break,
        }
    }
    opened
}

/// From this many bytes written by an open of the state, the open says so (see
/// [`say_if_free_space_rewritten`]).
const REWRITE_TO_MENTION: u64 = 64 << 20;

/// Bytes this process has passed to `write` and its kin so far (`wchar` of
/// `/proc/self/io`); `None` where there is no such file.
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

/// sled writes over every free segment of its file whenever it opens a database (so that
/// no stale page is ever read as live), and its file never shrinks but at the end: after
/// runs that rewrote most of a large state (a repack, the first sync after a rebuild), a
/// million contacts' state held 115 MB of free segments, which every open wrote again
/// (0.11 s more for each manual sync, and the disk's wear; see BENCHMARKS.md). A rewrite of at least
/// [`REWRITE_TO_MENTION`] is logged as a warning that names the remedy, `state compact`,
/// which writes the state afresh without free space.
fn say_if_free_space_rewritten(path: &Path, written: u64) {
    if written >= REWRITE_TO_MENTION {
        tracing::warn!(
            state = %path.display(),
            written_mb = written >> 20,
            "opening the state wrote {} MB over free space in its database file (sled does so \
             at every open, and runs that rewrote most contacts leave such space); \
             `dialsync state compact` gives it back (stop the daemon first)",
            written >> 20
        );
    }
}

/// How the database at `path` is opened: with a page cache of `cache_mb`.
pub(super) fn sled_config(path: &Path, cache_mb: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_mb << 20)
}

/// The name of a job's tree of entries, before the job's name.
pub(super) const ENTRIES: &str = "job/";

/// The state database.
#[derive(Clone)]
pub struct Store {
    pub(super) db: sled::Db,
    pub(super) flusher: Flusher,
    pub(super) path: PathBuf,
    /// The state's secret (see [`crate::state::hashing`]), from [`key_path`].
    pub(super) key: Arc<HashKey>,
    /// Writes to job state (entries, journal, failure counts) through this handle.
    pub(super) writes: Arc<AtomicU64>,
    /// `[state] cache_mb`, which the jobs' scratch databases are opened with too.
    pub(super) cache_mb: u64,
    /// The delivered outcomes' database (see [`super::outcomes`]).
    pub(super) delivered: DeliveredDb,
    /// A job's digest file read ahead while the database opened, until that job's state
    /// is first asked for (see [`Store::with_digest_read_ahead`]).
    ahead: Arc<Mutex<Option<ReadAhead>>>,
    /// The process that opened the store holds it alone and compacts it once its runs
    /// are done (a manual sync: see [`Store::compacting_after_runs`]).
    compacts: bool,
}

impl Store {
    /// Opens (or creates) the state database at `path`. The state says who is called and
    /// when, so it is private whatever the umask: the directory 0700, every file in it
    /// 0600 (a state created by an older version is narrowed now), and the process's umask
    /// becomes 077, so that what sled creates later is private too.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        Store::open_sized(path, crate::config::DEFAULT_STATE_CACHE_MB)
    }

    /// [`Store::open`] with a page cache of `cache_mb` (`[state] cache_mb`). sled's
    /// own default is 1 GB, which a campaign of a million contacts fills: a first
    /// import then peaks at 1.5 GB.
    pub fn open_sized(path: &Path, cache_mb: u64) -> Result<Store, StateError> {
        refuse_as_root(path)?;
        let io = |e: std::io::Error| StateError::Open {
            path: path.to_path_buf(),
            source: super::DbError::io(e),
        };
        // SAFETY: umask has no preconditions and cannot fail.
        #[allow(unsafe_code)]
        unsafe {
            libc::umask(0o077)
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Before anything looks at the path: a compaction cut short is completed or
        // undone, unless one is running.
        let held = super::compact::hold(path)
            .map_err(io)?
            .ok_or_else(|| StateError::Locked {
                path: path.to_path_buf(),
            })?;
        super::compact::finish_interrupted(path, &held).map_err(io)?;
        super::private_dir(path).map_err(io)?;
        make_private(path).map_err(io)?;
        let key = load_or_create_key(path).map_err(|source| StateError::Key {
            path: key_path(path),
            source,
        })?;
        let written = bytes_written();
        match open_waiting(path, cache_mb) {
            Ok(db) => {
                if let (Some(before), Some(after)) = (written, bytes_written()) {
                    say_if_free_space_rewritten(path, after.saturating_sub(before));
                }
                let store = Store::on(db, path, key, cache_mb);
                store.check_key()?;
                store.move_outcomes_out()?;
                store.finish_repacks()?;
                store.remove_leftovers()?;
                Ok(store)
            }
            Err(e) if held_elsewhere(&e) => Err(StateError::Locked {
                path: path.to_path_buf(),
            }),
            Err(source) if is_damage(&source) && !snapshot::jobs(path).is_empty() => {
                Store::restore(path, key, source, cache_mb)
            }
            Err(source) => Err(StateError::Open {
                path: path.to_path_buf(),
                source: source.into(),
            }),
        }
    }

    /// A store on the open database `db` at `path`, with the state's secret.
    fn on(db: sled::Db, path: &Path, key: HashKey, cache_mb: u64) -> Store {
        let gate = Arc::default();
        let delivered = DeliveredDb::new(path, cache_mb, Arc::clone(&gate));
        Store {
            flusher: Flusher {
                db: db.clone(),
                delivered: delivered.clone(),
                gate,
            },
            delivered,
            db,
            path: path.to_path_buf(),
            key: Arc::new(key),
            writes: Arc::default(),
            cache_mb,
            ahead: Arc::default(),
            compacts: false,
        }
    }

    /// Starts reading job `job`'s digest file for a store about to be opened at `path`:
    /// the file is read while sled opens the database, on the other core, instead of
    /// after it (about 20 ms for a million contacts). Handed to the store with
    /// [`Store::with_digest_read_ahead`]; the digest is used only if the database's seal
    /// says it is the job's.
    pub(crate) fn read_digest_ahead(path: &Path, job: &str) -> Option<ReadAhead> {
        let file = super::digest_file(path, job);
        file.exists().then(|| ReadAhead::start(job, file)).flatten()
    }

    /// This store, with a digest read ahead (see [`Store::read_digest_ahead`]) for the
    /// first handle on its job's state.
    pub(crate) fn with_digest_read_ahead(self, ahead: Option<ReadAhead>) -> Store {
        *crate::locking::lock(&self.ahead) = ahead;
        self
    }

    /// This store, for a process that holds it alone and calls [`Store::compact`] once its
    /// runs are done if one of them asks for it: a run whose job's entries are due to be
    /// repacked (see `state::repack`) leaves them to that compaction where the state's
    /// disk has room for it, which writes every tree afresh in less time than the repack
    /// rewrites one within the database, and leaves no free space in its file (which
    /// sled writes over at every open).
    pub fn compacting_after_runs(mut self) -> Store {
        self.compacts = true;
        self
    }

    /// The database at `path` cannot be opened (`broken`), but snapshots exist: moves it
    /// aside, opens a new one and restores each job from its snapshot (see
    /// [`crate::state::snapshot`]). Every restored job is verified against the dialler by its
    /// next run; one whose snapshot was older than its state has every contact's lock
    /// state marked unknown, and its imports look first.
    fn restore(
        path: &Path,
        key: HashKey,
        broken: sled::Error,
        cache_mb: u64,
    ) -> Result<Store, StateError> {
        let broken = super::DbError(broken);
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
        let db = match sled_config(path, cache_mb).open() {
            Ok(db) => db,
            Err(e) => {
                // Put the old one back as it was: nothing is lost by trying.
                let _ = std::fs::remove_dir_all(path);
                let _ = std::fs::rename(&aside, path);
                return Err(failed(std::io::Error::other(super::DbError(e))));
            }
        };
        let store = Store::on(db, path, key, cache_mb);
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
        let mut delivered = Vec::new();
        for (name, items) in sections.0 {
            if name == "records" {
                for (record, value) in items {
                    let tree = match record.as_slice() {
                        b"good_rows" => "good_rows",
                        // The last run of a state from before the history (see
                        // `last_run`); newer ones are the history's newest record.
                        b"last_run" => "runs",
                        b"last_change" => "last_change",
                        _ => continue,
                    };
                    self.db.open_tree(tree)?.insert(job, value)?;
                }
                continue;
            }
            if name == "outcomes" {
                delivered = items;
                continue;
            }
            let tree = self.db.open_tree(format!("{name}/{job}"))?;
            for (k, v) in items {
                tree.insert(k, v)?;
            }
        }
        // The delivered outcomes' own database was not damaged with the state's: what it
        // holds is as new as the snapshot's, or newer. Only an empty one is filled.
        if !delivered.is_empty() || outcomes::db_path(&self.path).exists() {
            let held = self.delivered.begin()?;
            let tree = held.tree(job)?;
            if tree.is_empty() {
                for (k, v) in delivered {
                    tree.insert(k, v)?;
                }
            }
            if !tree.is_empty() {
                self.db
                    .open_tree("meta")?
                    .insert(outcomes::marker(job), &[])?;
            }
            drop(tree);
            held.end()?;
        }
        if stale {
            let state = self.job(job)?;
            let mut keys = Vec::new();
            state.for_each(&mut |k, _| keys.push(k.to_string()))?;
            for k in keys {
                state.add_in_flight(&k, in_doubt::LOCK)?;
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
    /// older than `every` (or there is none); see the `snapshot` module. After the run's
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
        for name in [
            "job", "pending", "inflight", "failures", "history", "outbox",
        ] {
            let tree = self.db.open_tree(format!("{name}/{job}"))?;
            sections.push((name.to_string(), tree_items(tree)));
        }
        // Their database is opened for it only if the job has some, and kept open until
        // the snapshot is written (which consumes `sections`).
        let has_outcomes = self
            .db
            .open_tree("meta")?
            .contains_key(outcomes::marker(job))?;
        let held = has_outcomes.then(|| self.delivered.begin()).transpose()?;
        if let Some(held) = &held {
            sections.push(("outcomes".to_string(), tree_items(held.tree(job)?)));
        }
        let mut records = Vec::new();
        if let Some(v) = self.db.open_tree("good_rows")?.get(job)? {
            records.push((b"good_rows".to_vec(), v.to_vec()));
        }
        if let Some(v) = self.db.open_tree("runs")?.get(job)? {
            records.push((b"last_run".to_vec(), v.to_vec()));
        }
        if let Some(v) = self.db.open_tree("last_change")?.get(job)? {
            records.push((b"last_change".to_vec(), v.to_vec()));
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

    /// When the state is opened: moves the delivered outcomes that an older version kept
    /// in the state's own database into theirs (see [`super::outcomes`]), each job's
    /// durably before its tree in the state is dropped (a crash in between copies them
    /// again). The pages they took stay listed in the state until `dialsync state
    /// compact` writes it afresh, which the log says.
    fn move_outcomes_out(&self) -> Result<(), StateError> {
        let old: Vec<sled::IVec> = self
            .db
            .tree_names()
            .into_iter()
            .filter(|name| name.starts_with(b"outcomes/"))
            .collect();
        let meta = self.db.open_tree("meta")?;
        for name in old {
            let job = String::from_utf8_lossy(&name["outcomes/".len()..]).into_owned();
            let from = self.db.open_tree(&name)?;
            let mut moved = 0u64;
            if !from.is_empty() {
                let held = self.delivered.begin()?;
                let to = held.tree(&job)?;
                for kv in from.iter() {
                    let (k, v) = kv?;
                    to.insert(k, v)?;
                    moved += 1;
                }
                drop(to);
                held.end()?;
                meta.insert(outcomes::marker(&job), &[])?;
                // Emptied one record at a time before it is dropped: sled drops a tree
                // holding all its pages in memory at once (400 MB for a million).
                from.clear()?;
            }
            drop(from);
            self.db.drop_tree(&name)?;
            self.db.flush()?;
            if moved > 0 {
                tracing::warn!(
                    job = %job,
                    outcomes = moved,
                    to = %outcomes::db_path(&self.path).display(),
                    "moved the job's delivered outcomes out of the state's database into their \
                     own, which only runs that read outcomes open; `dialsync state compact` \
                     gives back the memory they still take when the state is opened"
                );
            }
        }
        Ok(())
    }

    /// When the state is opened, after the repacks were finished: removes what a crash
    /// left in `<state>.downloads` that nothing resumes: repack copies (a finished
    /// repack's, or one that had not yet changed its tree) and the scratch databases of
    /// rebuilds and verifications (nothing of them was written). No other process has the
    /// state open, so none of them is in use.
    fn remove_leftovers(&self) -> Result<(), StateError> {
        let downloads = super::downloads_path(&self.path);
        let Ok(dir) = std::fs::read_dir(&downloads) else {
            return Ok(());
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let removed = if name.starts_with("repack-")
                || name.starts_with(&format!("{}-", super::job::DIGEST_WRITES))
            {
                super::remove_file_if_there(&path)
            } else if super::job::NEVER_RESUMED
                .iter()
                .any(|what| name.starts_with(&format!("{what}-")))
            {
                super::remove_dir_if_there(&path)
            } else {
                continue;
            };
            removed.map_err(|e| StateError::Scratch {
                path,
                source: super::DbError::io(e),
            })?;
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
            tree: self.db.open_tree(format!("{ENTRIES}{name}"))?,
            pending: self.db.open_tree(format!("pending/{name}"))?,
            in_flight: self.db.open_tree(format!("inflight/{name}"))?,
            failures: self.db.open_tree(format!("failures/{name}"))?,
            delivered: self.delivered.clone(),
            staged: Arc::default(),
            outbox: self.db.open_tree(format!("outbox/{name}"))?,
            digests: self.db.open_tree("digest")?,
            name: name.to_string(),
            digest: Arc::new(Mutex::new(DigestCache::new(
                crate::locking::lock(&self.ahead).take_if(|a| a.job() == name),
            ))),
            writes: Arc::clone(&self.writes),
            state_path: self.path.clone(),
            cache_mb: self.cache_mb,
            dirty: Arc::default(),
            rewrites: Arc::default(),
            compacts: self.compacts,
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

    /// What job `job`'s HTTP export was last downloaded with (its validators and what
    /// they are valid for; see `engine::job`), as stored.
    pub(crate) fn conditional(&self, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .db
            .open_tree("conditional")?
            .get(job)?
            .map(|v| v.to_vec()))
    }

    /// Stores (or, with `None`, forgets) what `conditional` gives.
    pub(crate) fn set_conditional(
        &self,
        job: &str,
        record: Option<&[u8]>,
    ) -> Result<(), StateError> {
        let tree = self.db.open_tree("conditional")?;
        match record {
            Some(r) => tree.insert(job, r)?,
            None => tree.remove(job)?,
        };
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

    /// The record of a job's latest run: the newest of its history, else (a state from
    /// before the history) the one record older versions kept.
    pub fn last_run(&self, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(newest) = self.history(job, 1)?.pop() {
            return Ok(Some(newest));
        }
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
