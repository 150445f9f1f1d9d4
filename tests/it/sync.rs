//! End-to-end syncs with the `dialsync` binary against the emulator on a loopback port.

use crate::common;

use crate::common::{count, field, Env};
use serde_json::json;

const ROWS: [&str; 4] = [
    "K1;Müller;Jürgen;089 / 123 456-78;München;1",
    "K2;Weiß;Anna;0171 2345678;Köln;1",
    "K3;Schäfer;Tom;+49 (0)40 1234567;Hamburg;1",
    "K4;Öztürk;Aylin;0049 30 12345678;Berlin;1",
];

#[test]
fn initial_sync_imports_every_valid_row_once_with_umlauts_intact() {
    let env = Env::new();
    env.write_export(&ROWS);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "imported"), 4);
    assert_eq!(count(&report, "api_calls"), 4);

    let contacts = env.contacts();
    assert_eq!(contacts.len(), 4);
    let k1 = env.contact("K1");
    assert_eq!(field(&k1, "Name"), "Müller");
    assert_eq!(field(&k1, "FirstName"), "Jürgen");
    assert_eq!(field(&k1, "City"), "München");
    assert_eq!(field(&k1, "PhoneNumber1"), "+498912345678");
    assert_eq!(k1.campaign_id, 538);
    assert_eq!(field(&env.contact("K3"), "PhoneNumber1"), "+49401234567");
    assert_eq!(field(&env.contact("K4"), "PhoneNumber1"), "+493012345678");
    // Imports overwrite duplicates, so a re-import can never create a second contact.
    for r in env.requests() {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/rest/v1.0/7/dialler/contacts/import")
        );
        assert!(r.query.contains("overwriteDuplicates=true"), "{r:?}");
        assert!(
            !r.query.contains("resetContact"),
            "an unset flag is not sent: {r:?}"
        );
    }
}

#[test]
fn unchanged_export_makes_no_call_and_changed_field_one_update() {
    let env = Env::new();
    env.write_export(&ROWS);
    assert_eq!(env.sync(&[]).1, 0);
    let n = env.requests().len();

    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0);
    assert_eq!(
        (count(&report, "api_calls"), count(&report, "unchanged")),
        (1, 4)
    );
    // The one call reads the campaign: a manual sync checks the token even with nothing
    // to send.
    let sent = env.requests_since(n);
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].method == "GET" && sent[0].path.ends_with("/dialler/campaigns/538"),
        "{sent:?}"
    );
    let n = env.requests().len();

    let mut rows = ROWS;
    rows[1] = "K2;Weiß;Anna;0171 2345678;Düsseldorf;1";
    env.write_export(&rows);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (count(&report, "updated"), count(&report, "api_calls")),
        (1, 1)
    );
    let calls = env.requests_since(n);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/rest/v1.0/7/dialler/contacts/update");
    let k2 = env.contact("K2");
    assert_eq!(
        calls[0].body,
        Some(json!({"ID": k2.id, "City": "Düsseldorf"})),
        "only the changed field"
    );
    assert_eq!(field(&k2, "City"), "Düsseldorf");
}

/// A changed row's numbers, as they were, are not normalised again (the entry knows
/// what they came from); once the CRM changes a number, or writes it differently, the
/// next run sees it: the new number is sent, a number written otherwise is not.
#[test]
fn a_number_is_sent_when_it_changes_after_updates_that_kept_it() {
    let env = Env::new();
    env.write_export(&ROWS);
    assert_eq!(env.sync(&[]).1, 0);
    let mut rows = ROWS;
    for (n, city) in ["Düsseldorf", "Essen"].into_iter().enumerate() {
        rows[1] = format!("K2;Weiß;Anna;0171 2345678;{city};1").leak();
        env.write_export(&rows);
        let sent = env.requests().len();
        let (report, code) = env.sync(&[]);
        assert_eq!(
            (code, count(&report, "updated")),
            (0, 1),
            "run {n}: {report}"
        );
        let calls = env.requests_since(sent);
        let k2 = env.contact("K2");
        assert_eq!(calls[0].body, Some(json!({"ID": k2.id, "City": city})));
    }
    // The same number written another way: no call.
    rows[1] = "K2;Weiß;Anna;+49 171 2345678;Essen;1";
    env.write_export(&rows);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (count(&report, "updated"), count(&report, "api_calls")),
        (0, 1),
        "{report}"
    );
    // Another number, with the City: both sent.
    rows[1] = "K2;Weiß;Anna;0171 7654321;Bonn;1";
    env.write_export(&rows);
    let sent = env.requests().len();
    let (report, _) = env.sync(&[]);
    assert_eq!(count(&report, "updated"), 1, "{report}");
    let k2 = env.contact("K2");
    assert_eq!(
        env.requests_since(sent)[0].body,
        Some(json!({"ID": k2.id, "PhoneNumber1": "+491717654321", "City": "Bonn"}))
    );
    assert_eq!(field(&k2, "PhoneNumber1"), "+491717654321");
}

