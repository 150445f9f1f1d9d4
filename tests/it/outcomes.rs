//! Dialling outcomes back to the CRM (`[job.outcomes]`): read with one streamed listing
//! and the campaign's result codes, only changes delivered, as a file written atomically
//! and as signed webhook batches, never lost.

use dialsync::Call;
use serde_json::Value;

use crate::common::{damage_database, rows, Env};

/// `[job.outcomes]` writing `outcomes.csv` beside the config, plus `extra` lines.
fn outcomes_config(env: &Env, extra: &str) {
    env.write_config(
        crate::common::TOKEN,
        &format!("[job.outcomes]\npath = \"outcomes.csv\"\n{extra}"),
    );
}

/// An agent's call on `user_data` with the result code `export_key`.
fn call(env: &Env, user_data: &str, export_key: &str) {
    env.emu
        .record_call(&Call {
            id: None,
            user_data: Some(user_data.into()),
            export_key: export_key.into(),
            users_id: Some(12),
            connected: Some(true),
        })
        .unwrap();
}

/// The outcome file: its rows as column -> value maps (it starts with a BOM, `;`-separated).
fn read_outcomes(env: &Env) -> Vec<std::collections::BTreeMap<String, String>> {
    let bytes = std::fs::read(env.path("outcomes.csv")).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let text = text.strip_prefix('\u{feff}').expect("a UTF-8 BOM first");
    let mut r = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    r.records()
        .map(|rec| {
            header
                .iter()
                .cloned()
                .zip(rec.unwrap().iter().map(str::to_string))
                .collect()
        })
        .collect()
}

