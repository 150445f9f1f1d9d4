//! `dialsync run` as a process: scheduled runs, SIGTERM, SIGHUP, manual syncs handed to
//! it, and `status`. The tests wait on the daemon's own systemd notifications (READY=1,
//! STATUS= after each run, STOPPING=1) received on a socket given as NOTIFY_SOCKET, so
//! nothing sleeps on a guess.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::common::{count, field, rows, Env, TOKEN};
use serde_json::Value;

/// Generous bound for one event on a slow, busy machine; never reached when things work.
const PATIENCE: Duration = Duration::from_secs(60);

struct Daemon {
    child: Child,
    notify: UnixDatagram,
    /// Every notification received so far.
    seen: Vec<String>,
    logs: Arc<(Mutex<String>, Condvar)>,
    /// Runs counted so far from the STATUS= lines.
    runs: u64,
}

impl Daemon {
    /// Starts `dialsync run` on the env's config and waits for READY=1.
    fn start(env: &Env) -> Daemon {
        Daemon::start_with(env, &[])
    }

    /// Started with these global flags before `run` (e.g. `--log-format json`).
    fn start_with(env: &Env, flags: &[&str]) -> Daemon {
        Daemon::start_failing_at(env, flags, None)
    }

    /// Started with `flags`, and killed by its own hand at the failpoint `point` (see
    /// `src/failpoint.rs`).
    fn start_failing_at(env: &Env, flags: &[&str], point: Option<&str>) -> Daemon {
        let sock = env.path("notify.sock");
        // A daemon started before in this env left its socket.
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dialsync"))
            .args(flags)
            .args(["run", "--config", "dialsync.toml"])
            .current_dir(env.dir.path())
            .env("NOTIFY_SOCKET", &sock)
            // As systemd's WatchdogSec= would: pings every half period while healthy.
            .env("WATCHDOG_USEC", "400000")
            .env("RUST_LOG", "info")
            .envs(point.map(|p| ("DIALSYNC_FAILPOINT", p)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.0.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                sink.1.notify_all();
            }
        });
        let mut d = Daemon {
            child,
            notify,
            seen: Vec::new(),
            logs,
            runs: 0,
        };
        d.wait_for(|m| m.contains("READY=1"));
        d
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The next notification that satisfies `pred`.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    self.seen.push(msg.clone());
                    if pred(&msg) {
                        return msg;
                    }
                }
                Err(e) => panic!(
                    "no notification from the daemon ({e}); logs:\n{}",
                    self.logs()
                ),
            }
        }
        panic!(
            "no matching notification; seen {:?}\nlogs:\n{}",
            self.seen,
            self.logs()
        );
    }

    /// Waits for `n` more finished runs (after each the STATUS= line counts them).
    fn wait_runs(&mut self, n: u64) {
        let target = self.runs + n;
        let msg = self.wait_for(|m| runs_in(m).is_some_and(|r| r >= target));
        self.runs = runs_in(&msg).unwrap();
    }

    /// Waits until the daemon has logged a line containing `pat`.
    fn wait_log(&self, pat: &str) -> String {
        let (lock, cv) = &*self.logs;
        let (logs, timeout) = cv
            .wait_timeout_while(lock.lock().unwrap(), PATIENCE, |l| !l.contains(pat))
            .unwrap();
        assert!(!timeout.timed_out(), "no log line with {pat:?}:\n{logs}");
        logs.clone()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit; logs:\n{}",
                self.logs()
            );
            // Waiting for a process to exit: there is no readiness signal for that
            // besides wait(), which cannot time out.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the notifications already sent (after the daemon exited, say).
    fn drain(&mut self) {
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        self.notify.set_nonblocking(false).unwrap();
    }

    /// Fills the notification socket's queue, as a systemd that stopped reading would
    /// leave it: the daemon's next notification finds no room.
    fn fill_notify_queue(&self) {
        let addr = self.notify.local_addr().unwrap();
        let path = addr.as_pathname().unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.set_nonblocking(true).unwrap();
        let mut queued = 0;
        loop {
            match sender.send_to(b"X=1", path) {
                Ok(_) => queued += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("cannot fill the notification socket: {e}"),
            }
            assert!(queued < 100_000, "the notification socket never fills");
        }
    }

    fn logs(&self) -> String {
        self.logs.0.lock().unwrap().clone()
    }
}

