//! CSV exports: header row, quoted fields (with embedded delimiters and newlines), CRLF,
//! delimiter `,` `;` tab or `|` given or detected from the header line.

use std::io::{BufRead, Cursor, Read};

use super::{
    recycle, BadRow, Export, Footer, Item, Reading, Record, RowRef, Sink, Skipped, SourceError,
    ENCODING_HINT,
};

pub(super) fn read(export: Export<'_>, mut input: impl BufRead, sink: Sink<'_>) -> Reading {
    let Export { path, cfg, columns } = export;
    let read_err = SourceError::reading(path);
    let mut skipped = Skipped::default();
    let mut first_line = Vec::new();
    // A report's title lines before the header (`skip_header_lines`).
    for _ in 0..cfg.skip_header_lines {
        first_line.clear();
        input.read_until(b'\n', &mut first_line).map_err(read_err)?;
    }
    first_line.clear();
    input.read_until(b'\n', &mut first_line).map_err(read_err)?;
    if first_line.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(SourceError::Empty {
            path: path.to_path_buf(),
        });
    }
    let delimiter = cfg
        .delimiter
        .unwrap_or_else(|| detect_delimiter(&first_line));
    // The csv crate takes a position before it consumes the `\n` of a `\r\n` line end, so
    // in CRLF files its line numbers are one short. The header tells the file's line end.
    // Its lines count from the header: the title lines skipped come before.
    let crlf = u64::from(first_line.ends_with(b"\r\n"));
    let line_offset = crlf + cfg.skip_header_lines;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .comment(cfg.comment)
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(64 * 1024)
        .from_reader(Watched {
            inner: Cursor::new(first_line).chain(input),
            tail: Tail::default(),
        });

    let header = reader
        .byte_headers()
        .map_err(|e| read_err(std::io::Error::other(e)))?
        .clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let mut index = Vec::with_capacity(columns.len());
    let mut missing = Vec::new();
    for c in columns {
        let at: Vec<usize> = (0..names.len()).filter(|&i| names[i] == *c).collect();
        match at.as_slice() {
            [i] => index.push(*i),
            [] => missing.push(c.clone()),
            // Which of them holds the value? The first might be the wrong one.
            many => {
                return Err(SourceError::AmbiguousColumn {
                    path: path.to_path_buf(),
                    column: c.clone(),
                    positions: many.iter().map(|i| i + 1).collect(),
                })
            }
        }
    }
    if !missing.is_empty() {
        return Err(SourceError::MissingColumns {
            path: path.to_path_buf(),
            missing,
            available: names,
        });
    }

    let mut record = csv::ByteRecord::new();
    let mut spare: Vec<Option<&'static str>> = Vec::with_capacity(index.len());
    let mut data_rows: u64 = 0;
    // The line after the last record read: the reader skips blank lines silently, so the
    // gap to the next record's first line counts them.
    let mut next_line = reader.position().line() + line_offset;
    // Whether the last row was a row of empty fields.
    let mut blank_before = false;
    // Lines that may be the report's footer (see below).
    let mut footer: Vec<BadRow> = Vec::new();
    loop {
        let read = reader.read_byte_record(&mut record);
        let mut end = reader.position().line() + line_offset;
        // The last record of an LF file without a final line break: no line end was
        // consumed, so the position is still on its own line. (In a CRLF file the offset
        // makes up for it already.)
        if crlf == 0
            && matches!(read, Ok(true))
            && reader
                .get_ref()
                .tail
                .unterminated_at(reader.position().byte())
        {
            end += 1;
        }
        match read {
            Ok(true) => {}
            Ok(false) => {
                // At the end the whole input is consumed: the position is exact, CRLF or not.
                skipped.blank += (end - crlf).saturating_sub(next_line);
                if let (Some(first), Some(last)) = (footer.first(), footer.last()) {
                    skipped.footer = Some(Footer {
                        first: first.at.row,
                        last: last.at.row,
                    });
                }
                break;
            }
            Err(e) => match e.kind() {
                csv::ErrorKind::Io(_) => {
                    let csv::ErrorKind::Io(io) = e.into_kind() else {
                        unreachable!()
                    };
                    return Err(read_err(io));
                }
                // Any other error is about this one record: report it and go on.
                _ => {
                    data_rows += 1;
                    let line = e.position().map(|p| p.line() + line_offset);
                    if let Some(line) = line {
                        skipped.blank += line.saturating_sub(next_line);
                    }
                    next_line = end;
                    let at = RowRef {
                        row: line.unwrap_or(data_rows + 1),
                        line,
                        page: None,
                    };
                    // Not the end after all: held-back footer lines were rows.
                    for bad in footer.drain(..) {
                        if sink(Item::Bad(bad)).is_break() {
                            return Ok(skipped);
                        }
                    }
                    if sink(Item::Bad(BadRow {
                        at,
                        key: None,
                        reason: e.to_string(),
                    }))
                    .is_break()
                    {
                        return Ok(skipped);
                    }
                    continue;
                }
            },
        }
        data_rows += 1;
        let line = record
            .position()
            .map(|p| first_line_of(&record, p.line() + line_offset, end));
        let mut after_blank = blank_before;
        if let Some(line) = line {
            skipped.blank += line.saturating_sub(next_line);
            after_blank |= line > next_line;
        }
        next_line = end;
        // A row of empty fields (`;;;;`, as Excel leaves rows it once touched) is blank,
        // like an empty line: nothing to read, nothing to doubt.
        if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            skipped.blank += end.saturating_sub(line.unwrap_or(end)).max(1);
            blank_before = true;
            continue;
        }
        blank_before = false;
        // Row numbers are the file's line numbers, as an editor shows them (a record over
        // several lines: its first).
        let at = RowRef {
            row: line.unwrap_or(data_rows + 1),
            line,
            page: None,
        };
        let key = || {
            record
                .get(index[0])
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
        };
        // A report's footer (Salesforce: a blank line, then "Confidential Information - Do
        // Not Distribute", "Copyright ...", "Generated By: ..."): lines of one field after
        // a blank line, up to the end. Held back until the end shows whether it is one.
        if record.len() == 1 && names.len() > 1 && (after_blank || !footer.is_empty()) {
            footer.push(BadRow {
                at,
                key: key(),
                reason: format!(
                    "has 1 field where the header has {}: a delimiter or quote inside a value \
                     is probably not quoted",
                    names.len()
                ),
            });
            continue;
        }
        // Not the end after all: those lines were rows, and unreadable ones.
        for bad in footer.drain(..) {
            if sink(Item::Bad(bad)).is_break() {
                return Ok(skipped);
            }
        }
        if record.len() != names.len() {
            let bad = BadRow {
                at,
                key: key(),
                reason: format!(
                    "has {} fields where the header has {}: a delimiter or quote inside a value is \
                     probably not quoted",
                    record.len(),
                    names.len()
                ),
            };
            if sink(Item::Bad(bad)).is_break() {
                return Ok(skipped);
            }
            continue;
        }
        // Only a record that ended lines after it began can hold a value over several
        // lines: the reader's line count says so without looking at the bytes (the
        // end position is one line short in CRLF files, like the start positions).
        let spans_lines = line.is_some_and(|first| end >= first + 2);
        if let Some(reason) = spans_lines
            .then(|| swallowed_rows(&record, delimiter, names.len(), at))
            .flatten()
        {
            if sink(Item::Bad(BadRow {
                at,
                key: key(),
                reason,
            }))
            .is_break()
            {
                return Ok(skipped);
            }
            continue;
        }
        let mut values = recycle(std::mem::take(&mut spare));
        let mut bad = None;
        // One check of the whole record is much cheaper than one per value. A value of a
        // valid record is valid if it starts and ends on character boundaries (two bad
        // halves of a character could sit in adjacent fields); a record that fails is
        // checked value by value (the bad byte may be in a column not used).
        let whole = std::str::from_utf8(record.as_slice()).ok();
        for (&i, name) in index.iter().zip(columns) {
            let value = match whole.zip(record.range(i)).and_then(|(w, r)| w.get(r)) {
                Some(v) => Ok(v),
                None => std::str::from_utf8(record.get(i).unwrap_or_default()),
            };
            match value {
                Ok(v) => values.push((!super::blank(v)).then_some(v)),
                Err(_) => {
                    bad = Some(format!("column `{name}` is {ENCODING_HINT}"));
                    break;
                }
            }
        }
        let flow = match bad {
            Some(reason) => sink(Item::Bad(BadRow {
                at,
                key: key(),
                reason,
            })),
            // The values are slices of the whole record's text when it is valid.
            None => sink(Item::Record(Record {
                at,
                values: &values,
                text: whole,
            })),
        };
        spare = recycle(values);
        if flow.is_break() {
            return Ok(skipped);
        }
    }
    Ok(skipped)
}

