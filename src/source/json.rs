//! JSON exports: one array of objects, or newline-delimited objects (NDJSON).
//!
//! The array is streamed element by element through a serde visitor, so a large export is
//! never held in memory. A syntax error ends the read (the file is most likely truncated);
//! an element that is not an object, or an NDJSON line that does not parse, is a bad row.

use std::fmt;
use std::io::{BufRead, Read};
use std::path::Path;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{BadRow, Export, Flow, Item, Reading, Record, RowRef, Sink, Skipped, SourceError};

pub(super) fn read(export: Export<'_>, mut input: impl BufRead, sink: Sink<'_>) -> Reading {
    let Export { path, cfg, columns } = export;
    let mut seen = vec![false; columns.len()];
    let read_err = SourceError::reading(path);
    let mut keys = Keys::default();
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
        .and_then(|v| to_values(at, v, columns, &mut seen, &mut keys))
    {
        Ok(owned) => {
            let values: Vec<Option<&str>> = owned.iter().map(|v| v.as_deref()).collect();
            sink(Item::Record(Record {
                at,
                values: &values,
                text: None,
            }))
        }
        Err(bad) => sink(Item::Bad(bad)),
    };
    let mut row = 0u64;
    let mut element = |v: Value| {
        row += 1;
        emit(RowRef::at(row), Ok(v))
    };
    // The records are an array: the file itself, or inside a wrapper object at
    // `record_path` (HubSpot's `results`).
    if first == b'[' || !cfg.record_path.is_empty() {
        let record_path = cfg.record_path.join(".");
        if first != b'{' && !cfg.record_path.is_empty() {
            return Err(SourceError::NoRecordPath {
                path: path.to_path_buf(),
                record_path,
                keys: Vec::new(),
            });
        }
        let mut de = serde_json::Deserializer::from_reader(input);
        let found = Descend {
            path: &cfg.record_path,
            f: &mut element,
        }
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found));
        match found {
            // Asked to stop: the rest is not read, and not judged.
            Err(e) if e.to_string().starts_with(STOPPED) => return Ok(Skipped::default()),
            Err(e) => {
                return Err(json_error(
                    path,
                    &e,
                    format!("line {} column {}", e.line(), e.column()),
                ))
            }
            Ok(Found::Missing(keys)) => {
                return Err(SourceError::NoRecordPath {
                    path: path.to_path_buf(),
                    record_path,
                    keys,
                })
            }
            Ok(Found::Records) => {}
        }
    } else {
        match first {
            b'{' => {
                let mut line = Vec::new();
                input.read_until(b'\n', &mut line).map_err(read_err)?;
                match serde_json::from_slice::<Value>(&line) {
                    // One object over several lines: a wrapper, not newline-delimited records.
                    Err(_) => {
                        let whole = std::io::Cursor::new(line).chain(input);
                        let mut de = serde_json::Deserializer::from_reader(whole);
                        if let Ok(ArrayKeys(arrays)) = serde::Deserialize::deserialize(&mut de) {
                            return Err(SourceError::NotRecords {
                                path: path.to_path_buf(),
                                arrays,
                            });
                        }
                        return Err(SourceError::NotJson {
                            path: path.to_path_buf(),
                            found: '{',
                        });
                    }
                    // A minified wrapper (`{"results":[...]}` on one line) holds arrays or
                    // objects, and none of the mapped columns.
                    Ok(Value::Object(map))
                        if columns.iter().all(|c| lookup(&map, c).is_none())
                            && map.values().any(|v| v.is_array() || v.is_object()) =>
                    {
                        return Err(SourceError::NotRecords {
                            path: path.to_path_buf(),
                            arrays: array_paths(&map),
                        });
                    }
                    Ok(_) => {}
                }
                let mut n = 0u64;
                let mut pending = Some(line);
                loop {
                    let line = match pending.take() {
                        Some(l) => l,
                        None => {
                            let mut l = Vec::new();
                            if input.read_until(b'\n', &mut l).map_err(read_err)? == 0 {
                                break;
                            }
                            l
                        }
                    };
                    n += 1;
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    let at = RowRef::at(n);
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
            available: keys.0.into_iter().collect(),
        });
    }
    Ok(Skipped::default())
}

/// The keys the first records hold (and one level into nested objects, dotted), to name
/// them when a mapped column is in none of them.
#[derive(Default)]
struct Keys(std::collections::BTreeSet<String>, u32);

impl Keys {
    const RECORDS: u32 = 100;
    const MAX: usize = 200;

    fn note(&mut self, map: &serde_json::Map<String, Value>) {
        if self.1 >= Self::RECORDS || self.0.len() >= Self::MAX {
            return;
        }
        self.1 += 1;
        for (k, v) in map {
            match v {
                Value::Object(inner) => {
                    for sub in inner.keys() {
                        self.0.insert(format!("{k}.{sub}"));
                    }
                }
                _ => {
                    self.0.insert(k.clone());
                }
            }
        }
    }
}

/// The keys of `map` that hold arrays, and one level down (dotted): where records may be.
fn array_paths(map: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            Value::Array(_) => out.push(k.clone()),
            Value::Object(inner) => out.extend(
                inner
                    .iter()
                    .filter(|(_, v)| v.is_array())
                    .map(|(sub, _)| format!("{k}.{sub}")),
            ),
            _ => {}
        }
    }
    out
}

