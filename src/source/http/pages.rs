//! One downloaded page: its records copied into the export (one JSON object a line) and,
//! for `next_url` and `cursor` pagination, the value that leads to the next page, both
//! found in one streaming pass over the page, however large it is.

use std::fmt;
use std::io::{BufRead, Write};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What one page held.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Page {
    pub records: u64,
    /// The next page's link or cursor (`None`: absent, null or empty: the last page).
    pub next: Option<String>,
}

/// Why a page could not be used.
#[derive(Debug)]
pub(super) enum PageError {
    /// Writing the export failed (a full disk).
    Write(std::io::Error),
    /// The page is not what the config says it is.
    Content(String),
}

/// Copies the records of a JSON page (the array at `records`, or the page itself when
/// `records` is empty) to `out`, a line each, and finds the text at `next` (if given).
/// A key with dots in it (`@odata.nextLink`) matches the dotted path's parts as a whole.
pub(super) fn json_page(
    input: impl std::io::Read,
    records: &[String],
    next: Option<&[String]>,
    out: &mut dyn Write,
) -> Result<Page, PageError> {
    let mut state = State {
        out,
        page: Page::default(),
        found_records: false,
        write_error: None,
    };
    let mut de = serde_json::Deserializer::from_reader(input);
    let walked = Walk {
        records: Some(records),
        next,
        state: &mut state,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = state.write_error {
        return Err(PageError::Write(e));
    }
    if let Err(e) = walked {
        return Err(PageError::Content(format!(
            "not the JSON expected at line {} column {}: {e}",
            e.line(),
            e.column()
        )));
    }
    if !state.found_records {
        return Err(PageError::Content(format!(
            "no array of records at record_path `{}`",
            records.join(".")
        )));
    }
    Ok(state.page)
}

/// Copies the non-blank lines of an NDJSON page to `out`.
pub(super) fn ndjson_page(mut input: impl BufRead, out: &mut dyn Write) -> Result<Page, PageError> {
    let mut page = Page::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| PageError::Content(format!("cannot be read back: {e}")))?;
        if n == 0 {
            return Ok(page);
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        out.write_all(text)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(PageError::Write)?;
        page.records += 1;
    }
}

/// The `rel="next"` target of RFC 8288 `Link` header values.
pub(super) fn link_next<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    for value in values {
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let close = after.find('>')?;
            let target = &after[..close];
            let params = &after[close + 1..];
            // The parameters run to the next link (a comma outside quotes).
            let mut quoted = false;
            let end = params
                .char_indices()
                .find(|&(_, c)| {
                    if c == '"' {
                        quoted = !quoted;
                    }
                    c == ',' && !quoted
                })
                .map_or(params.len(), |(i, _)| i);
            let is_next = params[..end].split(';').any(|p| {
                let Some((name, v)) = p.split_once('=') else {
                    return false;
                };
                name.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.trim().to_string());
            }
            rest = &params[end..];
        }
    }
    None
}

struct State<'o> {
    out: &'o mut dyn Write,
    page: Page,
    found_records: bool,
    write_error: Option<std::io::Error>,
}

/// Where a part of the page leads: the rest of the path to the records and to the next
/// page's value (`None`: not below here).
struct Walk<'p, 's, 'o> {
    records: Option<&'p [String]>,
    next: Option<&'p [String]>,
    state: &'s mut State<'o>,
}