/// The run count of job `leads` in a STATUS= line (`leads: 3 runs, ...`).
fn runs_in(msg: &str) -> Option<u64> {
    let rest = msg.strip_prefix("STATUS=")?.split("leads: ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_json(env: &Env) -> Value {
    let out = env.dialsync(&["status", "--config", "dialsync.toml", "--output", "json"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const ROWS: [&str; 3] = [
    "C1;Meier;Anna;089 1234567;München;1",
    "C2;Schulz;Bernd;030 7654321;Berlin;1",
    "C3;Wagner;Carla;040 1112223;Hamburg;1",
];

#[test]
fn scheduled_runs_then_sigterm_exits_0_with_the_state_intact() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.write_config(TOKEN, r#"schedule = "* * * * * *""#);
    let mut daemon = Daemon::start(&env);
    daemon.wait_runs(2);
    // The runs planned on the process's planning threads, not on a new thread each (a
    // thread that maps phone numbers leaves its own pattern caches behind): they are
    // there between runs, one per two cores.
    let planners = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .filter(|c| c.starts_with("dialsync-plan"))
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(planners().len(), cores.div_ceil(2), "{:?}", planners());
    if !daemon.seen.iter().any(|m| m.trim() == "WATCHDOG=1") {
        daemon.wait_for(|m| m.trim() == "WATCHDOG=1");
    }

    let status = status_json(&env);
    assert_eq!(
        status["daemon"]["pid"].as_u64().unwrap().to_string(),
        daemon.pid()
    );
    let job = &status["jobs"][0];
    assert!(job["runs"].as_u64().unwrap() >= 2, "{job}");
    assert_eq!(job["contacts"], 3);
    assert_eq!(job["last_run"]["outcome"], "ok", "{job}");
    assert!(job["next_run"].is_string());
    // Exactly one contact per UserData: later runs found nothing to do.
    assert_eq!(env.contacts().len(), 3);
    for ud in ["C1", "C2", "C3"] {
        env.contact(ud);
    }
    // And sent nothing: the imports proved the token, so no run checks it again within
    // the hour (`credential_check`).
    let sent: Vec<_> = env.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    // The history, through the daemon: its scheduled runs, newest first; the first one
    // imported, and status shows it as the last change.
    let runs = env.history();
    assert!(runs.len() >= 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["trigger"] == "schedule"), "{runs:?}");
    let first = runs.last().unwrap();
    assert_eq!(first["imported"], 3, "{first}");
    assert_eq!(job["last_change"]["run_id"], first["run_id"], "{job}");

    daemon.signal("TERM");
    let exit = daemon.wait_exit();
    assert_eq!(exit.code(), Some(0), "logs:\n{}", daemon.logs());
    daemon.drain();
    assert!(daemon.seen.iter().any(|m| m.contains("STOPPING=1")));
    assert!(!env.path("state.sock").exists(), "the socket is removed");
    let logs = daemon.logs();
    assert!(
        logs.contains("run=") && logs.contains("job=leads"),
        "{logs}"
    );

    // Without the daemon, status reads the state itself.
    let status = status_json(&env);
    assert!(status["daemon"].is_null());
    assert_eq!(status["jobs"][0]["contacts"], 3);
    assert_eq!(status["jobs"][0]["last_run"]["outcome"], "ok");
    // The state is intact: a manual sync finds nothing to do.
    let (report, code) = env.sync(&[]);
    assert_eq!(
        (code, report["api_calls"].as_u64()),
        (0, Some(1)),
        "{report}"
    );
    // The history without the daemon: the manual run, then the daemon's runs.
    let after = env.history();
    assert_eq!(after.len(), runs.len() + 1, "{after:?}");
    assert_eq!(after[0]["run_id"], report["run_id"]);
    assert_eq!(after[0]["trigger"], "manual");
    assert_eq!(&after[1..], &runs[..]);
}

/// `credential_check = "0s"`: every scheduled run with nothing to send proves the token
/// with one read-only call.
#[test]
fn credential_check_sets_how_often_an_idle_daemon_checks_the_token() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.write_config(TOKEN, r#"schedule = "* * * * * *""#);
    env.edit_config("client_id = 7", "client_id = 7\ncredential_check = \"0s\"");
    let mut daemon = Daemon::start(&env);
    daemon.wait_runs(3);
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit().code(),
        Some(0),
        "logs:\n{}",
        daemon.logs()
    );
    let sent = env.requests();
    let imports = sent.iter().filter(|r| r.path.ends_with("/import")).count();
    let checks = sent
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/dialler/campaigns/538"))
        .count();
    assert_eq!(imports, 3, "{sent:?}");
    assert!(checks >= 2, "runs 2 and 3 check the token: {sent:?}");
    assert_eq!(sent.len(), imports + checks, "{sent:?}");
}

/// A reload that changes what a scheduled job's runs do runs it once at once (trigger
/// `reload`), so the operator sees the new config at work; a reload that changes nothing
/// runs nothing.
#[test]
fn a_reload_runs_the_jobs_it_changed_at_once() {
    let env = Env::new();
    env.write_export(&ROWS);
    // New Year's midnight: no scheduled run comes while the test runs.
    env.write_config(TOKEN, r#"schedule = "0 0 1 1 *""#);
    let mut daemon = Daemon::start(&env);
    daemon.signal("HUP");
    let logs = daemon.wait_log("config reloaded");
    let reloaded: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("config reloaded"))
        .collect();
    assert!(reloaded[0].contains("rerun=[]"), "{logs}");
    assert!(
        env.requests().is_empty(),
        "nothing ran: {:?}",
        env.requests()
    );

    env.edit_config("City = \"City\"", "City = \"LastName\"");
    daemon.signal("HUP");
    daemon.wait_runs(1);
    let logs = daemon.logs();
    let reloaded: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("config reloaded"))
        .collect();
    assert!(reloaded[1].contains(r#"rerun=["leads"]"#), "{logs}");
    assert_eq!(field(&env.contact("C1"), "City"), "Meier");
    let runs = env.history();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["trigger"], "reload", "{:?}", runs[0]);
    assert_eq!(runs[0]["imported"], 3, "{:?}", runs[0]);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

/// JSON logs as a log shipper reads them: counts are numbers, job lists are arrays.
#[test]
fn json_logs_carry_counts_as_numbers_and_job_lists_as_arrays() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.write_config(TOKEN, r#"schedule = "* * * * * *""#);
    let mut daemon = Daemon::start_with(&env, &["--log-format", "json"]);
    daemon.wait_runs(1);
    daemon.signal("HUP");
    daemon.wait_log("config reloaded");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let logs = daemon.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line:\n{logs}"))
    };
    let started = &line("daemon started")["fields"];
    assert_eq!(started["jobs"], serde_json::json!(1), "{started}");
    assert_eq!(
        started["scheduled"],
        serde_json::json!(["leads"]),
        "{started}"
    );
    assert_eq!(
        line("config reloaded")["fields"]["jobs"],
        serde_json::json!(["leads"])
    );
    let first = lines
        .iter()
        .find(|l| l["fields"]["imported"].is_u64())
        .unwrap_or_else(|| panic!("no run's summary line:\n{logs}"));
    assert_eq!(first["fields"]["imported"], serde_json::json!(ROWS.len()));
    assert_eq!(first["fields"]["outcome"], serde_json::json!("ok"));
    assert_eq!(first["fields"]["trigger"], serde_json::json!("schedule"));
    assert_eq!(first["span"]["job"], serde_json::json!("leads"));
}

#[test]
fn sighup_picks_up_a_changed_mapping_and_rejects_a_broken_config() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.write_config(TOKEN, r#"schedule = "* * * * * *""#);
    let mut daemon = Daemon::start(&env);
    daemon.wait_runs(1);
    assert_eq!(field(&env.contact("C1"), "City"), "München");

    // The City field now comes from the LastName column.
    env.edit_config("City = \"City\"", "City = \"LastName\"");
    daemon.signal("HUP");
    daemon.wait_for(|m| m.contains("READY=1"));
    // A run that started before the reload may finish first; the one after uses the new
    // mapping.
    daemon.wait_runs(2);
    assert_eq!(field(&env.contact("C1"), "City"), "Meier");
    assert!(
        daemon.logs().contains("config reloaded"),
        "{}",
        daemon.logs()
    );

    // A broken config is rejected and the daemon keeps running the old one.
    let good = std::fs::read_to_string(env.path("dialsync.toml")).unwrap();
    std::fs::write(
        env.path("dialsync.toml"),
        good.replace("campaign_id = 538", "campaign_id = \"five\""),
    )
    .unwrap();
    daemon.signal("HUP");
    let logs = daemon.wait_log("the changed config was rejected");
    assert!(logs.contains("campaign_id"), "{logs}");
    daemon.wait_runs(1);
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
    let last = daemon.seen.last().unwrap();
    assert!(last.contains("last ok"), "{last}");
    // status, history and --check still reach the daemon: the broken file still names
    // the state, beside which the socket is.
    let status = status_json(&env);
    assert_eq!(
        status["daemon"]["pid"].as_u64().unwrap().to_string(),
        daemon.pid()
    );
    assert!(!env.history().is_empty());
    let out = env.dialsync(&["status", "--check", "--config", "dialsync.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("OK job leads"), "{text}");
    // And with no config at all, --state names it.
    let out = env.dialsync(&["status", "--config", "missing.toml", "--state", "state"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

#[test]
fn a_manual_sync_is_handed_to_the_running_daemon() {
    let env = Env::new();
    env.write_export(&ROWS);
    // A schedule that does not fire during the test: the runs below are the manual ones.
    env.write_config(TOKEN, r#"schedule = "0 0 1 1 *""#);
    let mut daemon = Daemon::start(&env);

    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["imported"], 3);
    assert_eq!(report["outcome"], "ok");
    assert!(report["run_id"].as_str().unwrap().contains("-leads-"));
    assert_eq!(env.contacts().len(), 3);
    // A dry run through the daemon changes nothing.
    env.write_export(&ROWS[..2]);
    let (report, code) = env.sync(&["--dry-run"]);
    assert_eq!((code, &report["locked"]), (0, &Value::from(1)), "{report}");
    assert_eq!(report["dry_run"], true);
    assert!(!env.contact("C3").locked);
    // The real one locks C3; a second finds nothing to do.
    let (report, _) = env.sync(&["--job", "leads"]);
    assert_eq!(report["locked"], 1, "{report}");
    assert!(env.contact("C3").locked);
    let (report, _) = env.sync(&[]);
    assert_eq!(report["api_calls"], 1, "the token check only: {report}");

    // Not a terminal: a note that the daemon ran it, and no progress bar.
    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the daemon is running"), "{stderr}");
    assert!(
        !stderr.contains("contacts,") && !stderr.contains("reading the export"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("job leads"));

    let out = env.dialsync(&["sync", "--config", "dialsync.toml", "--job", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    // `verify` is handed over too: the daemon reads the campaign back, nothing else.
    env.emu.remove_contact(env.contact("C1").id);
    let n = env.requests().len();
    let out = env.verify_at(&[], None);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["jobs"][0]["verified"]["missing"], 1, "{v}");
    assert_eq!(env.requests().len(), n + 1, "one listing");
    let (report, _) = env.sync(&[]);
    assert_eq!(report["imported"], 1, "the lost contact is back: {report}");

    let status = status_json(&env);
    assert_eq!(
        status["jobs"][0]["runs"], 6,
        "dry runs are not counted: {status}"
    );
    daemon.signal("INT");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

/// A systemd that stops reading its notifications (a full socket queue) does not stall
/// the daemon: it still answers, and SIGTERM still stops it (a notification that cannot
/// be sent is dropped, never waited for on the daemon's threads).
#[test]
fn a_full_notification_socket_does_not_stall_the_daemon() {
    let env = Env::new();
    env.write_export(&ROWS);
    env.write_config(TOKEN, r#"schedule = "0 0 1 1 *""#);
    let mut daemon = Daemon::start(&env);
    daemon.fill_notify_queue();
    let status = status_json(&env);
    assert_eq!(status["jobs"][0]["job"], "leads", "{status}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.logs());
    assert!(daemon.logs().contains("stopped"), "{}", daemon.logs());
}

#[test]
fn a_sync_beside_another_process_holding_the_state_says_what_to_do() {
    let env = Env::new();
    env.write_export(&ROWS);
    let store = dialsync::Store::open(&env.path("state")).unwrap();
    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    drop(store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("in use by another dialsync process") && stderr.contains("run this again"),
        "{stderr}"
    );
    assert!(!stderr.contains("could not acquire lock"), "{stderr}");
    assert!(env.contacts().is_empty());
}

#[test]
fn a_second_sigterm_quits_at_once_and_leaves_a_state_that_opens() {
    // The emulator carries every call out and never answers: a call stays in flight.
    let env = Env::with_faults(dialsync::Faults {
        timeout_rate: 1.0,
        ..Default::default()
    });
    env.write_export(&ROWS);
    env.write_config(TOKEN, "");
    env.edit_config("client_id = 7", "client_id = 7\ntimeout = \"10m\"");
    let mut daemon = Daemon::start(&env);
    let manual = Command::new(env!("CARGO_BIN_EXE_dialsync"))
        .args(["sync", "--config", "dialsync.toml"])
        .current_dir(env.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first import reaches the emulator (it runs alone, as the probe of the run).
    let deadline = Instant::now() + PATIENCE;
    while env.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no call arrived; logs:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    daemon.signal("TERM");
    daemon.wait_log("stopping");
    // The first signal waits for the call in flight (up to the 10-minute timeout)...
    assert!(daemon.child.try_wait().unwrap().is_none());
    // ...the second quits now, with exit 0.
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit().code(),
        Some(0),
        "logs:\n{}",
        daemon.logs()
    );
    assert!(daemon.logs().contains("second signal"), "{}", daemon.logs());
    let out = manual.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed the connection"));

    // The state opens cleanly without the daemon; the unconfirmed import is not in it.
    let status = status_json(&env);
    assert!(status["daemon"].is_null());
    assert_eq!(status["jobs"][0]["contacts"], 0, "{status}");
    assert_eq!(env.requests().len(), 1, "nothing more was sent");
}

/// A daemon whose job is in a slow scheduled run (20 contacts, one call at a time, 100 ms
/// each), and a manual `sync --output json` that waits for it (it said so on stderr).
fn a_manual_sync_waiting_behind_a_scheduled_run(env: &Env) -> (Daemon, std::process::Child) {
    let all = crate::common::rows(20, "Köln");
    env.write_rows(&all);
    env.write_config(TOKEN, r#"schedule = "* * * * * *""#);
    env.edit_config("token = ", "max_concurrency = 1\ntoken = ");
    let daemon = Daemon::start(env);
    // The scheduled run has begun once the emulator sees its first call.
    let deadline = Instant::now() + PATIENCE;
    while env.requests().is_empty() {
        assert!(Instant::now() < deadline, "no scheduled run started");
        std::thread::yield_now();
    }
    let mut manual = Command::new(env!("CARGO_BIN_EXE_dialsync"))
        .args(["sync", "--config", "dialsync.toml", "--output", "json"])
        .current_dir(env.dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(manual.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no note that it waits"
        );
        if line.contains("this run starts when that one ends") {
            break;
        }
    }
    (daemon, manual)
}

fn slow_env() -> Env {
    Env::with_faults(dialsync::Faults {
        latency: Duration::from_millis(100),
        ..Default::default()
    })
}

/// A manual run that waited for the job's scheduled run runs with the config in force
/// when it starts: a reload that came meanwhile (here, City taken from another column)
/// applies to it.
#[test]
fn a_manual_run_waiting_for_the_job_runs_with_the_config_reloaded_meanwhile() {
    let env = slow_env();
    let (mut daemon, manual) = a_manual_sync_waiting_behind_a_scheduled_run(&env);
    // While it waits: City comes from the FirstName column now, and no more schedule.
    env.edit_config("City = \"City\"", "City = \"FirstName\"");
    // (Manual runs only: a scheduled job whose mapping a reload changes also runs once
    // after it, see a_reload_runs_the_jobs_it_changed_at_once.)
    env.edit_config(r#"schedule = "* * * * * *""#, "");
    daemon.signal("HUP");
    daemon.wait_log("config reloaded");
    // The scheduled run, then the manual one (reading the daemon's notifications, as
    // systemd would: unread, they would fill its socket and block the daemon).
    daemon.wait_runs(2);
    let out = manual.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["jobs"][0]["updated"], 20, "{report}");
    for c in env.contacts() {
        assert_eq!(field(&c, "City"), field(&c, "FirstName"), "{c:?}");
    }
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

/// A manual run that waited for its job, when a reload meanwhile removed the job: it does
/// nothing and says why, with exit code 3.
#[test]
fn a_manual_run_whose_job_a_reload_removed_says_so() {
    let env = slow_env();
    let (mut daemon, manual) = a_manual_sync_waiting_behind_a_scheduled_run(&env);
    env.edit_config(r#"name = "leads""#, r#"name = "renamed""#);
    // Manual runs only: a new scheduled job would run at once after the reload.
    env.edit_config(r#"schedule = "* * * * * *""#, "");
    daemon.signal("HUP");
    daemon.wait_log("config reloaded");
    daemon.wait_runs(2);
    let out = manual.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{report}");
    let job = &report["jobs"][0];
    assert_eq!(job["job"], "leads", "{report}");
    assert_eq!(job["outcome"], "aborted", "{report}");
    let why = job["aborted"].as_str().unwrap();
    assert!(
        why.contains("job leads is no longer in the config"),
        "{why}"
    );
    assert_eq!(job["api_calls"], 0, "{report}");
    // The scheduled run imported the 20 contacts; the manual run sent nothing.
    assert_eq!(env.requests().len(), 20, "{report}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

/// The daemon in-process: it takes its stop requests as an input and returns to its
/// caller instead of exiting the process. A stop while a manual run waits on a dialler
/// call lets the run finish its call; a second stop quits at once, abandoning it.
#[test]
fn in_process_a_second_stop_returns_quit_now_while_a_call_is_in_flight() {
    use dialsync::Faults;
    use dialsync::Phase;
    use dialsync::{Client, Event, Request};
    use dialsync::{Ended, Signal};

    // Every call waits far longer than the test: the run's first call stays in flight.
    let env = Env::with_faults(Faults {
        latency: Duration::from_secs(3600),
        ..Faults::default()
    });
    env.write_export(&ROWS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(async {
        let (signals, requests) = tokio::sync::mpsc::channel(4);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let path = env.path("dialsync.toml");
        let daemon = tokio::spawn(async move {
            dialsync::run_daemon(&path, requests, move || {
                let _ = ready_tx.send(());
            })
            .await
        });
        ready.await.expect("the daemon started");
        let mut client = Client::connect(&env.path("state.sock"))
            .await
            .unwrap()
            .expect("the daemon listens");
        client
            .send(&Request::Sync {
                job: None,
                mode: Default::default(),
            })
            .await
            .unwrap();
        // Wait until the run sends (its first call is then on its way).
        loop {
            match client.next().await.unwrap() {
                Some(Event::Progress(p)) if p.phase == Phase::Sending => break,
                Some(Event::Progress(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        signals.send(Signal::Stop).await.unwrap();
        signals.send(Signal::Stop).await.unwrap();
        tokio::time::timeout(PATIENCE, daemon)
            .await
            .expect("the daemon returns")
            .unwrap()
    });
    assert_eq!(ended.unwrap(), Ended::QuitNow);
    assert!(!env.path("state.sock").exists(), "the socket is removed");
    assert!(env.contacts().is_empty(), "the call never got its answer");
    drop(rt);
}

/// A closed request channel (the binary's signal feeder gone) stops the daemon like a
/// stop request, and it returns `Stopped` with its state flushed and released.
#[test]
fn in_process_a_closed_request_channel_stops_the_daemon() {
    use dialsync::Ended;
    let env = Env::new();
    env.write_export(&ROWS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(async {
        let (signals, requests) = tokio::sync::mpsc::channel(1);
        drop(signals);
        dialsync::run_daemon(&env.path("dialsync.toml"), requests, || {}).await
    });
    assert_eq!(ended.unwrap(), Ended::Stopped);
    assert!(!env.path("state.sock").exists(), "the socket is removed");
}

/// Promise: one rate limit per dialler tenant. Two jobs importing at once through the
/// daemon, with `max_requests_per_second = 100`, stay within 100 calls a second together
/// as the dialler sees them (each job alone used to be allowed the full rate).
#[test]
fn two_jobs_at_once_share_the_tenants_rate_limit() {
    let env = Env::new();
    env.write_config(TOKEN, r#"schedule = "0 0 1 1 *""#);
    env.edit_config(
        "client_id = 7",
        "client_id = 7\nmax_requests_per_second = 100",
    );
    let config = std::fs::read_to_string(env.path("dialsync.toml")).unwrap();
    let second = crate::common::JOB
        .replace("{extra}", "")
        .replace("name = \"leads\"", "name = \"leads2\"")
        .replace("campaign_id = 538", "campaign_id = 539")
        .replace("export.csv", "export2.csv");
    std::fs::write(env.path("dialsync.toml"), config + &second).unwrap();
    env.write_rows(&crate::common::rows(200, "Bonn"));
    std::fs::copy(env.path("export.csv"), env.path("export2.csv")).unwrap();
    let mut daemon = Daemon::start(&env);

    let sync = |job: &str| {
        Command::new(env!("CARGO_BIN_EXE_dialsync"))
            .args(["sync", "--config", "dialsync.toml", "--job", job])
            .current_dir(env.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (sync("leads"), sync("leads2"));
    assert_eq!(a.wait().unwrap().code(), Some(0));
    assert_eq!(b.wait().unwrap().code(), Some(0));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));

    let imports: Vec<_> = env
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/contacts/import"))
        .collect();
    assert_eq!(imports.len(), 400);
    // They did run at once: the campaigns' imports interleave.
    let campaign =
        |r: &dialsync::RequestLog| r.body.as_ref().unwrap()["DiallerCampaignsID"].clone();
    let first_b = imports.iter().position(|r| campaign(r) == 539).unwrap();
    let last_a = imports.iter().rposition(|r| campaign(r) == 538).unwrap();
    assert!(first_b < last_a, "the two jobs ran one after the other");
    let at: Vec<u64> = env.requests().iter().map(|r| r.at_us).collect();
    let busiest = at
        .iter()
        .map(|t| {
            at.iter()
                .filter(|u| (*t..*t + 1_000_000).contains(*u))
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 105, "{busiest} calls in the busiest second");
}

/// `GET url` on a fresh runtime: the status and the body.
fn http_get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::get(url).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

/// The sample of `name{labels}` on a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `[metrics] listen`: the daemon serves its runs, operations, rows, state, guard trips
/// and API calls at /metrics, with values that match what happened, and no personal data.
/// A restarted daemon serves the stored figures before its first run.
#[test]
fn the_daemon_serves_prometheus_metrics() {
    let env = Env::new();
    env.write_config(TOKEN, r#"schedule = "0 0 1 1 *""#);
    env.edit_config("[state]", "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[state]");
    let mut rows = ROWS.to_vec();
    rows.push("C4;Bauer;Dora;no number;Köln;1");
    env.write_export(&rows);
    let mut daemon = Daemon::start(&env);
    let logs = daemon.wait_log("serving metrics");
    let url = logs
        .split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .expect("the metrics URL is logged")
        .to_string();

    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    let (status, page) = http_get(&url);
    assert_eq!(status, 200);
    let job = "{job=\"leads\"}";
    for (series, value) in [
        (
            "dialsync_runs_total{job=\"leads\",outcome=\"partial\"}".to_string(),
            1.0,
        ),
        (
            "dialsync_operations_total{job=\"leads\",kind=\"import\",result=\"ok\"}".into(),
            3.0,
        ),
        (
            "dialsync_operations_total{job=\"leads\",kind=\"import\",result=\"failed\"}".into(),
            0.0,
        ),
        (format!("dialsync_invalid_rows_total{job}"), 1.0),
        (format!("dialsync_export_rows{job}"), 4.0),
        (format!("dialsync_state_contacts{job}"), 3.0),
        (
            "dialsync_api_requests_total{endpoint=\"/dialler/contacts/import\",status=\"200\"}"
                .into(),
            3.0,
        ),
        (
            "dialsync_api_request_duration_seconds_count{endpoint=\"/dialler/contacts/import\"}"
                .into(),
            3.0,
        ),
        ("dialsync_api_in_flight".into(), 0.0),
        ("dialsync_api_retries_total".into(), 0.0),
    ] {
        assert_eq!(sample(&page, &series), Some(value), "{series} in:\n{page}");
    }
    let started = chrono::DateTime::parse_from_rfc3339(report["started_at"].as_str().unwrap())
        .unwrap()
        .timestamp() as f64;
    assert_eq!(
        sample(
            &page,
            &format!("dialsync_last_run_start_timestamp_seconds{job}")
        ),
        Some(started)
    );
    assert_eq!(
        sample(
            &page,
            &format!("dialsync_last_success_timestamp_seconds{job}")
        ),
        Some(started)
    );
    // Personal data would show in a series' labels or help text; the values are numbers
    // (a duration such as 0.003608929 may well contain the digits "089").
    let text: String = page
        .lines()
        .map(|l| match l.starts_with('#') {
            true => l,
            false => l.rsplit_once(' ').map_or(l, |(series, _)| series),
        })
        .collect::<Vec<_>>()
        .join("\n");
    for personal in ["Meier", "Bauer", "089", "1234567", "C4"] {
        assert!(!text.contains(personal), "{personal} in:\n{page}");
    }

    // An empty export: the guard stops the run, and says so.
    env.write_export(&[]);
    assert_eq!(env.sync(&[]).1, 5);
    let (_, page) = http_get(&url);
    assert_eq!(
        sample(
            &page,
            "dialsync_guard_trips_total{job=\"leads\",guard=\"empty_export\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "dialsync_runs_total{job=\"leads\",outcome=\"guard\"}"
        ),
        Some(1.0)
    );
    // The last success is still the first run.
    assert_eq!(
        sample(
            &page,
            &format!("dialsync_last_success_timestamp_seconds{job}")
        ),
        Some(started)
    );
    assert_eq!(http_get(&url.replace("/metrics", "/other")).0, 404);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));

    // Restarted: the stored figures, before any run.
    let mut daemon = Daemon::start(&env);
    let logs = daemon.wait_log("serving metrics");
    let url = logs
        .rsplit("url=")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let (_, page) = http_get(&url);
    assert_eq!(
        sample(&page, &format!("dialsync_state_contacts{job}")),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            &format!("dialsync_last_success_timestamp_seconds{job}")
        ),
        Some(started)
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
}

/// The daemon shares the state between its jobs, so a run that rewrote every entry
/// repacks them within the database at its end (see `src/state/repack.rs`; a manual sync
/// compacts the whole state instead, see `reliability.rs`). Whole, or with the daemon
/// killed at any step of the repack and the repack then finished by the next open, the
/// state holds every contact as before: a changed row costs one update, nothing is
/// imported again, and no copy stays beside the state.
#[test]
fn the_daemon_repacks_rewritten_entries_in_place_even_when_killed_at_any_step() {
    use std::os::unix::process::ExitStatusExt;
    // More than the 1000 rewrites below which nothing is repacked.
    let n = 1200;
    for point in crate::common::REPACK_STEPS {
        let env = Env::imported(n, "Berlin");
        // A schedule that does not fire during the test: the runs are manual ones.
        env.write_config(TOKEN, r#"schedule = "0 0 1 1 *""#);
        let all = rows(n, "Bonn");
        env.write_rows(&all);
        let mut daemon = Daemon::start_failing_at(&env, &[], point);
        match point {
            None => {
                let (report, code) = env.sync(&[]);
                assert_eq!((code, count(&report, "updated")), (0, n as u64), "{report}");
                let note = format!("the state's entries were repacked ({n} in ");
                assert!(report["notes"].to_string().contains(&note), "{report}");
                assert!(daemon.logs().contains("repacked the job's entries"));
                env.rewrite_all_and_back(n, false);
                daemon.signal("TERM");
                assert_eq!(daemon.wait_exit().code(), Some(0));
            }
            Some(point) => {
                // The manual sync handed to the daemon loses its daemon halfway.
                let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
                assert!(!out.status.success(), "{point}: {out:?}");
                assert_eq!(daemon.wait_exit().signal(), Some(9), "{point}");
            }
        }

        let what = format!("{point:?}");
        crate::reliability::one_change_costs_one_call(&env, &all, ("Bonn", "Hamm"), &what);
        env.assert_nothing_left_beside_the_state(&what);
    }
}
