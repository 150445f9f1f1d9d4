//! Exports as CRMs and spreadsheets really write them (`tests/fixtures/`): blank lines,
//! rows of empty fields, row numbers an operator finds in an editor.

use crate::common::{count, Env, TOKEN};

/// Writes a config for `fixture` (copied to the env as the export) with `job` as the
/// rest of the `[[job]]` table.
fn with_fixture(env: &Env, fixture: &str, file: &str, job: &str) {
    let bytes = std::fs::read(format!(
        "{}/tests/fixtures/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    std::fs::write(env.path(file), bytes).unwrap();
    let config = format!(
        "[dialler]\nbase_url = \"http://{}/rest/v1.0\"\nclient_id = 7\ntoken = \"{TOKEN}\"\n\n\
         [state]\npath = \"state\"\n\n[[job]]\nname = \"leads\"\ncampaign_id = 538\n{job}",
        env.addr
    );
    std::fs::write(env.path("dialsync.toml"), config).unwrap();
}

const EXCEL_JOB: &str = r#"default_country = "DE"

[job.source]
type = "csv"
path = "export.csv"
encoding = "windows-1252"

[job.fields]
UserData = "Kundennummer"
Name = "Nachname"
FirstName = "Vorname"
PhoneNumber1 = "Telefon"
City = "Ort"
"#;

/// A German Excel export (Windows-1252, `;`, CRLF) with a blank line in the middle and
/// the empty rows Excel leaves at the end: those are skipped as blank, not invalid; the
/// one bad row is reported on its line; and a record that leaves the export is locked
/// (nothing is withheld for the blank rows).
#[test]
fn a_german_excel_export_with_blank_and_empty_rows() {
    let env = Env::new();
    with_fixture(&env, "excel-de.csv", "export.csv", EXCEL_JOB);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "one invalid row: {report}");
    assert_eq!(count(&report, "imported"), 4, "{report}");
    assert_eq!(count(&report, "invalid"), 1, "{report}");
    assert_eq!(count(&report, "blank"), 4, "{report}");
    assert_eq!(count(&report, "rows"), 9, "{report}");
    let problem = &report["problems"][0];
    assert_eq!(problem["key"], "K-2004", "{report}");
    assert_eq!(problem["at"]["row"], 6, "the line in the file: {report}");

    // K-2002 leaves the CRM (line 3 of the export goes).
    let text = std::fs::read(env.path("export.csv")).unwrap();
    let kept: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"K-2002;"))
        .collect();
    std::fs::write(env.path("export.csv"), kept.join(&b'\n')).unwrap();
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(count(&report, "locked"), 1, "{report}");
    assert_eq!(count(&report, "withheld_removals"), 0, "{report}");
    assert!(env.contact("K-2002").locked);
    // The bad row moved up a line with the file.
    assert_eq!(report["problems"][0]["at"]["row"], 5, "{report}");
}
