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

use std::collections::HashSet;

use super::{JobState, Pending, StateError};

/// The first byte of a window record's key.
pub(super) const WINDOW: u8 = 0xFF;
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

/// The pending imports of a window record: (UserData, encoded [`Pending`]).
pub(super) fn decode_imports(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// The marks of a window record: (UserData, in-doubt bits).
pub(super) fn decode_marks(bytes: &[u8]) -> Option<Vec<(String, u8)>> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

fn corrupt(key: &[u8]) -> StateError {
    StateError::Corrupt {
        key: format!("journal window {}", String::from_utf8_lossy(&key[1..])),
    }
}

impl JobState {
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
                for (k, p) in decode_imports(&v).ok_or_else(|| corrupt(&key))? {
                    if open.contains(&k) {
                        self.pending.insert(k.as_bytes(), p)?;
                    }
                }
            }
        }
        if let Some(v) = self.in_flight.get(key)? {
            for (k, bits) in decode_marks(&v).ok_or_else(|| corrupt(&key))? {
                let own = self.in_flight.get(k.as_bytes())?;
                if open.contains(&k) {
                    let had = own.and_then(|b| b.first().copied()).unwrap_or(0);
                    self.put_in_flight(&k, had | bits)?;
                } else if own.is_some() {
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
    /// resolves what is pending; returns how many windows there were.
    pub(crate) fn settle_windows(&self) -> Result<usize, StateError> {
        let windows: Vec<_> = self
            .pending
            .scan_prefix([WINDOW])
            .chain(self.in_flight.scan_prefix([WINDOW]))
            .map(|kv| kv.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        if windows.is_empty() {
            return Ok(0);
        }
        self.wrote()?;
        for (k, v) in self
            .pending
            .scan_prefix([WINDOW])
            .collect::<Result<Vec<_>, _>>()?
        {
            for (key, p) in decode_imports(&v).ok_or_else(|| corrupt(&k))? {
                if self.tree.get(key.as_bytes())?.is_none() {
                    self.pending.insert(key.as_bytes(), p)?;
                }
            }
            self.pending.remove(k)?;
        }
        for (k, v) in self
            .in_flight
            .scan_prefix([WINDOW])
            .collect::<Result<Vec<_>, _>>()?
        {
            for (key, bits) in decode_marks(&v).ok_or_else(|| corrupt(&k))? {
                let had = self
                    .in_flight
                    .get(key.as_bytes())?
                    .and_then(|b| b.first().copied())
                    .unwrap_or(0);
                self.put_in_flight(&key, had | bits)?;
            }
            self.in_flight.remove(k)?;
        }
        let mut ids = windows;
        ids.sort();
        ids.dedup();
        Ok(ids.len())
    }
}
