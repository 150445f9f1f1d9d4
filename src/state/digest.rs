//! The state digest: for every entry of a job, the hash of its UserData, its row hash
//! and its lock flag (17 bytes), sorted by key hash. With it a run recognises an unchanged
//! row from the row's own bytes, without reading its entry or mapping it, and knows
//! without reading the entries whether any contact left the export.
//!
//! The digest is a cache of the entries, never the truth: [`crate::state::JobState`]
//! removes the stored copy (durably) before the first write to the entries and stores a
//! fresh one at the end of the run, so a stored digest always matches them. Two keys with
//! the same 64-bit hash (about one chance in 10^7 with a million keys) make a digest
//! impossible; the job then runs without one, as before it had one.

use std::sync::Arc;

/// What the digest holds of one entry: (key hash, row hash, locked).
pub(crate) type Item = (u64, u64, bool);

/// 2: an entry's 17 bytes together (1: the key hashes, the row hashes and the lock bytes
/// each in an array of their own).
const VERSION: u8 = 2;
/// Version, entry count and 8 zero bytes: the size of an entry, so that a digest is built
/// as a vector of entries (see [`Builder`]) and becomes its bytes without a copy.
const HEADER: usize = 17;

/// An entry as stored: key hash, row hash (little-endian), lock byte.
type Record = [u8; 17];

fn record((key, row, locked): Item) -> Record {
    let mut r = [0u8; 17];
    r[..8].copy_from_slice(&key.to_le_bytes());
    r[8..16].copy_from_slice(&row.to_le_bytes());
    r[16] = u8::from(locked);
    r
}

/// A digest being made: entries in any order, each stored as it will be kept. A digest of
/// a million entries read from the state is built in its 17 MB, not in a 24 MB vector of
/// tuples and then the 17 MB of its bytes.
pub(crate) struct Builder(Vec<Record>);

impl Default for Builder {
    fn default() -> Self {
        Builder::with_capacity(0)
    }
}

impl Builder {
    pub(crate) fn with_capacity(n: usize) -> Builder {
        let mut records = Vec::with_capacity(n + 1);
        // The header's place.
        records.push([0u8; 17]);
        Builder(records)
    }

    pub(crate) fn push(&mut self, item: Item) {
        self.0.push(record(item));
    }

    /// The digest; `None` if two entries share a key hash (or one hashes to 0).
    pub(crate) fn finish(mut self) -> Option<Digest> {
        let n = self.0.len() - 1;
        self.0[1..].sort_unstable_by_key(|r| word(r, 0));
        let header = &mut self.0[0];
        header[0] = VERSION;
        header[1..9].copy_from_slice(&(n as u64).to_le_bytes());
        let d = Digest::with(self.0.into_flattened(), n);
        d.valid().then_some(d)
    }
}

/// What the state database keeps of a job's digest: the length and hash of its file
/// (`<state>.digests/<job>.digest`). The file is used only while it matches the seal. The
/// database is the truth: a seal is stored after its file is durable, and removed
/// (durably) before the first entry write, so a seal always describes the entries, and a
/// database restored or copied brings its own seal, which another file does not match.
///
/// Kept out of the database because sled reads a large value whole each time it opens
/// (the log replay) and each time it loads the value's node: twice a run, 17 MB each for
/// a million contacts, in the 16 MB of sled's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seal {
    len: u64,
    hash: u64,
}

/// Not [`VERSION`]: older versions stored the digest itself under the job's name.
const SEAL: u8 = 0xD5;

impl Seal {
    pub(crate) fn of(bytes: &[u8]) -> Seal {
        Seal {
            len: bytes.len() as u64,
            hash: xxhash_rust::xxh3::xxh3_64(bytes),
        }
    }

    pub(crate) fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = SEAL;
        out[1..9].copy_from_slice(&self.len.to_le_bytes());
        out[9..].copy_from_slice(&self.hash.to_le_bytes());
        out
    }

    /// `None` for anything [`Seal::encode`] did not write (an older version's digest).
    pub(crate) fn decode(b: &[u8]) -> Option<Seal> {
        if b.len() != 17 || b[0] != SEAL {
            return None;
        }
        Some(Seal {
            len: word(b, 1),
            hash: word(b, 9),
        })
    }

    /// The digest's identity: the same while no entry is written (the seal is removed
    /// before the first write and made anew for the digest stored after it).
    pub(crate) fn identity(&self) -> u64 {
        self.hash ^ self.len.rotate_left(32)
    }

    /// Whether `bytes` are the digest this seal was made for.
    pub(crate) fn matches(&self, bytes: &[u8]) -> bool {
        *self == Seal::of(bytes)
    }
}

