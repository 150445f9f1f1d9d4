//! Repacking a job's trees that runs rewrote in place.
//!
//! sled 0.34 stores a page as its base and the changes made to it since, and consolidates
//! only after ten of them: a value rewritten in place adds a record to its page. Every open
//! of the state loads each page's list of records, so a million entries rewritten once (a
//! full update, the first sync after a rebuild, a million removals) or a percent at a time
//! over many runs roughly doubles what opening the state costs, for good (measured in
//! BENCHMARKS.md: 80 MB before, 216 MB after). A tree emptied and filled again in key
//! order is written as fresh pages, one record each. So once the values rewritten since
//! the last repack reach half of a tree (and at least [`FLOOR`]), the run that found so at
//! its end copies the tree to a file beside the state (`<state>.downloads/repack-<tree>-<job>`:
//! read and written a value at a time, checksummed), marks the state, empties the tree and
//! fills it again from the copy, then removes the mark and the copy.
//! Whether half is reached needs the tree's length, and counting it walks the whole tree
//! (and opens the delivered outcomes' database), which cost every run after a percent was
//! rewritten 15-50 MB: a run that counted and found no repack due keeps the length, and the
//! runs after it count again only once the rewrites since could have brought the tree down
//! to twice their number. A run that stored its digest knows the entries' length from it
//! and does not walk them to count (after a million rewrites that walk took 4 s).
//!
//! A crash at any step loses nothing: before the mark, the tree is untouched and the next
//! open of the state removes the copy; with the mark, the next open (or, in a daemon that
//! stayed up after a failed write, the job's next run) fills the tree again from the copy
//! (made durable before the mark) before anything reads it.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::outcomes::InUse;
use super::store::ENTRIES;
use super::{JobState, StateError};

/// Fewer rewrites than this never repack: a small tree's page records cost little.
pub(crate) const FLOOR: u64 = 1000;

/// The trees that are repacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Worn {
    Entries,
    Outcomes,
}

impl Worn {
    /// What its copy is called in `<state>.downloads`, before the job's name.
    fn what(self) -> &'static str {
        match self {
            Worn::Entries => "repack-entries",
            Worn::Outcomes => "repack-outcomes",
        }
    }

    /// What it holds, for the report.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Worn::Entries => "entries",
            Worn::Outcomes => "delivered outcomes",
        }
    }
}

/// The values a job handle rewrote in place (or removed), per tree, not yet added to the
/// count stored in the state.
#[derive(Default)]
pub(super) struct Rewrites {
    entries: AtomicU64,
    outcomes: AtomicU64,
    /// How many times this handle walked a tree to count it (tests).
    #[cfg(test)]
    walks: AtomicU64,
}

impl Rewrites {
    fn of(&self, tree: Worn) -> &AtomicU64 {
        match tree {
            Worn::Entries => &self.entries,
            Worn::Outcomes => &self.outcomes,
        }
    }

    /// Counts one value rewritten or removed in `tree`.
    pub(super) fn add(&self, tree: Worn) {
        self.of(tree).fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the handle walked a tree to count it.
    #[cfg(test)]
    pub(super) fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }
}

/// A tree repacked: how many values it holds, and how long it took.
#[derive(Debug)]
pub(crate) struct Repacked {
    pub(crate) tree: Worn,
    pub(crate) values: u64,
    pub(crate) took: std::time::Duration,
}

/// What [`JobState::repack_or_leave_worn`] did.
#[derive(Debug, Default)]
pub(crate) struct WornDone {
    /// The trees repacked.
    pub(crate) repacked: Vec<Repacked>,
    /// The entries were due and are left to the compaction after the runs: how many.
    pub(crate) entries_left: Option<u64>,
}

/// Where the state counts a tree's rewrites since its last repack, and marks a repack
/// under way (with the number of values the copy holds), by the tree's name.
fn worn_key(tree: &[u8]) -> Vec<u8> {
    [b"worn/".as_slice(), tree].concat()
}

