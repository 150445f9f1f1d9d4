//! The command line: `validate` on every shipped config, config errors and their exit
//! code, the demo, and the emulator as a separate process.

use crate::common;

use std::process::{Command, Stdio};

fn dialsync() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dialsync"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn every_example_config_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // The example reads its token from this variable, as an operator's would.
            // Offline: their dialler and exports are examples.
            let out = dialsync()
                .args(["validate", "--offline", "--config"])
                .arg(&path)
                .env("DIALSYNC_TOKEN", "t")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the example configs in config/");
}

#[test]
fn a_bad_config_names_file_line_and_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[dialler]\nbase_url = \"http://x/rest/v1.0\"\nclient_id = 7\ntoken = \"secret-t0ken\"\ntimeuot = \"5s\"\n\n\
         [[job]]\nname = \"a\"\ncampaign_id = 1\non_missing = \"purge\"\n[job.source]\ntype = \"csv\"\npath = \"x.csv\"\n\
         [job.fields]\nUserData = \"id\"\nName = \"n\"\nPhonenumber1 = \"p\"\n",
    )
    .unwrap();
    for cmd in ["validate", "sync"] {
        let out = dialsync()
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        let file = path.display().to_string();
        assert!(
            err.contains(&format!("{file}:5: dialler.timeuot: unknown key")),
            "{err}"
        );
        assert!(
            err.contains(&format!("{file}:10: job[1].on_missing")),
            "{err}"
        );
        assert!(
            err.contains(&format!("{file}:17: job[1].fields.Phonenumber1"))
                && err.contains("did you mean `PhoneNumber1`"),
            "{err}"
        );
        assert!(!err.contains("secret-t0ken"));
    }
}

#[test]
fn validate_reports_an_unreadable_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/dialsync.example.toml"
    ))
    .unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        text.replace(
            "token_credential = \"token\"",
            "token_file = \"missing-token\"",
        ),
    )
    .unwrap();
    let out = dialsync()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_runs_the_whole_cycle() {
    let out = dialsync()
        .arg("demo")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("9 imported"), "{text}");
    assert!(
        text.contains("1 imported, 1 updated, 1 reset, 0 unlocked, 1 locked"),
        "{text}"
    );
    assert!(
        text.contains("9 unchanged") && text.contains("0 failed operations, 2 API calls\n"),
        "a quiet run: the outcome reads only: {text}"
    );
    // The loop closed: the two calls' outcomes, as the CRM gets them.
    assert!(text.contains("wrote 2 rows to"), "{text}");
    // (Contact IDs follow the order the imports reached the emulator.)
    let row = |key: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("   {key};")))
            .unwrap_or_else(|| panic!("no outcome row of {key}: {text}"));
        let cells: Vec<&str> = line.trim().split(';').collect();
        [&cells[..1], &cells[2..9]].concat().join(";")
    };
    assert_eq!(row("K-1001"), "K-1001;ABG;Abgeschlossen;1;0;0;0;1");
    assert_eq!(row("K-1003"), "K-1003;WV;Wiedervorlage;0;0;1;0;1");
}

