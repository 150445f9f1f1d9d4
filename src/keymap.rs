//! A compact map from UserData to a small value: the keys' text in one buffer and a
//! table of 4-byte indices, about 14 bytes a key besides its text and its value (a
//! `HashMap<String, _>` takes 60 and more). The planner keeps one of the keys its rows
//! named (every key of a first import) and one of the contacts whose call was in flight
//! when a run stopped (every contact after a `state rebuild`).

use hashbrown::HashTable;

use crate::key::key_hash;
use crate::source::RowRef;

pub(crate) struct KeyMap<V> {
    /// Indices into `ends`/`values`, hashed by [`key_hash`] of their key.
    table: HashTable<u32>,
    /// The keys, one after the other.
    text: String,
    /// Where each key ends in `text`.
    ends: Vec<u64>,
    values: Vec<V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            table: HashTable::new(),
            text: String::new(),
            ends: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<V: Copy> KeyMap<V> {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn key_at(&self, i: u32) -> &str {
        key_in(&self.text, &self.ends, i)
    }

    fn find(&self, key: &str, hash: u64) -> Option<u32> {
        self.table.find(hash, |&i| self.key_at(i) == key).copied()
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        if self.is_empty() {
            return None;
        }
        self.find(key, key_hash(key))
            .map(|i| self.values[i as usize])
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Adds `key` with `value`, unless it is there already: then its value, unchanged.
    pub(crate) fn insert(&mut self, key: &str, value: V) -> Option<V> {
        let hash = key_hash(key);
        if let Some(i) = self.find(key, hash) {
            return Some(self.values[i as usize]);
        }
        let i = u32::try_from(self.ends.len()).expect("fewer than 2^32 keys");
        self.text.push_str(key);
        self.ends.push(self.text.len() as u64);
        self.values.push(value);
        let KeyMap {
            table, text, ends, ..
        } = self;
        table.insert_unique(hash, i, |&j| key_hash(key_in(text, ends, j)));
        None
    }

    /// The keys and their values, in the order they were added.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, V)> + '_ {
        (0..self.ends.len()).map(|i| (self.key_at(i as u32), self.values[i]))
    }
}

fn key_in<'t>(text: &'t str, ends: &[u64], i: u32) -> &'t str {
    let i = i as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &text[start..ends[i] as usize]
}

impl<V: Copy> FromIterator<(String, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut map = KeyMap::default();
        for (k, v) in iter {
            map.insert(&k, v);
        }
        map
    }
}

/// Where a row was: [`RowRef::pack`] and its line (+1; 0: none), as a [`KeyMap`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At(u64, u64);

impl From<RowRef> for At {
    fn from(at: RowRef) -> At {
        At(at.pack(), at.line.map_or(0, |l| l + 1))
    }
}

impl From<At> for RowRef {
    fn from(At(packed, line): At) -> RowRef {
        RowRef {
            line: line.checked_sub(1),
            ..RowRef::unpack(packed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_each_key_with_its_first_value() {
        let mut map: KeyMap<At> = KeyMap::default();
        assert!(!map.contains("a") && map.get("a").is_none());
        let at = |row, line| RowRef {
            row,
            line,
            page: None,
        };
        for i in 0..10_000u64 {
            assert_eq!(
                map.insert(&format!("K{i}"), at(i + 1, Some(i + 2)).into()),
                None
            );
        }
        assert_eq!(
            map.insert("", at(20_000, None).into()),
            None,
            "an empty key is a key"
        );
        assert_eq!(
            map.insert("K77", at(30_000, None).into()).map(RowRef::from),
            Some(at(78, Some(79))),
            "the first value stands"
        );
        assert_eq!(
            map.get("K9999").map(RowRef::from),
            Some(at(10_000, Some(10_001)))
        );
        assert_eq!(map.get("").map(RowRef::from), Some(at(20_000, None)));
        assert!(map.contains("K0") && !map.contains("K10000") && !map.contains("K"));
        assert_eq!(map.len(), 10_001);
        let paged = RowRef {
            row: 5,
            line: None,
            page: Some(3),
        };
        map.insert("P", paged.into());
        assert_eq!(map.get("P").map(RowRef::from), Some(paged));
        let keys: Vec<&str> = map.iter().map(|(k, _)| k).take(3).collect();
        assert_eq!(keys, ["K0", "K1", "K2"]);

        let marks: KeyMap<u8> = [("A".to_string(), 1), ("B".to_string(), 4)]
            .into_iter()
            .collect();
        assert_eq!(
            (marks.get("A"), marks.get("B"), marks.get("C")),
            (Some(1), Some(4), None)
        );
    }
}