fn mark_key(tree: &[u8]) -> Vec<u8> {
    [b"repacking/".as_slice(), tree].concat()
}

/// Where the state keeps a tree's length when a run last counted it (and found no
/// repack due), with the rewrites counted then: two u64, little-endian.
fn counted_key(tree: &[u8]) -> Vec<u8> {
    [b"worn-len/".as_slice(), tree].concat()
}

/// Whether `key` (of the state's `meta` tree) counts the rewrites of a tree of the state's
/// own database, the jobs' entries: a compaction, which writes them afresh, leaves it out.
/// (The delivered outcomes have a database of their own, which it does not copy.)
pub(super) fn counts_rewrites_in_state(key: &[u8]) -> bool {
    [
        worn_key(ENTRIES.as_bytes()),
        counted_key(ENTRIES.as_bytes()),
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

fn u64_of(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_le_bytes)
}

fn pair_of(v: &[u8]) -> Option<(u64, u64)> {
    Some((u64_of(v.get(..8)?)?, u64_of(v.get(8..)?)?))
}

/// No key or value of the state is longer (a length above it is damage).
const MAX_PART: u32 = 16 << 20;

/// The copy's first line.
const MAGIC: &[u8] = b"dialsync repack copy 1\n";

/// What a copy does with a value of the tree it copies: keeps it, writes another in its
/// place, or leaves it out.
pub(crate) enum Rewrite {
    Keep,
    Put(Vec<u8>),
    Drop,
}

/// What a copy asks of each key and value of the tree (an error stops the copy).
pub(super) type Change<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Rewrite, StateError> + 'a;

/// Writes `tree` to the file at `path`, each value as `change` says: [`MAGIC`], each key
/// and value with its length (u32, little-endian), then the number of values and the
/// xxh3 of all before it (u64 each); with `durable`, synced to disk when it returns. How
/// many values it wrote. An error of `change` comes back inside the `io::Error` (see
/// [`JobState::copy_with`]).
pub(super) fn write_copy(
    tree: &sled::Tree,
    path: &Path,
    change: &mut Change<'_>,
    durable: bool,
) -> std::io::Result<u64> {
    let file = super::private_file(path)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut put = |out: &mut BufWriter<std::fs::File>, bytes: &[u8]| {
        hash.update(bytes);
        out.write_all(bytes)
    };
    put(&mut out, MAGIC)?;
    let mut values = 0u64;
    for kv in tree.iter() {
        let (k, v) = kv.map_err(std::io::Error::other)?;
        let put_instead = match change(&k, &v).map_err(std::io::Error::other)? {
            Rewrite::Keep => None,
            Rewrite::Put(instead) => Some(instead),
            Rewrite::Drop => continue,
        };
        for part in [&k[..], put_instead.as_deref().unwrap_or(&v[..])] {
            let len = u32::try_from(part.len()).map_err(std::io::Error::other)?;
            put(&mut out, &len.to_le_bytes())?;
            put(&mut out, part)?;
        }
        values += 1;
    }
    put(&mut out, &values.to_le_bytes())?;
    let sum = hash.digest();
    out.write_all(&sum.to_le_bytes())?;
    let file = out
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    if durable {
        file.sync_all()?;
        super::sync_folder_of(path)?;
    }
    Ok(values)
}

/// What a read of a copy does with each key and value.
pub(super) type Each<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;

/// A copy being read: each part through the checksum.
struct Reader {
    input: BufReader<std::fs::File>,
    hash: xxhash_rust::xxh3::Xxh3,
}

impl Reader {
    fn take(&mut self, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
        buf.resize(n, 0);
        self.input.read_exact(buf)?;
        self.hash.update(buf);
        Ok(())
    }

    fn take_u64(&mut self, buf: &mut Vec<u8>) -> std::io::Result<u64> {
        self.take(buf, 8)?;
        Ok(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")))
    }

    /// The whole copy, which must hold `values`, each key and value given to `f`: what is
    /// wrong with it, if anything (an error of `f` comes back as an error).
    fn read(&mut self, values: u64, f: &mut Each<'_>) -> std::io::Result<Result<(), String>> {
        let mut buf = Vec::new();
        let (mut key, mut value) = (Vec::new(), Vec::new());
        self.take(&mut buf, MAGIC.len())?;
        if buf != MAGIC {
            return Ok(Err("it is not a repack copy".into()));
        }
        for _ in 0..values {
            for part in [&mut key, &mut value] {
                self.take(&mut buf, 4)?;
                let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                if len > MAX_PART {
                    return Ok(Err("it is damaged".into()));
                }
                self.take(part, len as usize)?;
            }
            f(&key, &value).map_err(std::io::Error::other)?;
        }
        let n = self.take_u64(&mut buf)?;
        let sum = self.hash.digest();
        if n != values || self.take_u64(&mut buf)? != sum {
            return Ok(Err(format!(
                "it does not hold the {values} values it should"
            )));
        }
        if !self.input.fill_buf()?.is_empty() {
            return Ok(Err("it is longer than it should be".into()));
        }
        Ok(Ok(()))
    }
}

/// Reads the copy at `path`, which must hold `values`, giving each key and value to `f`:
/// what is wrong with it, if anything (an error of `f` is returned as it is).
pub(super) fn read_copy(
    path: &Path,
    values: u64,
    f: &mut Each<'_>,
) -> Result<Result<(), String>, StateError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut reader = Reader {
        input: BufReader::with_capacity(1 << 16, file),
        hash: xxhash_rust::xxh3::Xxh3::new(),
    };
    match reader.read(values, f) {
        Ok(r) => Ok(r),
        Err(e) => match e.downcast::<StateError>() {
            Ok(state) => Err(state),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Err(format!(
                "it is cut short (it should hold {values} values)"
            ))),
            Err(e) => Ok(Err(e.to_string())),
        },
    }
}

