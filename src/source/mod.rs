//! Reading the CRM export: a stream of records, each with its row number, plus the rows
//! that could not be read.
//!
//! A source never loads the whole export: records are handed to a callback one at a time.
//! Only the columns the job uses are kept, in the order the caller asks for them, so the
//! mapping step indexes a small vector instead of looking names up per row.
//!
//! Row numbers are what an operator finds in a spreadsheet: for CSV the header is row 1 and
//! the first record row 2 (the file line is added when a quoted field spanned lines); for a
//! JSON array the first element is row 1; for NDJSON the row is the line.

mod csv;
pub(crate) mod http;
mod json;
pub(crate) mod sql;

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::config::{SourceConfig, SourceKind};

/// Where a record is in the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RowRef {
    pub row: u64,
    /// The line in the file where it starts, when that differs from `row`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// A paged HTTP export: the page (from 1) that held the record, which is then the
    /// `row`-th of that page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
}

impl RowRef {
    /// Row `row` of an export without pages, at its own line.
    pub(crate) fn at(row: u64) -> RowRef {
        RowRef {
            row,
            line: None,
            page: None,
        }
    }

    /// Bits of [`RowRef::pack`] below the page.
    const ROW_BITS: u32 = 40;

    /// The row and page in one number, never 0 for a real row (the state digest's probe
    /// keeps where a key was first seen in 62 bits).
    pub(crate) fn pack(self) -> u64 {
        let page = u64::from(self.page.unwrap_or(0)).min((1 << 22) - 1);
        page << Self::ROW_BITS | (self.row & ((1 << Self::ROW_BITS) - 1))
    }

    pub(crate) fn unpack(n: u64) -> RowRef {
        let page = (n >> Self::ROW_BITS) as u32;
        RowRef {
            row: n & ((1 << Self::ROW_BITS) - 1),
            line: None,
            page: (page > 0).then_some(page),
        }
    }
}

impl fmt::Display for RowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.page, self.line) {
            (Some(page), _) => write!(f, "page {page}, record {}", self.row),
            (None, Some(line)) if line != self.row => write!(f, "row {} (line {line})", self.row),
            _ => write!(f, "row {}", self.row),
        }
    }
}

/// Where each page of a paged download starts among its records, to number a record by
/// its page and its place there. Empty: the export has no pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pages {
    /// The records before each page.
    starts: Vec<u64>,
}

impl Pages {
    pub(crate) fn new(starts: Vec<u64>) -> Pages {
        Pages { starts }
    }

    pub(crate) fn count(&self) -> usize {
        self.starts.len()
    }

    /// `at` (the `row`-th record of the whole download) as page and record.
    pub(crate) fn locate(&self, at: RowRef) -> RowRef {
        if self.starts.is_empty() || at.row == 0 {
            return at;
        }
        // The last page that starts before the record.
        let i = self.starts.partition_point(|&s| s < at.row).max(1) - 1;
        RowRef {
            row: at.row - self.starts[i],
            line: None,
            page: Some(i as u32 + 1),
        }
    }
}

/// One record: the values of the requested columns (`None`: absent or blank), borrowed
/// from the reader's buffers for the duration of the callback, so reading a row allocates
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Record<'a> {
    pub at: RowRef,
    pub values: &'a [Option<&'a str>],
    /// The record's whole text, when every value is a slice of it (a CSV record, a
    /// query's row): a consumer that keeps the values may copy it once instead of each.
    pub text: Option<&'a str>,
}

/// Whether a value is blank (empty or whitespace only): read as absent. Most values
/// start with a printable ASCII character, which settles it without decoding.
pub(crate) fn blank(value: &str) -> bool {
    match value.as_bytes().first() {
        None => true,
        Some(b) if b.is_ascii_graphic() => false,
        Some(_) => value.trim_start().is_empty(),
    }
}

