//! What an operator watches from outside: the run history (`dialsync history`), the last
//! run that changed something in `status`, and `status --check` for monitoring plugins.

use std::time::{Duration, Instant};

use crate::common::{Env, TOKEN};
use serde_json::Value;

/// `status --check`: its exit code and its lines.
fn check(env: &Env) -> (i32, String) {
    let out = env.dialsync(&["status", "--check", "--config", "dialsync.toml"]);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Every run is kept, newest first, with its trigger and counts; a run's rejected rows
/// and failed operations are kept with UserData and reason, never a name or number; and
/// `status` still shows the run that changed something after no-op runs followed it.
#[test]
fn history_keeps_each_run_and_status_the_last_change() {
    let env = Env::new();
    env.write_config(TOKEN, "");
    env.edit_config("path = \"state\"", "path = \"state\"\nhistory_runs = 3");
    env.write_export(&[
        "C1;Meier;Anna;089 1234567;München;1",
        "C2;Schulz;Bernd;not a number;Berlin;1",
    ]);
    let (first, code) = env.sync(&[]);
    assert_eq!((code, first["imported"].as_u64()), (1, Some(1)), "{first}");
    for _ in 0..3 {
        assert_eq!(env.sync(&[]).1, 1);
    }

    let h = env.json(&["history", "--config", "dialsync.toml", "--output", "json"]);
    let runs = h["runs"].as_array().unwrap();
    // history_runs = 3: the oldest of the four runs is gone.
    assert_eq!(runs.len(), 3, "{h}");
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&first["run_id"].as_str().unwrap()), "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "distinct IDs: {ids:?}");
    let starts: Vec<&str> = runs
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {starts:?}"
    );
    for r in runs {
        assert_eq!(
            (
                r["trigger"].as_str(),
                r["outcome"].as_str(),
                r["invalid"].as_u64(),
                r["imported"].as_u64()
            ),
            (Some("manual"), Some("partial"), Some(1), Some(0)),
            "{r}"
        );
        assert_eq!(
            r["api_calls"], 1,
            "a manual no-op run checks the token: {r}"
        );
    }

    // One run with its rows: UserData and reason, no name, no number.
    let one = env.dialsync(&["history", "--config", "dialsync.toml", "--run", ids[0]]);
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(one.status.success(), "{text}");
    assert!(
        text.contains("row 3 (UserData C2): PhoneNumber1 (column `Phone`)"),
        "{text}"
    );
    for personal in ["Schulz", "Bernd", "not a number", "Meier", "1234567"] {
        assert!(!text.contains(personal), "{personal} in:\n{text}");
    }
    let one = env.history_run(ids[0]);
    assert_eq!(one["problems"][0]["user_data"], "C2", "{one}");
    assert_eq!(one["problems"][0]["kind"], "invalid", "{one}");
    // --limit and --job.
    let two = env.json(&[
        "history",
        "--config",
        "dialsync.toml",
        "--limit",
        "2",
        "--output",
        "json",
    ]);
    let two: Vec<&str> = two["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(two, ids[..2]);
    let leads = env.json(&[
        "history",
        "--config",
        "dialsync.toml",
        "--job",
        "leads",
        "--output",
        "json",
    ]);
    assert_eq!(leads["runs"].as_array().unwrap().len(), 3);
    let other = env.json(&[
        "history",
        "--config",
        "dialsync.toml",
        "--job",
        "other",
        "--output",
        "json",
    ]);
    assert_eq!(other["runs"].as_array().unwrap().len(), 0);
    let missing = env.dialsync(&["history", "--config", "dialsync.toml", "--run", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run nope in the history"));

    // status: the last run, and apart from it the last one that changed something (the
    // first, though the history has let it go).
    let status = env.json(&["status", "--config", "dialsync.toml", "--output", "json"]);
    let job = &status["jobs"][0];
    assert_eq!(job["last_run"]["run_id"], ids[0], "{job}");
    assert_eq!(job["last_change"]["run_id"], first["run_id"], "{job}");
    assert_eq!(job["last_change"]["imported"], 1, "{job}");
    let human = env.dialsync(&["status", "--config", "dialsync.toml"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("last change: "), "{human}");
    assert!(human.contains("1 imported"), "{human}");
}

/// The monitoring-plugin codes: 0 ok, 1 partial, 2 stopped, 3 never ran or unreadable.
#[test]
fn status_check_exit_codes_follow_the_plugin_convention() {
    let env = Env::new();
    env.write_config(TOKEN, "schedule = \"0 0 3 * * *\"");
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    // A scheduled job that never ran: unknown.
    let (code, out) = check(&env);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("UNKNOWN job leads: no run recorded yet"),
        "{out}"
    );
    assert!(!env.path("state").exists(), "status creates no state");
    // Nor does history; without a state no run is there to show.
    let runs = env.dialsync(&["history", "--config", "dialsync.toml"]);
    assert!(String::from_utf8_lossy(&runs.stdout).contains("no runs recorded yet"));
    let run = env.dialsync(&["history", "--config", "dialsync.toml", "--run", "nope"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no run nope in the history"));
    assert!(!env.path("state").exists(), "history creates no state");

    assert_eq!(env.sync(&[]).1, 0);
    let (code, out) = check(&env);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK job leads: last run "), "{out}");
    assert!(out.contains(" ok: 1 row, 1 imported"), "{out}");
    let human = env.dialsync(&["status", "--config", "dialsync.toml"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("last change: the last run"), "{human}");

    env.write_export(&[
        "C1;Meier;Anna;089 1234567;München;1",
        "C2;Schulz;Bernd;not a number;Berlin;1",
    ]);
    assert_eq!(env.sync(&[]).1, 1);
    let (code, out) = check(&env);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("WARNING job leads:"), "{out}");

    // A guard stops the run (an empty export): critical, naming the guard.
    env.write_export(&[]);
    assert_eq!(env.sync(&[]).1, 5);
    let (code, out) = check(&env);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("CRITICAL job leads:") && out.contains("a guard stops every run since"),
        "{out}"
    );

    // The export is gone: the run stops.
    std::fs::remove_file(env.path("export.csv")).unwrap();
    assert_eq!(env.sync(&[]).1, 3);
    let (code, out) = check(&env);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("CRITICAL job leads:") && out.contains("stopped:"),
        "{out}"
    );

    // The state cannot be read (it is not a database): unknown, said on stdout.
    std::fs::remove_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state"), "not a database").unwrap();
    let (code, out) = check(&env);
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("UNKNOWN cannot read the state"), "{out}");
}

/// A scheduled job whose runs stopped happening is critical once two scheduled times
/// (and as long again as its last run took) have passed without a finished run.
#[test]
fn status_check_reports_an_overdue_job() {
    let env = Env::new();
    // Every second; no daemon runs it.
    env.write_config(TOKEN, "schedule = \"* * * * * *\"");
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    assert_eq!(env.sync(&[]).1, 0);
    // Not overdue at once (polled, not slept: the state turns within about 2 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, out) = loop {
        let (code, out) = check(&env);
        if code != 0 || Instant::now() > deadline {
            break (code, out);
        }
        assert!(out.starts_with("OK job leads"), "{out}");
        std::thread::yield_now();
    };
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("CRITICAL job leads:")
            && out.contains("overdue: no run has finished since"),
        "{out}"
    );
}

