//! The plan's operations, kept out of memory. A plan of a million imports would hold every
//! contact's mapped values until sent (about 1.4 KB a contact); instead the planner
//! appends each operation, encoded, to a [`Spool`], and the executor reads them back a
//! window at a time. What stays in memory is the spool's buffer (at most [`BUFFER`]
//! bytes); beyond that the encoded operations go to an unnamed temporary file (0600,
//! `O_TMPFILE`: it has no name to leak or to leave behind, even after `kill -9`).
//!
//! The encoding is this module's own and lives only as long as the run: no version, no
//! compatibility. Each item is a varint length and its bytes.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::mapping::Contact;
use crate::engine::plan::{Change, Removal, RemovalKind};
use crate::fields::{self, Field, FieldValue};
use crate::source::RowRef;
use crate::state::Entry;

/// Encoded operations held in memory before they go to the file.
pub(crate) const BUFFER: usize = 1 << 20;
/// Room past the buffer for the item that fills it (a larger one grows the buffer once).
const SLACK: usize = 64 << 10;

/// Why the plan's temporary file failed (a full disk, most likely).
#[derive(Debug, thiserror::Error)]
#[error(
    "could not {doing} the plan's temporary file in {} (it holds the planned operations \
     until they are sent; free some space there)",
    dir.display()
)]
pub struct SpoolError {
    dir: PathBuf,
    doing: &'static str,
    #[source]
    source: io::Error,
}

/// A sequence of `T`, appended to and then read in order (as often as needed).
pub(crate) struct Spool<T> {
    dir: Arc<Path>,
    limit: usize,
    /// Encoded items not yet in the file.
    buf: Vec<u8>,
    file: Option<File>,
    /// Bytes in the file.
    written: u64,
    len: usize,
    _items: PhantomData<fn() -> T>,
}

impl<T: Spilled> Spool<T> {
    /// A spool whose file, if it needs one, goes into `dir`.
    pub(crate) fn new(dir: Arc<Path>) -> Spool<T> {
        Spool::with_buffer(dir, BUFFER)
    }

    /// A spool that keeps at most `limit` bytes in memory.
    pub(crate) fn with_buffer(dir: Arc<Path>, limit: usize) -> Spool<T> {
        debug_assert!(limit > 0);
        Spool {
            dir,
            limit,
            buf: Vec::new(),
            file: None,
            written: 0,
            len: 0,
            _items: PhantomData,
        }
    }

    /// An empty spool like this one.
    pub(crate) fn emptied(&self) -> Spool<T> {
        Spool::with_buffer(Arc::clone(&self.dir), self.limit)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether part of it is on disk.
    #[cfg(test)]
    pub(crate) fn on_disk(&self) -> bool {
        self.written > 0
    }

    /// The bytes of it in memory.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn error(&self, doing: &'static str, source: io::Error) -> SpoolError {
        SpoolError {
            dir: self.dir.to_path_buf(),
            doing,
            source,
        }
    }

    pub(crate) fn push(&mut self, item: &T) -> Result<(), SpoolError> {
        if self.buf.capacity() == 0 {
            // Its whole size at once (untouched pages cost nothing), never more.
            self.buf.reserve_exact(self.limit + SLACK);
        }
        let start = self.buf.len();
        // A length of up to 2^21 bytes takes 3 bytes; room is made, then filled in.
        self.buf.extend_from_slice(&[0; 3]);
        item.put(&mut self.buf);
        let n = self.buf.len() - start - 3;
        let mut len = Vec::with_capacity(5);
        put_u64(&mut len, n as u64);
        self.buf.splice(start..start + 3, len);
        self.len += 1;
        if self.buf.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes the buffer to the file (made at the first spill).
    fn spill(&mut self) -> Result<(), SpoolError> {
        if self.file.is_none() {
            let made = tempfile::tempfile_in(&self.dir).map_err(|e| self.error("create", e))?;
            self.file = Some(made);
        }
        let file = self.file.as_mut().expect("made above");
        let written = file.write_all(&self.buf);
        written.map_err(|e| self.error("write", e))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The items, in the order they were pushed.
    pub(crate) fn iter(&self) -> Iter<'_, T> {
        let file = self.file.as_ref().map(|file| {
            BufReader::with_capacity(
                256 << 10,
                At {
                    file,
                    pos: 0,
                    end: self.written,
                },
            )
        });
        Iter {
            spool: self,
            file,
            mem: &self.buf,
            item: Vec::new(),
        }
    }

    /// The first `n` items (for a dry run's preview).
    pub(crate) fn first(&self, n: usize) -> Result<Vec<T>, SpoolError> {
        self.iter().take(n).collect()
    }

    /// Every item, for tests.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.iter()
            .collect::<Result<_, _>>()
            .expect("the spool reads back")
    }
}