/// How many values' keys [`JobState::refill`] empties at a time (in unit tests a few, so
/// that their trees take many runs).
const REFILL_RUN: u64 = if cfg!(test) { 64 } else { 131_072 };

impl JobState {
    /// The tree itself, and for the delivered outcomes the use that keeps their
    /// database open (bound first, so that it is dropped after the tree).
    fn worn_tree(&self, tree: Worn) -> Result<(Option<InUse>, sled::Tree), StateError> {
        match tree {
            Worn::Entries => Ok((None, self.tree.clone())),
            Worn::Outcomes => {
                let held = self.delivered.begin()?;
                let t = held.tree(&self.name)?;
                Ok((Some(held), t))
            }
        }
    }

    /// The tree's name (which its counts and marks are kept under), without opening it.
    fn worn_name(&self, tree: Worn) -> Vec<u8> {
        match tree {
            Worn::Entries => self.tree.name().to_vec(),
            Worn::Outcomes => super::outcomes::tree_name(&self.name).into_bytes(),
        }
    }

    pub(super) fn meta(&self) -> Result<sled::Tree, StateError> {
        Ok(self.flusher.db.open_tree("meta")?)
    }

    /// At the end of a run: adds this handle's rewrites to the state's counts, and repacks
    /// each tree whose count reached half of it (see the module's text). Entries due are
    /// left to the compaction of the whole state after the runs instead, where it follows
    /// (see [`super::Store::compacting_after_runs`]) and the disk has room for it; their
    /// count stays until it is done. Durable when it returns; a run that rewrote nothing
    /// writes nothing (but the length it counted, once, on a state an older version made).
    pub(crate) fn repack_or_leave_worn(&self) -> Result<WornDone, StateError> {
        let meta = self.meta()?;
        let mut done = WornDone::default();
        let mut wrote = false;
        for tree in [Worn::Entries, Worn::Outcomes] {
            let now = self.rewrites.of(tree).swap(0, Ordering::Relaxed);
            wrote |= now > 0;
            let key = worn_key(&self.worn_name(tree));
            let before = meta.get(&key)?.as_deref().and_then(u64_of).unwrap_or(0);
            let total = before.saturating_add(now);
            if now > 0 {
                // Kept until a repack succeeds.
                meta.insert(&key, &total.to_le_bytes())?;
            }
            // Counting reads the tree: only once the floor is reached.
            if total < FLOOR {
                continue;
            }
            // Counting walks the whole tree (and opens the outcomes' database): what sled
            // holds while it does is most of a run's memory. A tree counted before can
            // have lost at most the values rewritten since (a removal counts as one); if
            // even the fewest it can hold is more than twice the rewrites, it is not due.
            let counted = counted_key(&self.worn_name(tree));
            if let Some((len, then)) = meta.get(&counted)?.as_deref().and_then(pair_of) {
                let fewest = len.saturating_sub(total.saturating_sub(then));
                if total.saturating_mul(2) < fewest {
                    continue;
                }
            }
            // Open through the repack: it is not opened again for each step.
            let (_held, t) = self.worn_tree(tree)?;
            let len = match self.known_len(tree) {
                Some(n) => n,
                None => self.count_by_walk(&t),
            };
            let len = u64::try_from(len).unwrap_or(u64::MAX);
            if total.saturating_mul(2) < len {
                meta.insert(&counted, [len.to_le_bytes(), total.to_le_bytes()].concat())?;
                wrote = true;
                continue;
            }
            if tree == Worn::Entries
                && self.compacts
                && super::compact::room_to_compact(&self.state_path)
            {
                done.entries_left = Some(len);
                continue;
            }
            let started = std::time::Instant::now();
            let values = self.repack(tree)?;
            meta.remove(&key)?;
            meta.remove(&counted)?;
            done.repacked.push(Repacked {
                tree,
                values,
                took: started.elapsed(),
            });
        }
        if wrote {
            self.flusher.now()?;
        }
        Ok(done)
    }

