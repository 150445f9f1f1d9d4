//! Positive evidence of absence. A contact is locked or deleted only when its UserData
//! is gone from the export *as text*, not merely from the rows the reader made of it: a
//! stray quote in a note field can turn the rows after it into one long value, and those
//! rows' keys would look absent though the CRM still has them.
//!
//! So before any removal, the raw export is read once more, line by line, and every
//! whole value on every physical line is cleaned like a key ([`clean_key`]) and looked up
//! among the keys to be removed. CSV lines are split at the delimiter, ignoring quotes
//! (the quoting is what is in doubt), and each piece stripped of quotes; JSON lines give
//! their string values and bare tokens (a key may be a number). A substring is no
//! evidence: `501` inside a phone number does not save contact `501`, only a value that
//! is `501` as a whole does. A key found this way withholds its removal, and the report
//! names the line. The guards keep removals few, so this pass is rare; its set holds the
//! removals' key hashes (8 bytes each), and a value whose hash is among them is kept with
//! its line and compared in full.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek};

use crate::config::{SourceConfig, SourceKind};
use crate::engine::pipeline::PlanError;
use crate::engine::plan::{KeyInExport, Plan};
use crate::engine::report::LIST_LIMIT;
use crate::key::{clean_key, key_hash, Key};
use crate::source::{self, SourceError};

/// Withholds each removal of `plan` whose UserData stands as a whole value anywhere in
/// the export (`file`, read again from its start), and records where.
pub(crate) fn require(
    cfg: &SourceConfig,
    mut file: std::fs::File,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    if plan.removals.is_empty() {
        return Ok(());
    }
    file.rewind().map_err(|source| SourceError::Read {
        path: cfg.path.clone(),
        source,
    })?;
    let mut wanted = HashSet::with_capacity(plan.removals.len());
    for r in plan.removals.iter() {
        wanted.insert(key_hash(&r?.key));
    }
    let found = find_keys(cfg, file, &wanted)?;
    if found.is_empty() {
        return Ok(());
    }
    let mut listed: Vec<KeyInExport> = Vec::new();
    let mut withheld = 0;
    plan.retain_removals(|r| match found.get(r.key.as_str()) {
        Some(&line) => {
            withheld += 1;
            listed.push(KeyInExport {
                user_data: r.key.clone(),
                line,
            });
            false
        }
        None => true,
    })?;
    plan.withheld_removals += withheld;
    listed.sort_by_key(|k| k.line);
    listed.truncate(LIST_LIMIT);
    plan.doubts.keys_in_export = listed;
    Ok(())
}

/// The values that stand as a whole value on some line of the export and whose
/// [`key_hash`] is among `wanted`, with the first such line (1-based).
pub(crate) fn find_keys(
    cfg: &SourceConfig,
    input: impl Read,
    wanted: &HashSet<u64>,
) -> Result<HashMap<String, u64>, SourceError> {
    let read_err = |source| SourceError::Read {
        path: cfg.path.clone(),
        source,
    };
    let mut input = BufReader::with_capacity(64 * 1024, source::decoded(cfg, input));
    let mut found = HashMap::new();
    let mut buf = Vec::new();
    let mut delimiter = cfg.delimiter;
    let mut line_no = 0u64;
    let check = |value: &str, line_no: u64, found: &mut HashMap<String, u64>| {
        if let Key::Usable(k) = clean_key(value) {
            if wanted.contains(&key_hash(&k)) && !found.contains_key(k.as_ref()) {
                found.insert(k.into_owned(), line_no);
            }
        }
    };
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf).map_err(read_err)? == 0 {
            break;
        }
        line_no += 1;
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        match cfg.kind {
            SourceKind::Csv => {
                let d = *delimiter.get_or_insert_with(|| source::detect_delimiter(line.as_bytes()));
                for piece in line.split(d as char) {
                    check(unquote(piece), line_no, &mut found);
                }
            }
            SourceKind::Json => json_values(line, &mut |v| check(v, line_no, &mut found)),
            // A query's rows have no text to misread: no file is read again.
            SourceKind::Sql => {}
        }
    }
    Ok(found)
}

/// A CSV piece without its surrounding quotes and white space.
fn unquote(piece: &str) -> &str {
    piece.trim().trim_matches('"').trim()
}