/// The rest of `path` after `key`, if `key` is its first part or several parts joined by
/// dots.
fn below<'p>(path: Option<&'p [String]>, key: &str) -> Option<&'p [String]> {
    let path = path.filter(|p| !p.is_empty())?;
    (1..=path.len())
        .find(|&j| {
            let joined = path[..j].join(".");
            joined == key
        })
        .map(|j| &path[j..])
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match (self.records, self.next) {
            (Some([]), _) => d.deserialize_seq(self),
            (_, Some([])) => {
                self.state.page.next = d.deserialize_any(Scalar)?;
                Ok(())
            }
            _ => d.deserialize_map(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.records {
            Some([]) => f.write_str("an array of records"),
            Some(path) => write!(f, "an object with the key `{}`", path[0]),
            None => f.write_str("an object"),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.state.found_records = true;
        let mut line = Vec::with_capacity(1024);
        while let Some(v) = seq.next_element::<Value>()? {
            line.clear();
            serde_json::to_writer(&mut line, &v).expect("a JSON value serializes");
            line.push(b'\n');
            if let Err(e) = self.state.out.write_all(&line) {
                self.state.write_error = Some(e);
                return Err(serde::de::Error::custom("the export could not be written"));
            }
            self.state.page.records += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<String>()? {
            let records = below(self.records, &k);
            let next = below(self.next, &k);
            if records.is_none() && next.is_none() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            map.next_value_seed(Walk {
                records,
                next,
                state: &mut *self.state,
            })?;
        }
        Ok(())
    }
}

/// A link or cursor: text, or a number as written; null or empty is none.
struct Scalar;

impl<'de> Visitor<'de> for Scalar {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a link or cursor (text or a number)")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<String>, E> {
        Ok((!v.trim().is_empty()).then(|| v.to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<String>, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<String>, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn walk(body: &str, records: &str, next: Option<&str>) -> (Result<Page, String>, String) {
        let mut out = Vec::new();
        let next = next.map(path);
        let got =
            json_page(body.as_bytes(), &path(records), next.as_deref(), &mut out).map_err(|e| {
                match e {
                    PageError::Content(m) => m,
                    PageError::Write(e) => e.to_string(),
                }
            });
        (got, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_hubspot_page_gives_its_records_and_the_next_link() {
        let body = r#"{"results": [ {"id": "1", "properties": {"phone": "089 1"}},
            {"id": "2"} ], "paging": {"next": {"after": "2", "link": "https://crm/x?after=2"}}}"#;
        let (got, out) = walk(body, "results", Some("paging.next.link"));
        assert_eq!(
            got.unwrap(),
            Page {
                records: 2,
                next: Some("https://crm/x?after=2".into())
            }
        );
        assert_eq!(
            out,
            "{\"id\":\"1\",\"properties\":{\"phone\":\"089 1\"}}\n{\"id\":\"2\"}\n"
        );
        // The last page has no paging at all.
        let (got, _) = walk(r#"{"results": []}"#, "results", Some("paging.next.link"));
        assert_eq!(got.unwrap(), Page::default());
    }

    #[test]
    fn an_odata_next_link_is_one_key_with_a_dot() {
        let body = r#"{"@odata.context": "x", "value": [{"a": 1}], "@odata.nextLink": "p2"}"#;
        let (got, _) = walk(body, "value", Some("@odata.nextLink"));
        assert_eq!(got.unwrap().next.as_deref(), Some("p2"));
    }

    #[test]
    fn cursors_are_text_or_numbers_and_null_ends() {
        for (cursor, want) in [
            ("\"abc\"", Some("abc")),
            ("17", Some("17")),
            ("null", None),
            ("\"\"", None),
        ] {
            let body = format!(r#"{{"meta": {{"cursor": {cursor}}}, "data": [{{"a": 1}}]}}"#);
            let (got, _) = walk(&body, "data", Some("meta.cursor"));
            assert_eq!(got.unwrap().next.as_deref(), want, "{cursor}");
        }
    }

    #[test]
    fn a_bare_array_page_and_its_mistakes() {
        let (got, out) = walk(r#"[{"a":1},{"a":2},3]"#, "", None);
        assert_eq!(got.unwrap().records, 3);
        assert_eq!(out.lines().count(), 3);
        let (got, _) = walk(r#"{"data": []}"#, "results", None);
        assert!(got
            .unwrap_err()
            .contains("no array of records at record_path `results`"),);
        let (got, _) = walk(r#"{"results": [{"a":1}"#, "results", None);
        assert!(got.unwrap_err().contains("line 1"));
        let (got, _) = walk(
            r#"{"results": [], "next": {"x": 1}}"#,
            "results",
            Some("next"),
        );
        assert!(got.unwrap_err().contains("a link or cursor"));
    }

    #[test]
    fn ndjson_pages_are_copied_line_by_line() {
        let mut out = Vec::new();
        let page = ndjson_page("{\"a\":1}\n\n  {\"a\":2}  \r\n".as_bytes(), &mut out).unwrap();
        assert_eq!(page.records, 2);
        assert_eq!(out, b"{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn link_headers_give_the_next_target() {
        assert_eq!(
            link_next([
                r#"<https://crm/p?page=1>; rel="first", <https://crm/p?page=3>; rel="next""#
            ]),
            Some("https://crm/p?page=3".into())
        );
        assert_eq!(
            link_next(["<a>; rel=prev", "<b>; title=\"x, y\"; rel=\"last next\""]),
            Some("b".into())
        );
        assert_eq!(link_next([r#"<https://crm/p?page=1>; rel="prev""#]), None);
        assert_eq!(link_next(Vec::<&str>::new()), None);
    }
}
