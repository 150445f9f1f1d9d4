//! The records of a CSV input, as the `csv` crate reads them (quotes doubled inside
//! quoted values, `\r`, `\n` or `\r\n` ending a record, blank lines and comment lines
//! skipped, a UTF-8 BOM dropped), each with the line it starts on and the line after it.
//!
//! A line without a quote or a stray `\r` (almost every line of an export) is split at
//! its delimiters directly, eight bytes at a time ([`Record::split`]); any other record
//! goes through `csv_core`, the state machine the `csv` crate is built on, from the same
//! buffer. A sync with nothing to do spends half its time reading the export (issue 17,
//! target 3): under perf, the split of a million rows took 189-232 samples where the
//! state machine took 367, and the UTF-8 check of each record (now `simdutf8`) 68-76
//! where the standard library's took 122.

use std::io::Read;
use std::ops::Range;

/// A record: its text, where each value lies in it, and its lines.
#[derive(Debug, Default, Clone)]
pub(super) struct Record {
    /// A line split here: the line, delimiters and all. A record `csv_core` read: its
    /// values end to end.
    text: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    /// The line the record starts on (1 is the input's first).
    pub(super) line: u64,
    /// The line after the record's last.
    pub(super) end: u64,
}

impl Record {
    pub(super) fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Where value `i` lies in [`Record::as_slice`].
    pub(super) fn range(&self, i: usize) -> Option<Range<usize>> {
        self.bounds.get(i).map(|&(from, to)| from..to)
    }

    pub(super) fn get(&self, i: usize) -> Option<&[u8]> {
        self.range(i).map(|r| &self.text[r])
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The text every value lies in.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.text
    }

    fn clear(&mut self) {
        self.text.clear();
        self.bounds.clear();
    }

    /// `line` (a line without its line end) split at `delimiter`, unless it holds a
    /// quote or a `\r` (`false`: csv_core reads it). Sixteen bytes at a time where the
    /// CPU compares them at once (SSE2, which every x86-64 CPU has), eight at a time
    /// (in a `u64`) after them and elsewhere: each block's delimiters, quotes and `\r`
    /// are found at once, and the values' bounds taken from the delimiters' bits.
    fn split(&mut self, line: &[u8], delimiter: u8) -> bool {
        let mut from = 0;
        let mut at = 0;
        #[cfg(target_arch = "x86_64")]
        {
            let mut blocks = line.chunks_exact(16);
            for block in &mut blocks {
                let Some(found) = sse2::delimiters(block, delimiter) else {
                    return false;
                };
                self.bounds_at(&mut from, at, u64::from(found), 1);
                at += 16;
            }
        }
        let rest = &line[at..];
        let mut words = rest.chunks_exact(8);
        let mut take = |this: &mut Self, word: u64, at: usize| {
            if (bytes_of(word, b'"') | bytes_of(word, b'\r')) != 0 {
                return false;
            }
            this.bounds_at(&mut from, at, bytes_of(word, delimiter), 8);
            true
        };
        for word in &mut words {
            if !take(
                self,
                u64::from_le_bytes(word.try_into().unwrap_or_default()),
                at,
            ) {
                return false;
            }
            at += 8;
        }
        // The last bytes, padded with zero bytes (no delimiter is a zero byte).
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        if !take(self, u64::from_le_bytes(last), at) {
            return false;
        }
        self.bounds.push((from, line.len()));
        // Copied once it is known to be split here: many exports quote every value.
        self.text.extend_from_slice(line);
        true
    }

    /// The bounds of the values that end at the delimiters `found` marks in the block
    /// at `at`, the next value starting after each. `found` has `bits` bits per byte of
    /// the block: byte `i` is marked by a set bit from bit `bits * i` up to, not
    /// including, bit `bits * (i + 1)`.
    fn bounds_at(&mut self, from: &mut usize, at: usize, mut found: u64, bits: u32) {
        while found != 0 {
            let to = at + (found.trailing_zeros() / bits) as usize;
            self.bounds.push((*from, to));
            *from = to + 1;
            found &= found - 1;
        }
    }
}