impl<T: Spilled> Default for Spool<T> {
    /// A spool whose file goes into the system's temporary folder.
    fn default() -> Spool<T> {
        Spool::new(Arc::from(std::env::temp_dir()))
    }
}

impl<T> fmt::Debug for Spool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Spool({} items, {} bytes on disk)",
            self.len, self.written
        )
    }
}

#[cfg(test)]
impl<T: Spilled + PartialEq> PartialEq for Spool<T> {
    fn eq(&self, other: &Self) -> bool {
        self.to_vec() == other.to_vec()
    }
}

/// A reader of the file's first `end` bytes by position, so that any number of readers
/// can go through it at once without sharing a file offset.
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

pub(crate) struct Iter<'a, T> {
    spool: &'a Spool<T>,
    file: Option<BufReader<At<'a>>>,
    /// The part still in memory, after the file.
    mem: &'a [u8],
    item: Vec<u8>,
}

impl<T: Spilled> Iter<'_, T> {
    fn next_from_file(&mut self) -> Option<io::Result<T>> {
        let file = self.file.as_mut()?;
        let len = match read_u64(file) {
            Ok(Some(len)) => len as usize,
            Ok(None) => {
                self.file = None;
                return None;
            }
            Err(e) => return Some(Err(e)),
        };
        self.item.resize(len, 0);
        if let Err(e) = file.read_exact(&mut self.item) {
            return Some(Err(e));
        }
        Some(decode(&self.item))
    }
}

impl<T: Spilled> Iterator for Iter<'_, T> {
    type Item = Result<T, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        let read = match self.next_from_file() {
            Some(read) => read,
            None if self.mem.is_empty() => return None,
            None => {
                let mut input = self.mem;
                let item = take_u64(&mut input)
                    .and_then(|n| input.get(..n as usize).map(|b| (n as usize, b)))
                    .ok_or_else(corrupt)
                    .and_then(|(n, bytes)| {
                        self.mem = &input[n..];
                        decode(bytes)
                    });
                if item.is_err() {
                    self.mem = &[];
                }
                item
            }
        };
        Some(read.map_err(|e| self.spool.error("read back", e)))
    }
}

fn corrupt() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "an operation did not read back")
}

fn decode<T: Spilled>(mut bytes: &[u8]) -> io::Result<T> {
    match T::take(&mut bytes) {
        Some(item) if bytes.is_empty() => Ok(item),
        _ => Err(corrupt()),
    }
}

/// What a spool can hold.
pub(crate) trait Spilled: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(input: &mut &[u8]) -> Option<Self>;
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_u64(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A varint from `r`; `None` at the end of the input.
fn read_u64(r: &mut impl Read) -> io::Result<Option<u64>> {
    let mut v = 0u64;
    for (i, shift) in (0..64).step_by(7).enumerate() {
        let mut b = [0u8];
        if r.read(&mut b)? == 0 {
            return match i {
                0 => Ok(None),
                _ => Err(corrupt()),
            };
        }
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] < 0x80 {
            return Ok(Some(v));
        }
    }
    Err(corrupt())
}