fn api_paths(env: &Env, since: usize) -> Vec<String> {
    env.requests_since(since)
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[test]
fn two_calls_give_two_rows_and_a_quiet_run_writes_nothing() {
    let env = Env::new();
    outcomes_config(&env, "");
    env.write_rows(&rows(3, "Köln"));
    let (first, code) = env.sync(&[]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(
        first["outcomes"]["changed"], 0,
        "nothing dialled yet: {first}"
    );
    assert!(!env.path("outcomes.csv").exists(), "no outcome, no file");

    call(&env, "K1", "ABG");
    call(&env, "K2", "Aufleger");
    call(&env, "K2", "Aufleger");
    let (second, code) = env.sync(&[]);
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["outcomes"]["changed"], 2, "{second}");
    assert_eq!(
        second["api_calls"], 4,
        "the listing, the result codes and a history per changed contact: {second}"
    );
    let rows_written = read_outcomes(&env);
    assert_eq!(rows_written.len(), 2, "{rows_written:?}");
    let cells = |r: &std::collections::BTreeMap<String, String>| -> Vec<String> {
        ["UserData", "ResultCode", "Done", "Aborted", "Tries"]
            .iter()
            .map(|c| r[*c].clone())
            .collect()
    };
    assert_eq!(cells(&rows_written[0]), ["K1", "ABG", "1", "0", "1"]);
    assert_eq!(cells(&rows_written[1]), ["K2", "Aufleger", "0", "1", "2"]);
    let k1 = &rows_written[0];
    assert_eq!(k1["ContactID"], env.contact("K1").id.to_string());
    assert!(!k1["LastCallEnd"].is_empty(), "from the history: {k1:?}");
    let header: Vec<&String> = k1.keys().collect();
    assert_eq!(header.len(), 12, "the documented columns only: {header:?}");

    // No new call: nothing written, and the documented calls only (the listing and the
    // result codes; they prove the token too).
    std::fs::remove_file(env.path("outcomes.csv")).unwrap();
    let before = env.requests().len();
    let (quiet, code) = env.sync(&[]);
    assert_eq!(code, 0, "{quiet}");
    assert_eq!(quiet["outcomes"]["changed"], 0, "{quiet}");
    assert!(
        !env.path("outcomes.csv").exists(),
        "nothing changed, nothing written"
    );
    let calls = api_paths(&env, before);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(quiet["api_calls"], 2, "{quiet}");

    // A third call: one row.
    call(&env, "K3", "WV");
    let (third, _) = env.sync(&[]);
    assert_eq!(third["outcomes"]["changed"], 1, "{third}");
    let rows_written = read_outcomes(&env);
    assert_eq!(rows_written.len(), 1);
    assert_eq!(rows_written[0]["UserData"], "K3");
    assert_eq!(rows_written[0]["Delay"], "1");
    assert!(
        !rows_written[0]["NextTry"].is_empty(),
        "a call-back is due: {:?}",
        rows_written[0]
    );
}

/// kill -9 after the outcome file is in place but before the state records the outcomes
/// as delivered: the next run writes them again (twice, never lost), the one after that
/// nothing.
#[test]
fn a_crash_between_the_file_and_the_state_writes_the_outcomes_again() {
    let env = Env::new();
    outcomes_config(&env, "");
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    call(&env, "K2", "Termin");

    env.sync_killed_at("outcomes-file-written");
    let first: Vec<String> = read_outcomes(&env)
        .iter()
        .map(|r| r["UserData"].clone())
        .collect();
    assert_eq!(first, ["K1", "K2"]);

    std::fs::remove_file(env.path("outcomes.csv")).unwrap();
    let (again, code) = env.sync(&[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(
        again["outcomes"]["changed"], 2,
        "not delivered, so changed still: {again}"
    );
    let rows_again = read_outcomes(&env);
    let keys: Vec<&str> = rows_again.iter().map(|r| r["UserData"].as_str()).collect();
    assert_eq!(keys, ["K1", "K2"]);
    assert_eq!(rows_again[1]["Appointment"], "1");

    std::fs::remove_file(env.path("outcomes.csv")).unwrap();
    let (after, _) = env.sync(&[]);
    assert_eq!(after["outcomes"]["changed"], 0, "{after}");
    assert!(!env.path("outcomes.csv").exists());
}

/// What a webhook receiver got: headers and body of each request.
type Got = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>>;

/// A webhook receiver on a free port that answers 503 while `failing` is set, else 200.
fn webhook(
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (tokio::runtime::Runtime, String, Got) {
    use axum::http::{HeaderMap, StatusCode};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let got: Got = Default::default();
    let sink = got.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: bytes::Bytes| {
        let sink = sink.clone();
        let failing = failing.clone();
        async move {
            sink.lock().unwrap().push((headers, body));
            if failing.load(std::sync::atomic::Ordering::SeqCst) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rt, base, got)
}

const SECRET: &str = "0123456789abcdef-outcomes";

/// The signature header must be the HMAC-SHA256 of the body with the secret.
fn verify_signature(headers: &axum::http::HeaderMap, body: &[u8]) {
    let sig = headers
        .get("x-dialsync-signature")
        .expect("a signature header")
        .to_str()
        .unwrap();
    let hex = sig.strip_prefix("sha256=").expect("sha256=<hex>");
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, body, &tag).expect("the signature verifies");
    let forged = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret of 16+");
    assert!(ring::hmac::verify(&forged, body, &tag).is_err());
}

/// The webhook gets the changed outcomes in signed batches with an idempotency key each;
/// a receiver that fails keeps them in the outbox (the run says so, exit 1) and the next
/// run sends the very same batch (same key, same body) before anything new.
#[test]
fn the_webhook_receives_signed_batches_and_a_failed_batch_is_sent_by_the_next_run() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (_rt, base, got) = webhook(failing.clone());
    let env = Env::new();
    std::fs::write(env.path("outcome-secret"), format!("{SECRET}\n")).unwrap();
    outcomes_config(
        &env,
        &format!(
            "webhook_url = \"{base}/crm/outcomes\"\nwebhook_secret_file = \"outcome-secret\"\nbatch_size = 2\nretries = 0\nmap = {{ ABG = \"closed_won\", Aufleger = \"no_interest\" }}"
        ),
    );
    env.write_rows(&rows(4, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    assert!(got.lock().unwrap().is_empty(), "no outcome, no batch");
    for (k, code) in [("K1", "ABG"), ("K2", "Aufleger"), ("K3", "WV")] {
        call(&env, k, code);
    }
    let (run, code) = env.sync(&[]);
    assert_eq!(code, 0, "{run}");
    assert_eq!(
        run["outcomes"]["batches_sent"], 2,
        "3 outcomes in batches of 2: {run}"
    );
    let batches: Vec<(axum::http::HeaderMap, bytes::Bytes)> =
        got.lock().unwrap().drain(..).collect();
    assert_eq!(batches.len(), 2);
    let mut keys = Vec::new();
    let mut seen = Vec::new();
    for (headers, body) in &batches {
        verify_signature(headers, body);
        keys.push(headers["idempotency-key"].to_str().unwrap().to_string());
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["job"], "leads");
        for o in v["outcomes"].as_array().unwrap() {
            seen.push((
                o["UserData"].as_str().unwrap().to_string(),
                o["Status"].clone(),
            ));
        }
    }
    assert_ne!(keys[0], keys[1], "one key per batch");
    assert_eq!(
        seen,
        [
            ("K1".to_string(), Value::from("closed_won")),
            ("K2".to_string(), Value::from("no_interest")),
            ("K3".to_string(), Value::Null),
        ]
    );

    // The receiver fails: the batch is kept, the run says so.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    call(&env, "K4", "ABG");
    let (failed, code) = env.sync(&[]);
    assert_eq!(
        code, 1,
        "outcomes not delivered make the run partial: {failed}"
    );
    assert_eq!(failed["outcomes"]["batches_waiting"], 1, "{failed}");
    assert!(
        failed["outcomes"]["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{failed}"
    );
    let refused: Vec<(axum::http::HeaderMap, bytes::Bytes)> =
        got.lock().unwrap().drain(..).collect();
    assert_eq!(refused.len(), 1, "retries = 0: one attempt");

    // Back up: the next run, with no new call, sends that very batch.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let (retried, code) = env.sync(&[]);
    assert_eq!(code, 0, "{retried}");
    assert_eq!(retried["outcomes"]["changed"], 0, "{retried}");
    assert_eq!(retried["outcomes"]["batches_sent"], 1, "{retried}");
    assert_eq!(retried["outcomes"]["batches_waiting"], 0, "{retried}");
    let resent: Vec<(axum::http::HeaderMap, bytes::Bytes)> =
        got.lock().unwrap().drain(..).collect();
    assert_eq!(resent.len(), 1);
    assert_eq!(
        resent[0].0["idempotency-key"],
        refused[0].0["idempotency-key"]
    );
    assert_eq!(resent[0].1, refused[0].1, "the same body");
    verify_signature(&resent[0].0, &resent[0].1);
    let v: Value = serde_json::from_slice(&resent[0].1).unwrap();
    assert_eq!(v["outcomes"][0]["UserData"], "K4");
}

/// A dry run reads the outcomes (read-only calls) and shows what would be written,
/// writing nothing: no file, and the next real run still finds them changed.
#[test]
fn a_dry_run_shows_the_outcomes_and_writes_nothing() {
    let env = Env::new();
    outcomes_config(
        &env,
        "final_only = true\ncolumns = [\"UserData\", \"ResultCode\", \"Tries\"]",
    );
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    call(&env, "K2", "WV");
    let before = env.requests().len();
    let (dry, code) = env.sync(&["--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    let o = &dry["outcomes"];
    assert_eq!(o["changed"], 2, "{dry}");
    assert_eq!(
        o["delivered"], 1,
        "final_only: the call-back is not delivered: {dry}"
    );
    assert_eq!(
        o["preview"],
        serde_json::json!([{"UserData": "K1", "ResultCode": "ABG", "Tries": 1}])
    );
    assert!(
        !env.path("outcomes.csv").exists(),
        "a dry run writes nothing"
    );
    let reads = env.requests_since(before);
    for r in &reads {
        assert_eq!(r.method, "GET", "read-only: {} {}", r.method, r.path);
    }
    assert_eq!(
        reads.len(),
        2,
        "no history column, no history call: {reads:?}"
    );
    let human = env.dialsync(&["sync", "--config", "dialsync.toml", "--dry-run"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("would write 1 row to"), "{text}");
    assert!(
        text.contains("UserData=K1  ResultCode=ABG  Tries=1"),
        "{text}"
    );

    let (real, _) = env.sync(&[]);
    assert_eq!(real["outcomes"]["changed"], 2, "{real}");
    let written = read_outcomes(&env);
    assert_eq!(written.len(), 1);
    assert_eq!(
        written[0].keys().collect::<Vec<_>>(),
        ["ResultCode", "Tries", "UserData"]
    );
}

/// An export file unchanged since a run with nothing to do is not read again, but a
/// contact finished since then (`on_done = "lock"`) makes the run read it and lock the
/// contact: the shortcut never skips a lock the outcomes call for.
#[test]
fn a_contact_finished_under_an_unchanged_export_file_is_locked() {
    let env = Env::new();
    env.write_config(crate::common::TOKEN, "on_done = \"lock\"");
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    assert_eq!(env.sync(&[]).1, 0); // nothing to do: the file's bytes are kept
    let (skipped, _) = env.sync(&[]);
    assert_eq!(skipped["export_unchanged"], true, "{skipped}");

    call(&env, "K2", "ABG");
    let (run, code) = env.sync(&[]);
    assert_eq!(code, 0, "{run}");
    assert!(run.get("export_unchanged").is_none(), "{run}");
    assert_eq!(
        (run["locked"].as_u64(), run["done_locks"].as_u64()),
        (Some(1), Some(1)),
        "{run}"
    );
    assert!(env.contact("K2").locked);
}

/// `on_done = "lock"`: a contact whose result is done or aborted is locked although the
/// export still has it, stays locked, and a reset trigger in the CRM opens it again.
#[test]
fn on_done_lock_locks_finished_contacts_until_the_crm_resets_them() {
    let env = Env::new();
    env.write_config(crate::common::TOKEN, "on_done = \"lock\"");
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    call(&env, "K2", "WV");
    let (run, code) = env.sync(&[]);
    assert_eq!(code, 0, "{run}");
    assert_eq!(
        (run["locked"].as_u64(), run["done_locks"].as_u64()),
        (Some(1), Some(1)),
        "{run}"
    );
    assert!(env.contact("K1").locked);
    assert!(!env.contact("K2").locked, "a call-back is not final");

    // It stays locked, at no cost: the listing and the result codes only.
    let before = env.requests().len();
    let (quiet, code) = env.sync(&[]);
    assert_eq!(code, 0, "{quiet}");
    assert_eq!(
        (quiet["locked"].as_u64(), quiet["unlocked"].as_u64()),
        (Some(0), Some(0)),
        "{quiet}"
    );
    assert_eq!(
        (quiet["changed"].as_u64(), quiet["unchanged"].as_u64()),
        (Some(0), Some(3)),
        "the unlock not sent leaves its row unchanged: {quiet}"
    );
    assert_eq!(env.requests_since(before).len(), 2);
    assert!(env.contact("K1").locked);

    // A finished contact with an update to send: updated now, locked by the next run.
    call(&env, "K3", "Aufleger");
    let mut moved = rows(3, "Köln");
    moved[2] = moved[2].replace(";Köln;", ";Bonn;");
    env.write_rows(&moved);
    let (update, code) = env.sync(&[]);
    assert_eq!(code, 0, "{update}");
    assert_eq!(
        (update["updated"].as_u64(), update["locked"].as_u64()),
        (Some(1), Some(0)),
        "{update}"
    );
    assert!(!env.contact("K3").locked);
    let (next, _) = env.sync(&[]);
    assert_eq!(
        (next["locked"].as_u64(), next["done_locks"].as_u64()),
        (Some(1), Some(1)),
        "{next}"
    );
    assert!(env.contact("K3").locked);

    // The CRM re-opens it: a new round is a reset trigger.
    let mut again = moved.clone();
    again[0] = again[0].replace(";Köln;1", ";Köln;2");
    env.write_rows(&again);
    let (reset, code) = env.sync(&[]);
    assert_eq!(code, 0, "{reset}");
    assert_eq!(
        (reset["reset"].as_u64(), reset["unlocked"].as_u64()),
        (Some(1), Some(1)),
        "{reset}"
    );
    let k1 = env.contact("K1");
    assert!(!k1.locked);
    assert_eq!(k1.result_code, None, "the reset deleted its result");
    let (after, _) = env.sync(&[]);
    assert_eq!(
        (after["locked"].as_u64(), after["unlocked"].as_u64()),
        (Some(0), Some(0)),
        "{after}"
    );
}

/// `dialsync outcomes`: the stored outcomes (no call), `--since` a run, `--output json`,
/// and `--fetch` (read now, writing nothing).
#[test]
fn the_outcomes_command_prints_stored_and_fetched_outcomes() {
    let env = Env::new();
    outcomes_config(&env, "");
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    let (first, _) = env.sync(&[]);
    call(&env, "K2", "Aufleger");
    assert_eq!(env.sync(&[]).1, 0);

    let before = env.requests().len();
    let out = env.dialsync(&["outcomes", "--config", "dialsync.toml", "--job", "leads"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("UserData;ContactID;ResultCode;Result;Done;"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("K1;") && lines[2].starts_with("K2;"),
        "{text}"
    );
    assert_eq!(env.requests().len(), before, "from the state: no call");

    let run = first["run_id"].as_str().unwrap();
    let out = env.dialsync(&[
        "outcomes",
        "--config",
        "dialsync.toml",
        "--job",
        "leads",
        "--since",
        run,
        "--output",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["UserData"], "K2");
    assert_eq!(v[0]["Aborted"], true);

    call(&env, "K3", "Termin");
    let out = env.dialsync(&[
        "outcomes",
        "--config",
        "dialsync.toml",
        "--job",
        "leads",
        "--fetch",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["UserData"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["K1", "K2", "K3"], "{v}");
    assert_eq!(v[2]["Appointment"], true);
    // Fetching delivers nothing: the next run still has K3's outcome to deliver.
    let (next, _) = env.sync(&[]);
    assert_eq!(next["outcomes"]["changed"], 1, "{next}");
}

/// With the verification due, the outcomes share its listing: still the result codes and
/// one listing. The log at INFO names counts, never a contact's name or number.
#[test]
fn outcomes_share_the_verifications_listing_and_log_no_personal_data() {
    let env = Env::new();
    outcomes_config(&env, "columns = [\"UserData\", \"ResultCode\", \"Tries\"]");
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    let before = env.requests().len();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialsync"))
        .args([
            "sync",
            "--config",
            "dialsync.toml",
            "--output",
            "json",
            "--verify",
            "--log-format",
            "json",
        ])
        .current_dir(env.dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(out.status.code(), Some(0), "{job}");
    assert_eq!(job["verified"]["confirmed"], 3, "{job}");
    assert_eq!(job["outcomes"]["changed"], 1, "{job}");
    let calls = api_paths(&env, before);
    assert_eq!(
        calls.len(),
        2,
        "one listing for both, and the result codes: {calls:?}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("outcomes read"), "{log}");
    for personal in ["Name1", "First1", "1000001", "Köln"] {
        assert!(!log.contains(personal), "{personal} in the log: {log}");
    }
}

/// An outcome file that cannot be written (its folder is missing; a full disk fails the
/// same way): `validate` says so, the run syncs, reports it and ends partial, and the
/// next run, once the folder is there, delivers the very outcomes.
#[test]
fn an_unwritable_outcome_file_loses_nothing() {
    let env = Env::new();
    env.write_config(
        crate::common::TOKEN,
        "[job.outcomes]\npath = \"crm-import/outcomes.csv\"",
    );
    let validate = env.dialsync(&["validate", "--config", "dialsync.toml"]);
    let said = String::from_utf8_lossy(&validate.stdout).to_string()
        + &String::from_utf8_lossy(&validate.stderr);
    assert_eq!(validate.status.code(), Some(2), "{said}");
    assert!(
        said.contains("cannot write in") && said.contains("crm-import"),
        "{said}"
    );

    env.write_rows(&rows(2, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K2", "ABG");
    let (failed, code) = env.sync(&[]);
    assert_eq!(code, 1, "{failed}");
    assert!(
        failed["outcomes"]["error"]
            .as_str()
            .unwrap()
            .contains("crm-import"),
        "{failed}"
    );
    std::fs::create_dir(env.path("crm-import")).unwrap();
    let (delivered, code) = env.sync(&[]);
    assert_eq!(code, 0, "{delivered}");
    assert_eq!(delivered["outcomes"]["changed"], 1, "{delivered}");
    let text = std::fs::read_to_string(env.path("crm-import/outcomes.csv")).unwrap();
    assert!(text.contains("\r\nK2;"), "{text}");
    let left: Vec<_> = std::fs::read_dir(env.path("crm-import"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
}

/// `format = "ndjson"` with `{run}` in the path: a file per run that found news, named
/// after the run, one JSON object per line in the configured columns and order, readable
/// by the file's group (mode 0640, whatever the service's umask).
#[test]
fn ndjson_files_one_per_run_in_the_columns_order() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write_config(
        crate::common::TOKEN,
        "[job.outcomes]\npath = \"out/o-{run}.ndjson\"\nformat = \"ndjson\"\ncolumns = [\"Tries\", \"UserData\", \"Done\"]",
    );
    std::fs::create_dir(env.path("out")).unwrap();
    env.write_rows(&rows(2, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    let (first, _) = env.sync(&[]);
    call(&env, "K2", "WV");
    let (second, _) = env.sync(&[]);
    let (quiet, _) = env.sync(&[]);
    assert_eq!(quiet["outcomes"]["changed"], 0, "{quiet}");
    let mut files: Vec<String> = std::fs::read_dir(env.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let run = |r: &Value| format!("o-{}.ndjson", r["run_id"].as_str().unwrap());
    assert_eq!(
        files,
        [run(&first), run(&second)],
        "no file for the quiet run"
    );
    let text = std::fs::read_to_string(env.path("out").join(run(&first))).unwrap();
    assert_eq!(text, "{\"Tries\":1,\"UserData\":\"K1\",\"Done\":true}\n");
    let text = std::fs::read_to_string(env.path("out").join(run(&second))).unwrap();
    assert_eq!(text, "{\"Tries\":1,\"UserData\":\"K2\",\"Done\":false}\n");
    let mode = std::fs::metadata(env.path("out").join(run(&first)))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

/// The delivered outcomes are a database of their own (`state.outcomes`). When the
/// state's database is damaged and restored from its snapshot, they are kept: nothing is
/// delivered twice. When their own database is damaged, it is moved aside and begun
/// anew: each outcome is delivered once more, never lost.
#[test]
fn a_damaged_database_never_loses_a_delivered_outcome() {
    let env = Env::new();
    outcomes_config(&env, "");
    env.write_rows(&rows(3, "Köln"));
    assert_eq!(env.sync(&[]).1, 0);
    call(&env, "K1", "ABG");
    let (second, code) = env.sync(&[]);
    assert_eq!(
        (code, &second["outcomes"]["changed"]),
        (0, &1.into()),
        "{second}"
    );
    assert!(env.path("state.outcomes").is_dir());
    std::fs::remove_file(env.path("outcomes.csv")).unwrap();

    damage_database(&env.path("state"));
    let (report, stderr) = env.sync_logged();
    assert!(
        stderr.contains("restored from the job's snapshot"),
        "{stderr}"
    );
    assert_eq!(report["verified"]["confirmed"], 3, "{report}");
    assert_eq!(report["outcomes"]["changed"], 0, "kept: {report}");
    assert!(!env.path("outcomes.csv").exists());

    damage_database(&env.path("state.outcomes"));
    let (report, stderr) = env.sync_logged();
    assert!(stderr.contains("moved aside and begun anew"), "{stderr}");
    assert_eq!(report["outcomes"]["changed"], 1, "{report}");
    let written = read_outcomes(&env);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["UserData"], "K1");
    assert!(std::fs::read_dir(env.dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("state.outcomes.broken-")));
    let (quiet, code) = env.sync(&[]);
    assert_eq!(
        (code, &quiet["outcomes"]["changed"]),
        (0, &0.into()),
        "{quiet}"
    );
}
