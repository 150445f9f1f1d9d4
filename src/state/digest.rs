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

use std::collections::HashMap;

/// What the digest holds of one entry: (key hash, row hash, locked).
pub(crate) type Item = (u64, u64, bool);

const VERSION: u8 = 1;
/// Version and entry count.
const HEADER: usize = 9;

/// Stored as it is kept in memory, `VERSION`, the entry count, then the key hashes, the
/// row hashes (8 bytes each, little-endian) and a lock byte per entry: the bytes read from
/// the state are used as they are, shared with its page cache, and the bytes stored are
/// the digest itself, so a digest of a million entries is in memory once (17 MB), not
/// once in arrays and again as the value read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Key hashes sorted, unique, never 0.
    bytes: sled::IVec,
    n: usize,
}

impl Default for Digest {
    fn default() -> Self {
        Digest::from_sorted(Vec::new()).expect("no keys: valid")
    }
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Digest {
    /// A digest of `items` in any order; `None` if two of them share a key hash (or one
    /// hashes to 0).
    pub fn build(mut items: Vec<Item>) -> Option<Digest> {
        items.sort_unstable_by_key(|i| i.0);
        Digest::from_sorted(items)
    }

    /// The digest of `entries` (UserData, entry); panics on a key hash collision.
    #[cfg(test)]
    pub fn of<'e>(entries: impl Iterator<Item = (&'e String, &'e crate::state::Entry)>) -> Digest {
        Digest::build(
            entries
                .map(|(k, e)| (crate::key::key_hash(k), e.row, e.locked))
                .collect(),
        )
        .expect("no two keys share a hash")
    }

    fn from_sorted(items: Vec<Item>) -> Option<Digest> {
        let n = items.len();
        let mut out = Vec::with_capacity(HEADER + n * 17);
        out.push(VERSION);
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend(items.iter().flat_map(|i| i.0.to_le_bytes()));
        out.extend(items.iter().flat_map(|i| i.1.to_le_bytes()));
        out.extend(items.iter().map(|i| u8::from(i.2)));
        drop(items);
        let d = Digest {
            bytes: sled::IVec::from(out),
            n,
        };
        d.valid().then_some(d)
    }

    fn key(&self, i: usize) -> u64 {
        word(&self.bytes, HEADER + 8 * i)
    }

    fn row(&self, i: usize) -> u64 {
        word(&self.bytes, HEADER + 8 * (self.n + i))
    }

    fn locked(&self, i: usize) -> bool {
        self.bytes[HEADER + 16 * self.n + i] != 0
    }

    /// Every entry, in key hash order.
    fn items(&self) -> impl Iterator<Item = Item> + '_ {
        (0..self.n).map(|i| (self.key(i), self.row(i), self.locked(i)))
    }

    /// A hash of every entry's key, row hash and lock: equal digests mean the entries
    /// plan alike (an HTTP export's conditional request relies on it).
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (k, r, l) in self.items() {
            h.update(&k.to_le_bytes());
            h.update(&r.to_le_bytes());
            h.update(&[u8::from(l)]);
        }
        h.digest()
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

    /// This digest with `changes` applied (key hash -> new row hash and lock flag, or
    /// `None`: removed); `None` if a new key's hash collides with another's.
    pub fn with_changes(&self, changes: &HashMap<u64, Option<(u64, bool)>>) -> Option<Digest> {
        let mut added: Vec<Item> = changes
            .iter()
            .filter_map(|(&k, v)| v.map(|(r, l)| (k, r, l)))
            .collect();
        added.sort_unstable_by_key(|i| i.0);
        let kept = self.items().filter(|i| !changes.contains_key(&i.0));
        // Merge two sorted runs.
        let mut out = Vec::with_capacity(self.len() + added.len());
        let mut added = added.into_iter().peekable();
        for item in kept {
            while let Some(a) = added.next_if(|a| a.0 < item.0) {
                out.push(a);
            }
            out.push(item);
        }
        out.extend(added);
        Digest::from_sorted(out)
    }

    /// The bytes to store: the digest's own (see [`Digest`]).
    pub fn encode(&self) -> sled::IVec {
        self.bytes.clone()
    }

    /// `None` for anything [`Digest::encode`] did not write. The bytes are kept as they
    /// are, not copied.
    pub fn decode(bytes: sled::IVec) -> Option<Digest> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < 8 {
            return None;
        }
        let n = usize::try_from(u64::from_le_bytes(rest[..8].try_into().ok()?)).ok()?;
        if rest.len() - 8 != n.checked_mul(17)? {
            return None;
        }
        let d = Digest { bytes, n };
        d.valid().then_some(d)
    }

    /// The lookup table of one run (see [`Probe`]).
    pub fn probe(&self) -> Probe {
        let n = self.len();
        // About two slots for every three entries used: short probes.
        let size = n + n / 2 + 1;
        let mut slots: Vec<Slot> = Vec::with_capacity(size + 16);
        slots.resize(size, Slot::EMPTY);
        let mut next = 0usize;
        for (key, row, locked) in self.items() {
            let at = home(key, size).max(next);
            if at >= slots.len() {
                slots.resize(at + 1, Slot::EMPTY);
            }
            slots[at] = Slot {
                key,
                row,
                meta: if locked { LOCKED } else { 0 },
            };
            next = at + 1;
        }
        // An empty slot at the end ends every probe.
        slots.push(Slot::EMPTY);
        Probe { slots, size, n }
    }
}

/// Where a key's probe starts: its hash scaled to the table (monotonic, so keys keep their
/// order in the table).
fn home(key: u64, size: usize) -> usize {
    ((u128::from(key) * size as u128) >> 64) as usize
}

