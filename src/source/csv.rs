//! CSV exports: header row, quoted fields (with embedded delimiters and newlines), CRLF,
//! delimiter `,` `;` tab or `|` given or detected from the header line.

use std::io::{BufRead, Cursor, Read};
use std::path::Path;

use crate::config::SourceConfig;

use super::{
    recycle, BadRow, Flow, Footer, Item, Record, RowRef, Skipped, SourceError, ENCODING_HINT,
};

pub(super) fn read(
    path: &Path,
    mut input: impl BufRead,
    cfg: &SourceConfig,
    columns: &[String],
    sink: &mut dyn FnMut(Item<'_>) -> Flow,
) -> Result<Skipped, SourceError> {
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
        .from_reader(Cursor::new(first_line).chain(input));

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
        let end = reader.position().line() + line_offset;
        match read {
            Ok(true) => {}
            Ok(false) => {
                // At the end the whole input is consumed: the position is exact, CRLF or not.
                skipped.blank += (end - crlf).saturating_sub(next_line);
                if let (Some(first), Some(last)) = (footer.first(), footer.last()) {
                    skipped.footer = Some(Footer {
                        first: first.at.row,
                        last: last.at.row,
                        lines: footer.len() as u64,
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
                    };
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
                Ok(v) => values.push(Some(v).filter(|v| !v.trim_start().is_empty())),
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
            None => sink(Item::Record(Record {
                at,
                values: &values,
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
/// the record (`end`): one line for its end, one per line break inside its values. The
/// last record of a file without a final line break ends on `end` itself: the larger of
/// the two is right, except for such a record right after blank lines (one line early).
fn first_line_of(record: &csv::ByteRecord, noted: u64, end: u64) -> u64 {
    let breaks = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
    noted.max(end.saturating_sub(breaks + 1))
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
mod tests {
    use super::super::{read_all, OwnedItem as Item, SourceError};
    use super::*;
    use crate::config::{SourceConfig, SourceKind};

    fn cfg(
        delimiter: Option<u8>,
        encoding: Option<&'static encoding_rs::Encoding>,
    ) -> SourceConfig {
        SourceConfig {
            kind: SourceKind::Csv,
            path: "export.csv".into(),
            delimiter,
            encoding,
            skip_header_lines: 0,
            skip_footer_lines: 0,
            comment: None,
        }
    }

    fn records(items: &[Item]) -> Vec<(u64, Vec<Option<&str>>)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Record(at, values) => {
                    Some((at.row, values.iter().map(|v| v.as_deref()).collect()))
                }
                Item::Bad(_) => None,
            })
            .collect()
    }

    #[test]
    fn line_numbers_with_crlf_and_lf() {
        for text in ["id\r\n1\r\n\"2\r\nb\"\r\n3\r\n", "id\n1\n\"2\nb\"\n3\n"] {
            let items = read_all(&cfg(None, None), text.as_bytes(), &["id"]).unwrap();
            let at: Vec<_> = items
                .iter()
                .map(|i| match i {
                    Item::Record(at, _) => (at.row, at.line),
                    Item::Bad(b) => panic!("{b:?}"),
                })
                .collect();
            assert_eq!(
                at,
                vec![(2, Some(2)), (3, Some(3)), (5, Some(5))],
                "{text:?}"
            );
        }
    }

    /// The rows read from `text` (columns Nr and Name) as (row, "record" or "bad"), and
    /// the read's summary.
    fn rows_and_summary(text: &str) -> (Vec<(u64, &'static str)>, super::super::Summary) {
        let columns = vec!["Nr".to_string(), "Name".to_string()];
        let mut seen = Vec::new();
        let summary = super::super::read_from(
            &cfg(None, None),
            Path::new("export"),
            text.as_bytes(),
            &columns,
            &mut |i| {
                seen.push(match i {
                    super::super::Item::Record(r) => (r.at.row, "record"),
                    super::super::Item::Bad(b) => (b.at.row, "bad"),
                });
                Flow::Continue(())
            },
        )
        .unwrap();
        (seen, summary)
    }

    /// A report's title lines (`skip_header_lines`), its footer of known length
    /// (`skip_footer_lines`, trailing blank lines aside) and comment lines are skipped;
    /// row numbers stay the file's lines.
    #[test]
    fn title_footer_and_comment_lines_are_skipped() {
        let text = "Lead report\r\nas of 23.11.2026\r\nNr;Name\r\n1;Anna\r\n# a note\r\n\
                    2;Bert\r\nTotal: 2\r\nConfidential\r\n\r\n";
        let report = SourceConfig {
            skip_header_lines: 2,
            skip_footer_lines: 2,
            comment: Some(b'#'),
            ..cfg(None, None)
        };
        let items = read_all(&report, text.as_bytes(), &["Nr", "Name"]).unwrap();
        assert_eq!(
            records(&items),
            vec![
                (4, vec![Some("1"), Some("Anna")]),
                (6, vec![Some("2"), Some("Bert")])
            ]
        );
        assert_eq!(items.len(), 2, "{items:?}");
        // Without them, the title is taken for the header.
        let plain = read_all(&cfg(None, None), text.as_bytes(), &["Nr", "Name"]);
        assert!(
            matches!(plain, Err(SourceError::MissingColumns { .. })),
            "{plain:?}"
        );
    }

    /// Lines of one field after a blank line are a footer only at the end; followed by
    /// a row, they are rows, and unreadable ones (they could hold any contact).
    #[test]
    fn a_footer_is_only_a_footer_at_the_end() {
        let read = |text: &str| {
            let (rows, summary) = rows_and_summary(text);
            let bad: Vec<u64> = rows
                .into_iter()
                .filter(|(_, what)| *what == "bad")
                .map(|(row, _)| row)
                .collect();
            (bad, summary.footer.map(|f| (f.first, f.last)))
        };
        let footer = "Nr,Name\n1,Anna\n\n\"Confidential\"\n\"Generated By: X\"\n";
        assert_eq!(read(footer), (vec![], Some((4, 5))));
        let not_at_the_end = "Nr,Name\n1,Anna\n\n\"Confidential\"\n2,Bert\n";
        assert_eq!(read(not_at_the_end), (vec![4], None));
        // Without a blank line before it, a one-field line is a broken row.
        let no_blank = "Nr,Name\n1,Anna\n\"Confidential\"\n";
        assert_eq!(read(no_blank), (vec![3], None));
    }

    /// Blank lines anywhere and rows of empty fields (`;;;;`, as Excel leaves rows it
    /// once touched) are skipped and counted; row numbers stay the file's line numbers.
    #[test]
    fn blank_lines_and_empty_rows_are_skipped_and_counted_and_rows_are_lines() {
        for eol in ["\n", "\r\n"] {
            let lines = [
                "Nr;Name;Tel",
                "1;Anna;0171",
                "",
                "2;Bert",
                "3;Carl;0172",
                ";;",
                "   ",
                "4;\"Dora",
                "Dorothea\";0173",
                ";;;;;",
                "",
            ];
            let (seen, summary) = rows_and_summary(&lines.join(eol));
            // Line 4 has a missing field: reported on its line, not as "row 3".
            assert_eq!(
                seen,
                vec![(2, "record"), (4, "bad"), (5, "record"), (8, "record")],
                "{eol:?}"
            );
            // Lines 3, 6, 7 (white space only) and 10; the last line end is no row.
            assert_eq!(summary.blank, 4, "{eol:?}");
            assert_eq!((summary.records, summary.bad), (3, 1), "{eol:?}");
        }
    }

    #[test]
    fn windows_1252_semicolons_crlf() {
        let text = "Nr;Name;Telefon\r\n1;M\u{fc}ller;089 1234567\r\n2;\"Stra\u{df}e; Ecke\";\r\n";
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        let items = read_all(
            &cfg(None, Some(encoding_rs::WINDOWS_1252)),
            &bytes,
            &["Nr", "Name", "Telefon"],
        )
        .unwrap();
        assert_eq!(
            records(&items),
            vec![
                (2, vec![Some("1"), Some("Müller"), Some("089 1234567")]),
                (3, vec![Some("2"), Some("Straße; Ecke"), None]),
            ]
        );
    }

    #[test]
    fn utf8_bom_tabs_and_embedded_newlines() {
        let text = "\u{feff}id\tname\tnote\n1\t\"two\nlines\"\tx\n2\tb\ty\n";
        let items = read_all(&cfg(None, None), text.as_bytes(), &["id", "note", "name"]).unwrap();
        assert_eq!(
            records(&items)[0],
            (2, vec![Some("1"), Some("x"), Some("two\nlines")])
        );
        match &items[1] {
            // Its row number is its line (the record before it spans two).
            Item::Record(at, _) => assert_eq!((at.row, at.line), (4, Some(4))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_rows_are_reported_and_skipped() {
        let mut bytes = b"id,name\n1,a\n2,b,extra\n3,\xfcber\n4,d\n".to_vec();
        bytes.extend_from_slice(b"");
        let items = read_all(&cfg(None, None), &bytes, &["id", "name"]).unwrap();
        let bad: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Bad(b) => Some((b.at.row, b.key.clone(), b.reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].0, bad[0].1.as_deref()), (3, Some("2")));
        assert!(bad[0].2.contains("3 fields"));
        assert_eq!(bad[1].0, 4);
        assert!(bad[1].2.contains("windows-1252"));
        assert_eq!(records(&items).len(), 2);
    }

    #[test]
    fn halves_of_a_character_in_adjacent_fields_are_caught() {
        // Together the two fields' bytes are valid UTF-8 ("ä"); each alone is not.
        let items = read_all(
            &cfg(None, None),
            b"id,a,b\n1,x\xC3,\xA4y\n2,\xC3\xA4,z\n",
            &["id", "a"],
        )
        .unwrap();
        match &items[0] {
            Item::Bad(b) => assert!(b.reason.contains("column `a`"), "{}", b.reason),
            other => panic!("{other:?}"),
        }
        assert_eq!(records(&items), vec![(3, vec![Some("2"), Some("ä")])]);
    }

    #[test]
    fn missing_column_names_what_is_there() {
        let err = read_all(&cfg(None, None), b"id;Name\n1;a\n", &["id", "Phone"]).unwrap_err();
        match &err {
            SourceError::MissingColumns {
                missing, available, ..
            } => {
                assert_eq!(missing, &["Phone"]);
                assert_eq!(available, &["id", "Name"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("`Phone`"));
        assert!(matches!(
            read_all(&cfg(None, None), b"", &["id"]),
            Err(SourceError::Empty { .. })
        ));
    }

    /// Promise 6: a stray quote that swallows the rows after it makes one unreadable
    /// record (so removals are withheld), reported with its line range; a note that
    /// really spans lines is a value like any other. LF and CRLF alike.
    #[test]
    fn a_stray_quote_swallowing_rows_is_unreadable_with_its_line_range() {
        let lf = "id;name;note\n\
                    1;A;\"Rueckruf ab 14 Uhr\n\
                    2;B;x\n\
                    3;C;y\n\
                    4;D;\"z\n\
                    5;E;ok\n\
                    6;F;\"two\nlines\"\n";
        for text in [lf.to_string(), lf.replace('\n', "\r\n")] {
            stray_quote_case(&text);
        }
        // A stray quote that swallows one whole row in the last column.
        let items = read_all(
            &cfg(None, None),
            b"id;name;note\n1;A;\"x\n2;B;y\"\n3;C;z\n",
            &["id"],
        )
        .unwrap();
        assert!(
            matches!(&items[0], Item::Bad(b) if b.reason.contains("stray quote")),
            "{items:?}"
        );
    }

    fn stray_quote_case(text: &str) {
        let items = read_all(&cfg(None, None), text.as_bytes(), &["id", "note"]).unwrap();
        match &items[0] {
            Item::Bad(b) => {
                assert_eq!(b.at.row, 2);
                assert!(
                    b.reason.contains("from line 2 to line 5") && b.reason.contains("stray quote"),
                    "{}",
                    b.reason
                );
            }
            other => panic!("{other:?}"),
        }
        let crlf = text.contains('\r');
        assert_eq!(
            records(&items),
            vec![
                (6, vec![Some("5"), Some("ok")]),
                (
                    7,
                    vec![
                        Some("6"),
                        Some(if crlf { "two\r\nlines" } else { "two\nlines" })
                    ]
                )
            ]
        );
    }

    #[test]
    fn a_mapped_column_that_appears_twice_is_an_error() {
        let err = read_all(
            &cfg(None, None),
            b"id;Name;Tel;Name\n1;a;b;c\n",
            &["id", "Name"],
        )
        .unwrap_err();
        assert!(
            matches!(&err, SourceError::AmbiguousColumn { positions, .. } if positions == &[2, 4]),
            "{err:?}"
        );
        assert!(err.to_string().contains("`Name` twice"), "{err}");
        // A repeated column the job does not use is no problem.
        assert!(read_all(&cfg(None, None), b"id;x;x\n1;a;b\n", &["id"]).is_ok());
    }

    #[test]
    fn delimiter_detection() {
        assert_eq!(detect_delimiter(b"a;b;c\r\n"), b';');
        assert_eq!(detect_delimiter(b"a,b,\"c;d\"\n"), b',');
        assert_eq!(detect_delimiter(b"a\tb\n"), b'\t');
        assert_eq!(detect_delimiter(b"single\n"), b',');
    }
}