/// An empty vector for the values of the next record (or the keys of the next batch),
/// reusing the allocation of the previous one's (the lifetimes differ, the layout does
/// not; `collect` over a mapped `into_iter` reuses the buffer in place).
pub(crate) fn recycle<T, U>(mut values: Vec<Option<T>>) -> Vec<Option<U>> {
    values.clear();
    values.into_iter().map(|_| None).collect()
}

/// A row that could not be read as a record. `key` is the value found in the first
/// requested column (the key) when it could still be read, for reporting.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadRow {
    pub at: RowRef,
    pub key: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item<'a> {
    Record(Record<'a>),
    /// A record given as its text and where each requested value lies in it (a CSV
    /// record): what the planning pipeline copies, without the values' slices made and
    /// their places found again (see [`Line`]).
    Line(Line<'a>),
    Bad(BadRow),
}

/// A record as its text and the place of each requested value in it. Whether a value is
/// blank is left to whoever reads it ([`Line::value`]): a sync with nothing to do looks
/// at most values only as the bytes it hashes (issue 17, target 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Line<'a> {
    pub at: RowRef,
    pub text: &'a str,
    /// Per requested column, where its value lies in `text` (from, to), both on
    /// character boundaries.
    pub ranges: &'a [(u32, u32)],
}

impl<'a> Line<'a> {
    /// The value of requested column `i`; `None` if it is blank.
    pub(crate) fn value(&self, i: usize) -> Option<&'a str> {
        let (from, to) = self.ranges[i];
        let v = &self.text[from as usize..to as usize];
        (!blank(v)).then_some(v)
    }

    /// The values of the requested columns, into `out`.
    pub(crate) fn values_into(&self, out: &mut Vec<Option<&'a str>>) {
        out.clear();
        out.extend((0..self.ranges.len()).map(|i| self.value(i)));
    }
}

impl Item<'_> {
    /// Numbers the row by its page (see [`Pages::locate`]).
    pub(crate) fn locate(&mut self, pages: &Pages) {
        let at = match self {
            Item::Record(r) => &mut r.at,
            Item::Line(l) => &mut l.at,
            Item::Bad(b) => &mut b.at,
        };
        *at = pages.locate(*at);
    }
}

/// Totals of one read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub records: u64,
    pub bad: u64,
    /// What the reader skipped without handing it on.
    pub skipped: Skipped,
}

/// One export being read: its path (for messages), its settings, the columns wanted.
#[derive(Clone, Copy)]
pub(crate) struct Export<'a> {
    pub path: &'a Path,
    pub cfg: &'a SourceConfig,
    pub columns: &'a [String],
}

/// Where a reader hands each row.
pub(crate) type Sink<'s> = &'s mut dyn FnMut(Item<'_>) -> Flow;

/// What a reader returns: what it skipped, or why the export cannot be used.
pub(crate) type Reading = Result<Skipped, SourceError>;

/// What a reader skipped without handing it on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// Rows with nothing to read: blank lines and rows of empty fields.
    pub blank: u64,
    /// The report footer found at the end.
    pub footer: Option<Footer>,
}

/// A report's footer: the lines of one field each, after a blank line, that end a CSV
/// export (as Salesforce writes them). Skipped, and said once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub first: u64,
    pub last: u64,
}

impl fmt::Display for Footer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lines {}-{} of the export (after a blank line, one field each) were taken for the \
             report's footer and skipped",
            self.first, self.last
        )
    }
}