/// The line `record` starts on. The reader notes a record's position before it skips the
/// blank lines in front of it (`noted`), so the start is counted back from the line after
/// the record (`end`): one line for its end, one per line break inside its values.
fn first_line_of(record: &csv::ByteRecord, noted: u64, end: u64) -> u64 {
    // Almost every record: one line, nothing skipped before it. No need to look at bytes.
    if end <= noted + 1 {
        return noted;
    }
    let breaks = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
    noted.max(end.saturating_sub(breaks + 1))
}

/// What the CSV reader has taken from its input: how many bytes, whether it met the end,
/// and the last byte, to tell a last line without a line break.
#[derive(Default)]
struct Tail {
    bytes: u64,
    ended: bool,
    last: u8,
}

impl Tail {
    /// Whether a record that ends at byte `at` is the input's last line, unterminated.
    fn unterminated_at(&self, at: u64) -> bool {
        self.ended && at == self.bytes && self.last != b'\n'
    }
}

/// The CSV reader's input, noting its [`Tail`] (read through `csv::Reader::get_ref`).
struct Watched<R> {
    inner: R,
    tail: Tail,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match buf[..n].last() {
            None if !buf.is_empty() => self.tail.ended = true,
            None => {}
            Some(&b) => {
                self.tail.last = b;
                self.tail.bytes += n as u64;
            }
        }
        Ok(n)
    }
}