/// Root runs `status` and `history` on a state that belongs to the service's user: they
/// read it as that user (root would leave files there the service cannot open), and
/// every file in it still belongs to the service's user afterwards.
#[test]
fn root_reads_a_service_owned_state_as_its_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Only root can hand a state to another user; as anyone else this test has nothing
    // to check (CI runs as root).
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: root_reads_a_service_owned_state_as_its_owner needs root");
        return;
    }
    let env = Env::new();
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    assert_eq!(env.sync(&[]).1, 0);
    // The service's user (nobody here) owns the state; the folder above it is readable.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = env.path("state");
    let mut owned = vec![state.clone(), env.path("state.key")];
    let mut stack = vec![state.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            owned.push(p);
        }
    }
    for p in &owned {
        std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
    }

    let status = env.json(&["status", "--config", "dialsync.toml", "--output", "json"]);
    assert_eq!(status["jobs"][0]["contacts"], 1, "{status}");
    assert_eq!(status["jobs"][0]["last_run"]["imported"], 1, "{status}");
    let h = env.json(&["history", "--config", "dialsync.toml", "--output", "json"]);
    assert_eq!(h["runs"].as_array().unwrap().len(), 1, "{h}");

    let mut stack = vec![state];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let uid = std::fs::symlink_metadata(&p).unwrap().uid();
            assert_eq!(uid, 65534, "{} belongs to {uid}", p.display());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
}