/// A problem that makes the whole export unusable for this run.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open the CRM export {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the CRM export {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CRM export {path} is empty: not even a header line")]
    Empty { path: PathBuf },
    #[error(
        "the CRM export {path} has no column {} named in [job.fields] or reset_when_changed; \
         its columns are: {}",
        quoted(.missing), quoted(.available)
    )]
    MissingColumns {
        path: PathBuf,
        missing: Vec<String>,
        available: Vec<String>,
    },
    #[error(
        "the CRM export {path} has the column `{column}` {} (columns {}): dialsync cannot tell \
         which of them holds the value; rename or remove the others in the export",
        times(.positions.len()), .positions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
    )]
    AmbiguousColumn {
        path: PathBuf,
        column: String,
        /// 1-based.
        positions: Vec<usize>,
    },
    #[error(
        "the CRM export {path} is not valid JSON at {at}: {message} (the file may be truncated)"
    )]
    Json {
        path: PathBuf,
        at: String,
        message: String,
    },
    #[error(
        "the CRM export {path} is neither a JSON array nor newline-delimited JSON objects \
         (it starts with {found:?})"
    )]
    NotJson { path: PathBuf, found: char },
    #[error(
        "the CRM export {path} is one JSON object, not a list of records: set record_path in \
         [job.source] to the key that holds them{}",
        if .arrays.is_empty() { " (no key of it holds an array)".to_string() } else { format!(" (keys holding arrays: {})", quoted(.arrays)) }
    )]
    NotRecords { path: PathBuf, arrays: Vec<String> },
    #[error(
        "the CRM export {path} has no array at record_path `{record_path}`{}",
        if .keys.is_empty() { " (it is not a JSON object)".to_string() } else { format!("; the keys there are: {}", quoted(.keys)) }
    )]
    NoRecordPath {
        path: PathBuf,
        record_path: String,
        keys: Vec<String>,
    },
    /// `type = "http"`: the download failed (after its retries) or was cut short.
    #[error("cannot download the CRM export {url}: {message}")]
    Download { url: String, message: String },
    /// `type = "postgres"` / `"mysql"`: the URL, the connection or the query failed, or
    /// the connection was lost mid-result (the message is the database's, without the
    /// password).
    #[error("cannot read the CRM's rows from {db}: {message}")]
    Database { db: String, message: String },
    /// A stop was requested during the download.
    #[error("the download of the CRM export was stopped")]
    Stopped,
}