/// Sixteen bytes compared at once.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// Bit `i` set for each byte `i` of `block` (16 bytes) that is `delimiter`; `None`
    /// if one is a quote or a `\r`.
    pub(super) fn delimiters(block: &[u8], delimiter: u8) -> Option<u16> {
        assert_eq!(block.len(), 16);
        // SAFETY: SSE2 is part of x86-64, so its instructions are always there; the load
        // reads the 16 bytes of `block` (checked above) and needs no alignment.
        #[allow(unsafe_code)]
        let (special, found) = unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast());
            let is = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
            (
                _mm_movemask_epi8(_mm_or_si128(is(b'"'), is(b'\r'))),
                _mm_movemask_epi8(is(delimiter)),
            )
        };
        // movemask sets the low 16 bits only.
        (special == 0).then_some(found as u16)
    }
}

/// The high bit of each byte of `word` that is `b`, the other bits clear.
fn bytes_of(word: u64, b: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ (ONES * u64::from(b));
    // A byte of `x` is zero only where it was `b`: adding 0x7f to its low seven bits
    // sets its high bit unless they are zero, and its own high bit unless that is.
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The record reader.
pub(super) struct Records<R> {
    input: R,
    buf: Vec<u8>,
    /// What is read and not consumed: `buf[at..filled]`.
    at: usize,
    filled: usize,
    eof: bool,
    /// Whether the input's start (and a BOM there) is still ahead.
    start: bool,
    /// The line `buf[at]` is on.
    line: u64,
    delimiter: u8,
    comment: Option<u8>,
    core: csv_core::Reader,
    /// The values of a record csv_core reads, end to end, and where each ends.
    out: Vec<u8>,
    ends: Vec<usize>,
}

/// Four times the reader in front of it (`source::READ_BUFFER`, 64 KB): a read into the
/// rest of the buffer asks for more than that reader holds, which then hands it over
/// from the file directly instead of through its own buffer (one copy of the export
/// less). A number here, since `benches/csv_reader.rs` reads this file on its own.
pub(super) const BUFFER: usize = 256 * 1024;

impl<R: Read> Records<R> {
    /// The records of `input`, whose first line is line `first_line`.
    pub(super) fn new(input: R, delimiter: u8, comment: Option<u8>, first_line: u64) -> Self {
        let mut core = csv_core::ReaderBuilder::new()
            .delimiter(delimiter)
            .comment(comment)
            .build();
        // csv_core drops a BOM from the start of the first input it is given; here that
        // is a record in the middle of the input (the BOM at its start is dropped in
        // `skip_to_record`). A line end read first is skipped, as any blank line.
        core.read_record(b"\n", &mut [0; 8], &mut [0; 8]);
        Records {
            input,
            buf: vec![0; BUFFER],
            at: 0,
            filled: 0,
            eof: false,
            start: true,
            line: first_line,
            delimiter,
            comment,
            core,
            out: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// The line after the lines consumed: at the end, one past the input's last line
    /// (or on it, if that is a record without a line break).
    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// Reads more input after what is not consumed (moved to the buffer's start, which
    /// grows only when a line fills it). `false` at the input's end.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.at > 0 {
            self.buf.copy_within(self.at..self.filled, 0);
            self.filled -= self.at;
            self.at = 0;
        }
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.input.read(&mut self.buf[self.filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.filled += n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// The next record into `record`; `false` at the end of the input.
    pub(super) fn read(&mut self, record: &mut Record) -> std::io::Result<bool> {
        record.clear();
        if !self.skip_to_record()? {
            return Ok(false);
        }
        record.line = self.line;
        // A record that starts with a quote is csv_core's from the start (an export that
        // quotes every value is read as fast as by the csv crate).
        if self.buf[self.at] == b'"' {
            return self.read_quoted(record);
        }
        loop {
            let rest = &self.buf[self.at..self.filled];
            let (line, next, broke) = match memchr::memchr(b'\n', rest) {
                Some(n) => (&rest[..n], n + 1, true),
                None if self.eof => (rest, rest.len(), false),
                None => {
                    self.fill()?;
                    continue;
                }
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !record.split(line, self.delimiter) {
                record.clear();
                return self.read_quoted(record);
            }
            self.at += next;
            self.line += u64::from(broke);
            record.end = record.line + 1;
            return Ok(true);
        }
    }

    /// Consumes what comes before the next record, as `csv_core` skips it: line ends
    /// (blank lines), comment lines and a BOM at the input's start. `false` if the
    /// input ends first.
    fn skip_to_record(&mut self) -> std::io::Result<bool> {
        loop {
            if self.at == self.filled && !self.fill()? {
                return Ok(false);
            }
            if self.start {
                if self.filled - self.at < 3 && !self.eof {
                    self.fill()?;
                    continue;
                }
                self.start = false;
                if self.buf[self.at..self.filled].starts_with(b"\xEF\xBB\xBF") {
                    self.at += 3;
                }
                continue;
            }
            match self.buf[self.at] {
                b'\n' => {
                    self.at += 1;
                    self.line += 1;
                }
                b'\r' => self.at += 1,
                b if Some(b) == self.comment => loop {
                    let rest = &self.buf[self.at..self.filled];
                    match memchr::memchr(b'\n', rest) {
                        Some(n) => {
                            self.at += n + 1;
                            self.line += 1;
                            break;
                        }
                        None => {
                            self.at = self.filled;
                            if !self.fill()? {
                                // Its line is passed, as a record's would be.
                                self.line += 1;
                                return Ok(false);
                            }
                        }
                    }
                },
                _ => return Ok(true),
            }
        }
    }

    /// The record at `buf[at]` through `csv_core` (it may span lines and buffers).
    fn read_quoted(&mut self, record: &mut Record) -> std::io::Result<bool> {
        use csv_core::ReadRecordResult as R;
        // Room for the record's values and their ends, kept from record to record and
        // doubled as csv_core asks (zeroed only as it grows).
        self.out.resize(self.out.len().max(256), 0);
        self.ends.resize(self.ends.len().max(16), 0);
        let (mut out, mut ends) = (0, 0);
        // csv_core counts the line breaks it reads.
        let first = self.core.line();
        // The last byte consumed: a line break there ends the record's last line.
        let mut last = None;
        loop {
            let input = &self.buf[self.at..self.filled];
            let (result, read, wrote, ended) =
                self.core
                    .read_record(input, &mut self.out[out..], &mut self.ends[ends..]);
            last = input[..read].last().copied().or(last);
            self.at += read;
            out += wrote;
            ends += ended;
            match result {
                R::InputEmpty => {
                    if self.at == self.filled {
                        // At the end, an empty input tells csv_core so.
                        self.fill()?;
                    }
                }
                R::OutputFull => self.out.resize(self.out.len() * 2, 0),
                R::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                R::Record | R::End => {
                    record.text.extend_from_slice(&self.out[..out]);
                    // csv_core's ends count from the record's start.
                    let mut from = 0;
                    for &to in &self.ends[..ends] {
                        record.bounds.push((from, to));
                        from = to;
                    }
                    // A line break that ended it (or the input, in a quoted value) ends its
                    // last line.
                    let breaks = self.core.line() - first;
                    let inside = breaks - u64::from(last == Some(b'\n'));
                    record.end = record.line + inside + 1;
                    self.line += breaks;
                    return Ok(result == R::Record || ends > 0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: its first line, the line after it, its values.
    type Parsed = (u64, u64, Vec<Vec<u8>>);

    /// Every record of `text` as the `csv` crate reads it (flexible, no header), its
    /// lines counted in the text from where the crate says the record lies.
    fn by_csv(text: &[u8], delimiter: u8, comment: Option<u8>) -> Vec<Parsed> {
        let mut r = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .comment(comment)
            .has_headers(false)
            .flexible(true)
            .from_reader(text);
        let mut rec = csv::ByteRecord::new();
        let mut out = Vec::new();
        let line_of = |at: usize| 1 + text[..at].iter().filter(|&&b| b == b'\n').count() as u64;
        while r.read_byte_record(&mut rec).unwrap() {
            // The crate notes a record's place before the line ends and comment lines
            // it skips first (and a BOM at the start).
            let mut start = rec.position().unwrap().byte() as usize;
            if start == 0 && text.starts_with(b"\xEF\xBB\xBF") {
                start = 3;
            }
            loop {
                match text.get(start) {
                    Some(b'\r' | b'\n') => start += 1,
                    Some(&b) if Some(b) == comment => {
                        start += text[start..]
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(text.len() - start, |n| n + 1)
                    }
                    _ => break,
                }
            }
            // It ends past the line end (`\r` or `\n`) that ended it, if one did.
            let end = r.position().byte() as usize;
            let content = match text[..end].last() {
                Some(b'\r' | b'\n') if end > start => end - 1,
                _ => end,
            };
            // csv_core ends a comment line that ends the input with an empty record;
            // the reader ends the input there (the line counts as blank either way).
            if start >= text.len() && rec.len() == 1 && rec[0].is_empty() {
                continue;
            }
            out.push((
                line_of(start),
                line_of(content) + 1,
                rec.iter().map(<[u8]>::to_vec).collect(),
            ));
        }
        out
    }

    fn by_records(text: &[u8], delimiter: u8, comment: Option<u8>, chunk: usize) -> Vec<Parsed> {
        let mut r = Records::new(Chunks(text, chunk), delimiter, comment, 1);
        r.buf = vec![0; 8];
        let mut rec = Record::default();
        let mut out = Vec::new();
        while r.read(&mut rec).unwrap() {
            out.push((rec.line, rec.end, rec.iter().map(<[u8]>::to_vec).collect()));
        }
        out
    }

    /// A reader handing out at most `.1` bytes a call.
    struct Chunks<'a>(&'a [u8], usize);

    impl Read for Chunks<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// The delimiter of the random input `case`.
    fn delimiter_of(case: u32) -> u8 {
        if case % 5 == 0 {
            b';'
        } else {
            b','
        }
    }

    /// Random inputs of the bytes that matter (delimiters, quotes, line ends, comment
    /// signs, a BOM) read alike by both readers, over buffers of every size, the lines
    /// counted right.
    #[test]
    fn reads_what_the_csv_crate_reads() {
        let alphabet: &[&[u8]] = &[
            b"a",
            b"b",
            b"xyz",
            b",",
            b",",
            b";",
            b"\"",
            b"\"\"",
            b"\n",
            b"\n",
            b"\r\n",
            b"\r",
            b"#",
            b" ",
            "ü".as_bytes(),
            b"\xEF\xBB\xBF",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..4000 {
            let len = (next() % 40) as usize;
            let mut text = Vec::new();
            if case % 7 == 0 {
                text.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for _ in 0..len {
                text.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            // Lines long enough to be split sixteen bytes at a time, with a quote or a
            // `\r` now and then, anywhere in them.
            if case % 2 == 1 {
                for _ in 0..next() % 4 {
                    for _ in 0..16 + next() % 60 {
                        let b = match next() % 40 {
                            0 => b'"',
                            1 => b'\r',
                            2..=9 => delimiter_of(case),
                            n => b"abcdefghijklmnopqrstuvwxyz012345"[n as usize % 32],
                        };
                        text.push(b);
                    }
                    text.push(b'\n');
                }
            }
            // Now and then a value longer than the reader's first room for it, and more
            // values than it has room for the ends of.
            if case % 50 == 0 {
                text.extend_from_slice(b"\"");
                text.extend_from_slice(&b"xy\n,\"\"".repeat(100));
                text.extend_from_slice(b"\"");
                text.extend_from_slice(&b",a".repeat(40));
                text.extend_from_slice(b"\n");
                text.extend_from_slice(&b"b,".repeat(40));
            }
            let comment = (case % 3 == 0).then_some(b'#');
            let delimiter = delimiter_of(case);
            let want = by_csv(&text, delimiter, comment);
            for chunk in [1, 2, 3, 5, 64] {
                let got = by_records(&text, delimiter, comment, chunk);
                assert_eq!(
                    got,
                    want,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }
}
