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
//! in a row each failing row has failed. Per store: the row count of each job's last run
//! that was not aborted (the truncated-export guard compares against it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Encoding version of [`Entry`]; bump when its layout changes.
const ENTRY_VERSION: u8 = 1;

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
}

/// An import that was (or was about to be) sent but whose contact ID is not stored yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The field hashes the import sends.
    pub fields: Vec<(u8, u64)>,
    /// The trigger hashes to store with it.
    pub triggers: Vec<(String, u64)>,
}

impl Pending {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_VERSION];
        out.extend(postcard::to_stdvec(self).expect("a Pending always serializes"));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Pending> {
        match bytes.split_first() {
            Some((&ENTRY_VERSION, rest)) => postcard::from_bytes(rest).ok(),
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
        let mut out = vec![ENTRY_VERSION];
        out.extend(postcard::to_stdvec(self).expect("an Entry always serializes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        match bytes.split_first() {
            Some((&ENTRY_VERSION, rest)) => postcard::from_bytes(rest).ok(),
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

/// The state database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// Writes to job state (entries, journal, failure counts) through this handle.
    writes: Arc<AtomicU64>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StateError> {
        refuse_as_root(path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StateError::Open {
                path: path.to_path_buf(),
                source: sled::Error::Io(e),
            })?;
        }
        match sled::Config::new().path(path).open() {
            Ok(db) => Ok(Store {
                db,
                path: path.to_path_buf(),
                writes: Arc::default(),
            }),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                Err(StateError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => Err(StateError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes to job state so far (entries, journal, failure counts; not run records).
    pub fn job_writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The state of job `name`.
    pub fn job(&self, name: &str) -> Result<JobState, StateError> {
        Ok(JobState {
            tree: self.db.open_tree(format!("job/{name}"))?,
            pending: self.db.open_tree(format!("pending/{name}"))?,
            failures: self.db.open_tree(format!("failures/{name}"))?,
            writes: Arc::clone(&self.writes),
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
        self.db.flush_async().await?;
        Ok(())
    }
}

/// Root opening a state that belongs to the service's user would leave root-owned files
/// in it, and the service could not open it any more: refuse, and say as whom to run.
fn refuse_as_root(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
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

/// One job's entries, pending imports and failure counts.
#[derive(Clone)]
pub struct JobState {
    tree: sled::Tree,
    pending: sled::Tree,
    failures: sled::Tree,
    writes: Arc<AtomicU64>,
}

impl JobState {
    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an import about to be sent; durable after the next [`JobState::flush`].
    pub fn put_pending(&self, key: &str, p: &Pending) -> Result<(), StateError> {
        self.wrote();
        self.pending.insert(key, p.encode())?;
        Ok(())
    }

    pub fn clear_pending(&self, key: &str) -> Result<(), StateError> {
        self.wrote();
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
        self.wrote();
        self.failures.insert(key, &runs.to_le_bytes())?;
        Ok(())
    }

    pub fn clear_failures(&self, key: &str) -> Result<(), StateError> {
        self.wrote();
        self.failures.remove(key)?;
        Ok(())
    }

    /// Empties the job's state (entries, pending imports, failure counts).
    pub fn clear(&self) -> Result<(), StateError> {
        self.wrote();
        self.tree.clear()?;
        self.pending.clear()?;
        self.failures.clear()?;
        Ok(())
    }

    /// Makes every write so far durable (of the whole store).
    pub async fn flush(&self) -> Result<(), StateError> {
        self.tree.flush_async().await?;
        Ok(())
    }

    pub fn put(&self, key: &str, entry: &Entry) -> Result<(), StateError> {
        self.wrote();
        self.tree.insert(key, entry.encode())?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.wrote();
        self.tree.remove(key)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
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

    #[test]
    fn root_does_not_open_a_state_owned_by_the_service_user() {
        // Only root can hand a directory to another user; as anyone else this test has
        // nothing to check (CI runs as root).
        if unsafe { libc::geteuid() } != 0 {
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
}