/// A job's digest file read ahead, on a thread of its own, while the state database
/// opens (sled replays its log and loads its page table first, tens of milliseconds for
/// a million contacts on one core): the file's bytes, their seal and the digest they
/// hold. Used only if the seal the database holds once open is theirs (see
/// [`crate::state::JobState`]); anything else reads the file again.
pub(crate) struct ReadAhead {
    job: String,
    read: std::thread::JoinHandle<Option<(Seal, Option<Digest>)>>,
}

impl ReadAhead {
    /// Starts reading job `job`'s digest file `path`. `None` if no thread can be had
    /// (the file is then read when needed, as without this).
    pub(crate) fn start(job: &str, path: std::path::PathBuf) -> Option<ReadAhead> {
        let read = std::thread::Builder::new()
            .name("dialsync-digest".into())
            .spawn(move || {
                let bytes = read_file(&path).ok()?;
                let seal = Seal::of(&bytes);
                let digest = Digest::decode(bytes);
                if let Some(d) = &digest {
                    d.directory();
                }
                Some((seal, digest))
            })
            .ok()?;
        Some(ReadAhead {
            job: job.to_string(),
            read,
        })
    }

    pub(crate) fn job(&self) -> &str {
        &self.job
    }

    /// The digest read, if its file was the one `seal` was made for (`Some(None)`: it
    /// was, but holds no usable digest); `None` if it was not, or could not be read.
    pub(crate) fn digest_for(self, seal: Seal) -> Option<Option<Digest>> {
        match self.read.join() {
            Ok(Some((read, digest))) if read == seal => Some(digest),
            _ => None,
        }
    }
}

/// Stored as it is kept in memory, `VERSION`, the entry count, then per entry its key
/// hash and row hash (8 bytes each, little-endian) and its lock byte, together so that a
/// lookup reads one place: the bytes read from the digest's file are used as they are,
/// and the bytes written are the digest itself, so a digest of a million entries is in
/// memory once (17 MB), not once in arrays and again as the bytes read or written.
#[derive(Debug)]
pub struct Digest {
    /// Key hashes sorted, unique, never 0.
    bytes: Vec<u8>,
    n: usize,
    /// The lookup directory (see [`Probe`]), made at the first need: by the thread that
    /// read the digest ahead (see [`ReadAhead`]), or by the run's first lookup table.
    dir: std::sync::OnceLock<Directory>,
}

/// `dir[b]`: the first entry whose key's top bits (the key shifted right by `shift`) are
/// `b` or more; one more at the end.
#[derive(Debug)]
struct Directory {
    dir: Vec<u32>,
    shift: u32,
}

impl Directory {
    /// The bucket of key hash `key`.
    fn bucket(&self, key: u64) -> usize {
        (key >> self.shift) as usize
    }
}

impl Clone for Digest {
    /// The entries; the directory is made again if needed.
    fn clone(&self) -> Digest {
        Digest::with(self.bytes.clone(), self.n)
    }
}

/// Two digests are equal if their entries are.
impl PartialEq for Digest {
    fn eq(&self, other: &Digest) -> bool {
        self.n == other.n && self.bytes == other.bytes
    }
}

impl Eq for Digest {}

impl Default for Digest {
    fn default() -> Self {
        Builder::default().finish().expect("no keys: valid")
    }
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Digest {
    /// A digest of `items` in any order; `None` if two of them share a key hash (or one
    /// hashes to 0). (A run builds with a [`Builder`], from the entries one at a time.)
    #[cfg(test)]
    pub fn build(items: Vec<Item>) -> Option<Digest> {
        let mut b = Builder::with_capacity(items.len());
        for i in items {
            b.push(i);
        }
        b.finish()
    }

    /// The digest of `entries` (UserData, entry); panics on a key hash collision.
    #[cfg(test)]
    pub fn of<'e>(
        entries: impl Iterator<Item = (&'e String, &'e crate::state::Entry)>,
    ) -> Arc<Digest> {
        Arc::new(
            Digest::build(
                entries
                    .map(|(k, e)| (crate::key::key_hash(k), e.row, e.locked))
                    .collect(),
            )
            .expect("no two keys share a hash"),
        )
    }

