//! The journal's window records: what one window of a run's operations puts in doubt,
//! written as one record per tree instead of one per contact.
//!
//! The executor journals its operations a window at a time (see `engine::execute`): the
//! imports as pending, every other operation as an in-flight mark, made durable with one
//! flush before any of them is sent. Written one key per contact, that cost two state
//! writes per operation beside the entry's own (the mark put, then cleared), which were
//! a third of a bulk import's CPU in sled and most of its garbage. A window record holds
//! the window's pending imports (in the `pending` tree) or its marks (in the `in_flight`
//! tree) under one key; it is removed when the window's last operation is done, after the
//! operations whose outcome is still unknown got a per-contact record of their own.
//!
//! Until then every contact of the window counts as pending or in doubt, as its own
//! record would: after a crash the next run sees at most a window more in doubt than
//! were really in flight, and settles them as it settles any pending import or mark.
//! [`JobState::settle_windows`] turns what a crashed run left into per-contact records
//! before the next run resolves them, so everything after it sees only those.
//!
//! Keys: the byte 0xFF, which no UTF-8 text (a UserData) begins with, and the window's
//! number (big-endian).

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;

use super::{JobState, Pending, StateError};

/// The first byte of a window record's key.
const WINDOW: u8 = 0xFF;
/// The version of the records' encoding.
const VERSION: u8 = 1;

/// Whether `key` (in the `pending` or `in_flight` tree) is a window record's.
pub(super) fn is_window(key: &[u8]) -> bool {
    key.first() == Some(&WINDOW)
}

fn window_key(id: u64) -> [u8; 9] {
    let mut k = [WINDOW; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn encode<T: serde::Serialize>(items: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend(postcard::to_stdvec(items).expect("a window record always serializes"));
    out
}

/// The items of the window record `value` at `key`: (UserData, encoded [`Pending`]) in
/// `pending`, (UserData, in-doubt bits) in `in_flight`.
fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<Vec<T>, StateError> {
    match value.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
    .ok_or_else(|| StateError::Corrupt {
        key: format!(
            "journal window {}",
            key.get(1..)
                .and_then(|id| <[u8; 8]>::try_from(id).ok())
                .map_or(0, u64::from_be_bytes)
        ),
    })
}

/// Every window record of `tree`, with its key.
fn records(tree: &sled::Tree) -> Result<Vec<(sled::IVec, sled::IVec)>, StateError> {
    Ok(tree.scan_prefix([WINDOW]).collect::<Result<_, _>>()?)
}

/// The pending imports of the window `records` of the `pending` tree.
fn imports_of(records: &[(sled::IVec, sled::IVec)]) -> Result<Vec<(String, Vec<u8>)>, StateError> {
    let mut out = Vec::new();
    for (k, v) in records {
        out.extend(decode(k, v)?);
    }
    Ok(out)
}

/// The marks of the window `records` of the `in_flight` tree, combined per contact.
fn marks_of(records: &[(sled::IVec, sled::IVec)]) -> Result<HashMap<String, u8>, StateError> {
    let mut out: HashMap<String, u8> = HashMap::new();
    for (k, v) in records {
        for (key, bits) in decode::<(String, u8)>(k, v)? {
            *out.entry(key).or_default() |= bits;
        }
    }
    Ok(out)
}

impl JobState {
    /// The pending imports of every window record: (UserData, encoded [`Pending`]).
    pub(super) fn window_imports(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        imports_of(&records(&self.pending)?)
    }

    /// The marks of every window record, a contact's bits in several windows combined.
    pub(super) fn window_marks(&self) -> Result<HashMap<String, u8>, StateError> {
        marks_of(&records(&self.in_flight)?)
    }

    /// Records window `id`: `imports` as pending and `marks` as in flight, one record per
    /// tree. Durable after the next [`JobState::flush`], which comes before any of them is
    /// sent.
    pub(crate) fn put_window(
        &self,
        id: u64,
        imports: &[(&str, Pending)],
        marks: &[(&str, u8)],
    ) -> Result<(), StateError> {
        self.wrote()?;
        let key = window_key(id);
        if !imports.is_empty() {
            let items: Vec<(&str, Vec<u8>)> =
                imports.iter().map(|(k, p)| (*k, p.encode())).collect();
            self.pending.insert(key, encode(&items))?;
        }
        if !marks.is_empty() {
            self.in_flight.insert(key, encode(&marks))?;
        }
        Ok(())
    }

    /// Closes window `id` once each of its operations is done: the contacts in `open`
    /// (an import sent without its contact being stored, a call whose outcome is
    /// unknown) keep a pending import or mark of their own, written first; the others'
    /// own marks (left by a rebuild or an interrupted run) go, as their outcome is
    /// stored; then the window's records go.
    pub(crate) fn close_window(&self, id: u64, open: &HashSet<String>) -> Result<(), StateError> {
        self.wrote()?;
        let key = window_key(id);
        if !open.is_empty() {
            if let Some(v) = self.pending.get(key)? {
                for (k, p) in decode::<(String, Vec<u8>)>(&key, &v)? {
                    if open.contains(&k) {
                        self.pending.insert(k.as_bytes(), p)?;
                    }
                }
            }
        }
        // Window records sort last: a first key that is not one is a contact's own mark.
        // Without any (every run but one after a rebuild or a crash), no mark is read.
        let own_marks = self.in_flight.first()?.is_some_and(|(k, _)| !is_window(&k));
        if let Some(v) = self.in_flight.get(key)? {
            for (k, bits) in decode::<(String, u8)>(&key, &v)? {
                if open.contains(&k) {
                    self.add_in_flight(&k, bits)?;
                } else if own_marks && self.in_flight.contains_key(k.as_bytes())? {
                    self.clear_in_flight(&k)?;
                }
            }
        }
        self.pending.remove(key)?;
        self.in_flight.remove(key)?;
        Ok(())
    }

    /// Turns the window records a stopped or crashed run left into records per contact
    /// (a pending import whose contact is stored already was done, and is left out; a
    /// contact's mark is added to any it has), and removes them. Called before a run
    /// resolves what is pending; returns how many records there were.
    pub(crate) fn settle_windows(&self) -> Result<usize, StateError> {
        let (imports, marks) = (records(&self.pending)?, records(&self.in_flight)?);
        if imports.is_empty() && marks.is_empty() {
            return Ok(0);
        }
        self.wrote()?;
        for (key, p) in imports_of(&imports)? {
            if !self.tree.contains_key(key.as_bytes())? {
                self.pending.insert(key.as_bytes(), p)?;
            }
        }
        for (key, bits) in marks_of(&marks)? {
            self.add_in_flight(&key, bits)?;
        }
        for (tree, records) in [(&self.pending, &imports), (&self.in_flight, &marks)] {
            for (k, _) in records {
                tree.remove(k)?;
            }
        }
        Ok(imports.len() + marks.len())
    }
}
