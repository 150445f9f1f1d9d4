//! Crash safety: a sync killed with SIGKILL at many moments, each time run again, leaves
//! the dialler exactly right. The emulator runs in a process of its own, so only
//! dialsync dies; the moments are set by how many requests the emulator has seen since
//! the sync started (its debug log, read as it comes), drawn from a fixed seed.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

const CONTACTS: usize = 5_000;
const KILLS: usize = 24;

/// The emulator process, and the count of requests it has answered.
struct EmulatorProcess {
    child: Child,
    base: String,
    served: Arc<(Mutex<usize>, Condvar)>,
}

impl EmulatorProcess {
    fn start() -> EmulatorProcess {
        let (mut child, base) = common::emulator_process(
            &[
                "--client-id",
                "7",
                "--token",
                common::TOKEN,
                "--campaign",
                "538:Leads",
            ],
            Some("dialsync=debug"),
            Stdio::piped(),
        );
        let served = Arc::new((Mutex::new(0usize), Condvar::new()));
        let counter = Arc::clone(&served);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" request ") || line.ends_with(" request") {
                    let (n, cv) = &*counter;
                    *n.lock().unwrap() += 1;
                    cv.notify_all();
                }
            }
        });
        EmulatorProcess {
            child,
            base,
            served,
        }
    }

    fn served(&self) -> usize {
        *self.served.0.lock().unwrap()
    }

    /// Waits until the emulator has served `n` requests or `sync` has ended.
    fn wait_for(&self, n: usize, sync: &mut Child) {
        let (count, cv) = &*self.served;
        let mut c = count.lock().unwrap();
        while *c < n {
            if sync.try_wait().unwrap().is_some() {
                return;
            }
            c = cv.wait_timeout(c, Duration::from_millis(20)).unwrap().0;
        }
    }

    /// Every contact the emulator holds.
    fn contacts(&self) -> Vec<Value> {
        let root = self.base.trim_end_matches("/rest/v1.0/7");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let v: Value = reqwest::get(format!("{root}/_emulator/state"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["contacts"].as_array().unwrap().clone()
        })
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sync(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dialsync"));
    c.args(["sync", "--config", "dialsync.toml", "--output", "json"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// Writes the config of a job against `emu` with `extra` job settings into `dir`.
fn write_config(emu: &EmulatorProcess, dir: &std::path::Path, extra: &str) {
    let config = format!(
        "[dialler]\nbase_url = \"{}\"\nclient_id = 7\ntoken = \"{}\"\nretry_delay = \"1ms\"\n\n\
         [state]\npath = \"state\"\n{}",
        emu.base.trim_end_matches("/7"),
        common::TOKEN,
        common::JOB.replace("{extra}", extra)
    );
    std::fs::write(dir.join("dialsync.toml"), config).unwrap();
}

/// Writes `rows` as the export in `dir`.
fn write_export(dir: &std::path::Path, rows: &[String]) {
    let mut text = format!("{}\r\n", common::HEADER);
    for r in rows {
        text.push_str(r);
        text.push_str("\r\n");
    }
    let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(&text);
    std::fs::write(dir.join("export.csv"), bytes).unwrap();
}

/// Asserts that the emulator holds exactly one contact per row of `rows`, with its
/// name and city, none of them locked.
fn assert_holds_exactly(emu: &EmulatorProcess, rows: &[String]) {
    let contacts = emu.contacts();
    let mut seen = std::collections::HashMap::new();
    for c in &contacts {
        let key = c["fields"]["UserData"].as_str().unwrap().to_string();
        assert_eq!(c["locked"], false, "{key} is locked");
        let values = (c["fields"]["Name"].clone(), c["fields"]["City"].clone());
        assert!(
            seen.insert(key.clone(), values).is_none(),
            "two contacts with UserData {key}"
        );
    }
    assert_eq!(contacts.len(), rows.len());
    for r in rows {
        let cols: Vec<&str> = r.split(';').collect();
        let (name, city) = &seen[cols[0]];
        assert_eq!(
            (name.as_str(), city.as_str()),
            (Some(cols[1]), Some(cols[4])),
            "{}",
            cols[0]
        );
    }
}

/// Runs a sync to its end; its report.
fn sync_to_end(dir: &std::path::Path) -> Value {
    let out = sync(dir).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report}");
    report["jobs"][0].clone()
}

#[test]
fn a_sync_killed_at_any_moment_never_duplicates_loses_or_leaves_stale_contacts() {
    let emu = EmulatorProcess::start();
    let dir = tempfile::tempdir().unwrap();
    // overwrite_duplicates = false: a contact imported twice would be two contacts.
    write_config(&emu, dir.path(), "overwrite_duplicates = false");
    let first = common::rows(CONTACTS, "Köln");
    // Half the contacts change while the runs are being killed: updates too must land.
    let mut second = first.clone();
    for r in second.iter_mut().step_by(2) {
        *r = r.replace("Köln", "Bonn");
    }
    let write = |rows: &[String]| write_export(dir.path(), rows);
    write(&first);

    let mut rng = fastrand::Rng::with_seed(20261122);
    let mut killed_mid_run = 0;
    for i in 0..KILLS {
        if i == KILLS / 2 {
            write(&second);
        }
        let start = emu.served();
        // Some kills before the first call (reading, planning, settling the journal).
        let after = if i % 6 == 0 { 0 } else { rng.usize(1..400) };
        let mut child = sync(dir.path()).spawn().unwrap();
        emu.wait_for(start + after, &mut child);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(
        killed_mid_run >= 20,
        "only {killed_mid_run} runs were killed before they ended"
    );

    // Run to the end: the dialler holds each contact once, with the latest fields.
    sync_to_end(dir.path());
    assert_holds_exactly(&emu, &second);
    // And the state knows it all: nothing left to send.
    assert_eq!(
        sync_to_end(dir.path())["api_calls"],
        1,
        "the token check only"
    );
}

/// Promise 8 for every operation, not only imports: a run that locks and updates is
/// killed at a seeded moment, then the CRM's previous export comes back. Whatever the
/// killed run got confirmed but did not store must not stay behind: one run later every
/// contact is exactly as the restored export says, none locked, and the next run makes
/// no call.
#[test]
fn a_run_killed_mid_way_then_a_reverted_export_leaves_no_stale_lock_or_value() {
    const N: usize = 2_000;
    let emu = EmulatorProcess::start();
    let dir = tempfile::tempdir().unwrap();
    write_config(&emu, dir.path(), "max_removals_percent = 100");
    let before = common::rows(N, "Köln");
    // 8% leave the export (locks), 45% move (updates).
    let after: Vec<String> = before
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 12 != 5)
        .map(|(i, r)| match i % 20 < 9 {
            true => r.replace("Köln", "Bonn"),
            false => r.clone(),
        })
        .collect();
    write_export(dir.path(), &before);
    sync_to_end(dir.path());

    let mut rng = fastrand::Rng::with_seed(20261123);
    let mut killed_mid_run = 0;
    for i in 0..KILLS {
        write_export(dir.path(), &after);
        let start = emu.served();
        let moment = if i % 8 == 0 { 1 } else { rng.usize(2..1_000) };
        let mut child = sync(dir.path()).spawn().unwrap();
        emu.wait_for(start + moment, &mut child);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        write_export(dir.path(), &before);
        let report = sync_to_end(dir.path());
        assert_holds_exactly(&emu, &before);
        let again = sync_to_end(dir.path());
        // The token check only.
        assert_eq!(again["api_calls"], 1, "kill {i}: {again}\nafter {report}");
    }
    assert!(
        killed_mid_run >= 20,
        "only {killed_mid_run} runs were killed before they ended"
    );
}