    fn key(&self, i: usize) -> u64 {
        word(&self.bytes, HEADER + 17 * i)
    }

    fn row(&self, i: usize) -> u64 {
        word(&self.bytes, HEADER + 17 * i + 8)
    }

    fn locked(&self, i: usize) -> bool {
        self.bytes[HEADER + 17 * i + 16] != 0
    }

    /// Every entry, in key hash order.
    #[cfg(test)]
    fn items(&self) -> impl Iterator<Item = Item> + '_ {
        (0..self.n).map(|i| (self.key(i), self.row(i), self.locked(i)))
    }

    /// Keys sorted, unique and never 0 (the probe table's "empty").
    fn valid(&self) -> bool {
        (self.n == 0 || self.key(0) != 0) && (1..self.n).all(|i| self.key(i - 1) < self.key(i))
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The bytes to store: the digest's own (see [`Digest`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `None` for anything [`Digest::as_bytes`] did not give. The bytes are kept as they
    /// are, not copied.
    pub fn decode(bytes: Vec<u8>) -> Option<Digest> {
        if bytes.len() < HEADER || bytes[0] != VERSION {
            return None;
        }
        let n = usize::try_from(word(&bytes, 1)).ok()?;
        if bytes.len() - HEADER != n.checked_mul(17)? {
            return None;
        }
        let d = Digest::with(bytes, n);
        d.valid().then_some(d)
    }

    fn with(bytes: Vec<u8>, n: usize) -> Digest {
        Digest {
            bytes,
            n,
            dir: std::sync::OnceLock::new(),
        }
    }

    /// The lookup directory, made now if it was not yet: one pass over the keys, 2 to 4
    /// bytes an entry (8 MB and about 10 ms for a million, worth making on the thread
    /// that read the digest, while the state opens, rather than on the planner's).
    fn directory(&self) -> &Directory {
        self.dir.get_or_init(|| self.make_directory())
    }

    fn make_directory(&self) -> Directory {
        let n = self.len();
        // 2^bits buckets, between n and 2n: at most one entry a bucket on average.
        let bits = (usize::BITS - n.leading_zeros()).clamp(1, 31);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut dir = Vec::with_capacity(buckets + 1);
        huge_pages(&dir);
        let mut i = 0usize;
        for b in 0..buckets as u64 {
            while i < n && self.key(i) >> shift < b {
                i += 1;
            }
            dir.push(index(i));
        }
        dir.push(index(n));
        Directory { dir, shift }
    }

    /// The lookup table of one run (see [`Probe`]).
    pub fn probe(self: &Arc<Digest>) -> Probe {
        self.directory();
        Probe {
            digest: Arc::clone(self),
            seen: {
                let seen = vec![0; self.len()];
                huge_pages(&seen);
                seen
            },
        }
    }
}

/// A digest's file read whole, into memory backed by huge pages where it can be (see
/// [`huge_pages`]).
pub(crate) fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    // One byte more, so that a file as long as it was said to be is read without
    // growing the buffer (`read_to_end` then sees its end at once).
    let mut bytes = Vec::with_capacity(usize::try_from(len).map_or(0, |n| n.saturating_add(1)));
    huge_pages(&bytes);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Asks the kernel to back the buffer of `v` with huge pages (2 MB) where it can, before