impl SourceError {
    /// Turns a read error of the export at `path` into a [`SourceError::Read`].
    pub(crate) fn reading(path: &Path) -> impl Fn(std::io::Error) -> SourceError + Copy + '_ {
        move |source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The readers' buffer: large enough that a read is a few system calls per megabyte.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

fn times(n: usize) -> String {
    match n {
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a sink says after each row: go on, or stop reading (the rest of the export is
/// not read).
pub(crate) type Flow = std::ops::ControlFlow<()>;

/// Reads the export described by `cfg`, calling `sink` for each row, keeping `columns`,
/// until the export ends or `sink` says stop. (Runs read through the pipeline; `validate`
/// reads with this.)
pub(crate) fn read(
    cfg: &SourceConfig,
    columns: &[String],
    sink: &mut dyn FnMut(Item<'_>) -> Flow,
) -> Result<Summary, SourceError> {
    if cfg.kind == SourceKind::Sql {
        return sql::read(cfg, columns, sql::Read::Rows, sink);
    }
    read_from(cfg, &cfg.path, open(cfg)?, columns, sink)
}

/// Opens the export file of `cfg`.
pub(crate) fn open(cfg: &SourceConfig) -> Result<std::fs::File, SourceError> {
    std::fs::File::open(&cfg.path).map_err(|source| SourceError::Open {
        path: cfg.path.clone(),
        source,
    })
}

/// Like `read` (tests), from any reader; `path` is only used in messages.
pub(crate) fn read_from(
    cfg: &SourceConfig,
    path: &Path,
    input: impl Read,
    columns: &[String],
    sink: &mut dyn FnMut(Item<'_>) -> Flow,
) -> Result<Summary, SourceError> {
    let input = HoldBack::new(decoded(cfg, input), cfg.skip_footer_lines as usize);
    let input = BufReader::with_capacity(READ_BUFFER, input);
    let mut counted = Counting {
        inner: sink,
        summary: Summary::default(),
    };
    let export = Export { path, cfg, columns };
    let skipped = match cfg.kind {
        SourceKind::Csv => csv::read(export, input, &mut |i| counted.push(i))?,
        SourceKind::Json => json::read(export, input, &mut |i| counted.push(i))?,
        SourceKind::Sql => {
            unreachable!("the rows of a query are read by sql::read, not from a file")
        }
    };
    Ok(Summary {
        skipped,
        ..counted.summary
    })
}

/// A reader that holds back the last `n` non-blank lines of `inner` (a footer of known
/// length, `skip_footer_lines`) and the blank lines after them: they are never handed on.
/// With `n` = 0 it passes everything through untouched.
pub(crate) struct HoldBack<R> {
    inner: R,
    n: usize,
    /// Complete lines read and not yet handed on, and how many of them are not blank.
    lines: VecDeque<Vec<u8>>,
    nonblank: usize,
    /// The start of a line whose end is still to come.
    partial: Vec<u8>,
    /// Released bytes still to hand on, from `at`.
    out: Vec<u8>,
    at: usize,
    eof: bool,
}

impl<R: Read> HoldBack<R> {
    pub(crate) fn new(inner: R, n: usize) -> HoldBack<R> {
        HoldBack {
            inner,
            n,
            lines: VecDeque::new(),
            nonblank: 0,
            partial: Vec::new(),
            out: Vec::new(),
            at: 0,
            eof: false,
        }
    }

    fn blank(line: &[u8]) -> bool {
        line.iter().all(u8::is_ascii_whitespace)
    }

    /// Moves to `out` every line with at least `n` non-blank lines after it.
    fn release(&mut self) {
        while let Some(front) = self.lines.front() {
            let counts = usize::from(!Self::blank(front));
            if self.nonblank - counts < self.n {
                break;
            }
            self.nonblank -= counts;
            let line = self.lines.pop_front().unwrap_or_default();
            self.out.extend_from_slice(&line);
        }
    }
}

impl<R: Read> Read for HoldBack<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.n == 0 {
            return self.inner.read(buf);
        }
        loop {
            if self.at < self.out.len() {
                let k = buf.len().min(self.out.len() - self.at);
                buf[..k].copy_from_slice(&self.out[self.at..self.at + k]);
                self.at += k;
                return Ok(k);
            }
            self.out.clear();
            self.at = 0;
            if self.eof {
                return Ok(0);
            }
            let mut chunk = [0u8; 16 * 1024];
            let k = self.inner.read(&mut chunk)?;
            if k == 0 {
                self.eof = true;
                if !self.partial.is_empty() {
                    let last = std::mem::take(&mut self.partial);
                    self.nonblank += usize::from(!Self::blank(&last));
                    self.lines.push_back(last);
                }
            } else {
                for piece in chunk[..k].split_inclusive(|&b| b == b'\n') {
                    self.partial.extend_from_slice(piece);
                    if piece.ends_with(b"\n") {
                        let line = std::mem::take(&mut self.partial);
                        self.nonblank += usize::from(!Self::blank(&line));
                        self.lines.push_back(line);
                    }
                }
            }
            self.release();
        }
    }
}

/// `input` decoded to UTF-8 on the fly. Without a configured encoding, a BOM decides
/// (UTF-8 or UTF-16, as Excel writes them); with none, bytes pass through and each value
/// is checked as UTF-8 where it is used, so a wrongly encoded row is reported, not mangled.
pub(crate) fn decoded<R: Read>(
    cfg: &SourceConfig,
    input: R,
) -> encoding_rs_io::DecodeReaderBytes<R, Vec<u8>> {
    encoding_rs_io::DecodeReaderBytesBuilder::new()
        .encoding(cfg.encoding)
        .utf8_passthru(true)
        .strip_bom(true)
        .bom_override(true)
        .build(input)
}

pub(crate) use csv::detect_delimiter;

/// An export file as a run read it: how many bytes, and their keyed hash
/// ([`crate::state::hashing::HashKey::export`]), in hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileSeen {
    pub bytes: u64,
    pub hash: String,
}

/// A reader that hashes every byte read through it (see [`FileSeen`]), or (without a
/// hasher) only passes them on.
pub(crate) struct Hashed<R> {
    inner: R,
    hasher: Option<xxhash_rust::xxh3::Xxh3>,
    bytes: u64,
}

impl<R: Read> Hashed<R> {
    pub(crate) fn new(inner: R, hasher: Option<xxhash_rust::xxh3::Xxh3>) -> Hashed<R> {
        Hashed {
            inner,
            hasher,
            bytes: 0,
        }
    }

    /// What was read so far, if it was hashed.
    pub(crate) fn seen(&self) -> Option<FileSeen> {
        self.hasher.as_ref().map(|h| FileSeen {
            bytes: self.bytes,
            hash: format!("{:032x}", h.digest128()),
        })
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Whether the export file at `path` holds exactly the bytes `seen` describes: the same
/// length (from its metadata, without reading it), then the same hash of all of them.
pub(crate) fn file_unchanged(
    path: &Path,
    seen: &FileSeen,
    hasher: xxhash_rust::xxh3::Xxh3,
) -> std::io::Result<bool> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() != seen.bytes {
        return Ok(false);
    }
    let mut hashed = Hashed::new(file, Some(hasher));
    let mut buf = vec![0u8; 256 * 1024];
    while hashed.read(&mut buf)? > 0 {}
    Ok(hashed.seen().as_ref() == Some(seen))
}

struct Counting<'a> {
    inner: &'a mut dyn FnMut(Item<'_>) -> Flow,
    summary: Summary,
}

impl Counting<'_> {
    fn push(&mut self, item: Item<'_>) -> Flow {
        match &item {
            Item::Record(_) | Item::Line(_) => self.summary.records += 1,
            Item::Bad(_) => self.summary.bad += 1,
        }
        (self.inner)(item)
    }
}

/// The hint appended to an invalid UTF-8 report.
const ENCODING_HINT: &str = "not valid UTF-8: if the export comes from Excel or an older CRM, \
     set encoding = \"windows-1252\" in [job.source]";

/// An owned copy of an [`Item`], for tests.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OwnedItem {
    Record(RowRef, Vec<Option<String>>),
    Bad(BadRow),
}