    /// [`JobState::repack_or_leave_worn`] on a store that is not compacted after its runs:
    /// what it repacked.
    #[cfg(test)]
    pub(crate) fn repack_worn(&self) -> Result<Vec<Repacked>, StateError> {
        assert!(!self.compacts, "a test's store repacks in place");
        Ok(self.repack_or_leave_worn()?.repacked)
    }

    /// The length of `tree` if this handle knows it without walking the tree: the number
    /// of entries of the digest it stored at the end of the run (no entry written since).
    /// The first walk of a million entries rewritten in place reads each page's records
    /// from disk and takes seconds; the copy walks the tree anyway.
    fn known_len(&self, tree: Worn) -> Option<usize> {
        match tree {
            Worn::Entries => self.counted_len(),
            Worn::Outcomes => None,
        }
    }

    /// The length of `t`, by walking all of it.
    fn count_by_walk(&self, t: &sled::Tree) -> usize {
        #[cfg(test)]
        self.rewrites.walks.fetch_add(1, Ordering::Relaxed);
        t.len()
    }

    /// Forgets the rewrites counted for `tree` (emptied: what is written next is new).
    pub(super) fn forget_rewrites(&self, tree: Worn) -> Result<(), StateError> {
        self.rewrites.of(tree).store(0, Ordering::Relaxed);
        let meta = self.meta()?;
        meta.remove(worn_key(&self.worn_name(tree)))?;
        meta.remove(counted_key(&self.worn_name(tree)))?;
        Ok(())
    }

    /// The copy of `tree` made by a repack.
    pub(super) fn copy_path(&self, tree: Worn) -> std::path::PathBuf {
        self.scratch_path(tree.what())
    }

    /// Repacks `tree`: copied durably, marked, emptied, filled again, unmarked.
    fn repack(&self, tree: Worn) -> Result<u64, StateError> {
        self.repack_with(tree, &mut |_, _| Ok(Rewrite::Keep))
    }

