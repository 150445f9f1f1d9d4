//! One job's state: its entries, pending imports, in-flight marks, failure counts and
//! digest.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{snapshot, window, Entry, Flusher, Pending, StateError, StateView};
use crate::key::key_hash;
use crate::state::digest::{Builder, Digest, ReadAhead, Seal, WriteLog};
use crate::state::hashing::HashKey;

/// One job's entries, pending imports, in-flight marks, failure counts and digest.
#[derive(Clone)]
pub struct JobState {
    pub(super) flusher: Flusher,
    /// The store's secret (see [`super::Store::hash_key`]).
    pub(super) key: Arc<HashKey>,
    pub(super) tree: sled::Tree,
    pub(super) pending: sled::Tree,
    /// UserData -> [`super::in_doubt`] bits of the operations sent (or about to be) whose outcome
    /// is not stored yet.
    pub(super) in_flight: sled::Tree,
    pub(super) failures: sled::Tree,
    /// UserData -> the outcome last delivered: in a database of their own, opened when
    /// needed (see [`super::outcomes`]).
    pub(super) delivered: super::outcomes::DeliveredDb,
    /// The changed outcomes of the run in progress, until they are delivered: in a
    /// scratch database of their own (see [`super::outcomes`]), made at a run's first.
    pub(super) staged: Arc<Mutex<Option<sled::Db>>>,
    /// Webhook batches not yet accepted, by idempotency key.
    pub(super) outbox: sled::Tree,
    /// Every job's digest seal (see [`Seal`]), by job name.
    pub(super) digests: sled::Tree,
    pub(super) name: String,
    pub(super) digest: Arc<Mutex<DigestCache>>,
    pub(super) writes: Arc<AtomicU64>,
    /// The store's path (for the job's snapshot and its marker).
    pub(super) state_path: PathBuf,
    /// `[state] cache_mb`, for the job's scratch databases.
    pub(super) cache_mb: u64,
    /// Whether this handle made sure the snapshot is marked as older than the state.
    pub(super) dirty: Arc<std::sync::atomic::AtomicBool>,
    /// The values this handle rewrote in place, per tree (see [`super::repack`]).
    pub(super) rewrites: Arc<super::repack::Rewrites>,
    /// The store is compacted after the runs (see [`super::Store::compacting_after_runs`]).
    pub(super) compacts: bool,
}

/// The job's digest as this handle knows it: the stored one (read at the first need) and
/// the entries written since.
#[derive(Default)]
pub(super) struct DigestCache {
    loaded: bool,
    /// The digest this handle holds: the stored one once read, a first run's empty one,
    /// or the writes applied to it in the middle of a run (`None`: not read, none, or
    /// unusable).
    base: Option<Arc<Digest>>,
    /// The seal of the job's digest file while what this handle starts from is that file
    /// (`base`, if it was read): the file is read when the digest is first needed, and a
    /// run that writes entries without planning (a rebuild, a verification) never reads it.
    file: Option<Seal>,
    /// Whether the database holds a seal for the job, usable or not. It is removed before
    /// the first entry write (a file that does not match it now might match it later:
    /// put back, or readable again), and replaced at the end of the run.
    sealed: bool,
    /// The entries written since, once one was written (`base` is then let go of, if its
    /// file can be read again: see [`WriteLog`]).
    writes: Option<Writes>,
    /// The number of entries, from the digest stored at the end of the run (which is not
    /// kept in memory), while nothing is written.
    counted: Option<usize>,
    /// The digest file, read ahead while the state opened (see [`ReadAhead`]).
    ahead: Option<ReadAhead>,
}

impl DigestCache {
    /// Nothing known yet, the digest file perhaps read ahead.
    pub(super) fn new(ahead: Option<ReadAhead>) -> DigestCache {
        DigestCache {
            ahead,
            ..DigestCache::default()
        }
    }
}

/// What [`JobState::rewrite_entries`] does with an entry.
pub(crate) enum Change {
    Keep,
    Put(Entry),
    Remove,
}

/// The entry writes of a handle and the digest they apply to.
struct Writes {
    /// `None`: the log could not be written; the digest is made from the entries.
    log: Option<WriteLog>,
    onto: Onto,
}