#[cfg(test)]
pub(crate) fn read_all(
    cfg: &SourceConfig,
    bytes: &[u8],
    columns: &[&str],
) -> Result<Vec<OwnedItem>, SourceError> {
    let columns: Vec<String> = columns.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    read_from(cfg, Path::new("export"), bytes, &columns, &mut |i| {
        out.push(match i {
            Item::Record(r) => OwnedItem::Record(
                r.at,
                r.values.iter().map(|v| v.map(str::to_string)).collect(),
            ),
            Item::Line(l) => OwnedItem::Record(
                l.at,
                (0..l.ranges.len())
                    .map(|i| l.value(i).map(str::to_string))
                    .collect(),
            ),
            Item::Bad(b) => OwnedItem::Bad(b),
        });
        Flow::Continue(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod file_seen {
    use super::*;
    use crate::state::hashing::HashKey;

    /// What a read hashed is what `file_unchanged` finds in the same bytes, and only
    /// there: one byte changed (same length), one more byte, or another key differ.
    #[test]
    fn a_file_is_unchanged_only_with_the_same_bytes_and_key() {
        let key = HashKey::for_tests();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let text: String = (0..20_000).map(|i| format!("K{i};Name {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut read = Hashed::new(std::fs::File::open(&path).unwrap(), Some(key.export()));
        let mut sink = Vec::new();
        // In small pieces, as a parser reads.
        let mut buf = [0u8; 1000];
        loop {
            let n = read.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&buf[..n]);
        }
        assert_eq!(sink, text.as_bytes());
        let seen = read.seen().unwrap();
        assert_eq!(seen.bytes, text.len() as u64);
        assert!(file_unchanged(&path, &seen, key.export()).unwrap());
        let other = HashKey::from_bytes([8; 32]);
        assert!(!file_unchanged(&path, &seen, other.export()).unwrap());
        std::fs::write(&path, text.replacen("Name 7", "Name 8", 1)).unwrap();
        assert!(!file_unchanged(&path, &seen, key.export()).unwrap());
        std::fs::write(&path, format!("{text}\n")).unwrap();
        assert!(!file_unchanged(&path, &seen, key.export()).unwrap());
        std::fs::write(&path, &text).unwrap();
        assert!(file_unchanged(&path, &seen, key.export()).unwrap());
        let unhashed = Hashed::new(text.as_bytes(), None);
        assert_eq!(unhashed.seen(), None);
        // A tiny file's hash is keyed too.
        let tiny = |key: &HashKey| {
            let mut h = Hashed::new(&b"K1;A\n"[..], Some(key.export()));
            h.read_to_end(&mut Vec::new()).unwrap();
            h.seen().unwrap()
        };
        assert_ne!(tiny(&key), tiny(&other));
    }
}

#[cfg(test)]
mod hold_back {
    use super::*;

    /// The last `n` non-blank lines (and blank lines after them) never come out, across
    /// read boundaries of any size; everything before comes out unchanged.
    #[test]
    fn holds_back_exactly_the_footer() {
        let body: String = (0..5000).map(|i| format!("{i};Name {i}\r\n")).collect();
        let text = format!("{body}Total: 5000\r\n\r\nConfidential\r\n\r\n");
        for n in [0usize, 2] {
            let mut out = String::new();
            HoldBack::new(text.as_bytes(), n)
                .read_to_string(&mut out)
                .unwrap();
            let want = if n == 0 { text.clone() } else { body.clone() };
            assert_eq!(out.len(), want.len(), "n = {n}");
            assert!(out == want, "n = {n}");
        }
        // A last line without a line end is a line too.
        let mut out = String::new();
        HoldBack::new(&b"a\nb\nfooter"[..], 1)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "a\nb\n");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cfg(kind: SourceKind, encoding: Option<&'static encoding_rs::Encoding>) -> SourceConfig {
        SourceConfig {
            encoding,
            ..SourceConfig::for_tests(kind, "export")
        }
    }

    /// Bytes drawn mostly from the characters that steer the parsers (quotes, delimiters,
    /// line ends, brackets, escapes, BOMs, invalid UTF-8), so the fuzzing gets past the
    /// header and into records.
    fn tricky() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"id;name\n".to_vec()),
            Just(b"id,name\r\n".to_vec()),
            Just(b"\"".to_vec()),
            Just(b";".to_vec()),
            Just(b",".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b"{\"id\":".to_vec()),
            Just(b"}".to_vec()),
            Just(b"\\u00".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just(b"\xFF\xFE".to_vec()),
            Just(b"\xC3".to_vec()),
            Just(b"\x00".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    fn read_bytes(kind: SourceKind, enc: Option<&'static encoding_rs::Encoding>, bytes: &[u8]) {
        let columns = vec!["id".to_string(), "name".to_string()];
        let mut rows = 0u64;
        let result = read_from(
            &cfg(kind, enc),
            Path::new("export"),
            bytes,
            &columns,
            &mut |i| {
                rows += 1;
                match i {
                    Item::Record(r) => assert_eq!(r.values.len(), 2),
                    Item::Line(l) => {
                        assert_eq!(l.ranges.len(), 2);
                        // Every value lies in the text, on character boundaries.
                        let _ = (l.value(0), l.value(1));
                    }
                    Item::Bad(_) => {}
                }
                Flow::Continue(())
            },
        );
        if let Ok(summary) = result {
            assert_eq!(summary.records + summary.bad, rows);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The readers never panic: any bytes give records, bad rows or an error.
        #[test]
        fn readers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            for kind in [SourceKind::Csv, SourceKind::Json] {
                read_bytes(kind, None, &bytes);
                read_bytes(kind, Some(encoding_rs::WINDOWS_1252), &bytes);
            }
        }

        #[test]
        fn readers_never_panic_on_near_valid_exports(bytes in tricky()) {
            for kind in [SourceKind::Csv, SourceKind::Json] {
                read_bytes(kind, None, &bytes);
                read_bytes(kind, Some(encoding_rs::UTF_16LE), &bytes);
            }
        }
    }
}