/// anything is written to it: the 2 MB-aligned part of its capacity is marked
/// `MADV_HUGEPAGE` (Linux's transparent huge pages in their default `madvise` mode, a
/// hint and nothing more). A run's lookups land anywhere in the digest, its directory
/// and the probe's marks (30 MB for a million entries); with 4 KB pages each of them
/// also missed the TLB (a walk of two page tables in a VM). A no-op sync of 1M rows used
/// 7% less CPU with it (issue 17, target 3).
fn huge_pages<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let end = start.saturating_add(v.capacity().saturating_mul(std::mem::size_of::<T>()));
        let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if to > from {
            // SAFETY: madvise with MADV_HUGEPAGE changes how the kernel backs the pages of
            // a range the vector owns, never their contents or whether they may be
            // accessed; on failure (a kernel without THP) nothing changes either.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// The lock byte of an entry removed since the digest was read (see [`Patched`]).
const REMOVED: u8 = 2;

/// What a write of `key` changes: the entry is now `now` (row hash, locked), or removed
/// (`None`).
fn change(key: u64, now: Option<(u64, bool)>) -> Record {
    match now {
        Some((row, locked)) => record((key, row, locked)),
        None => {
            let mut r = record((key, 0, false));
            r[16] = REMOVED;
            r
        }
    }
}

/// The entry writes of a run, as the records [`Patched::set`] would apply, in a file
/// (`<state>.downloads/digest-writes-<n>-<job>`, one per handle): a run that writes a million entries does not
/// keep the digest's 17 MB, and 17 bytes for each new key, in memory while it sends. They
/// are applied to the digest, read again, when it is stored at the end of the run. Not
/// durable, and need not be: the stored digest's seal went before the first write, so
/// after a crash the next run makes a new digest from the entries.
pub(crate) struct WriteLog {
    out: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
}

impl WriteLog {
    /// A new, empty log at `path` (whatever was there is replaced).
    pub(crate) fn create(path: &std::path::Path) -> std::io::Result<WriteLog> {
        Ok(WriteLog {
            out: std::io::BufWriter::with_capacity(1 << 16, super::private_file(path)?),
            path: path.to_path_buf(),
        })
    }

    /// Logs a write of `key`: the entry is now `now`, or removed (`None`).
    pub(crate) fn push(&mut self, key: u64, now: Option<(u64, bool)>) -> std::io::Result<()> {
        use std::io::Write;
        self.out.write_all(&change(key, now))
    }

    /// `base` with every logged write applied, in the order written (the file goes when
    /// the log is dropped).
    pub(crate) fn apply_to(mut self, base: Digest) -> std::io::Result<Patched> {
        use std::io::{Read, Write};
        self.out.flush()?;
        let mut patched = Patched::from(base);
        let mut input =
            std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&self.path)?);
        let mut r: Record = [0; 17];
        loop {
            match input.read_exact(&mut r) {
                Ok(()) => patched.apply(r),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(patched)
    }
}

impl Drop for WriteLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A digest brought up to date write by write, in its own bytes: an entry written is found
/// by binary search and its row hash and lock byte changed in place (a removed one
/// marked), and only a key the digest did not hold is noted apart (17 bytes each).
/// [`Patched::finish`] drops the removed and merges the new in place, so a run that
/// changes every contact of a million needs the digest's 17 MB, not a second copy or a
/// read of every entry through sled's cache (which left 40-50 MB more resident).
#[derive(Clone, Debug)]
pub(crate) struct Patched {
    /// Header and entries as in [`Digest`]; key hashes sorted and unique.
    bytes: Vec<u8>,
    n: usize,
    /// Keys the digest did not hold, in the order written (a later write wins).
    added: Vec<Record>,
}

impl From<Digest> for Patched {
    fn from(d: Digest) -> Patched {
        Patched {
            bytes: d.bytes,
            n: d.n,
            added: Vec::new(),
        }
    }
}

impl Patched {
    fn find(&self, key: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match word(&self.bytes, HEADER + 17 * mid).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The entry of `key` is now `now` (row hash, locked), or removed (`None`).
    #[cfg(test)]
    pub(crate) fn set(&mut self, key: u64, now: Option<(u64, bool)>) {
        self.apply(change(key, now));
    }

    /// Applies a record made by [`change`].
    fn apply(&mut self, r: Record) {
        let key = word(&r, 0);
        match self.find(key) {
            Some(i) => {
                let at = HEADER + 17 * i;
                self.bytes[at..at + 17].copy_from_slice(&r);
            }
            None => self.added.push(r),
        }
    }

    /// The digest of the entries as written; `None` if a new key's hash is 0 or collides
    /// with another's.
    pub(crate) fn finish(self) -> Option<Digest> {
        let Patched {
            mut bytes,
            n,
            mut added,
        } = self;
        // The last write of each new key stands; new keys removed again go.
        added.sort_by_key(|r| word(r, 0));
        let mut w = 0;
        for i in 0..added.len() {
            if added
                .get(i + 1)
                .is_some_and(|next| word(next, 0) == word(&added[i], 0))
            {
                continue;
            }
            if added[i][16] != REMOVED {
                added[w] = added[i];
                w += 1;
            }
        }
        added.truncate(w);
        // The removed go, in place.
        let mut kept = 0;
        for i in 0..n {
            let at = HEADER + 17 * i;
            if bytes[at + 16] != REMOVED {
                bytes.copy_within(at..at + 17, HEADER + 17 * kept);
                kept += 1;
            }
        }
        // The new merge in from the back, into room made at the end.
        let total = kept + added.len();
        bytes.truncate(HEADER + 17 * kept);
        bytes.resize(HEADER + 17 * total, 0);
        let (mut i, mut j) = (kept, added.len());
        for out in (0..total).rev() {
            let to = HEADER + 17 * out;
            let take_added =
                j > 0 && (i == 0 || word(&added[j - 1], 0) > word(&bytes, HEADER + 17 * (i - 1)));
            if take_added {
                bytes[to..to + 17].copy_from_slice(&added[j - 1]);
                j -= 1;
            } else {
                bytes.copy_within(HEADER + 17 * (i - 1)..HEADER + 17 * i, to);
                i -= 1;
            }
        }
        bytes[1..9].copy_from_slice(&(total as u64).to_le_bytes());
        let d = Digest::with(bytes, total);
        d.valid().then_some(d)
    }
}

/// An entry's position as the directory keeps it. A digest of 2^32 entries (73 GB)
/// cannot be read into memory to begin with.
fn index(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 entries")
}

/// A run's view of the digest for lookups by key hash, with a mark per entry for the row
/// that named it. The digest is sorted by key hash and the hashes are uniform, so a
/// directory by a hash's top bits (a position per bucket, between one and two buckets an
/// entry) leads each lookup to its entry in one or two steps. With the marks that is 12
/// to 16 bytes an entry beside the digest's 17, built in one pass; a hash table of copies
/// of the entries took 36 bytes an entry and 25 ms for a million.
#[derive(Debug, Clone)]
pub struct Probe {
    /// With its directory made.
    digest: Arc<Digest>,
    /// Per entry: the row that first named it in this run (0: none yet).
    seen: Vec<u64>,
}

/// Asks the CPU to fetch the cache line at `at`, so that a lookup a few rows later finds
/// it in cache.
fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: a prefetch is only a hint: it reads nothing and cannot fault, whatever the
    // address.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

impl Probe {
    /// Entries.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The position of the entry with key hash `key`.
    pub fn find(&self, key: u64) -> Option<usize> {
        let d = self.digest.directory();
        let b = d.bucket(key);
        let (first, end) = (d.dir[b] as usize, d.dir[b + 1] as usize);
        (first..end)
            .map(|i| (i, self.digest.key(i)))
            .take_while(|&(_, k)| k <= key)
            .find_map(|(i, k)| (k == key).then_some(i))
    }

    /// The first step of a lookup of `key` some rows ahead: its directory bucket.
    pub fn prefetch(&self, key: u64) {
        let d = self.digest.directory();
        prefetch(&d.dir[d.bucket(key)]);
    }

    /// The second step, a few rows later (the bucket is in cache by then): the entry's
    /// bytes in the digest and its mark.
    pub fn prefetch_entry(&self, key: u64) {
        let d = self.digest.directory();
        let i = d.dir[d.bucket(key)] as usize;
        if i < self.len() {
            let at = self.digest.bytes[HEADER + 17 * i..].as_ptr();
            prefetch(at);
            // An entry may straddle two cache lines.
            prefetch(at.wrapping_add(16));
            prefetch(&self.seen[i]);
        }
    }

    pub fn row(&self, i: usize) -> u64 {
        self.digest.row(i)
    }

    pub fn locked(&self, i: usize) -> bool {
        self.digest.locked(i)
    }

    /// The row that first named the entry in this run, or 0.
    pub fn seen_at(&self, i: usize) -> u64 {
        self.seen[i]
    }

    pub fn set_seen_at(&mut self, i: usize, row: u64) {
        self.seen[i] = row;
    }

    /// The lock flag of each entry no row named.
    pub fn unseen(&self) -> impl Iterator<Item = bool> + '_ {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, &at)| at == 0)
            .map(|(i, _)| self.digest.locked(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_every_key_and_no_other() {
        for n in [0usize, 1, 2, 3, 5, 100, 10_000] {
            let items: Vec<Item> = (0..n as u64)
                .map(|i| {
                    (
                        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()),
                        i + 1,
                        i % 3 == 0,
                    )
                })
                .collect();
            let d = Arc::new(Digest::build(items.clone()).unwrap());
            assert_eq!(d.len(), n);
            let mut p = d.probe();
            assert_eq!(p.len(), n);
            for &(k, r, l) in &items {
                let s = p.find(k).unwrap_or_else(|| panic!("{k} of {n}"));
                assert_eq!((p.row(s), p.locked(s), p.seen_at(s)), (r, l, 0));
                p.set_seen_at(s, r + 1);
                assert_eq!((p.locked(s), p.seen_at(s)), (l, r + 1));
            }
            assert_eq!(p.unseen().count(), 0);
            for probe in [1u64, u64::MAX, 12345, 1 << 63] {
                if !items.iter().any(|i| i.0 == probe) {
                    assert_eq!(p.find(probe), None);
                }
            }
            assert_eq!(Digest::decode(d.as_bytes().to_vec()).as_ref(), Some(&*d));
        }
    }

    /// A digest file read into memory marked for huge pages (5 MB here, so that some of
    /// it is) is the digest written, and its lookups find every key.
    #[test]
    fn a_large_digest_read_from_its_file_is_the_one_written() {
        let items: Vec<Item> = (0..300_000u64)
            .map(|i| {
                (
                    xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()),
                    i + 1,
                    i % 7 == 0,
                )
            })
            .collect();
        let d = Digest::build(items.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.digest");
        std::fs::write(&path, d.as_bytes()).unwrap();
        let bytes = read_file(&path).unwrap();
        assert_eq!(bytes, d.as_bytes());
        let read = Arc::new(Digest::decode(bytes).unwrap());
        let mut p = read.probe();
        for &(k, r, l) in &items {
            let s = p.find(k).unwrap();
            assert_eq!((p.row(s), p.locked(s), p.seen_at(s)), (r, l, 0));
            p.set_seen_at(s, r);
        }
        assert_eq!(p.unseen().count(), 0);
        assert!(read_file(&dir.path().join("none")).is_err());
    }

    #[test]
    fn a_shared_key_hash_or_garbage_gives_no_digest() {
        assert_eq!(Digest::build(vec![(5, 1, false), (5, 2, false)]), None);
        assert_eq!(Digest::build(vec![(0, 1, false)]), None);
        let d = Digest::build(vec![(5, 1, false), (9, 2, true)]).unwrap();
        let bytes = d.as_bytes();
        let decode = |b: &[u8]| Digest::decode(b.to_vec());
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[]), None);
        let mut unsorted = bytes.to_vec();
        unsorted[HEADER..HEADER + 8].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(decode(&unsorted), None);
        let mut other_version = bytes.to_vec();
        other_version[0] = 99;
        assert_eq!(decode(&other_version), None);
        assert_eq!(decode(bytes), Some(d));
    }

    /// The entries read from the state are sorted where they were collected and become
    /// the digest's bytes: a rebuilt digest is in memory once.
    #[test]
    fn a_built_digest_is_the_vector_it_was_built_in() {
        let mut b = Builder::default();
        for i in (1..=5000u64).rev() {
            b.push((i * 7919, i, i % 2 == 0));
        }
        let at = b.0.as_ptr().cast::<u8>();
        let d = b.finish().unwrap();
        assert_eq!(d.as_bytes().as_ptr(), at);
        assert_eq!(d.len(), 5000);
        assert_eq!(d.items().next(), Some((7919, 1, false)));
    }

    /// What a run adds to the digest to look entries up: at most 16 bytes an entry (the
    /// directory's position per bucket, one or two buckets an entry, and the mark), never
    /// a copy of the entries.
    #[test]
    fn the_probe_adds_at_most_16_bytes_an_entry() {
        for n in [1usize, 1000, 1024, 1025, 100_000] {
            let items: Vec<Item> = (0..n as u64)
                .map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()), i, false))
                .collect();
            let p = Arc::new(Digest::build(items).unwrap()).probe();
            let dir = p
                .digest
                .dir
                .get()
                .expect("made for the probe")
                .dir
                .capacity();
            let bytes = dir * 4 + p.seen.capacity() * 8;
            assert!(bytes <= 16 * n + 8, "{bytes} bytes for {n} entries");
        }
    }

    /// The thread that reads a digest ahead also makes its lookup directory, so that the
    /// planner's thread finds it made; a copy of a digest (to be patched) leaves it behind.
    #[test]
    fn a_digest_read_ahead_comes_with_its_directory() {
        let items: Vec<Item> = (0..5000u64)
            .map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()), i, i % 7 == 0))
            .collect();
        let d = Digest::build(items).unwrap();
        assert!(d.dir.get().is_none(), "made at the first need only");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("j.digest");
        std::fs::write(&file, d.as_bytes()).unwrap();
        let read = ReadAhead::start("j", file)
            .unwrap()
            .digest_for(Seal::of(d.as_bytes()))
            .expect("the sealed file")
            .expect("a digest");
        assert!(read.dir.get().is_some(), "made by the reading thread");
        assert_eq!(read, d);
        assert!(read.clone().dir.get().is_none());
        // The same lookups either way.
        let (ahead, made) = (Arc::new(read).probe(), Arc::new(d).probe());
        for i in 0..5000u64 {
            let k = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            assert_eq!(ahead.find(k), made.find(k));
            assert!(ahead.find(k).is_some());
        }
        assert_eq!(ahead.find(1), None);
    }

    #[test]
    fn a_seal_matches_its_digest_only() {
        let d = Digest::build(vec![(5, 1, false), (9, 2, true)]).unwrap();
        let seal = Seal::of(d.as_bytes());
        assert_eq!(Seal::decode(&seal.encode()), Some(seal));
        assert!(seal.matches(d.as_bytes()));
        let other = Digest::build(vec![(5, 1, false), (9, 2, false)]).unwrap();
        assert!(!seal.matches(other.as_bytes()));
        assert!(!seal.matches(&d.as_bytes()[1..]));
        // An older version's digest where the seal is now.
        assert_eq!(Seal::decode(d.as_bytes()), None);
        assert_eq!(Seal::decode(b"garbage"), None);
    }

    /// The digest read is the bytes read, not a copy of them: a 1M digest is in memory
    /// once.
    #[test]
    fn a_digest_is_its_stored_bytes() {
        let items: Vec<Item> = (1..=1000u64).map(|i| (i * 7919, i, i % 2 == 0)).collect();
        let d = Digest::build(items).unwrap();
        let read_back = d.as_bytes().to_vec();
        let at = read_back.as_ptr();
        let read = Digest::decode(read_back).unwrap();
        assert_eq!(read.as_bytes().as_ptr(), at);
        assert_eq!(read, d);
    }

    proptest! {
        /// Every key is found in the probe table, clustered or not, and no other.
        #[test]
        fn the_probe_finds_exactly_the_keys(keys in prop::collection::btree_set(1u64.., 0..300), clustered in any::<bool>(), others in prop::collection::vec(1u64.., 20)) {
            // Clustered: keys squeezed into a narrow range, so that probes run long.
            let keys: Vec<u64> = keys.into_iter().map(|k| if clustered { k % 1000 + 1 } else { k }).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let d = Arc::new(Digest::build(keys.iter().map(|&k| (k, k, false)).collect()).unwrap());
            let p = d.probe();
            for &k in &keys {
                let s = p.find(k);
                prop_assert!(s.is_some());
                prop_assert_eq!(p.row(s.unwrap()), k);
            }
            for o in others {
                let o = if clustered { o % 2000 + 1 } else { o };
                prop_assert_eq!(p.find(o).is_some(), keys.contains(&o));
            }
        }

        /// Writes applied in place give the digest of the entries as written: updates,
        /// removals, new keys, a key written twice, removed and written again.
        #[test]
        fn writes_patched_in_give_the_digest_a_rebuild_would(
            base in prop::collection::btree_map(1u64..400, (1u64..5, any::<bool>()), 0..200),
            writes in prop::collection::vec((1u64..400, prop::option::of((1u64..5, any::<bool>()))), 0..300),
        ) {
            let mut expected = base.clone();
            let d = Digest::build(base.iter().map(|(k, (r, l))| (*k, *r, *l)).collect()).unwrap();
            let mut patched = Patched::from(d);
            for (k, v) in &writes {
                patched.set(*k, *v);
                match v {
                    Some(v) => { expected.insert(*k, *v); }
                    None => { expected.remove(k); }
                }
            }
            let want = Digest::build(expected.iter().map(|(k, (r, l))| (*k, *r, *l)).collect()).unwrap();
            prop_assert_eq!(patched.finish().unwrap(), want);
        }
    }
}