enum Onto {
    /// The digest file with this seal, read again at the end.
    File(Seal),
    /// A digest not read from a file (a first run's empty one).
    Memory(Arc<Digest>),
}

/// Where a handle logs its entry writes for the digest (see [`WriteLog`]).
pub(super) const DIGEST_WRITES: &str = "digest-writes";

/// What the rebuild's and the verification's scratch databases are called
/// (`<state>.downloads/<what>-<job>`). Neither pass is ever resumed: what a crash left of
/// them is removed when the state is next opened (see `Store::remove_leftovers`).
const REBUILD: &str = "rebuild";
const VERIFY: &str = "verify";
pub(super) const NEVER_RESUMED: [&str; 2] = [REBUILD, VERIFY];

/// A rebuild's or a verification's scratch database, gone from disk once this is dropped.
/// sled removes a temporary database only when its last handle goes, which can be its
/// flusher thread's, a moment after the caller let go: removed here as well, so that it
/// is gone when the rebuild or verification returns.
pub(crate) struct Scratch {
    db: Option<sled::Db>,
    path: PathBuf,
}

impl std::ops::Deref for Scratch {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        self.db.as_ref().expect("held until dropped")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.db.take());
        if let Err(e) = super::remove_dir_if_there(&self.path) {
            // The next open of the state removes it.
            tracing::debug!(path = %self.path.display(), error = %e, "could not remove a scratch database");
        }
    }
}

impl JobState {
    /// Where a `state rebuild` gathers the campaign's contacts before it replaces the
    /// entries: a database of its own in `<state>.downloads/rebuild-<job>`, removed when
    /// dropped (after a crash, by the next open of the state). In the state's own database the
    /// scratch pages, freed at the end, stayed in its page table, which every later run
    /// loads whole when it opens the state. A scratch tree an older version left in the
    /// state is dropped.
    pub(crate) fn scratch(&self) -> Result<Scratch, StateError> {
        self.flusher
            .db
            .drop_tree(format!("scratch/{}", self.name))?;
        self.scratch_guarded(REBUILD)
    }

    /// A new, empty scratch database for the verification, which stages there what it
    /// found until it may write it (see [`JobState::scratch_db`]).
    pub(crate) fn verify_scratch(&self) -> Result<Scratch, StateError> {
        self.scratch_guarded(VERIFY)
    }

    /// [`JobState::scratch_db`] for `what`, removed from disk when the guard is dropped.
    fn scratch_guarded(&self, what: &str) -> Result<Scratch, StateError> {
        Ok(Scratch {
            db: Some(self.scratch_db(what)?),
            path: self.scratch_path(what),
        })
    }

    /// Where the job's scratch database for `what` is: `<state>.downloads/<what>-<job>`.
    pub(super) fn scratch_path(&self, what: &str) -> PathBuf {
        super::downloads_path(&self.state_path).join(format!("{what}-{}", self.name))
    }

    /// Removes what a scratch database for `what` left (a crash).
    pub(super) fn remove_scratch(&self, what: &str) -> Result<(), StateError> {
        let path = self.scratch_path(what);
        super::remove_dir_if_there(&path).map_err(|e| StateError::Scratch {
            path,
            source: super::DbError::io(e),
        })
    }

    /// A new, empty scratch database of the job for `what` in
    /// `<state>.downloads/<what>-<job>`: what an earlier one left there (a crash) is
    /// removed first, and the database removes itself when its last handle is dropped.
    pub(super) fn scratch_db(&self, what: &str) -> Result<sled::Db, StateError> {
        self.remove_scratch(what)?;
        let path = self.scratch_path(what);
        let open = |source: sled::Error| StateError::Scratch {
            path: path.clone(),
            source: source.into(),
        };
        super::private_dir(&path).map_err(|e| open(sled::Error::Io(e)))?;
        sled::Config::new()
            .path(&path)
            .temporary(true)
            .cache_capacity(self.cache_mb << 20)
            .open()
            .map_err(open)
    }

    /// The state's secret, which every stored hash of a value is keyed with.
    pub fn hash_key(&self) -> &Arc<HashKey> {
        &self.key
    }