#[test]
fn emulator_process_serves_the_api_until_sigterm() {
    let (mut child, base) = common::emulator_process(
        &[
            "--client-id",
            "3",
            "--token",
            "T",
            "--campaign",
            "12:Leads",
            "--user",
            "jdoe",
            "--user",
            "asmith",
            "--result-code",
            "12:2701:NI:aborted",
        ],
        None,
        Stdio::null(),
    );
    assert!(base.ends_with("/rest/v1.0/3"), "{base}");

    common::block_on(async {
        let http = reqwest::Client::new();
        let campaigns = http
            .get(format!("{base}/dialler/campaigns"))
            .bearer_auth("T")
            .send()
            .await
            .unwrap();
        assert_eq!(campaigns.status(), 200);
        let v: serde_json::Value = campaigns.json().await.unwrap();
        assert_eq!(v["records"][0]["Name"], "Leads");
        let get = |path: &str| {
            let request = http.get(format!("{base}{path}")).bearer_auth("T");
            async move {
                let answer = request.send().await.unwrap();
                assert_eq!(answer.status(), 200);
                answer.json::<serde_json::Value>().await.unwrap()
            }
        };
        let users = get("/users").await;
        let uids: Vec<&str> = users["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["UID"].as_str().unwrap())
            .collect();
        assert_eq!(uids, ["jdoe", "asmith"], "{users}");
        let codes = get("/dialler/campaigns/campaign/12/resultCodes?languagesID=2").await;
        let keys: Vec<(&str, bool)> = codes["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["ExportKey"].as_str().unwrap(), c["bAborted"] == true))
            .collect();
        assert_eq!(
            keys,
            [
                ("ABG", false),
                ("Aufleger", true),
                ("WV", false),
                ("Termin", false),
                ("NI", true)
            ],
            "{codes}"
        );
        let denied = http
            .get(format!("{base}/dialler/campaigns"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn token_credential_comes_from_the_credentials_directory() {
    let env = common::Env::new();
    env.edit_config(
        &format!("token = \"{}\"", common::TOKEN),
        "token_credential = \"token\"",
    );
    let creds = env.path("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("token"), format!("{}\n", common::TOKEN)).unwrap();
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);

    let ok = dialsync()
        .args(["sync", "--config", "dialsync.toml", "--output", "json"])
        .current_dir(env.dir.path())
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(env.contacts().len(), 1);

    // `validate` outside the service checks the rest and says when the token is checked.
    let out = dialsync()
        .args(["validate", "--config", "dialsync.toml"])
        .current_dir(env.dir.path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checked when the service starts"));
    // A sync outside the service: a message that says what to do, exit code 2.
    env.write_export(&["C2;Schulz;Bernd;030 7654321;Berlin;1"]);
    let out = dialsync()
        .args(["sync", "--config", "dialsync.toml"])
        .current_dir(env.dir.path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("token_credential") && stderr.contains("systemctl start dialsync"),
        "{stderr}"
    );
    assert_eq!(env.contacts().len(), 1, "nothing was sent");
}

/// `validate` rejects what a run would: a ca_file that is missing or holds no PEM
/// certificate, named with file, line and key.
#[test]
fn validate_checks_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-pem.crt"), "hello\n").unwrap();
    for (ca, expect) in [
        ("missing.pem", "cannot read"),
        ("not-pem.crt", "holds no PEM certificate"),
    ] {
        let path = dir.path().join("dialsync.toml");
        std::fs::write(
            &path,
            format!(
                "[dialler]\nbase_url = \"https://x/rest/v1.0\"\nclient_id = 7\ntoken = \"t\"\nca_file = \"{ca}\"\n\n\
                 [[job]]\nname = \"a\"\ncampaign_id = 1\n[job.source]\ntype = \"csv\"\npath = \"x.csv\"\n\
                 [job.fields]\nUserData = \"id\"\nName = \"n\"\nPhoneNumber1 = \"p\"\n"
            ),
        )
        .unwrap();
        let out = dialsync()
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("{}:5: dialler.ca_file: ", path.display()))
                && err.contains(expect),
            "{err}"
        );
    }
    // A real certificate passes.
    let cert =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/untrusted-cert.pem");
    let path = dir.path().join("dialsync.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("not-pem.crt", &cert.display().to_string());
    std::fs::write(&path, text).unwrap();
    let out = dialsync()
        .args(["validate", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A standard output nobody reads (`dialsync status | head -c1` after head exits): the
/// peer of a socket pair, closed before the command writes.
fn closed_stdout() -> Stdio {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(ours);
    Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

/// `status` and `sync` whose output goes to a closed pipe end quietly, with the exit code
/// of what they did (not 101 and a "panicked" message).
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let env = crate::common::Env::new();
    env.write_rows(&crate::common::rows(5, "Köln"));
    for (args, code) in [
        (
            vec!["sync", "--config", "dialsync.toml", "--output", "json"],
            0,
        ),
        (vec!["sync", "--config", "dialsync.toml"], 0),
        (
            vec!["status", "--config", "dialsync.toml", "--output", "json"],
            0,
        ),
        (vec!["status", "--config", "dialsync.toml"], 0),
    ] {
        let out = dialsync()
            .args(&args)
            .current_dir(env.dir.path())
            .stdout(closed_stdout())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
    assert_eq!(env.contacts().len(), 5, "the sync was done all the same");
}

/// `validate` checks what the first run needs, against the emulator: each broken piece
/// gets its own line and exit code, the rest is still checked; `--offline` checks the
/// config alone.
#[test]
fn validate_checks_the_export_and_the_dialler() {
    let env = common::Env::new();
    env.write_export(&["C1;Meier;Anna;089 1234567;München;1"]);
    env.write_config(common::TOKEN, "");
    let validate = |extra: &[&str]| {
        let mut args = vec!["validate", "--config", "dialsync.toml"];
        args.extend_from_slice(extra);
        let out = env.dialsync(&args);
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = validate(&[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok      job leads: export")
            && text.contains("1 row, every mapped column present")
            && text.contains("token and ClientsID 7 accepted")
            && text.contains("ok      job leads: campaign 538 \"My Campaign\" found"),
        "{text}"
    );
    let n = env.requests().len();
    assert_eq!(n, 1, "one read-only call: {:?}", env.requests());
    assert_eq!(env.requests()[0].method, "GET");

    // Each fault on its own: its line, its exit code.
    let cases: [(&str, &str, i32, &str); 5] = [
        (
            "FirstName = \"FirstName\"",
            "FirstName = \"Vorname\"",
            6,
            "has no column `Vorname` named in [job.fields]",
        ),
        ("path = \"export.csv\"", "path = \"gone.csv\"", 6, "cannot open the CRM export"),
        ("token = \"test-token\"", "token = \"wrong\"", 4, "HTTP 401"),
        ("client_id = 7", "client_id = 8", 4, "client_id = 8"),
        ("campaign_id = 538", "campaign_id = 540", 7, "campaign 540 is not on the dialler: check campaign_id; the campaigns there are: 538 \"My Campaign\", 539 \"Other\""),
    ];
    for (from, to, exit, says) in cases {
        env.edit_config(from, to);
        let (code, text) = validate(&[]);
        assert_eq!(code, exit, "{to}: {text}");
        let failed: Vec<&str> = text.lines().filter(|l| l.contains("FAILED")).collect();
        assert_eq!(failed.len(), 1, "{to}: {text}");
        assert!(failed[0].contains(says), "{to}: {text}");
        assert!(failed[0].contains(&format!("(exit code {exit})")), "{text}");
        if to.contains("wrong") {
            assert!(!text.contains("wrong"), "the token is never shown: {text}");
        }
        // Offline, the config alone: fine.
        let (code, text) = validate(&["--offline"]);
        assert_eq!(code, 0, "{to}: {text}");
        assert!(!text.contains("FAILED"), "{text}");
        env.edit_config(to, from);
    }
    // A dialler out of reach: said, with the code of a run that could not reach it.
    env.edit_config(&format!("http://{}/", env.addr), "http://127.0.0.1:1/");
    env.edit_config("client_id = 7", "client_id = 7\nmax_retries = 0");
    let (code, text) = validate(&[]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("FAILED  dialler http://127.0.0.1:1/"),
        "{text}"
    );
    env.edit_config("http://127.0.0.1:1/", &format!("http://{}/", env.addr));

    // The export and the campaign both wrong: both reported, the worse code wins.
    env.edit_config("path = \"export.csv\"", "path = \"gone.csv\"");
    env.edit_config("campaign_id = 538", "campaign_id = 540");
    let (code, text) = validate(&[]);
    assert_eq!(text.matches("FAILED").count(), 2, "{text}");
    assert_eq!(code, 6, "{text}");
}

/// -v and -q set how much is logged, alongside RUST_LOG; the config's warnings (here: no
/// default_country) are validate's to give, not every command's.
#[test]
fn verbosity_flags_and_config_warnings() {
    let env = crate::common::Env::new();
    env.edit_config("default_country = \"DE\"\n", "");
    env.write_export(&["C1;Meier;Anna;+49 89 1234567;München;1"]);
    let stderr = |args: &[&str], rust_log: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dialsync"));
        cmd.args(args)
            .current_dir(env.dir.path())
            .env_remove("RUST_LOG");
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let sync = ["sync", "--config", "dialsync.toml"];
    let quiet = stderr(&sync, None);
    assert!(!quiet.contains("sync finished"), "{quiet}");
    assert!(!quiet.contains("default_country"), "{quiet}");
    let verbose = stderr(&["sync", "-v", "--config", "dialsync.toml"], None);
    assert!(
        verbose.contains("sync finished") && verbose.contains("outcome=ok"),
        "{verbose}"
    );
    let hushed = stderr(&["sync", "-q", "--config", "dialsync.toml"], Some("info"));
    assert!(!hushed.contains("sync finished"), "{hushed}");
    let v = stderr(
        &["validate", "--offline", "--config", "dialsync.toml"],
        None,
    );
    assert!(v.contains("warning: job leads: no default_country"), "{v}");
}

/// Completions and the man page come from the same definitions as --help, so they name
/// every subcommand; --version names the commit of a checkout.
#[test]
fn completions_man_page_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let out = dialsync().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["sync", "history", "status", "validate", "completions"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(text.contains("check"), "{shell}: status --check");
    }
    let out = dialsync().arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(man.contains(".TH dialsync 1"), "{man}");
    assert!(man.contains("history"), "{man}");

    let out = dialsync().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        version.starts_with(concat!("dialsync ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let git = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(git) = git.ok().filter(|o| o.status.success()) {
        let commit = String::from_utf8_lossy(&git.stdout).trim().to_string();
        // Built from this checkout (a commit made since the build is not yet in it).
        assert!(version.contains(" (git "), "{version}");
        eprintln!("version {version}, checkout at {commit}");
    }
}

/// A result code for a campaign the emulator does not have, or one that takes another
/// code's ID, is a usage error that says which.
#[test]
fn emulator_result_codes_are_checked() {
    for (args, expect) in [
        (
            &["--result-code", "99:2701:NI:aborted"][..],
            "there is no campaign 99",
        ),
        (
            &["--result-code", "538:2695:NI:aborted"][..],
            "has result code 2695 (ABG)",
        ),
        (&["--result-code", "538:2701:NI:won"][..], "no result type"),
        (
            &["--result-code", "538:NI"][..],
            "CAMPAIGN:ID:EXPORTKEY:TYPE",
        ),
    ] {
        let out = dialsync()
            .args(["emulator", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

/// `dialsync emulator --dial-rate` calls an imported contact on its own.
#[test]
fn emulator_process_dials_on_its_own() {
    let (mut child, base) =
        common::emulator_process(&["--dial-rate", "500/s"], None, Stdio::null());
    common::block_on(async {
        let http = reqwest::Client::new();
        let imported = http
            .post(format!(
                "{base}/dialler/contacts/import?overwriteDuplicates=true"
            ))
            .bearer_auth("emulator-token")
            .json(&serde_json::json!({
                "DiallerCampaignsID": 538, "UserData": "U1", "Name": "A",
                "PhoneNumber1": "+498912345678"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(imported.status(), 200);
        let state = base.replace("/rest/v1.0/7", "/_emulator/state");
        // Waits for the emulator's own call: each GET is a round trip, no sleep.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v: serde_json::Value = http.get(&state).send().await.unwrap().json().await.unwrap();
            if v["contacts"][0]["history"]
                .as_array()
                .is_some_and(|h| !h.is_empty())
            {
                assert!(v["contacts"][0]["tries"].as_u64().unwrap() >= 1, "{v}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no call: {v}");
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
