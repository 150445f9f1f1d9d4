//! JSON exports: one array of objects, or newline-delimited objects (NDJSON).
//!
//! The array is streamed element by element through a serde visitor, so a large export is
//! never held in memory. A syntax error ends the read (the file is most likely truncated);
//! an element that is not an object, or an NDJSON line that does not parse, is a bad row.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

use super::{BadRow, Flow, Item, Record, RowRef, Skipped, SourceError};

pub(super) fn read(
    path: &Path,
    mut input: impl BufRead,
    columns: &[String],
    sink: &mut dyn FnMut(Item<'_>) -> Flow,
) -> Result<Skipped, SourceError> {
    let read_err = SourceError::reading(path);
    let mut seen = vec![false; columns.len()];
    let first = loop {
        let buf = input.fill_buf().map_err(read_err)?;
        if buf.is_empty() {
            return Err(SourceError::Empty {
                path: path.to_path_buf(),
            });
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                input.consume(i);
                break b;
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    };
    let mut emit = |at: RowRef, value: Result<Value, BadRow>| match value
        .and_then(|v| to_values(at, v, columns, &mut seen))
    {
        Ok(owned) => {
            let values: Vec<Option<&str>> = owned.iter().map(|v| v.as_deref()).collect();
            sink(Item::Record(Record {
                at,
                values: &values,
            }))
        }
        Err(bad) => sink(Item::Bad(bad)),
    };
    match first {
        b'[' => {
            let mut de = serde_json::Deserializer::from_reader(input);
            let mut row = 0u64;
            let result = Elements {
                f: &mut |v| {
                    row += 1;
                    emit(RowRef { row, line: None }, Ok(v))
                },
            }
            .deserialize(&mut de)
            .and_then(|flow| match flow {
                Flow::Continue(()) => de.end(),
                Flow::Break(()) => Ok(()),
            });
            match result {
                // Asked to stop: the rest is not read, and not judged.
                Err(e) if e.to_string().starts_with(STOPPED) => return Ok(Skipped::default()),
                _ => {}
            }
            if let Err(e) = result {
                return Err(json_error(
                    path,
                    &e,
                    format!("line {} column {}", e.line(), e.column()),
                ));
            }
        }
        b'{' => {
            let mut line = Vec::new();
            let mut n = 0u64;
            loop {
                line.clear();
                if input.read_until(b'\n', &mut line).map_err(read_err)? == 0 {
                    break;
                }
                n += 1;
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                let at = RowRef { row: n, line: None };
                let flow = match serde_json::from_slice::<Value>(&line) {
                    Ok(v) => emit(at, Ok(v)),
                    Err(e) => emit(
                        at,
                        Err(BadRow {
                            at,
                            key: None,
                            reason: format!("not a JSON object ({e})"),
                        }),
                    ),
                };
                if flow.is_break() {
                    return Ok(Skipped::default());
                }
            }
        }
        other => {
            return Err(SourceError::NotJson {
                path: path.to_path_buf(),
                found: other as char,
            })
        }
    }
    let missing: Vec<String> = columns
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(c, _)| c.clone())
        .collect();
    if !missing.is_empty() && seen.iter().any(|s| *s) {
        // No record had these keys at all: almost certainly a mapping typo.
        return Err(SourceError::MissingColumns {
            path: path.to_path_buf(),
            missing,
            available: Vec::new(),
        });
    }
    Ok(Skipped::default())
}

fn json_error(path: &Path, e: &serde_json::Error, at: String) -> SourceError {
    SourceError::Json {
        path: path.to_path_buf(),
        at,
        message: e.to_string(),
    }
}

/// The values of the requested columns of one element (`None`: absent, null or blank).
fn to_values(
    at: RowRef,
    value: Value,
    columns: &[String],
    seen: &mut [bool],
) -> Result<Vec<Option<String>>, BadRow> {
    let Value::Object(map) = value else {
        return Err(BadRow {
            at,
            key: None,
            reason: format!("is a JSON {}, not an object", kind(&value)),
        });
    };
    let mut values = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let v = match map.get(c) {
            None => None,
            Some(v) => {
                seen[i] = true;
                match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    other => {
                        return Err(BadRow {
                            at,
                            key: values.first().cloned().flatten(),
                            reason: format!(
                                "`{c}` holds a JSON {}, not a single value",
                                kind(other)
                            ),
                        })
                    }
                }
            }
        };
        values.push(v.filter(|s| !s.trim().is_empty()));
    }
    Ok(values)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Calls `f` with each element of a JSON array as it is parsed, until it says stop.
struct Elements<'a> {
    f: &'a mut dyn FnMut(Value) -> Flow,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = Flow;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Flow, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = Flow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Flow, A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            if (self.f)(v).is_break() {
                // serde_json checks that a sequence was read to its end: the stop is
                // carried out as an error that `read` recognises.
                return Err(serde::de::Error::custom(STOPPED));
            }
        }
        Ok(Flow::Continue(()))
    }
}

/// The message of the error that ends an array read on request.
const STOPPED: &str = "dialsync: stopped on request";

#[cfg(test)]
mod tests {
    use super::super::{read_all, OwnedItem as Item, SourceError};
    use crate::config::{SourceConfig, SourceKind};

    fn cfg() -> SourceConfig {
        SourceConfig {
            kind: SourceKind::Json,
            path: "export.json".into(),
            delimiter: None,
            encoding: None,
            skip_header_lines: 0,
            skip_footer_lines: 0,
            comment: None,
        }
    }

    #[test]
    fn array_and_ndjson_read_alike() {
        let array =
            br#" [ {"id": 1, "name": "M\u00fcller", "x": [1]}, 5, {"id": "2", "name": null} ] "#;
        let nd = b"{\"id\": 1, \"name\": \"M\xc3\xbcller\"}\nnot json\n\n{\"id\": \"2\"}\n";
        for (bytes, bad_row) in [(&array[..], 2), (&nd[..], 2)] {
            let items = read_all(&cfg(), bytes, &["id", "name"]).unwrap();
            assert_eq!(items.len(), 3, "{items:?}");
            match &items[0] {
                Item::Record(_, values) => {
                    assert_eq!(values, &vec![Some("1".into()), Some("Müller".into())])
                }
                other => panic!("{other:?}"),
            }
            match &items[1] {
                Item::Bad(b) => assert_eq!(b.at.row, bad_row),
                other => panic!("{other:?}"),
            }
            match &items[2] {
                Item::Record(_, values) => assert_eq!(values, &vec![Some("2".into()), None]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn truncated_array_is_an_error() {
        let err = read_all(&cfg(), br#"[{"id": 1}, {"id": "#, &["id"]).unwrap_err();
        assert!(matches!(err, SourceError::Json { .. }), "{err:?}");
        assert!(err.to_string().contains("truncated"));
        assert!(matches!(
            read_all(&cfg(), b"  \n", &["id"]),
            Err(SourceError::Empty { .. })
        ));
        assert!(matches!(
            read_all(&cfg(), b"id,name", &["id"]),
            Err(SourceError::NotJson { .. })
        ));
    }

    #[test]
    fn a_key_no_record_has_is_a_mapping_error() {
        let err = read_all(&cfg(), br#"[{"id": 1, "name": "a"}]"#, &["id", "Name"]).unwrap_err();
        assert!(err.to_string().contains("`Name`"), "{err}");
    }
}