/// Why `record` is taken for rows swallowed by a stray quote, if it is: one of its quoted
/// values spans lines, and a later line of it has as many delimiters as a whole row
/// (`"Rueckruf ab 14 Uhr` opened in a note and closed six lines later turns those lines
/// into one value). Such a record is unreadable: its lines could be any contacts.
fn swallowed_rows(
    record: &csv::ByteRecord,
    delimiter: u8,
    columns: usize,
    at: RowRef,
) -> Option<String> {
    if columns < 2 || !record.as_slice().contains(&b'\n') {
        return None;
    }
    // Every line of a value but its first (the rest of the line the value starts on,
    // which may hold delimiters of an opening quote's own row).
    let looks_like_a_row = record.iter().any(|value| {
        value
            .split(|&b| b == b'\n')
            .skip(1)
            .any(|l| l.iter().filter(|&&b| b == delimiter).count() + 1 >= columns)
    });
    if !looks_like_a_row {
        return None;
    }
    let first = at.line.unwrap_or(at.row);
    let last = first + record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
    Some(format!(
        "a quoted value runs from line {first} to line {last} and holds lines that look like \
         whole rows: probably a stray quote (\") at the start of a value on line {first}; \
         lines {first}-{last} were not read"
    ))
}

/// The delimiter of a header line: whichever of `;` `,` tab `|` occurs most often outside
/// quotes (`,` when none does, i.e. a single-column file).
pub(crate) fn detect_delimiter(line: &[u8]) -> u8 {
    const CANDIDATES: [u8; 4] = [b';', b',', b'\t', b'|'];
    let mut counts = [0usize; 4];
    let mut quoted = false;
    for &b in line {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted {
            if let Some(i) = CANDIDATES.iter().position(|&c| c == b) {
                counts[i] += 1;
            }
        }
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, usize::MAX - i))
        .unwrap();
    if *n == 0 {
        b','
    } else {
        CANDIDATES[best]
    }
}

#[cfg(test)]
mod tests;