#[test]
fn removed_row_is_locked_once_and_unlocked_when_back() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.sync(&[]);
    env.write_export(&ROWS[..3]);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0);
    assert_eq!(
        (count(&report, "locked"), count(&report, "api_calls")),
        (1, 1)
    );
    let k4 = env.contact("K4");
    assert!(k4.locked);
    let last = env.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path),
        (
            "PATCH",
            format!("/rest/v1.0/7/dialler/contacts/contact/{}/lock", k4.id)
        )
    );

    // Still missing: nothing more to do.
    assert_eq!(
        count(&env.sync(&[]).0, "api_calls"),
        1,
        "the token check only"
    );

    env.write_export(&ROWS);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (count(&report, "unlocked"), count(&report, "api_calls")),
        (1, 1)
    );
    assert!(!env.contact("K4").locked);
    assert_eq!(env.contacts().len(), 4, "no duplicate on return");

    // A locked contact that returns with changed data: update first, unlock last, so
    // the dialler never dials it with the old data.
    env.write_export(&ROWS[1..]);
    env.sync(&[]);
    assert!(env.contact("K1").locked);
    let mut rows = ROWS;
    rows[0] = "K1;Müller;Jürgen;089 / 123 456-78;Augsburg;1";
    env.write_export(&rows);
    let n = env.requests().len();
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (
            count(&report, "updated"),
            count(&report, "unlocked"),
            count(&report, "api_calls")
        ),
        (1, 1, 2)
    );
    let k1 = env.contact("K1");
    let calls: Vec<String> = env.requests_since(n).into_iter().map(|r| r.path).collect();
    assert_eq!(
        calls,
        vec![
            "/rest/v1.0/7/dialler/contacts/update".to_string(),
            format!("/rest/v1.0/7/dialler/contacts/contact/{}/unlock", k1.id),
        ]
    );
    assert!(!k1.locked && field(&k1, "City") == "Augsburg");
    // Both steps were recorded: nothing is left to do.
    assert_eq!(
        count(&env.sync(&[]).0, "api_calls"),
        1,
        "the token check only"
    );
}

#[test]
fn on_missing_delete_deletes_and_a_return_imports_again() {
    let env = Env::new();
    env.write_config(common::TOKEN, "on_missing = \"delete\"");
    env.write_export(&ROWS);
    env.sync(&[]);
    let k1 = env.contact("K1").id;
    env.write_export(&ROWS[1..]);
    let n = env.requests().len();
    let (report, _) = env.sync(&[]);
    // Deletes are irreversible: one read first confirms the ID still holds K1.
    assert_eq!(
        (count(&report, "deleted"), count(&report, "api_calls")),
        (1, 2)
    );
    let sent: Vec<(String, String)> = env
        .requests_since(n)
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        sent,
        [
            (
                "GET".to_string(),
                format!("/rest/v1.0/7/dialler/contacts/{k1}")
            ),
            (
                "DELETE".to_string(),
                format!("/rest/v1.0/7/dialler/contacts/contact/{k1}")
            )
        ]
    );
    assert_eq!(env.contacts().len(), 3);
    assert!(env.contacts().iter().all(|c| c.fields["UserData"] != "K1"));
    env.write_export(&ROWS);
    let (report, _) = env.sync(&[]);
    assert_eq!(count(&report, "imported"), 1);
    env.contact("K1");
}

#[test]
fn reset_trigger_column_resets_the_contact() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.sync(&[]);
    let k3 = env.contact("K3");
    env.emu.add_tries(k3.id, 5);
    let mut rows = ROWS;
    rows[2] = "K3;Schäfer;Tom;+49 (0)40 1234567;Hamburg;2";
    env.write_export(&rows);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (
            count(&report, "reset"),
            count(&report, "updated"),
            count(&report, "api_calls")
        ),
        (1, 0, 1)
    );
    let k3 = env.contact("K3");
    assert_eq!((k3.reset_count, k3.tries), (1, 0));
    let last = env.requests().pop().unwrap();
    assert_eq!(
        last.path,
        format!("/rest/v1.0/7/dialler/contacts/contact/{}/reset", k3.id)
    );
}

