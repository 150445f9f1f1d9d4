//! A run's outcome is recorded once, at its end, and every consumer reads that record:
//! the JSON report, the log's summary line and the last run `status` shows spell the same
//! outcome and the same reason.

use serde_json::Value;

use crate::common::{rows, Env};

/// One `sync`: the report (stdout), the `sync finished` log line (stderr, JSON logs) and
/// the exit code.
fn sync_logged(env: &Env) -> (Value, Value, i32) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialsync"))
        .args([
            "sync",
            "--config",
            "dialsync.toml",
            "--output",
            "json",
            "--log-format",
            "json",
        ])
        .current_dir(env.dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let finished: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "sync finished")
        .collect();
    assert_eq!(finished.len(), 1, "one summary line per run: {stderr}");
    (
        report["jobs"][0].clone(),
        finished[0]["fields"].clone(),
        out.status.code().unwrap(),
    )
}

fn last_run(env: &Env) -> Value {
    let out = env.dialsync(&["status", "--config", "dialsync.toml", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["jobs"][0]["last_run"].clone()
}

#[test]
fn the_report_the_log_line_and_the_stored_last_run_agree() {
    let env = Env::new();
    let all = rows(100, "Köln");
    env.write_rows(&all);

    let check = |code: i32, outcome: &str, stopped: &str| {
        let (report, log, exit) = sync_logged(&env);
        assert_eq!(exit, code, "{report}");
        assert_eq!(report["outcome"], outcome, "{report}");
        assert_eq!(log["outcome"], outcome, "{log}");
        assert_eq!(log["stopped"], stopped, "{log}");
        let aborted = report["aborted"].as_str().unwrap_or("");
        assert_eq!(log["aborted"], aborted, "{log}");
        for key in ["imported", "locked", "api_calls", "rows"] {
            assert_eq!(log[key], report[key], "{key}: {log} vs {report}");
        }
        let last = last_run(&env);
        assert_eq!(last["outcome"], outcome, "{last}");
        assert_eq!(last["run_id"], report["run_id"], "{last}");
        assert_eq!(last["aborted"].as_str().unwrap_or(""), aborted, "{last}");
        report
    };

    check(0, "ok", "");
    // A truncated export: a guard stops the run.
    env.write_rows(&all[..50]);
    let report = check(5, "guard", "guard");
    assert!(report["aborted"]
        .as_str()
        .unwrap()
        .contains("fewer than 75%"));
    // A token the dialler rejects.
    env.edit_config("token = \"test-token\"", "token = \"wrong\"");
    env.write_rows(&all[..99]);
    let report = check(4, "unauthorized", "unauthorized");
    assert!(
        !report["aborted"].as_str().unwrap().contains("wrong"),
        "the token is not shown: {report}"
    );
}
