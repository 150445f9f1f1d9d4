//! Shared set-up of the integration tests: an emulator on a free loopback port (bound
//! before the test goes on, so there is nothing to wait for), a temporary directory with
//! a config and an export, and the `dialsync` binary run against them.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use dialsync::{EmuContact, Emulator, EmulatorConfig, Faults, RequestLog};
use serde_json::Value;

pub(crate) const TOKEN: &str = "test-token";

pub(crate) struct Env {
    pub emu: Emulator,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// The mapping used by most tests; `{extra}` goes at the end of the [[job]] table.
pub(crate) const JOB: &str = r#"
[[job]]
name = "leads"
campaign_id = 538
default_country = "DE"
reset_when_changed = ["Round"]
{extra}

[job.source]
type = "csv"
path = "export.csv"
encoding = "windows-1252"

[job.fields]
UserData = "CustomerNo"
Name = "LastName"
FirstName = "FirstName"
PhoneNumber1 = "Phone"
City = "City"
"#;

/// The crash points of a repack (see `src/state/repack.rs`), and none: a kill after each
/// step, and a whole run.
pub(crate) const REPACK_STEPS: [Option<&str>; 5] = [
    None,
    Some("repack-copied"),
    Some("repack-marked"),
    Some("repack-refilling"),
    Some("repack-refilled"),
];

/// The crash points of a compaction (see `src/state/compact.rs`), and none.
pub(crate) const COMPACT_STEPS: [Option<&str>; 6] = [
    None,
    Some("compact-copying"),
    Some("compact-filling"),
    Some("compact-copied"),
    Some("compact-moved-aside"),
    Some("compact-swapped"),
];

pub(crate) const HEADER: &str = "CustomerNo;LastName;FirstName;Phone;City;Round";

impl Env {
    pub(crate) fn new() -> Env {
        Env::with_faults(Faults::default())
    }

    /// An env whose first sync imported `rows(n, city)`.
    pub(crate) fn imported(n: usize, city: &str) -> Env {
        let env = Env::new();
        env.write_rows(&rows(n, city));
        let (report, code) = env.sync(&[]);
        assert_eq!(
            (code, count(&report, "imported")),
            (0, n as u64),
            "{report}"
        );
        env
    }

    /// An env whose emulator injects `faults`.
    pub(crate) fn with_faults(faults: Faults) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let emu = Emulator::new(EmulatorConfig {
            client_id: 7,
            token: TOKEN.into(),
            campaigns: vec![(538, "My Campaign".into()), (539, "Other".into())],
            faults,
            ..EmulatorConfig::default()
        });
        let addr = rt
            .block_on(emu.spawn("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let env = Env {
            emu,
            addr,
            dir: tempfile::tempdir().unwrap(),
            _rt: rt,
        };
        env.write_config(TOKEN, "");
        env
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `dialsync.toml` with `token` and `extra` lines in the job.
    pub(crate) fn write_config(&self, token: &str, extra: &str) {
        let text = format!(
            "[dialler]\nbase_url = \"http://{}/rest/v1.0\"\nclient_id = 7\ntoken = \"{token}\"\n\n[state]\npath = \"state\"\n{}",
            self.addr,
            JOB.replace("{extra}", extra)
        );
        std::fs::write(self.path("dialsync.toml"), text).unwrap();
    }

    /// Replaces `from` by `to` in the config file.
    pub(crate) fn edit_config(&self, from: &str, to: &str) {
        let path = self.path("dialsync.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from} is not in the config");
        std::fs::write(path, text.replace(from, to)).unwrap();
    }

    /// Writes the export as a Windows-1252, `;`-separated CSV with CRLF line ends.
    pub(crate) fn write_export(&self, rows: &[&str]) {
        let mut text = format!("{HEADER}\r\n");
        for r in rows {
            text.push_str(r);
            text.push_str("\r\n");
        }
        let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
        assert!(!unmappable, "test data must be Windows-1252");
        std::fs::write(self.path("export.csv"), bytes).unwrap();
    }

    pub(crate) fn dialsync(&self, args: &[&str]) -> Output {
        self.dialsync_at(args, None)
    }

    /// `dialsync` with `args`, killed as `kill -9` would kill it at the crash point
    /// `point` if it is given, or failing there as on a full disk if `point` is
    /// `fail:<name>` (see `src/failpoint.rs`).
    pub(crate) fn dialsync_at(&self, args: &[&str], point: Option<&str>) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dialsync"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG");
        if let Some(point) = point {
            cmd.env("DIALSYNC_FAILPOINT", point);
        }
        cmd.output().unwrap()
    }