    /// Like [`JobState::repack`], with each value as `change` says: what the tree holds
    /// once the copy is marked (a crash after that finishes the refill from the copy).
    pub(super) fn repack_with(
        &self,
        tree: Worn,
        change: &mut Change<'_>,
    ) -> Result<u64, StateError> {
        // One that stopped halfway earlier in this process (a write failed after its
        // mark) is finished first: a new copy of the half-written tree would replace the
        // copy that holds the rest of it.
        self.finish_repack(tree)?;
        let values = self.copy_with(tree, change).inspect_err(|_| {
            let _ = self.remove_copy(tree);
        })?;
        crate::failpoint::hit("repack-copied");
        self.meta()?
            .insert(mark_key(&self.worn_name(tree)), &values.to_le_bytes())?;
        self.flusher.now()?;
        crate::failpoint::hit("repack-marked");
        // Should writing the tree again fail, the mark stays: see `finish_repacks`.
        self.refill(tree, values).map_err(|e| match e {
            // The copy is unusable: that error says what to do.
            e @ StateError::Repack { .. } => e,
            e => StateError::Unfinished {
                job: self.name.clone(),
                what: tree.label(),
                path: self.copy_path(tree),
                source: Box::new(e),
            },
        })?;
        Ok(values)
    }

    /// Writes the copy of `tree` (see [`write_copy`]).
    #[cfg(test)]
    pub(super) fn copy(&self, tree: Worn) -> Result<u64, StateError> {
        self.copy_with(tree, &mut |_, _| Ok(Rewrite::Keep))
    }

    /// Writes the copy of `tree` with each value as `change` says (see [`write_copy`]).
    fn copy_with(&self, tree: Worn, change: &mut Change<'_>) -> Result<u64, StateError> {
        let path = self.copy_path(tree);
        let failed = |e: std::io::Error| StateError::Scratch {
            path: path.clone(),
            source: super::DbError::io(e),
        };
        super::private_dir(&super::downloads_path(&self.state_path)).map_err(failed)?;
        let (_held, t) = self.worn_tree(tree)?;
        write_copy(&t, &path, change, true).map_err(|e| match e.downcast::<StateError>() {
            Ok(state) => state,
            Err(e) => failed(e),
        })
    }

    /// Empties `tree` and fills it from its copy (which holds `values`, checked before
    /// the tree is touched: a copy that is not whole leaves it as it is), then removes the
    /// mark and the copy, durably.
    ///
    /// The tree is emptied a run of [`REFILL_RUN`] values' keys at a time, each run just
    /// before the copy's values of it are written. Emptied whole first, a tree gives back
    /// all its pages before any is used again, and sled checks each page it frees against
    /// its whole list of free pages: 11% of a million entries' repack, 20% of two million
    /// (sled alone, two million values: 38 s emptied whole, 32 s a run at a time; four
    /// million: 87 s and 70 s). The pages are written afresh in key order as before.
    fn refill(&self, tree: Worn, values: u64) -> Result<(), StateError> {
        let (_held, t) = self.worn_tree(tree)?;
        let path = self.copy_path(tree);
        let bad = |why| self.lost_copy(tree, why);
        // The check of the whole copy notes the key each run after the first begins at.
        let mut starts: Vec<Vec<u8>> = Vec::new();
        let mut n = 0u64;
        read_copy(&path, values, &mut |k, _| {
            if n > 0 && n % REFILL_RUN == 0 {
                starts.push(k.to_vec());
            }
            n += 1;
            Ok(())
        })?
        .map_err(bad)?;
        // Removes the tree's keys from `from` (its first if `None`) up to the next run's
        // start (the end if none).
        let empty = |from: Option<&[u8]>, to: Option<&[u8]>| -> Result<(), StateError> {
            use std::ops::Bound;
            let lo = from.map_or(Bound::Unbounded, Bound::Included);
            let hi = to.map_or(Bound::Unbounded, Bound::Excluded);
            for k in t.range::<&[u8], _>((lo, hi)).keys() {
                t.remove(k?)?;
            }
            Ok(())
        };
        let start = |run: usize| starts.get(run).map(Vec::as_slice);
        empty(None, start(0))?;
        let mut run = 0;
        let mut n = 0u64;
        read_copy(&path, values, &mut |k, v| {
            if start(run) == Some(k) {
                run += 1;
                empty(Some(k), start(run))?;
            }
            t.insert(k, v)?;
            n += 1;
            if n == values / 2 {
                crate::failpoint::hit("repack-refilling");
            }
            Ok(())
        })?
        .map_err(bad)?;
        self.flusher.now()?;
        crate::failpoint::hit("repack-refilled");
        self.meta()?.remove(mark_key(&t.name()))?;
        self.flusher.now()?;
        self.remove_copy(tree)
    }