#[test]
fn invalid_rows_are_reported_by_row_and_never_removed() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.sync(&[]);
    // K2's phone turns invalid, K3's name is missing, and a row has a stray delimiter.
    env.write_export(&[
        ROWS[0],
        "K2;Weiß;Anna;0123;Köln;1",
        "K3;;Tom;+49 (0)40 1234567;Hamburg;1",
        ROWS[3],
        "K5;Neu;Nina;0171 9999999;Bonn;1;extra",
    ]);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "invalid rows make a partial run: {report}");
    assert_eq!(count(&report, "invalid"), 3);
    let problems = report["problems"].as_array().unwrap();
    let rows: Vec<u64> = problems
        .iter()
        .map(|p| p["at"]["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![3, 4, 6]);
    assert_eq!(problems[0]["key"], "K2");
    assert!(problems[0]["reason"]
        .as_str()
        .unwrap()
        .contains("PhoneNumber1"));
    assert!(problems[1]["reason"].as_str().unwrap().contains("Name"));
    // The unreadable row (row 6) could be anyone: no lock or delete this run, and none of
    // K2 and K3 in any case.
    assert_eq!(
        (count(&report, "locked"), count(&report, "api_calls")),
        (0, 1),
        "no lock; the one call checks the token"
    );
    assert!(env.contacts().iter().all(|c| !c.locked));

    // With only the invalid-but-readable rows left, nothing is locked either.
    env.write_export(&[
        ROWS[0],
        "K2;Weiß;Anna;0123;Köln;1",
        "K3;;Tom;+49 (0)40 1234567;Hamburg;1",
    ]);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        count(&report, "locked"),
        1,
        "only K4, which left the export: {report}"
    );
    assert!(!env.contact("K2").locked && !env.contact("K3").locked && env.contact("K4").locked);

    // The human summary names the rows too.
    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("invalid row 3 (UserData K2)"), "{text}");
}

#[test]
fn dry_run_changes_nothing_in_emulator_or_state() {
    let env = Env::new();
    env.write_export(&ROWS);
    let (report, code) = env.sync(&["--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(
        (
            report["dry_run"].as_bool(),
            count(&report, "imported"),
            count(&report, "api_calls")
        ),
        (Some(true), 4, 1)
    );
    // One read-only call: the campaign, to check token, ClientsID and campaign.
    let sent: Vec<(String, String)> = env
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "GET", "{sent:?}");
    assert!(sent[0].1.ends_with("/dialler/campaigns/538"), "{sent:?}");
    // Offline: no call at all.
    let (report, code) = env.sync(&["--dry-run", "--offline"]);
    assert_eq!((code, count(&report, "api_calls")), (0, 0), "{report}");
    assert_eq!(env.requests().len(), 1);
    assert!(
        !env.path("state").exists(),
        "a dry run creates no state database"
    );

    env.sync(&[]);
    let n = env.requests().len();
    let contacts = serde_json::to_string(&env.contacts()).unwrap();
    let mut rows = ROWS;
    rows[0] = "K1;Müller;Jürgen;089 / 123 456-78;Augsburg;2";
    env.write_export(&rows[..3]);
    let (report, _) = env.sync(&["--dry-run"]);
    assert_eq!(
        (
            count(&report, "updated"),
            count(&report, "reset"),
            count(&report, "locked")
        ),
        (1, 1, 1)
    );
    let preview = report["preview"].as_array().unwrap();
    assert!(
        preview
            .iter()
            .any(|p| p["operation"] == "update" && p["fields"] == json!(["City"])),
        "{report}"
    );
    let sent: Vec<String> = env
        .requests_since(n)
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(sent, ["GET"], "only the check of the campaign");
    assert_eq!(serde_json::to_string(&env.contacts()).unwrap(), contacts);
    // The state did not move either: the real run still has all of it to do.
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (
            count(&report, "updated"),
            count(&report, "reset"),
            count(&report, "locked")
        ),
        (1, 1, 1)
    );
    // An update and a reset of one contact were both recorded: nothing is left to do.
    assert_eq!(
        count(&env.sync(&[]).0, "api_calls"),
        1,
        "the token check only"
    );
}

#[test]
fn wrong_token_stops_with_a_clear_error() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.write_config("wrong-token", "");
    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("401") && stdout.contains("token") && stdout.contains("client_id = 7"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("wrong-token")
            && !String::from_utf8_lossy(&out.stderr).contains("wrong-token")
    );
    // The first 401 stops the run: the other three imports are never sent.
    assert_eq!(env.requests().len(), 1, "{:?}", env.requests());
    assert!(env.contacts().is_empty());
}