    /// `dialsync verify --output json` with `extra` arguments (`--force`), killed at the
    /// crash point `point` if it is given.
    pub(crate) fn verify_at(&self, extra: &[&str], point: Option<&str>) -> Output {
        let mut args = vec!["verify", "--config", "dialsync.toml", "--output", "json"];
        args.extend_from_slice(extra);
        self.dialsync_at(&args, point)
    }

    /// The row of `key` taken out of the export `all`, then a sync: it locks that contact
    /// and no other (`what` names the case).
    pub(crate) fn leave_and_lock(&self, all: &[String], key: &str, what: &str) {
        let row = format!("{key};");
        let rest: Vec<String> = all
            .iter()
            .filter(|r| !r.starts_with(&row))
            .cloned()
            .collect();
        assert_eq!(
            rest.len() + 1,
            all.len(),
            "{what}: {key} is in the export once"
        );
        self.write_rows(&rest);
        let (report, code) = self.sync(&[]);
        assert_eq!((code, count(&report, "locked")), (0, 1), "{what}: {report}");
        let locked: Vec<_> = self.contacts().into_iter().filter(|c| c.locked).collect();
        assert_eq!(locked.len(), 1, "{what}");
        assert_eq!(field(&locked[0], "UserData"), key, "{what}");
    }