/// What a local alert receiver got: method, path, Idempotency-Key and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>;

/// A receiver for pings and webhooks on a free port: `/broken...` answers 500, anything
/// else 200. Its runtime lives as long as the returned value.
fn receiver() -> (tokio::runtime::Runtime, String, Received) {
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let got: Received = Default::default();
    let sink = got.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let path = uri.path().to_string();
                sink.lock()
                    .unwrap()
                    .push((method.to_string(), path.clone(), key, body));
                if path.starts_with("/broken") {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        },
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rt, base, got)
}

/// `[alerts]`: the start ping and the end ping (`/fail` when a run stops or operations
/// fail) arrive in order; a run that is not ok POSTs its report (UserData and reasons, no
/// names or numbers) to the webhook, whose URL comes from a file; a job's ping_url
/// overrides the section's; a receiver that fails is retried and never changes the sync's
/// outcome.
#[test]
fn pings_and_the_webhook_reach_a_receiver() {
    let (_rt, base, got) = receiver();
    let env = Env::new();
    std::fs::write(env.path("webhook.url"), format!("{base}/hook/s3cret\n")).unwrap();
    env.edit_config(
        "[state]",
        &format!(
            "[alerts]\nping_url = \"{base}/ping/abc\"\nwebhook_url_file = \"webhook.url\"\nretries = 1\n\n[state]"
        ),
    );
    let take = || std::mem::take(&mut *got.lock().unwrap());
    let paths = |v: &[(String, String, String, String)]| {
        v.iter()
            .map(|(m, p, _, _)| format!("{m} {p}"))
            .collect::<Vec<_>>()
    };

    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    assert_eq!(env.sync(&[]).1, 0);
    assert_eq!(paths(&take()), ["GET /ping/abc/start", "GET /ping/abc"]);

    // Partial (an invalid row, no failed operation): the ping says success, the webhook
    // gets the report.
    env.write_export(&[
        "C1;Meier;Anna;089 1234567;München;1",
        "C2;Schulz;Bernd;not a number;Berlin;1",
    ]);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1);
    let mut seen = take();
    seen.sort_by_key(|(_, p, _, _)| p.clone());
    assert_eq!(
        paths(&seen),
        ["POST /hook/s3cret", "GET /ping/abc", "GET /ping/abc/start"]
    );
    let (_, _, key, body) = &seen[0];
    assert_eq!(key, report["run_id"].as_str().unwrap());
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["outcome"], "partial");
    assert_eq!(body["job"], "leads");
    assert_eq!(body["report"]["problems"][0]["key"], "C2", "{body}");
    let text = body.to_string();
    for personal in ["Schulz", "Bernd", "not a number", "Meier", "1234567"] {
        assert!(!text.contains(personal), "{personal} in {text}");
    }

    // Stopped (the export is gone): /fail, and the webhook.
    std::fs::remove_file(env.path("export.csv")).unwrap();
    assert_eq!(env.sync(&[]).1, 3);
    let mut seen = paths(&take());
    seen.sort();
    assert_eq!(
        seen,
        [
            "GET /ping/abc/fail",
            "GET /ping/abc/start",
            "POST /hook/s3cret"
        ]
    );

    // A job's own ping_url; a webhook receiver that fails is retried once, and the sync
    // still ends as its run did.
    env.edit_config(
        "campaign_id = 538",
        &format!("campaign_id = 538\nping_url = \"{base}/ping/job\""),
    );
    std::fs::write(env.path("webhook.url"), format!("{base}/broken")).unwrap();
    assert_eq!(env.sync(&[]).1, 3);
    let mut seen = paths(&take());
    seen.sort();
    assert_eq!(
        seen,
        [
            "GET /ping/job/fail",
            "GET /ping/job/start",
            "POST /broken",
            "POST /broken"
        ]
    );
    // Dry runs send nothing.
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    env.sync(&["--dry-run"]);
    assert!(take().is_empty());
}

/// An alert receiver that cannot be reached costs the sync nothing but a log line.
#[test]
fn an_unreachable_receiver_does_not_fail_the_sync() {
    let env = Env::new();
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.edit_config(
        "[state]",
        &format!("[alerts]\nping_url = \"http://127.0.0.1:{port}/p\"\nretries = 0\n\n[state]"),
    );
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be delivered"), "{stderr}");
    assert!(
        !stderr.contains(&port.to_string()),
        "the URL is not logged: {stderr}"
    );
}