/// Calls `f` with each string value (unescaped) and each bare token (numbers, words) of
/// one line of JSON text. Broken JSON still gives what it can.
fn json_values(line: &str, f: &mut dyn FnMut(&str)) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(bytes.len());
                let literal = &line[start..end];
                match serde_json::from_str::<String>(literal) {
                    Ok(s) => f(&s),
                    // Unterminated or a bad escape: the raw text between the quotes.
                    Err(_) => f(literal.trim_matches('"')),
                }
                i = end;
            }
            b if is_token_byte(b) => {
                let start = i;
                while i < bytes.len() && is_token_byte(bytes[i]) {
                    i += 1;
                }
                f(&line[start..i]);
            }
            _ => i += 1,
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: SourceKind) -> SourceConfig {
        SourceConfig::for_tests(kind, "export")
    }

    fn found(kind: SourceKind, text: &str, keys: &[&str]) -> Vec<(String, u64)> {
        let wanted: HashSet<u64> = keys.iter().map(|k| key_hash(k)).collect();
        let mut v: Vec<_> = find_keys(&cfg(kind), text.as_bytes(), &wanted)
            .unwrap()
            .into_iter()
            .collect();
        v.sort();
        v
    }

    #[test]
    fn csv_keys_count_as_whole_values_only() {
        let text = "Nr;Name;Phone;Note\n\
                    1;A;0171 5012345;\"Rueckruf ab 14 Uhr\n\
                    \"K6\";B;0171 1234567;x\n\
                    7; K7 ;0171;\"\"\"K8\"\"\"\n";
        assert_eq!(
            found(
                SourceKind::Csv,
                text,
                &["501", "K6", "K7", "K8", "K9", "Uhr"]
            ),
            vec![
                ("K6".to_string(), 3),
                ("K7".to_string(), 4),
                ("K8".to_string(), 4)
            ]
        );
        // A BOM before the key (two exports pasted together) is no disguise.
        assert_eq!(
            found(SourceKind::Csv, "Nr,Name\n\u{feff}K1,A\n", &["K1"]),
            vec![("K1".to_string(), 2)]
        );
    }

    #[test]
    fn json_keys_are_string_values_or_bare_tokens() {
        let text = "[{\"id\": \"K\\u0031\", \"phone\": \"+49 501 123\"},\n {\"id\": 501, \"note\": \"x\"}]\n";
        assert_eq!(
            found(SourceKind::Json, text, &["K1", "501", "x", "49"]),
            vec![
                ("501".to_string(), 2),
                ("K1".to_string(), 1),
                ("x".to_string(), 2)
            ]
        );
    }
}

/// The promise behind this module, as a property: whatever a broken export looks like,
/// no contact whose key still stands in it is removed.
#[cfg(test)]
mod property {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use proptest::prelude::*;

    use crate::config::{Config, JobConfig};
    use crate::engine::mapping::Mapper;
    use crate::engine::pipeline;
    use crate::engine::plan::{Plan, Planner, Policy, RemovalKind};
    use crate::engine::progress::RunHandle;
    use crate::source;
    use crate::state::hashing::HashKey;
    use crate::state::{Entry, LastOp};

    fn job(export: &Path, on_missing: &str) -> JobConfig {
        let text = format!(
            "[dialler]\nbase_url = \"http://127.0.0.1:1/rest/v1.0\"\nclient_id = 7\ntoken = \"t\"\n\
             [[job]]\nname = \"j\"\ncampaign_id = 1\ndefault_country = \"DE\"\non_missing = \"{on_missing}\"\n\
             [job.source]\ntype = \"csv\"\npath = \"{}\"\ndelimiter = \";\"\n\
             [job.fields]\nUserData = \"Nr\"\nName = \"Name\"\nPhoneNumber1 = \"Tel\"\nComment = \"Note\"\n",
            export.display()
        );
        Config::from_str(&text, Path::new("t.toml"))
            .unwrap()
            .jobs
            .remove(0)
    }

    /// Reads and plans `job`'s export against `state` as a run does, evidence included.
    fn plan(job: &JobConfig, state: &BTreeMap<String, Entry>) -> Plan {
        let mapper = Mapper::new(job, Arc::new(HashKey::for_tests()));
        let policy = Policy {
            on_missing: job.on_missing,
        };
        let file = source::open(&job.source).unwrap();
        let again = file.try_clone().unwrap();
        let mut plan = pipeline::read_and_plan(
            &job.source,
            file,
            &crate::source::Pages::default(),
            &job.columns(),
            &mapper,
            Planner::new(state, policy),
            &RunHandle::new(),
        )
        .unwrap();
        super::require(&job.source, again, &mut plan).unwrap();
        // The withheld removals are gone from the counts too.
        plan.check_counts();
        plan
    }