const LOCKED: u64 = 1 << 63;

/// One entry in the probe table: 24 bytes, everything a row's lookup touches in one
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// 0: empty.
    key: u64,
    row: u64,
    /// [`LOCKED`], and the row that first named the entry in this run (0: none yet).
    meta: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: 0,
        row: 0,
        meta: 0,
    };
}

/// A run's view of the digest for lookups by key hash, with a mark per entry for the row
/// that named it: an open-addressing table laid out in key order (each key at or after
/// its scaled hash, later keys after earlier ones), so it is built in one pass and a
/// lookup touches one or two cache lines. The digest's arrays would take four misses.
#[derive(Debug, Clone)]
pub struct Probe {
    slots: Vec<Slot>,
    size: usize,
    n: usize,
}

impl Probe {
    /// Entries (not slots).
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The slot of the entry with key hash `key`.
    pub fn find(&self, key: u64) -> Option<usize> {
        let mut i = home(key, self.size);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Some(i);
            }
            // Keys ascend through the table: past `key`, or at an empty slot, it is absent.
            if k == 0 || k > key {
                return None;
            }
            i += 1;
        }
    }

    /// Asks the CPU to fetch the slot where a lookup of `key` starts, so that the lookup
    /// a few rows later finds it in cache.
    pub fn prefetch(&self, key: u64) {
        // A slot may straddle two cache lines, and a probe often reads the next slot too.
        let slot: *const Slot = &self.slots[home(key, self.size)];
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: a prefetch is only a hint: it reads nothing and cannot fault, whatever
        // the address (the second one may lie past the end of the table).
        unsafe {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(slot.cast());
            _mm_prefetch::<_MM_HINT_T0>(slot.cast::<i8>().wrapping_add(40));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    pub fn row(&self, slot: usize) -> u64 {
        self.slots[slot].row
    }

    pub fn locked(&self, slot: usize) -> bool {
        self.slots[slot].meta & LOCKED != 0
    }

    /// The row that first named the entry in this run, or 0.
    pub fn seen_at(&self, slot: usize) -> u64 {
        self.slots[slot].meta & !LOCKED
    }

    pub fn set_seen_at(&mut self, slot: usize, row: u64) {
        let s = &mut self.slots[slot];
        s.meta = (s.meta & LOCKED) | (row & !LOCKED);
    }

    /// The lock flag of each entry no row named.
    pub fn unseen(&self) -> impl Iterator<Item = bool> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != 0 && s.meta & !LOCKED == 0)
            .map(|s| s.meta & LOCKED != 0)
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
            let d = Digest::build(items.clone()).unwrap();
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
            assert_eq!(Digest::decode(d.encode()), Some(d));
        }
    }

    #[test]
    fn a_shared_key_hash_or_garbage_gives_no_digest() {
        assert_eq!(Digest::build(vec![(5, 1, false), (5, 2, false)]), None);
        assert_eq!(Digest::build(vec![(0, 1, false)]), None);
        let d = Digest::build(vec![(5, 1, false), (9, 2, true)]).unwrap();
        let bytes = d.encode();
        let decode = |b: &[u8]| Digest::decode(sled::IVec::from(b));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[]), None);
        let mut unsorted = bytes.to_vec();
        unsorted[9..17].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(decode(&unsorted), None);
        let mut other_version = bytes.to_vec();
        other_version[0] = 99;
        assert_eq!(decode(&other_version), None);
        assert_eq!(decode(&bytes), Some(d));
    }

    /// The digest read from the state is those bytes, not a copy of them, and the digest
    /// stored is the digest's own bytes: a 1M digest is in memory once.
    #[test]
    fn a_digest_is_its_stored_bytes() {
        let items: Vec<Item> = (1..=1000u64).map(|i| (i * 7919, i, i % 2 == 0)).collect();
        let d = Digest::build(items).unwrap();
        let stored = d.encode();
        assert_eq!(stored.as_ptr(), d.encode().as_ptr());
        let read = Digest::decode(stored.clone()).unwrap();
        assert_eq!(read.encode().as_ptr(), stored.as_ptr());
        assert_eq!(read, d);
    }

    proptest! {
        /// Every key is found in the probe table, clustered or not, and no other.
        #[test]
        fn the_probe_finds_exactly_the_keys(keys in prop::collection::btree_set(1u64.., 0..300), clustered in any::<bool>(), others in prop::collection::vec(1u64.., 20)) {
            // Clustered: keys squeezed into a narrow range, so that probes run long.
            let keys: Vec<u64> = keys.into_iter().map(|k| if clustered { k % 1000 + 1 } else { k }).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let d = Digest::build(keys.iter().map(|&k| (k, k, false)).collect()).unwrap();
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

        /// Applying changes gives the digest of the changed set.
        #[test]
        fn changes_apply_like_a_rebuild(
            base in prop::collection::btree_map(any::<u64>(), (1u64..5, any::<bool>()), 0..200),
            changes in prop::collection::hash_map(any::<u64>(), prop::option::of((1u64..5, any::<bool>())), 0..50),
        ) {
            let mut expected = base.clone();
            for (k, v) in &changes {
                match v {
                    Some(v) => { expected.insert(*k, *v); }
                    None => { expected.remove(k); }
                }
            }
            let d = Digest::build(base.iter().map(|(k, (r, l))| (*k, *r, *l)).collect()).unwrap();
            let want = Digest::build(expected.iter().map(|(k, (r, l))| (*k, *r, *l)).collect()).unwrap();
            prop_assert_eq!(d.with_changes(&changes).unwrap(), want);
        }
    }
}