    fn remove_copy(&self, tree: Worn) -> Result<(), StateError> {
        let path = self.copy_path(tree);
        super::remove_file_if_there(&path).map_err(|e| StateError::Scratch {
            path,
            source: super::DbError::io(e),
        })
    }

    fn lost_copy(&self, tree: Worn, why: String) -> StateError {
        StateError::Repack {
            path: self.copy_path(tree),
            job: self.name.clone(),
            why,
        }
    }

    /// Before a run reads the job: finishes a repack of its trees that stopped halfway
    /// (a crash: the open of the state does this too; or an error while the tree was
    /// being written again, in a daemon that keeps the state open), from its copy.
    pub(crate) fn finish_repacks(&self) -> Result<(), StateError> {
        for tree in [Worn::Entries, Worn::Outcomes] {
            self.finish_repack(tree)?;
        }
        Ok(())
    }

    /// Finishes the repack of `tree` from its copy if one stopped halfway (see
    /// [`JobState::finish_repacks`]).
    fn finish_repack(&self, tree: Worn) -> Result<(), StateError> {
        let Some(mark) = self.mark(tree)? else {
            return Ok(());
        };
        let values = u64_of(&mark)
            .ok_or_else(|| self.lost_copy(tree, "the state's mark of it is damaged".into()))?;
        tracing::warn!(
            job = %self.name,
            values,
            "a repack of the job's state stopped halfway (dialsync stopped, or a write \
             failed): finishing it from its copy"
        );
        self.refill(tree, values)
    }

    /// Whether `tree` is half written: a repack of it stopped after its mark, and is to be
    /// finished from its copy before anything reads it.
    pub(super) fn refill_pending(&self, tree: Worn) -> Result<bool, StateError> {
        Ok(self.mark(tree)?.is_some())
    }

    /// The state's mark of a repack of `tree` under way: the number of values its copy
    /// holds.
    fn mark(&self, tree: Worn) -> Result<Option<sled::IVec>, StateError> {
        Ok(self.meta()?.get(mark_key(&self.worn_name(tree)))?)
    }
}

impl super::Store {
    /// When the state is opened, before anything reads it: finishes every repack a crash
    /// interrupted (the copies of those that had not yet changed their tree go with the
    /// other leftovers, see `Store::remove_leftovers`).
    pub(super) fn finish_repacks(&self) -> Result<(), StateError> {
        let meta = self.db.open_tree("meta")?;
        let mut jobs = std::collections::BTreeSet::new();
        for key in meta.scan_prefix(b"repacking/").keys() {
            let key = key?;
            let name = &key[b"repacking/".len()..];
            if let Some(job) = name
                .strip_prefix(ENTRIES.as_bytes())
                .or_else(|| name.strip_prefix(b"outcomes/"))
            {
                jobs.insert(String::from_utf8_lossy(job).into_owned());
            }
        }
        for job in jobs {
            self.job(&job)?.finish_repacks()?;
        }
        Ok(())
    }
}