/// The value of `column` in `map`: the key itself, or a dotted path into nested objects
/// (`properties.lastname`).
fn lookup<'v>(map: &'v serde_json::Map<String, Value>, column: &str) -> Option<&'v Value> {
    if let Some(v) = map.get(column) {
        return Some(v);
    }
    let mut parts = column.split('.');
    let mut cur = map.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// What a descent along `record_path` found.
enum Found {
    /// The records, all handed to `f` (a stop ends the read as an error).
    Records,
    /// The key was not there: the keys that were.
    Missing(Vec<String>),
}

/// Walks `path` into nested objects and streams the array at its end to `f`, element by
/// element as it is parsed, until `f` says stop (an empty path: the array is right here).
struct Descend<'a, 'p> {
    path: &'p [String],
    f: &'a mut dyn FnMut(Value) -> Flow,
}

impl<'de> DeserializeSeed<'de> for Descend<'_, '_> {
    type Value = Found;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        if self.path.is_empty() {
            d.deserialize_seq(self)
        } else {
            d.deserialize_map(self)
        }
    }
}

impl<'de> Visitor<'de> for Descend<'_, '_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.path.first() {
            None => f.write_str("an array of objects"),
            Some(key) => write!(f, "an object with the key `{key}`"),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            if (self.f)(v).is_break() {
                // serde_json checks that a sequence was read to its end: the stop is
                // carried out as an error that `read` recognises.
                return Err(serde::de::Error::custom(STOPPED));
            }
        }
        Ok(Found::Records)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut keys = Vec::new();
        let mut found = None;
        while let Some(k) = map.next_key::<String>()? {
            if found.is_none() && Some(&k) == self.path.first() {
                found = Some(map.next_value_seed(Descend {
                    path: &self.path[1..],
                    f: &mut *self.f,
                })?);
            } else {
                keys.push(k);
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found.unwrap_or(Found::Missing(keys)))
    }
}

/// The keys of a JSON object whose values are arrays.
struct ArrayKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for ArrayKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ArrayKeys, D::Error> {
        d.deserialize_map(ArrayKeysVisitor)
    }
}

struct ArrayKeysVisitor;

impl<'de> Visitor<'de> for ArrayKeysVisitor {
    type Value = ArrayKeys;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArrayKeys, A::Error> {
        // Only on the way to an error: a wrapper is an API page, small enough to parse.
        let mut arrays = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            if map.next_value::<Value>()?.is_array() {
                arrays.push(k);
            }
        }
        Ok(ArrayKeys(arrays))
    }
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
    keys: &mut Keys,
) -> Result<Vec<Option<String>>, BadRow> {
    let Value::Object(map) = value else {
        return Err(BadRow {
            at,
            key: None,
            reason: format!("is a JSON {}, not an object", kind(&value)),
        });
    };
    keys.note(&map);
    let mut values = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let v = match lookup(&map, c) {
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
        values.push(v.filter(|s| !super::blank(s)));
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

/// The message of the error that ends an array read on request.
const STOPPED: &str = "dialsync: stopped on request";

#[cfg(test)]
mod tests {
    use super::super::{read_all, OwnedItem as Item, SourceError};
    use crate::config::{SourceConfig, SourceKind};

    fn cfg() -> SourceConfig {
        SourceConfig::for_tests(SourceKind::Json, "export.json")
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

    /// Records inside wrapper objects: found along a dotted `record_path` (the other keys
    /// skipped unread), or an error that names what is there.
    #[test]
    fn record_path_finds_the_records_or_names_the_keys() {
        let at = |path: &str| SourceConfig {
            record_path: path.split('.').map(str::to_string).collect(),
            ..cfg()
        };
        let page = br#"{"total": 2, "data": {"meta": [1], "items": [{"id": 1}, {"id": 2}]}}"#;
        let items = read_all(&at("data.items"), page, &["id"]).unwrap();
        assert_eq!(items.len(), 2, "{items:?}");
        let err = read_all(&at("data.rows"), page, &["id"]).unwrap_err();
        assert!(
            matches!(&err, SourceError::NoRecordPath { keys, .. } if keys == &["meta", "items"]),
            "{err}"
        );
        let err = read_all(&at("results"), br#"[{"id": 1}]"#, &["id"]).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        // Without record_path, a wrapper (one line or several) says where the arrays are.
        for wrapper in [&page[..], b"{\n  \"results\": [\n    {\"id\": 1}\n  ]\n}\n"] {
            let err = read_all(&cfg(), wrapper, &["id"]).unwrap_err();
            assert!(matches!(err, SourceError::NotRecords { .. }), "{err}");
        }
    }

    #[test]
    fn dotted_columns_reach_into_nested_objects() {
        let text = br#"[{"id": 7, "properties": {"lastname": "Weiss"}, "a.b": "flat"}]"#;
        let items = read_all(&cfg(), text, &["id", "properties.lastname", "a.b"]).unwrap();
        match &items[0] {
            Item::Record(_, v) => assert_eq!(
                v,
                &[
                    Some("7".to_string()),
                    Some("Weiss".to_string()),
                    Some("flat".to_string())
                ]
            ),
            other => panic!("{other:?}"),
        }
    }
}