fn put_fixed(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn take_fixed(input: &mut &[u8]) -> Option<u64> {
    let (b, rest) = input.split_first_chunk::<8>()?;
    *input = rest;
    Some(u64::from_le_bytes(*b))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn take_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = take_u64(input)? as usize;
    let b = input.get(..n)?;
    *input = &input[n..];
    Some(b)
}

fn take_string(input: &mut &[u8]) -> Option<String> {
    String::from_utf8(take_bytes(input)?.to_vec()).ok()
}

fn take_byte(input: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = input.split_first()?;
    *input = rest;
    Some(b)
}

fn put_at(out: &mut Vec<u8>, at: &RowRef) {
    put_u64(out, at.row);
    put_u64(out, at.line.map_or(0, |l| l + 1));
    put_u64(out, at.page.map_or(0, |p| u64::from(p) + 1));
}

fn take_at(input: &mut &[u8]) -> Option<RowRef> {
    let row = take_u64(input)?;
    let line = take_u64(input)?.checked_sub(1);
    let page = match take_u64(input)?.checked_sub(1) {
        Some(p) => Some(u32::try_from(p).ok()?),
        None => None,
    };
    Some(RowRef { row, line, page })
}

fn put_values(out: &mut Vec<u8>, values: &[(&'static Field, FieldValue)]) {
    put_u64(out, values.len() as u64);
    for (f, v) in values {
        out.push(f.code);
        match v {
            FieldValue::Null => out.push(0),
            FieldValue::Text(t) => {
                out.push(1);
                put_bytes(out, t.as_bytes());
            }
            FieldValue::Number(n) => {
                out.push(2);
                put_fixed(out, n.to_bits());
            }
        }
    }
}

fn take_values(input: &mut &[u8]) -> Option<Vec<(&'static Field, FieldValue)>> {
    let n = take_u64(input)? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let field = fields::by_code(take_byte(input)?)?;
        let value = match take_byte(input)? {
            0 => FieldValue::Null,
            1 => FieldValue::Text(take_string(input)?),
            2 => FieldValue::Number(f64::from_bits(take_fixed(input)?)),
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

fn put_kept(out: &mut Vec<u8>, kept: &[(&'static Field, String)]) {
    put_u64(out, kept.len() as u64);
    for (f, raw) in kept {
        out.push(f.code);
        put_bytes(out, raw.as_bytes());
    }
}

fn take_kept(input: &mut &[u8]) -> Option<Vec<(&'static Field, String)>> {
    let n = take_u64(input)? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        out.push((fields::by_code(take_byte(input)?)?, take_string(input)?));
    }
    Some(out)
}

fn put_hashes(out: &mut Vec<u8>, hashes: &[(u8, u64)]) {
    put_u64(out, hashes.len() as u64);
    for (code, h) in hashes {
        out.push(*code);
        put_fixed(out, *h);
    }
}

fn take_hashes(input: &mut &[u8]) -> Option<Vec<(u8, u64)>> {
    let n = take_u64(input)? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        out.push((take_byte(input)?, take_fixed(input)?));
    }
    Some(out)
}

fn put_triggers(out: &mut Vec<u8>, triggers: &[(String, u64)]) {
    put_u64(out, triggers.len() as u64);
    for (col, h) in triggers {
        put_bytes(out, col.as_bytes());
        put_fixed(out, *h);
    }
}

fn take_triggers(input: &mut &[u8]) -> Option<Vec<(String, u64)>> {
    let n = take_u64(input)? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        out.push((take_string(input)?, take_fixed(input)?));
    }
    Some(out)
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    put_bytes(out, &e.encode());
}

fn take_entry(input: &mut &[u8]) -> Option<Entry> {
    Entry::decode(take_bytes(input)?)
}

fn put_flag(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

fn take_flag(input: &mut &[u8]) -> Option<bool> {
    match take_byte(input)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// An import. What the executor needs of it: the mapping's unkeyed trigger hashes and its
/// warnings were used by the planner and are not kept.
impl Spilled for Contact {
    fn put(&self, out: &mut Vec<u8>) {
        put_at(out, &self.at);
        put_bytes(out, self.key.as_bytes());
        put_values(out, &self.fields);
        put_hashes(out, &self.hashes);
        put_triggers(out, &self.triggers);
        put_fixed(out, self.row);
        put_fixed(out, self.phones);
        put_kept(out, &self.kept);
    }

    fn take(input: &mut &[u8]) -> Option<Contact> {
        Some(Contact {
            at: take_at(input)?,
            key: take_string(input)?,
            fields: take_values(input)?,
            hashes: take_hashes(input)?,
            triggers: take_triggers(input)?,
            row: take_fixed(input)?,
            phones: take_fixed(input)?,
            kept: take_kept(input)?,
            legacy_triggers: Vec::new(),
            warnings: Vec::new(),
        })
    }
}

impl Spilled for Change {
    fn put(&self, out: &mut Vec<u8>) {
        put_at(out, &self.at);
        put_bytes(out, self.key.as_bytes());
        put_entry(out, &self.old);
        put_values(out, &self.update);
        put_values(out, &self.values);
        put_flag(out, self.reset);
        put_flag(out, self.unlock);
        put_hashes(out, &self.fields);
        put_triggers(out, &self.triggers);
        put_fixed(out, self.row);
        put_fixed(out, self.phones);
        put_kept(out, &self.kept);
    }

    fn take(input: &mut &[u8]) -> Option<Change> {
        Some(Change {
            at: take_at(input)?,
            key: take_string(input)?,
            old: take_entry(input)?,
            update: take_values(input)?,
            values: take_values(input)?,
            reset: take_flag(input)?,
            unlock: take_flag(input)?,
            fields: take_hashes(input)?,
            triggers: take_triggers(input)?,
            row: take_fixed(input)?,
            phones: take_fixed(input)?,
            kept: take_kept(input)?,
        })
    }
}

impl Spilled for Removal {
    fn put(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.key.as_bytes());
        put_entry(out, &self.old);
        put_flag(out, self.kind == RemovalKind::Delete);
    }

    fn take(input: &mut &[u8]) -> Option<Removal> {
        Some(Removal {
            key: take_string(input)?,
            old: take_entry(input)?,
            kind: match take_flag(input)? {
                true => RemovalKind::Delete,
                false => RemovalKind::Lock,
            },
        })
    }
}

/// A baseline: a contact's new entry, stored without a call.
impl Spilled for (String, Entry) {
    fn put(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.0.as_bytes());
        put_entry(out, &self.1);
    }

    fn take(input: &mut &[u8]) -> Option<(String, Entry)> {
        Some((take_string(input)?, take_entry(input)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LastOp;

    fn folder() -> (tempfile::TempDir, Arc<Path>) {
        let d = tempfile::tempdir().unwrap();
        let p: Arc<Path> = Arc::from(d.path());
        (d, p)
    }

    fn entry(keyed: bool) -> Entry {
        Entry {
            id: -7,
            fields: vec![(1, u64::MAX), (9, 3)],
            triggers: vec![("Status".into(), 42)],
            locked: true,
            last_op: LastOp::Reset,
            last_run: 1_700_000_000,
            row: 0xdead_beef,
            phones: if keyed { 0xfeed } else { 0 },
            keyed,
        }
    }

    fn change(i: u64) -> Change {
        let name = fields::by_name("Name").unwrap();
        let phone = fields::by_name("PhoneNumber1").unwrap();
        Change {
            at: RowRef {
                row: i,
                line: (i % 2 == 0).then_some(i + 3),
                page: (i % 3 == 0).then_some(2),
            },
            key: format!("K{i} ü"),
            old: entry(i % 2 == 0),
            update: vec![(name, FieldValue::Text(format!("Name {i}")))],
            values: vec![
                (name, FieldValue::Text(format!("Name {i}"))),
                (phone, FieldValue::Null),
                (
                    fields::by_name("Priority").unwrap_or(phone),
                    FieldValue::Number(-1.5),
                ),
            ],
            reset: i % 2 == 1,
            unlock: i % 5 == 0,
            fields: vec![(1, i), (2, !i)],
            triggers: vec![("T".into(), i)],
            row: i * 31,
            phones: i * 7,
            kept: (i % 3 == 0)
                .then(|| (phone, format!("089 {i}")))
                .into_iter()
                .collect(),
        }
    }

    /// Items read back as they went in, from memory and from the file, in order, as
    /// often as asked; the entry's keyed flag (which its own encoding carries) included.
    #[test]
    fn reads_back_what_went_in_from_memory_and_file() {
        let (_d, dir) = folder();
        let mut spool = Spool::with_buffer(dir, 1000);
        let items: Vec<Change> = (0..500).map(change).collect();
        for c in &items {
            spool.push(c).unwrap();
        }
        assert!(spool.on_disk());
        assert_eq!(spool.len(), 500);
        assert_eq!(spool.to_vec(), items);
        assert_eq!(spool.to_vec(), items, "a second reading");
        assert_eq!(spool.first(3).unwrap(), items[..3]);

        let (_d, dir) = folder();
        let mut small = Spool::new(dir);
        let r = Removal {
            key: "gone".into(),
            old: entry(true),
            kind: RemovalKind::Delete,
        };
        small.push(&r).unwrap();
        assert!(!small.on_disk());
        assert_eq!(small.to_vec(), vec![r]);
    }

    /// A spool that cannot write its file says where and why.
    #[test]
    fn a_file_that_cannot_be_made_is_an_error_naming_the_folder() {
        let dir: Arc<Path> = Arc::from(Path::new("/nonexistent/dialsync-spool"));
        let mut spool = Spool::with_buffer(dir, 10);
        let err = spool.push(&("K".to_string(), entry(true))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/dialsync-spool"), "{msg}");
        assert!(msg.contains("could not create"), "{msg}");
    }
}
