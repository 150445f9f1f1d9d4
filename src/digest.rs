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
pub type Item = (u64, u64, bool);

const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digest {
    /// Key hashes, sorted, unique.
    keys: Vec<u64>,
    rows: Vec<u64>,
    locked: Vec<bool>,
    /// `starts[b]..starts[b + 1]` are the keys of bucket `b` (the top bits of the hash).
    starts: Vec<u32>,
    /// How far a key hash is shifted right to give its bucket.
    shift: u32,
}

impl Digest {
    /// A digest of `items` in any order; `None` if two of them share a key hash (or there
    /// are more than 4 billion).
    pub fn build(mut items: Vec<Item>) -> Option<Digest> {
        items.sort_unstable_by_key(|i| i.0);
        Digest::from_sorted(items)
    }

    fn from_sorted(items: Vec<Item>) -> Option<Digest> {
        let n = items.len();
        let mut d = Digest {
            keys: Vec::with_capacity(n),
            rows: Vec::with_capacity(n),
            locked: Vec::with_capacity(n),
            starts: Vec::new(),
            shift: 0,
        };
        for (k, r, l) in items {
            d.keys.push(k);
            d.rows.push(r);
            d.locked.push(l);
        }
        d.index().then_some(d)
    }

    /// Builds the bucket index (about four keys per bucket); false if the keys are not
    /// sorted and unique.
    fn index(&mut self) -> bool {
        let n = self.keys.len();
        if u32::try_from(n).is_err() || self.keys.windows(2).any(|w| w[0] >= w[1]) {
            return false;
        }
        let bits = (n / 4).max(1).next_power_of_two().trailing_zeros();
        self.shift = 64 - bits;
        let buckets = 1usize << bits;
        self.starts = Vec::with_capacity(buckets + 1);
        let mut i = 0usize;
        for b in 0..buckets {
            while i < n && self.bucket(self.keys[i]) < b {
                i += 1;
            }
            self.starts.push(i as u32);
        }
        self.starts.push(n as u32);
        true
    }

    fn bucket(&self, key: u64) -> usize {
        // `checked_shr`: a shift by 64 (one bucket) puts every key in bucket 0.
        key.checked_shr(self.shift).unwrap_or(0) as usize
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The position of the entry with key hash `key`.
    pub fn find(&self, key: u64) -> Option<usize> {
        let b = self.bucket(key);
        let (lo, hi) = (*self.starts.get(b)? as usize, self.starts[b + 1] as usize);
        self.keys[lo..hi].binary_search(&key).ok().map(|i| lo + i)
    }

    pub fn row(&self, i: usize) -> u64 {
        self.rows[i]
    }

    pub fn locked(&self, i: usize) -> bool {
        self.locked[i]
    }

    /// This digest with `changes` applied (key hash -> new row hash and lock flag, or
    /// `None`: removed); `None` if a new key's hash collides with another's.
    pub fn with_changes(&self, changes: &HashMap<u64, Option<(u64, bool)>>) -> Option<Digest> {
        let mut added: Vec<Item> = changes
            .iter()
            .filter_map(|(&k, v)| v.map(|(r, l)| (k, r, l)))
            .collect();
        added.sort_unstable_by_key(|i| i.0);
        let kept = (0..self.len())
            .filter(|&i| !changes.contains_key(&self.keys[i]))
            .map(|i| (self.keys[i], self.rows[i], self.locked[i]));
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

    pub fn encode(&self) -> Vec<u8> {
        let n = self.len();
        let mut out = Vec::with_capacity(9 + n * 17);
        out.push(VERSION);
        out.extend_from_slice(&(n as u64).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.to_le_bytes());
        }
        for r in &self.rows {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend(self.locked.iter().map(|&l| u8::from(l)));
        out
    }

    /// `None` for anything [`Digest::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<Digest> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < 8 {
            return None;
        }
        let n = usize::try_from(u64::from_le_bytes(rest[..8].try_into().ok()?)).ok()?;
        let rest = &rest[8..];
        if rest.len() != n.checked_mul(17)? {
            return None;
        }
        let words = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let mut d = Digest {
            keys: words(&rest[..n * 8]),
            rows: words(&rest[n * 8..n * 16]),
            locked: rest[n * 16..].iter().map(|&b| b != 0).collect(),
            starts: Vec::new(),
            shift: 0,
        };
        d.index().then_some(d)
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
            for &(k, r, l) in &items {
                let i = d.find(k).unwrap_or_else(|| panic!("{k} of {n}"));
                assert_eq!((d.row(i), d.locked(i)), (r, l));
            }
            for probe in [0u64, 1, u64::MAX, 12345] {
                if !items.iter().any(|i| i.0 == probe) {
                    assert_eq!(d.find(probe), None);
                }
            }
            assert_eq!(Digest::decode(&d.encode()), Some(d));
        }
    }

    #[test]
    fn a_shared_key_hash_or_garbage_gives_no_digest() {
        assert_eq!(Digest::build(vec![(5, 1, false), (5, 2, false)]), None);
        let d = Digest::build(vec![(5, 1, false), (9, 2, true)]).unwrap();
        let bytes = d.encode();
        assert_eq!(Digest::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Digest::decode(&[]), None);
        let mut unsorted = bytes.clone();
        unsorted[9..17].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(Digest::decode(&unsorted), None);
        let mut other_version = bytes;
        other_version[0] = 99;
        assert_eq!(Digest::decode(&other_version), None);
    }

    proptest! {
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