    /// Before each write to the job's state: counted, and the first one of this handle
    /// marks the job's snapshot, if it has one, as older than the state (durably, before
    /// the write).
    pub(super) fn wrote(&self) -> Result<(), StateError> {
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
            let seal = self.digests.get(&self.name)?;
            cache.sealed = seal.is_some();
            cache.file = seal.as_deref().and_then(Seal::decode);
            // A job without entries (its first run) starts from the empty digest; an
            // older version's seal, in the database, is replaced at the end.
            cache.base = (seal.is_none() && self.tree.is_empty()).then(Arc::default);
            cache.loaded = true;
        }
        Ok(cache)
    }

    /// Lets go of the digest file read ahead while the state opened, if this handle
    /// holds it (see [`ReadAhead`]): for work that does not plan from it.
    pub(crate) fn forget_read_ahead(&self) {
        crate::locking::lock(&self.digest).ahead = None;
    }

    /// Whether this handle still holds a digest read ahead.
    #[cfg(test)]
    pub(crate) fn holds_read_ahead(&self) -> bool {
        crate::locking::lock(&self.digest).ahead.is_some()
    }

    /// The job's digest file (see [`Seal`]).
    pub(crate) fn digest_file(&self) -> PathBuf {
        super::digest_file(&self.state_path, &self.name)
    }

    /// The digest in the job's file, if it is the one `seal` was made for. Without it the
    /// run compares every row in full and stores a new one; no error.
    fn read_digest(&self, seal: Seal, ahead: Option<ReadAhead>) -> Option<Digest> {
        // Read ahead, and still the file the seal was made for.
        if let Some(digest) = ahead.and_then(|a| a.digest_for(seal)) {
            return digest;
        }
        let path = self.digest_file();
        let why = match super::digest::read_file(&path) {
            Ok(bytes) if seal.matches(&bytes) => return Digest::decode(bytes),
            Ok(_) => "it does not match the state (changed, damaged or from another copy of it)"
                .to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            path = %path.display(),
            "the state digest is not used: {why}; this run reads the entries instead and stores a new one"
        );
        None
    }

    /// Writes `digest` to the job's file durably (see [`Seal`]) and gives its seal.
    fn write_digest(&self, digest: &Digest) -> Result<Seal, StateError> {
        use std::io::Write;
        let path = self.digest_file();
        let failed = |source| StateError::Digest {
            path: path.clone(),
            source,
        };
        let dir = super::digests_path(&self.state_path);
        super::private_dir(&dir).map_err(failed)?;
        let tmp = dir.join(format!("{}.digest.tmp", self.name));
        let mut file = super::private_file(&tmp).map_err(failed)?;
        file.write_all(digest.as_bytes()).map_err(failed)?;
        super::replace_durably(file, &tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            failed(e)
        })?;
        Ok(Seal::of(digest.as_bytes()))
    }

    /// Before an entry changes: the stored digest goes, durably, so that no crash can leave
    /// a digest that does not match the entries.
    fn before_entry_write(&self) -> Result<(), StateError> {
        self.wrote()?;
        let mut cache = self.cache()?;
        if cache.sealed {
            self.digests.remove(&self.name)?;
            self.flusher.now()?;
            cache.sealed = false;
        }
        Ok(())
    }

    fn after_entry_write(&self, key: &str, now: Option<&Entry>) -> Result<(), StateError> {
        let mut cache = self.cache()?;
        cache.counted = None;
        if cache.writes.is_none() {
            // A digest read from its file is let go of (the planner's copy goes when the
            // plan is made), and read again at the end.
            let onto = match (cache.file.take(), cache.base.take()) {
                (Some(seal), _) => Onto::File(seal),
                (None, Some(base)) => Onto::Memory(base),
                // No digest to bring up to date: the next one is made from the entries.
                (None, None) => return Ok(()),
            };
            // One file per handle: two handles of a job never share one.
            static HANDLES: AtomicU64 = AtomicU64::new(0);
            let n = HANDLES.fetch_add(1, Ordering::Relaxed);
            let path = self.scratch_path(&format!("{DIGEST_WRITES}-{n}"));
            let log = super::private_dir(&super::downloads_path(&self.state_path))
                .and_then(|()| WriteLog::create(&path))
                .inspect_err(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "the run's writes cannot be logged for the state digest: it is made from the entries at the end");
                })
                .ok();
            cache.writes = Some(Writes { log, onto });
        }
        if let Some(Writes { log, .. }) = &mut cache.writes {
            let pushed = log
                .as_mut()
                .map(|l| l.push(key_hash(key), now.map(|e| (e.row, e.locked))));
            if let Some(Err(e)) = pushed {
                tracing::warn!(error = %e, "the run's writes cannot be logged for the state digest: it is made from the entries at the end");
                *log = None;
            }
        }
        Ok(())
    }

    /// The digest with `writes` applied: `None` if it cannot be made so (the log or the
    /// file could not be read); `Some(None)` if the keys do not allow one (see
    /// [`Digest`]).
    fn apply_writes(&self, writes: Writes) -> Option<Option<Digest>> {
        let Writes { log, onto } = writes;
        let log = log?;
        let base = match onto {
            Onto::Memory(d) => Arc::try_unwrap(d).unwrap_or_else(|shared| (*shared).clone()),
            Onto::File(seal) => self.read_digest(seal, None)?,
        };
        match log.apply_to(base) {
            Ok(patched) => Some(patched.finish()),
            Err(e) => {
                tracing::warn!(error = %e, "the run's writes logged for the state digest cannot be read: it is made from the entries");
                None
            }
        }
    }

    /// Whether this handle keeps a digest in memory (tests).
    #[cfg(test)]
    pub(super) fn holds_digest(&self) -> bool {
        let c = crate::locking::lock(&self.digest);
        c.base.is_some()
            || matches!(
                c.writes,
                Some(Writes {
                    onto: Onto::Memory(_),
                    ..
                })
            )
    }

    /// A digest made by reading every entry.
    fn digest_from_entries(&self) -> Result<Option<Digest>, StateError> {
        let mut digest = Builder::default();
        self.for_each(&mut |key, e| digest.push((key_hash(key), e.row, e.locked)))?;
        Ok(digest.finish())
    }

    /// The digest of the entries as they are now, if the job has one (see [`Digest`]).
    pub fn digest(&self) -> Result<Option<Arc<Digest>>, StateError> {
        let mut cache = self.cache()?;
        // The digest read ahead is used by the first need, or let go of (a first run's
        // empty digest, or entries written already).
        let ahead = cache.ahead.take();
        if let Some(base) = &cache.base {
            return Ok(Some(Arc::clone(base)));
        }
        let Some(writes) = cache.writes.take() else {
            // The stored one, read now (once: a file that cannot be used is not read
            // again).
            let read = cache
                .file
                .and_then(|seal| self.read_digest(seal, ahead))
                .map(Arc::new);
            if read.is_none() {
                cache.file = None;
            }
            cache.base.clone_from(&read);
            return Ok(read);
        };
        // In the middle of a run: the writes so far applied, and kept as the digest
        // that the next writes apply to.
        let digest = match self.apply_writes(writes) {
            Some(d) => d,
            None => self.digest_from_entries()?,
        }
        .map(Arc::new);
        cache.base.clone_from(&digest);
        Ok(digest)
    }

    /// What identifies the entries as they are, from the digest's seal alone (`None`:
    /// none, as while entries are written): equal identities mean the entries plan alike
    /// (a quiet run's shortcut and an HTTP export's conditional request rely on it). The
    /// digest itself, 17 MB for a million entries, is not read. The seal stands for the
    /// entries, not for a readable file: one that does not match is found, and replaced,
    /// by the next run that plans.
    pub fn identity(&self) -> Result<Option<u64>, StateError> {
        let seal = self.digests.get(&self.name)?;
        Ok(seal.as_deref().and_then(Seal::decode).map(|s| s.identity()))
    }

    /// Stores the digest of the entries as they are now, unless the stored one still
    /// matches: from what was stored and what changed since, or else (no usable digest was
    /// stored) by reading every entry. Called at the end of a run, after its writes.
    pub async fn save_digest(&self) -> Result<(), StateError> {
        if self.refill_pending(super::repack::Worn::Entries)? {
            // The entries are half written (a repack or a verification's rewrite failed
            // after its mark): a digest made now would miss the rest, which the refill
            // from the copy brings back. The first run after it makes one.
            tracing::debug!(job = %self.name, "no state digest stored: the entries are to be finished from a repack's copy");
            return Ok(());
        }
        if !crate::locking::lock(&self.digest).loaded && self.identity()?.is_some() {
            // Sealed, and this handle did not read it: no entry was written since the
            // seal was made (see `identity`), so it stands, and 17 MB a million entries
            // are not read to learn it. A file that does not match it is replaced by the
            // next run that reads it.
            return Ok(());
        }
        {
            // Sealed means no entry was written since the seal was loaded: the stored
            // digest stands, unless this handle found its file unusable.
            let cache = self.cache()?;
            if cache.sealed && (cache.base.is_some() || cache.file.is_some()) {
                return Ok(());
            }
        }
        let writes = self.cache()?.writes.take();
        let base = self.cache()?.base.take();
        let digest = match (writes.map(|w| self.apply_writes(w)), base) {
            // `None`: a new key's hash is another's, so no digest.
            (Some(Some(patched)), _) => patched,
            (None, Some(base)) => Some(Arc::unwrap_or_clone(base)),
            (Some(None), _) | (None, None) => self.digest_from_entries()?,
        };
        let Some(digest) = digest else {
            tracing::debug!(job = %self.name, "two UserData values share a hash: no digest, every row is compared in full");
            return Ok(());
        };
        // The entries first, then the file, then its seal: the digest must never be in use
        // before what it describes is durable.
        self.flusher.run().await?;
        let seal = self.write_digest(&digest)?;
        self.digests
            .insert(self.name.as_str(), &seal.encode()[..])?;
        // Not kept: read again from its file if this handle needs it.
        let mut cache = self.cache()?;
        cache.loaded = false;
        cache.base = None;
        cache.file = None;
        cache.counted = Some(digest.len());
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

    /// Every pending import, in key order; those of the journal's window records too
    /// (see `super::window`), after the contacts' own.
    pub fn pending(&self) -> Result<Vec<(String, Pending)>, StateError> {
        let decode = |key: String, v: &[u8]| match Pending::decode(v) {
            Some(p) => Ok((key, p)),
            None => Err(StateError::Corrupt { key }),
        };
        let mut out = Vec::new();
        for kv in self.pending.iter() {
            let (k, v) = kv?;
            if !window::is_window(&k) {
                out.push(decode(String::from_utf8_lossy(&k).into_owned(), &v)?);
            }
        }
        let windows = self.window_imports()?;
        if !windows.is_empty() {
            let own: HashSet<String> = out.iter().map(|(k, _)| k.clone()).collect();
            for (key, p) in windows {
                if !own.contains(&key) {
                    out.push(decode(key, &p)?);
                }
            }
        }
        Ok(out)
    }

    /// Marks `key` as having an operation in flight (`bits`, see [`super::in_doubt`]): until the
    /// mark is cleared, what the dialler holds for it is unknown. Durable after the next
    /// [`JobState::flush`], which comes before the operation is sent.
    pub fn put_in_flight(&self, key: &str, bits: u8) -> Result<(), StateError> {
        self.wrote()?;
        self.in_flight.insert(key, &[bits])?;
        Ok(())
    }

    /// Adds `bits` to the mark of `key` (none: a mark of `bits`).
    pub(crate) fn add_in_flight(&self, key: &str, bits: u8) -> Result<(), StateError> {
        let had = self.in_flight.get(key)?.and_then(|v| v.first().copied());
        self.put_in_flight(key, had.unwrap_or(0) | bits)
    }

    /// Clears the mark of `key`: its operation's outcome is stored (or it was refused).
    pub fn clear_in_flight(&self, key: &str) -> Result<(), StateError> {
        self.wrote()?;
        self.in_flight.remove(key)?;
        Ok(())
    }

    /// Every in-flight mark: UserData -> [`super::in_doubt`] bits; those of the journal's
    /// window records (see `super::window`) are added to a contact's own.
    pub(crate) fn in_flight(&self) -> Result<crate::keymap::KeyMap<u8>, StateError> {
        // A window or two after a crash; none otherwise.
        let mut windows = self.window_marks()?;
        let mut marks = crate::keymap::KeyMap::default();
        for kv in self.in_flight.iter() {
            let (k, v) = kv?;
            if window::is_window(&k) {
                continue;
            }
            let key = String::from_utf8_lossy(&k);
            // An unknown mark (another version's) doubts everything.
            let bits = v.first().copied().unwrap_or(u8::MAX);
            marks.insert(&key, bits | windows.remove(key.as_ref()).unwrap_or(0));
        }
        for (key, bits) in windows {
            marks.insert(&key, bits);
        }
        Ok(marks)
    }

    /// Whether any call is marked in flight or any import pending (a contact's own record
    /// or a journal window's). Looks at the first record of each tree only: reading every
    /// mark to learn that there is one cost, with the mark per contact that a `state
    /// rebuild` used to leave, 150 MB of sled's pages resident.
    pub(crate) fn left_in_doubt(&self) -> Result<bool, StateError> {
        Ok(!self.in_flight.is_empty() || !self.pending.is_empty())
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
        self.forget_rewrites(super::repack::Worn::Entries)?;
        self.pending.clear()?;
        self.in_flight.clear()?;
        self.failures.clear()?;
        let mut cache = self.cache()?;
        cache.base = Some(Arc::default());
        cache.file = None;
        cache.writes = None;
        cache.counted = None;
        Ok(())
    }

    /// Makes every write so far durable (of the whole store).
    pub async fn flush(&self) -> Result<(), StateError> {
        self.flusher.run().await
    }

    pub fn put(&self, key: &str, entry: &Entry) -> Result<(), StateError> {
        self.before_entry_write()?;
        if self.tree.insert(key, entry.encode())?.is_some() {
            self.rewrites.add(super::repack::Worn::Entries);
        }
        self.after_entry_write(key, Some(entry))
    }

    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.before_entry_write()?;
        if self.tree.remove(key)?.is_some() {
            self.rewrites.add(super::repack::Worn::Entries);
        }
        self.after_entry_write(key, None)
    }

    /// Changes most of the job's entries at once, the way a repack writes a tree (see
    /// [`super::repack`]): each entry as `change` says, copied durably, then the tree
    /// emptied and filled again from the copy (a crash after the copy is marked finishes
    /// the refill at the next open). A million entries put in place would leave a page
    /// record each, held in memory by every later open until a repack (the verification
    /// that re-learned a renumbered dialler peaked at 190 MB with them, and repacked
    /// after); written afresh, the tree is as compact as after a repack, in one pass.
    /// The digest is kept up to date as [`JobState::put`] and [`JobState::remove`] keep
    /// it. How many entries the job holds after.
    pub(crate) fn rewrite_entries(
        &self,
        change: &mut dyn FnMut(&str, Entry) -> Result<Change, StateError>,
    ) -> Result<u64, StateError> {
        use super::repack::{Rewrite, Worn};
        self.before_entry_write()?;
        let rewritten = self.repack_with(Worn::Entries, &mut |k, v| {
            let key = String::from_utf8_lossy(k);
            let Some(entry) = Entry::decode(v) else {
                return Err(StateError::Corrupt {
                    key: key.into_owned(),
                });
            };
            Ok(match change(&key, entry)? {
                Change::Keep => Rewrite::Keep,
                Change::Put(now) => {
                    self.after_entry_write(&key, Some(&now))?;
                    Rewrite::Put(now.encode())
                }
                Change::Remove => {
                    self.after_entry_write(&key, None)?;
                    Rewrite::Drop
                }
            })
        });
        match rewritten {
            Ok(values) => {
                // Fresh pages: nothing rewritten in place since.
                self.forget_rewrites(Worn::Entries)?;
                Ok(values)
            }
            Err(e) => {
                // The digest's log may name writes the tree never got (or, with the mark,
                // not yet): the digest is made from the entries instead. (A cache that
                // cannot be read has no log to trust either; `e` says what went wrong.)
                if let Ok(mut cache) = self.cache() {
                    if let Some(w) = &mut cache.writes {
                        w.log = None;
                    }
                }
                Err(e)
            }
        }
    }

    /// The number of entries of the digest this handle stored, if no entry was written
    /// since (exact, without reading anything).
    pub(super) fn counted_len(&self) -> Option<usize> {
        crate::locking::lock(&self.digest).counted
    }

    /// The number of entries: from the digest when the job has one (reading a million
    /// entries takes a second), else by counting.
    pub fn len(&self) -> usize {
        if let Some(n) = self.counted_len() {
            return n;
        }
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