    /// The state after `job`'s export was imported whole.
    fn imported(job: &JobConfig) -> BTreeMap<String, Entry> {
        let mut state = BTreeMap::new();
        for (i, c) in plan(job, &state).imports.to_vec().into_iter().enumerate() {
            let entry = Entry {
                id: i as i64 + 1,
                fields: c.hashes,
                triggers: c.triggers,
                locked: false,
                last_op: LastOp::Imported,
                last_run: 0,
                row: c.row,
                phones: c.phones,
                keyed: true,
            };
            state.insert(c.key, entry);
        }
        state
    }

    /// A key that stands in another row's note withholds its delete; the others are
    /// deleted, and the plan's counts (which the guards see) are those of what is left.
    #[test]
    fn a_withheld_delete_leaves_the_counts_of_what_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let job = job(&path, "delete");
        let row = |k: &str, note: &str| format!("{k};Name;0171 1234567;{note}");
        let all = [
            row("K1", "x"),
            row("K2", "x"),
            row("K3", "x"),
            row("K4", "x"),
        ];
        std::fs::write(&path, format!("Nr;Name;Tel;Note\n{}\n", all.join("\n"))).unwrap();
        let state = imported(&job);
        // K2 to K4 leave as rows; K2 still stands as a whole value in K1's note.
        std::fs::write(&path, format!("Nr;Name;Tel;Note\n{}\n", row("K1", "K2"))).unwrap();
        let p = plan(&job, &state);
        let mut deleted: Vec<String> = p.removals.to_vec().into_iter().map(|r| r.key).collect();
        deleted.sort();
        assert_eq!(deleted, ["K3", "K4"]);
        assert_eq!(
            (p.removals(RemovalKind::Delete), p.withheld_removals),
            (2, 1)
        );
        assert_eq!(p.doubts.keys_in_export[0].user_data, "K2");
    }

    /// A way real exports break.
    #[derive(Debug, Clone)]
    enum Corruption {
        /// A quote opened at the start of line `line`'s note.
        StrayQuote { line: usize },
        /// Line `line`'s key emptied.
        EmptyKey { line: usize },
        /// Line `line` gone (its record really left).
        Drop { line: usize },
        /// A byte order mark before line `line`'s key.
        Bom { line: usize },
        /// A NUL after line `line`'s key.
        Nul { line: usize },
    }

    fn corruption() -> impl Strategy<Value = Corruption> {
        (0usize..5, 0usize..64).prop_map(|(kind, line)| match kind {
            0 => Corruption::StrayQuote { line },
            1 => Corruption::EmptyKey { line },
            2 => Corruption::Drop { line },
            3 => Corruption::Bom { line },
            _ => Corruption::Nul { line },
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn no_contact_whose_key_stands_in_a_corrupted_export_is_removed(
            n in 3usize..40,
            corruptions in prop::collection::vec(corruption(), 1..5),
            delete in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("export.csv");
            // Keys of one width, so that no key stands inside another.
            let mut lines: Vec<String> = (0..n)
                .map(|i| format!("K{i:03};Name {i};0171 {:07};note {i}", 1_000_000 + i))
                .collect();
            let job = job(&path, if delete { "delete" } else { "lock" });
            std::fs::write(&path, format!("Nr;Name;Tel;Note\n{}\n", lines.join("\n"))).unwrap();
            let state = imported(&job);
            prop_assert_eq!(state.len(), n);

            for c in &corruptions {
                if lines.is_empty() {
                    break;
                }
                let len = lines.len();
                let at = |line: usize| line % len;
                match *c {
                    Corruption::StrayQuote { line } => {
                        let l = &mut lines[at(line)];
                        let i = l.rfind(';').unwrap();
                        l.insert(i + 1, '"');
                    }
                    Corruption::EmptyKey { line } => {
                        let l = &mut lines[at(line)];
                        let i = l.find(';').unwrap();
                        l.replace_range(..i, "");
                    }
                    Corruption::Drop { line } => {
                        lines.remove(at(line));
                    }
                    Corruption::Bom { line } => lines[at(line)].insert(0, '\u{feff}'),
                    Corruption::Nul { line } => {
                        let l = &mut lines[at(line)];
                        let i = l.find(';').unwrap();
                        l.insert(i, '\0');
                    }
                }
            }
            let text = format!("Nr;Name;Tel;Note\n{}\n", lines.join("\n"));
            std::fs::write(&path, &text).unwrap();
            let p = plan(&job, &state);
            for r in p.removals.to_vec() {
                prop_assert!(
                    !text.contains(&r.key),
                    "{} removed though it stands in the export:\n{}", r.key, text
                );
            }
        }
    }
}