    /// `dialsync sync`, killed as `kill -9` would kill it at the crash point `point` (see
    /// `src/failpoint.rs`); asserts that it was.
    pub(crate) fn sync_killed_at(&self, point: &str) {
        let killed = self.dialsync_at(
            &["sync", "--config", "dialsync.toml", "--output", "json"],
            Some(point),
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(killed.status.signal(), Some(9), "{killed:?}");
    }

    /// The names of the files in the state's scratch folder (`state.downloads`), which a
    /// repack's or a verification's copy would have left there.
    pub(crate) fn scratch_files(&self) -> Vec<String> {
        std::fs::read_dir(self.path("state.downloads"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Neither a repack's copy nor a compaction's leftover is beside the state.
    pub(crate) fn assert_nothing_left_beside_the_state(&self, what: &str) {
        let left = self.scratch_files();
        assert!(
            !left.iter().any(|f| f.starts_with("repack-")),
            "{what}: {left:?}"
        );
        for leftover in [
            "state.compact",
            "state.compact-dump",
            "state.compact-done",
            "state.before-compact",
        ] {
            assert!(!self.path(leftover).exists(), "{what}: {leftover} is left");
        }
    }

    /// Three syncs of `n` rows: every row changed (to Kiel), every row back (to Bonn, as the
    /// export was), nothing changed. The JSON report says how long a repack (or, with
    /// `compacts`, a manual sync's compaction) took in the two runs that rewrote every
    /// entry, and a run that rewrote nothing has no such field: it found no count of
    /// rewrites left.
    pub(crate) fn rewrite_all_and_back(&self, n: usize, compacts: bool) {
        for (city, updated) in [("Kiel", n), ("Bonn", n), ("Bonn", 0)] {
            self.write_rows(&rows(n, city));
            let (report, code) = self.sync(&[]);
            assert_eq!((code, count(&report, "updated")), (0, updated as u64));
            let repack_ms = report.get("repack_ms").map(|ms| ms.is_u64());
            assert_eq!(repack_ms, (updated > 0).then_some(true), "{report}");
            let afresh = report["notes"].to_string().contains("written afresh");
            assert_eq!(afresh, compacts && updated > 0, "{report}");
        }
    }

    /// The state lost (its directory removed), then `dialsync state rebuild`, which must
    /// succeed.
    pub(crate) fn lose_state_and_rebuild(&self) {
        std::fs::remove_dir_all(self.path("state")).unwrap();
        let out = self.dialsync(&["state", "rebuild", "--config", "dialsync.toml"]);
        assert!(out.status.success(), "{out:?}");
    }

    /// `dialsync sync --output json` plus `args`: the job's report and the exit code.
    pub(crate) fn sync(&self, args: &[&str]) -> (Value, i32) {
        let mut all = vec!["sync", "--config", "dialsync.toml", "--output", "json"];
        all.extend_from_slice(args);
        let out = self.dialsync(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (v["jobs"][0].clone(), out.status.code().unwrap())
    }

    /// `dialsync sync --output json`, which must succeed: the job's report and what it
    /// logged.
    pub(crate) fn sync_logged(&self) -> (Value, String) {
        self.sync_logged_at(None)
    }

    /// [`Env::sync_logged`] with the fail point `point` set (see [`Env::dialsync_at`]).
    pub(crate) fn sync_logged_at(&self, point: Option<&str>) -> (Value, String) {
        let out = self.dialsync_at(
            &["sync", "--config", "dialsync.toml", "--output", "json"],
            point,
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (report["jobs"][0].clone(), stderr)
    }

    /// `dialsync` with `args`, which must succeed: its JSON output.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = self.dialsync(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `dialsync history --output json`: the runs, newest first.
    pub(crate) fn history(&self) -> Vec<Value> {
        let v = self.json(&["history", "--config", "dialsync.toml", "--output", "json"]);
        v["runs"].as_array().unwrap().clone()
    }

    /// `dialsync history --run ID --output json`, which must succeed: the run.
    pub(crate) fn history_run(&self, id: &str) -> Value {
        let args = [
            "history",
            "--config",
            "dialsync.toml",
            "--run",
            id,
            "--output",
            "json",
        ];
        self.json(&args)["run"].clone()
    }

    pub(crate) fn contacts(&self) -> Vec<EmuContact> {
        self.emu.contacts()
    }

    pub(crate) fn contact(&self, user_data: &str) -> EmuContact {
        let found: Vec<_> = self
            .contacts()
            .into_iter()
            .filter(|c| c.fields["UserData"] == user_data)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one contact with UserData {user_data}: {found:?}"
        );
        found.into_iter().next().unwrap()
    }

    pub(crate) fn requests(&self) -> Vec<RequestLog> {
        self.emu.requests()
    }

    /// The requests received since `n` were.
    pub(crate) fn requests_since(&self, n: usize) -> Vec<RequestLog> {
        self.requests().split_off(n)
    }
}

pub(crate) fn field<'a>(c: &'a EmuContact, name: &str) -> &'a str {
    c.fields.get(name).and_then(Value::as_str).unwrap_or("")
}

/// `n` valid export rows K1..Kn (in the `HEADER` columns), with `city` as City.
pub(crate) fn rows(n: usize, city: &str) -> Vec<String> {
    (1..=n)
        .map(|i| format!("K{i};Name{i};First{i};0171 {:07};{city};1", 1_000_000 + i))
        .collect()
}

impl Env {
    /// Writes `rows` as the export.
    pub(crate) fn write_rows(&self, rows: &[String]) {
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        self.write_export(&refs);
    }

    /// Asserts that the emulator holds exactly one contact per row of `rows`, with the
    /// row's name and city, and nothing else.
    pub(crate) fn assert_holds_exactly(&self, rows: &[String]) {
        let contacts = self.contacts();
        let mut by_key = std::collections::HashMap::new();
        for c in &contacts {
            let key = field(c, "UserData").to_string();
            assert!(
                by_key.insert(key.clone(), c.clone()).is_none(),
                "two contacts with UserData {key}"
            );
        }
        assert_eq!(contacts.len(), rows.len(), "one contact per row");
        for r in rows {
            let cols: Vec<&str> = r.split(';').collect();
            let c = by_key
                .get(cols[0])
                .unwrap_or_else(|| panic!("no contact {}", cols[0]));
            assert_eq!(
                (field(c, "Name"), field(c, "City")),
                (cols[1], cols[4]),
                "{}",
                cols[0]
            );
        }
    }
}

/// A count from a job's JSON report.
/// Garbage where sled keeps its configuration and log in the database at `dir`, as a
/// full disk or a broken file system leaves them.
pub(crate) fn damage_database(dir: &std::path::Path) {
    std::fs::write(dir.join("conf"), b"\xff\xfe garbage").unwrap();
    std::fs::write(dir.join("db"), vec![0xA5u8; 4096]).unwrap();
}

pub(crate) fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key} in {report}"))
}

/// Starts `dialsync emulator --listen 127.0.0.1:0` plus `args` as a process of its own
/// (`RUST_LOG` as given, or none; stderr as given) and waits for its first line, which
/// says where it listens: its readiness signal. The child and the API's base URL.
pub(crate) fn emulator_process(
    args: &[&str],
    rust_log: Option<&str>,
    stderr: Stdio,
) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dialsync"));
    cmd.args(["emulator", "--listen", "127.0.0.1:0"]).args(args);
    match rust_log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_string();
    (child, base)
}

/// Runs `f` to its end on a runtime of its own (for a test that is not async itself).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A TLS server on a free loopback port with the self-signed certificate in tests/data
/// (for `localhost` and 127.0.0.1, signed by no CA the system knows), answering every
/// request with `body` as `content_type`; its port. Spawned on the current runtime.
pub(crate) async fn tls_server(content_type: &'static str, body: Vec<u8>) -> u16 {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let certs = vec![CertificateDer::from_pem_file(data.join("untrusted-cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(data.join("untrusted-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body: Arc<[u8]> = body.into();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body) = (acceptor.clone(), Arc::clone(&body));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused the certificate
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}