#[test]
fn wrong_client_id_is_a_401_too() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.edit_config("client_id = 7", "client_id = 8");
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 4);
    assert!(
        report["aborted"]
            .as_str()
            .unwrap()
            .contains("client_id = 8"),
        "{report}"
    );
}

#[test]
fn unknown_campaign_stops_the_run() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.edit_config("campaign_id = 538", "campaign_id = 999");
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 3);
    assert!(
        report["aborted"].as_str().unwrap().contains("campaign 999"),
        "{report}"
    );
    assert!(env.contacts().is_empty());
}

#[test]
fn campaign_by_name_is_resolved_exactly() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.edit_config("campaign_id = 538", "campaign_name = \"Other\"");
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert!(env.contacts().iter().all(|c| c.campaign_id == 539));
    // One look-up, one import per contact.
    assert_eq!(count(&report, "api_calls"), 5);
}

#[test]
fn wrong_base_url_says_so() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.edit_config("/rest/v1.0", "/api/v1");
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 3);
    let why = report["aborted"].as_str().unwrap();
    assert!(
        why.contains("empty body") && why.contains("base_url"),
        "{why}"
    );
    assert_eq!(env.requests().len(), 1);
}

/// The library's entry point cannot be asked for a real run without a state database:
/// without one it is a dry run, whatever the options say (it used to panic).
#[test]
fn a_run_without_a_state_database_is_a_dry_run() {
    let env = Env::new();
    env.write_export(&ROWS);
    let config = dialsync::Config::load(&env.path("dialsync.toml")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reports = rt
        .block_on(dialsync::sync_with(
            &config,
            &dialsync::SyncOptions::default(),
            dialsync::Against::NothingDryRun,
        ))
        .unwrap();
    assert!(reports[0].dry_run);
    assert_eq!(reports[0].imported, 4, "what it would do");
    let sent: Vec<_> = env.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(sent, ["GET"], "only the dry run's check of the campaign");
    assert!(!env.path("state").exists(), "no state created");
}

/// A dry run checks the dialler with one read-only call: a wrong token fails it with the
/// 401 exit code and a message that names the token, as the real run would; an unknown
/// campaign fails it too; `--offline` plans without the call.
#[test]
fn a_dry_run_with_a_wrong_token_or_campaign_fails_like_a_real_run() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.edit_config("token = \"test-token\"", "token = \"revoked\"");
    let (dry, code) = env.sync(&["--dry-run"]);
    assert_eq!(code, 4, "{dry}");
    assert_eq!(dry["outcome"], "unauthorized", "{dry}");
    let why = dry["aborted"].as_str().unwrap();
    assert!(why.contains("check the token"), "{why}");
    assert!(
        !why.contains("revoked"),
        "the token itself is never shown: {why}"
    );
    let (real, code) = env.sync(&[]);
    assert_eq!((code, &real["outcome"]), (4, &dry["outcome"]), "{real}");
    let (offline, code) = env.sync(&["--dry-run", "--offline"]);
    assert_eq!(code, 0, "{offline}");
    assert_eq!(count(&offline, "imported"), 4, "{offline}");

    env.edit_config("token = \"revoked\"", "token = \"test-token\"");
    env.edit_config("campaign_id = 538", "campaign_id = 999");
    let (dry, code) = env.sync(&["--dry-run"]);
    assert_eq!(code, 3, "{dry}");
    let why = dry["aborted"].as_str().unwrap();
    assert!(why.contains("campaign 999 does not exist"), "{why}");
}

/// A token revoked in the jtel portal while the export stands still: the manual sync has
/// nothing to send, and still fails with the 401 exit code, naming the token, and sends
/// no write.
#[test]
fn a_revoked_token_is_noticed_with_nothing_to_send() {
    let env = Env::new();
    env.write_export(&ROWS);
    assert_eq!(env.sync(&[]).1, 0);
    env.write_config("revoked-token", "");
    let n = env.requests().len();
    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("401") && stdout.contains("token") && stdout.contains("0 changed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("revoked-token")
            && !String::from_utf8_lossy(&out.stderr).contains("revoked-token")
    );
    let sent = env.requests_since(n);
    assert!(
        sent.len() == 1 && sent[0].method == "GET" && sent[0].status == 401,
        "{sent:?}"
    );
}
