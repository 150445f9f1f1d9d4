use super::*;

/// The config problems of `text` as (line, key) pairs; used by tests.
fn problems(text: &str) -> Vec<(Option<usize>, String, String)> {
    match Config::from_str(text, Path::new("test.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.line, p.key, p.message))
            .collect(),
    }
}

const GOOD: &str = r#"
[dialler]
base_url = "https://dialler.example.com/rest/v1.0/"
client_id = 7
token = "secret-token"
timeout = "20s"

[state]
path = "state"

[[job]]
name = "leads"
schedule = "*/15 * * * *"
campaign_id = 538
default_country = "DE"
reset_when_changed = ["Round"]

[job.source]
type = "csv"
path = "leads.csv"
delimiter = ";"
encoding = "windows-1252"

[job.fields]
UserData = "CustomerNo"
Name = "LastName"
PhoneNumber1 = "Phone"
"#;

#[test]
fn good_config_compiles_with_defaults() {
    let c = Config::from_str(GOOD, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
    assert_eq!(c.dialler.base_url, "https://dialler.example.com/rest/v1.0");
    assert_eq!(c.dialler.timeout, Duration::from_secs(20));
    assert_eq!(c.dialler.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.dialler.max_concurrency, DEFAULT_MAX_CONCURRENCY);
    assert_eq!(c.state.path, PathBuf::from("/etc/dialsync/state"));
    let j = &c.jobs[0];
    assert_eq!(j.on_missing, OnMissing::Lock);
    assert!(j.overwrite_duplicates);
    assert_eq!(j.reset_contact, None);
    assert_eq!(j.source.path, PathBuf::from("/etc/dialsync/leads.csv"));
    assert_eq!(j.source.delimiter, Some(b';'));
    assert_eq!(j.source.encoding, Some(encoding_rs::WINDOWS_1252));
    assert_eq!(j.key_column, "CustomerNo");
    assert_eq!(
        j.columns(),
        vec!["CustomerNo", "LastName", "Phone", "Round"]
    );
    assert!(format!("{:?}", c.dialler.token).contains("redacted"));
    assert!(!format!("{c:?}").contains("secret-token"));
}

#[test]
fn every_problem_is_reported_at_once_with_line_and_key() {
    let text = GOOD
        .replace("timeout = \"20s\"", "timeout = \"20 parsecs\"\ntimout = 5")
        .replace("delimiter = \";\"", "delimiter = \";\"\npth = \"x\"")
        .replace(
            "PhoneNumber1 = \"Phone\"",
            "PhoneNumbr1 = \"Phone\"\nRegion = \"R\"",
        );
    let p = problems(&text);
    let keys: Vec<_> = p
        .iter()
        .map(|(l, k, _)| (l.unwrap_or(0), k.as_str()))
        .collect();
    assert!(keys.contains(&(6, "dialler.timeout")), "{p:#?}");
    assert!(keys.contains(&(7, "dialler.timout")), "{p:#?}");
    assert!(keys.contains(&(23, "job[1].source.pth")), "{p:#?}");
    assert!(keys.contains(&(29, "job[1].fields.PhoneNumbr1")), "{p:#?}");
    assert!(keys.contains(&(30, "job[1].fields.Region")), "{p:#?}");
    assert_eq!(p.len(), 6, "{p:#?}");
    let msg = |k: &str| p.iter().find(|(_, key, _)| key == k).unwrap().2.clone();
    assert!(msg("job[1].fields.PhoneNumbr1").contains("did you mean `PhoneNumber1`"));
    assert!(msg("job[1].fields").contains("PhoneNumber1"), "{p:#?}");
}

#[test]
fn bad_values_name_their_key() {
    let text = GOOD
        .replace("client_id = 7", "client_id = \"seven\"")
        .replace(
            "campaign_id = 538",
            "campaign_id = 538\ncampaign_name = \"X\"\non_missing = \"purge\"",
        )
        .replace("default_country = \"DE\"", "default_country = \"Germany\"")
        .replace("*/15 * * * *", "*/15 * * *");
    let p = problems(&text);
    let has = |k: &str, m: &str| p.iter().any(|(_, key, msg)| key == k && msg.contains(m));
    assert!(has("dialler.client_id", "invalid type"), "{p:#?}");
    assert!(has("job[1].on_missing", "purge"), "{p:#?}");
    // A bad value does not hide the problems after it in the same section.
    assert!(has("job[1].schedule", "4 fields"), "{p:#?}");
    assert!(has("job[1].default_country", "Germany"), "{p:#?}");
    assert!(has("job[1].campaign_name", "not both"), "{p:#?}");
    // ...and is not reported a second time as missing.
    assert!(
        !p.iter()
            .any(|(_, _, m)| m.contains("missing key `client_id`")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 5, "{p:#?}");
}

#[test]
fn numbers_out_of_range_name_key_line_and_range() {
    let text = GOOD.replace(
        "timeout = \"20s\"",
        "timeout = \"20s\"\nmax_concurrency = 0\nmax_retries = 21\nmax_requests_per_second = 100001",
    );
    let p = problems(&text);
    let got: Vec<_> = p
        .iter()
        .map(|(l, k, m)| (l.unwrap_or(0), k.as_str(), m.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                7,
                "dialler.max_concurrency",
                "0 is out of range: use 1 to 256"
            ),
            (8, "dialler.max_retries", "21 is out of range: use 0 to 20"),
            (
                9,
                "dialler.max_requests_per_second",
                "100001 is out of range: use 1 to 100000, or leave it out for no limit"
            ),
        ]
    );
    let ok = GOOD.replace(
        "timeout = \"20s\"",
        "timeout = \"20s\"\nmax_concurrency = 256\nmax_retries = 0\nmax_requests_per_second = 1",
    );
    let d = Config::from_str(&ok, Path::new("t.toml")).unwrap().dialler;
    assert_eq!(
        (
            d.max_concurrency,
            d.retry.max_retries,
            d.max_requests_per_second.map(|n| n.get())
        ),
        (256, 0, Some(1))
    );
}

#[test]
fn token_sources_are_exclusive_and_required() {
    let both = GOOD.replace(
        "token = \"secret-token\"",
        "token = \"a\"\ntoken_env = \"B\"",
    );
    assert!(problems(&both)
        .iter()
        .any(|(_, k, m)| k == "dialler.token" && m.contains("only one")));
    let none = GOOD.replace("token = \"secret-token\"", "");
    assert!(problems(&none)
        .iter()
        .any(|(_, _, m)| m.contains("missing token")));
    let blank = GOOD.replace("token = \"secret-token\"", "token = \"  \"");
    assert!(problems(&blank)
        .iter()
        .any(|(_, k, m)| k == "dialler.token" && m == "is empty"));
    // The token never shows in a problem.
    let bad = GOOD.replace("client_id = 7", "client_id = -1");
    assert!(!format!("{:?}", problems(&bad)).contains("secret-token"));
}

#[test]
fn timezone_is_an_iana_name_and_defaults_to_utc() {
    let c = Config::from_str(GOOD, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
    assert_eq!(c.jobs[0].timezone, chrono_tz::UTC);
    let berlin = GOOD.replace(
        "*/15 * * * *\"",
        "*/15 * * * *\"\ntimezone = \"Europe/Berlin\"",
    );
    let c = Config::from_str(&berlin, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
    assert_eq!(c.jobs[0].timezone, chrono_tz::Europe::Berlin);
    let bad = berlin.replace("Europe/Berlin", "CET+1");
    let p = problems(&bad);
    assert!(
        p.iter().any(|(line, k, m)| k == "job[1].timezone"
            && line.is_some()
            && m.contains("Europe/Berlin")),
        "{p:#?}"
    );
}

#[test]
fn token_credential_reads_the_systemd_credentials_directory() {
    let text = GOOD.replace("token = \"secret-token\"", "token_credential = \"token\"");
    let c = Config::from_str(&text, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
    let TokenSource::Credential(name) = &c.dialler.token else {
        panic!("{:?}", c.dialler.token)
    };
    assert_eq!(name, "token");
    let bad = GOOD.replace(
        "token = \"secret-token\"",
        "token_credential = \"/etc/dialsync/token\"",
    );
    assert!(problems(&bad)
        .iter()
        .any(|(_, k, m)| k == "dialler.token_credential" && m.contains("LoadCredential")));
}

#[test]
fn syntax_errors_have_a_line() {
    let p = problems("[dialler]\nbase_url = \"x\nclient_id = 7\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, Some(2), "{p:?}");
}

#[test]
fn duplicate_job_names_and_unknown_sections() {
    let two = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[job]]").unwrap()..]);
    assert!(problems(&two)
        .iter()
        .any(|(_, _, m)| m.contains("used twice")));
    let extra = format!("[jobs]\nx = 1\n{GOOD}");
    assert!(problems(&extra)
        .iter()
        .any(|(l, k, m)| *l == Some(1) && k == "jobs" && m.contains("[[job]]")));
}

#[test]
fn base_url_with_client_id_is_refused() {
    let text = GOOD.replace("rest/v1.0/\"", "rest/v1.0/7\"");
    assert!(problems(&text)
        .iter()
        .any(|(_, k, m)| k == "dialler.base_url" && m.contains("ClientsID")));
}

#[test]
fn csv_report_shapes_take_title_footer_and_comment_settings() {
    let shaped = GOOD.replace(
        "encoding = \"windows-1252\"",
        "encoding = \"windows-1252\"\nskip_header_lines = 2\nskip_footer_lines = 3\ncomment = \"#\"",
    );
    let c = Config::from_str(&shaped, Path::new("test.toml")).unwrap();
    let s = &c.jobs[0].source;
    assert_eq!(
        (s.skip_header_lines, s.skip_footer_lines, s.comment),
        (2, 3, Some(b'#'))
    );
    let bad = GOOD.replace(
        "encoding = \"windows-1252\"",
        "comment = \";\"\nskip_footer_lines = 5000",
    );
    let found = problems(&bad);
    assert!(
        found
            .iter()
            .any(|(_, k, m)| k == "job[1].source.comment" && m.contains("not the delimiter")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(_, k, m)| k == "job[1].source.skip_footer_lines" && m.contains("at most")),
        "{found:?}"
    );
}

#[test]
fn a_schedule_that_never_fires_is_rejected_and_six_fields_are_explained() {
    let never = GOOD.replace("*/15 * * * *", "0 0 31 2 *");
    let found = problems(&never);
    assert!(
        found
            .iter()
            .any(|(_, k, m)| k.ends_with(".schedule") && m.contains("never fires")),
        "{found:?}"
    );
    let six = GOOD.replace(
        "schedule = \"*/15 * * * *\"",
        "schedule = \"0 0 9 * * 1-5\"\ntimezone = \"Europe/Berlin\"",
    );
    let c = Config::from_str(&six, Path::new("test.toml")).unwrap();
    let warning = c
        .warnings
        .iter()
        .find(|w| w.contains("6 fields"))
        .unwrap_or_else(|| panic!("{:?}", c.warnings));
    assert!(
        warning.contains("read as seconds minute hour") && warning.contains("Europe/Berlin"),
        "{warning}"
    );
    // Three fire times, each at 09:00:00 Berlin time.
    assert_eq!(warning.matches(" 09:00:00").count(), 3, "{warning}");
    let job = c.jobs.iter().find(|j| j.schedule.is_some()).unwrap();
    assert_eq!(job.next_runs(3).len(), 3);
}

/// The state's page cache: 2 MB unless set, in MB, within a range that names the key.
#[test]
fn the_state_cache_is_set_in_mb_and_checked() {
    let c = Config::from_str(GOOD, Path::new("t.toml")).unwrap();
    assert_eq!(c.state.cache_mb, 2);
    let set = GOOD.replace(
        "[state]\npath = \"state\"",
        "[state]\npath = \"state\"\ncache_mb = 256",
    );
    let c = Config::from_str(&set, Path::new("t.toml")).unwrap();
    assert_eq!(c.state.cache_mb, 256);
    let bad = GOOD.replace(
        "[state]\npath = \"state\"",
        "[state]\npath = \"state\"\ncache_mb = 0",
    );
    let p = problems(&bad);
    assert!(
        p.iter().any(|(line, key, msg)| line.is_some()
            && key == "state.cache_mb"
            && msg.contains("out of range")),
        "{p:?}"
    );
}

#[test]
fn metrics_and_history_settings_are_checked_with_their_line() {
    let good = GOOD.replace(
        "[state]\npath = \"state\"",
        "[metrics]\nlisten = \"127.0.0.1:9464\"\n\n[state]\npath = \"state\"\nhistory_runs = 50",
    );
    let c = Config::from_str(&good, Path::new("t.toml")).unwrap();
    assert_eq!(c.metrics.unwrap().listen.port(), 9464);
    assert_eq!(c.state.history_runs, 50);
    assert_eq!(
        Config::from_str(GOOD, Path::new("t.toml"))
            .unwrap()
            .state
            .history_runs,
        200
    );

    let bad = GOOD.replace(
        "[state]\npath = \"state\"",
        "[metrics]\nlisten = \"localhost\"\n\n[state]\npath = \"state\"\nhistory_runs = 0",
    );
    let p = problems(&bad);
    assert!(
        p.iter().any(|(line, key, msg)| *line == Some(9)
            && key == "metrics.listen"
            && msg.contains("`localhost` is not an address")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|(line, key, msg)| *line == Some(13)
            && key == "state.history_runs"
            && msg.contains("out of range")),
        "{p:?}"
    );
    let p = problems(&GOOD.replace("[state]", "[metrics]\n\n[state]"));
    assert!(
        p.iter()
            .any(|(_, key, msg)| key == "metrics" && msg.contains("missing `listen`")),
        "{p:?}"
    );
}

#[test]
fn alert_urls_come_from_one_source_and_must_be_http() {
    let with = |alerts: &str| GOOD.replace("[state]", &format!("[alerts]\n{alerts}\n\n[state]"));
    let c = Config::from_str(
        &with("ping_url = \"https://hc-ping.com/abc\"\nwebhook_url_file = \"hook.url\""),
        Path::new("/etc/dialsync/t.toml"),
    )
    .unwrap();
    assert!(matches!(c.alerts.ping_url, Some(TokenSource::Inline(_))));
    assert!(
        matches!(&c.alerts.webhook_url, Some(TokenSource::File(p)) if p == Path::new("/etc/dialsync/hook.url"))
    );
    assert_eq!((c.alerts.retries, c.alerts.timeout.as_secs()), (2, 10));
    // No section: nothing is sent.
    let c = Config::from_str(GOOD, Path::new("t.toml")).unwrap();
    assert!(c.alerts.ping_url.is_none() && c.alerts.webhook_url.is_none());

    let p = problems(&with(
        "ping_url = \"hc-ping.com/abc\"\nwebhook_url = \"https://x\"\nwebhook_url_env = \"HOOK\"\nretries = 11",
    ));
    let has = |key: &str, text: &str| {
        p.iter()
            .any(|(line, k, m)| line.is_some() && k == key && m.contains(text))
    };
    assert!(has("alerts.ping_url", "is not an http(s) URL"), "{p:?}");
    assert!(has("alerts.webhook_url", "set only one of"), "{p:?}");
    assert!(has("alerts.retries", "out of range"), "{p:?}");
}

/// What a reload compares to decide whether a job runs at once: when it runs and whom it
/// pings do not count; what it reads, maps and sends does.
#[test]
fn runs_like_ignores_when_a_job_runs_but_not_what_it_does() {
    let job = |text: &str| Config::from_str(text, Path::new("t.toml")).unwrap().jobs[0].clone();
    let base = job(GOOD);
    assert!(base.runs_like(&job(GOOD)));
    let when = GOOD.replace(
        "schedule = \"*/15 * * * *\"",
        "schedule = \"0 * * * *\"\ntimezone = \"Europe/Berlin\"\nping_url = \"https://hc.example.com/x\"",
    );
    assert!(base.runs_like(&job(&when)));
    for (from, to) in [
        ("PhoneNumber1 = \"Phone\"", "PhoneNumber1 = \"Mobile\""),
        ("path = \"leads.csv\"", "path = \"other.csv\""),
        ("campaign_id = 538", "campaign_id = 539"),
        (
            "reset_when_changed = [\"Round\"]",
            "reset_when_changed = []",
        ),
        ("default_country = \"DE\"", "default_country = \"AT\""),
    ] {
        assert!(!base.runs_like(&job(&GOOD.replace(from, to))), "{to}");
    }
}

#[test]
fn outcomes_settings_have_defaults_and_each_mistake_its_line() {
    let with = |extra: &str| GOOD.replace("[job.source]", &format!("{extra}\n\n[job.source]"));
    let c = Config::from_str(
        &with("on_done = \"lock\"\n[job.outcomes]\npath = \"out/outcomes-{run}.csv\"\nmap = { ABG = \"won\" }"),
        Path::new("/etc/dialsync/dialsync.toml"),
    )
    .unwrap();
    let j = &c.jobs[0];
    assert_eq!(j.on_done, OnDone::Lock);
    let o = j.outcomes.as_ref().unwrap();
    assert_eq!(
        o.path.as_deref(),
        Some(Path::new("/etc/dialsync/out/outcomes-{run}.csv"))
    );
    assert_eq!(
        (o.format, o.delimiter, o.bom, o.final_only),
        (OutcomeFormat::Csv, b';', true, false)
    );
    let names: Vec<&str> = o.columns.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "UserData",
            "ContactID",
            "ResultCode",
            "Result",
            "Status",
            "Done",
            "Aborted",
            "Delay",
            "Appointment",
            "Tries",
            "NextTry",
            "LastCallEnd",
            "ChangedAt"
        ],
        "the documented columns, Status with a map"
    );
    assert!(o.needs_history());
    assert!(o.webhook.is_none());
    assert!(!Config::from_str(GOOD, Path::new("t.toml")).unwrap().jobs[0].reads_outcomes());

    let bad = with(
        "on_done = \"close\"\n[job.outcomes]\npath = \"o-{date}.csv\"\nformat = \"ndjson\"\nbom = false\ncolumns = [\"UserData\", \"Outcome\", \"Status\"]\nwebhook_url = \"https://crm.example.com/hook\"\nbatch_size = 0",
    );
    let p = problems(&bad);
    let find = |key: &str| {
        p.iter()
            .find(|(_, k, _)| k == key)
            .unwrap_or_else(|| panic!("no problem at {key}: {p:?}"))
    };
    assert_eq!(find("job[1].on_done").0, Some(18));
    let (line, _, msg) = find("job[1].outcomes.path");
    assert_eq!(*line, Some(20));
    assert!(msg.contains("{date}") && msg.contains("{run}"), "{msg}");
    assert!(find("job[1].outcomes.bom").2.contains("csv"));
    let (line, _, msg) = find("job[1].outcomes.columns[2]");
    assert_eq!(*line, Some(23));
    assert!(msg.contains("LastCallEnd"), "lists the columns: {msg}");
    assert!(find("job[1].outcomes.columns").2.contains("map"));
    assert!(find("job[1].outcomes.webhook_secret").2.contains("signed"));
    assert!(find("job[1].outcomes.batch_size").2.contains("1 to 10000"));

    let short = with("[job.outcomes]\nwebhook_url = \"https://crm.example.com/hook\"\nwebhook_secret = \"short\"");
    assert!(
        problems(&short)[0].2.contains("too short"),
        "{:?}",
        problems(&short)
    );
}

/// `type = "http"`: every key is checked with its line, mistakes of auth and pagination
/// named by their keys; a source with no mistake compiles to what it says.
#[test]
fn http_source_keys_are_checked_with_their_lines() {
    let http = |source: &str| {
        let text = GOOD.replace(
            "[job.source]\ntype = \"csv\"\npath = \"leads.csv\"\ndelimiter = \";\"\nencoding = \"windows-1252\"",
            source,
        );
        problems(&text)
    };
    let good = "[job.source]\ntype = \"http\"\nurl = \"https://crm.example.com/api/contacts\"\nformat = \"json\"\nrecord_path = \"results\"\n[job.source.auth]\ntype = \"bearer\"\ntoken_env = \"CRM_TOKEN\"\n[job.source.pagination]\ntype = \"next_url\"\npath = \"paging.next.link\"";
    assert_eq!(http(good), Vec::new());
    let text = GOOD.replace(
        "[job.source]\ntype = \"csv\"\npath = \"leads.csv\"\ndelimiter = \";\"\nencoding = \"windows-1252\"",
        good,
    );
    let job = &Config::from_str(&text, Path::new("t.toml")).unwrap().jobs[0];
    let h = job.source.http.as_deref().unwrap();
    assert_eq!(
        job.source.path,
        Path::new("https://crm.example.com/api/contacts")
    );
    assert_eq!(job.source.record_path, ["results"]);
    assert_eq!(h.format, HttpFormat::Json);
    assert_eq!(
        h.auth,
        Some(HttpAuth::Bearer(TokenSource::Env("CRM_TOKEN".into())))
    );
    assert_eq!(
        h.pagination.as_ref().map(|p| (&p.kind, p.max_pages)),
        Some((
            &PageKind::NextUrl {
                path: vec!["paging".into(), "next".into(), "link".into()]
            },
            10_000
        ))
    );

    let p = http("[job.source]\ntype = \"http\"\nurl = \"https://user:pw@crm.example.com/x\"\nformat = \"csv\"\nmethod = \"GET\"\nbody = \"{}\"\nheaders = { Authorization = \"Bearer x\" }\nmax_bytes = \"12 parsecs\"\n[job.source.pagination]\ntype = \"offset\"\nsize = 100\n[job.source.auth]\ntype = \"basic\"\npassword = \"pw\"\ntoken = \"t\"");
    let keys: Vec<(Option<usize>, &str)> = p.iter().map(|(l, k, _)| (*l, k.as_str())).collect();
    for (line, key) in [
        (Some(20), "job[1].source.url"),
        (Some(23), "job[1].source.body"),
        (Some(24), "job[1].source.headers.Authorization"),
        (Some(25), "job[1].source.max_bytes"),
        (Some(27), "job[1].source.pagination.type"),
        (Some(26), "job[1].source.pagination.param"),
        (Some(26), "job[1].source.pagination.size_param"),
        (Some(29), "job[1].source.auth.username"),
        (Some(32), "job[1].source.auth.token"),
    ] {
        assert!(
            keys.contains(&(line, key)),
            "{key} at {line:?} missing from {p:#?}"
        );
    }
    let url = p.iter().find(|(_, k, _)| k == "job[1].source.url").unwrap();
    assert!(
        url.2.contains("[job.source.auth]") && !url.2.contains("pw"),
        "{}",
        url.2
    );

    // An OAuth2 key on another type of auth is named as written.
    let p = http("[job.source]\ntype = \"http\"\nurl = \"https://crm.example.com/x\"\nformat = \"csv\"\n[job.source.auth]\ntype = \"bearer\"\ntoken = \"t\"\nclient_auth = \"body\"");
    assert!(
        p.iter().any(|(l, k, m)| *l == Some(25)
            && k == "job[1].source.auth.client_auth"
            && m.contains("does not apply")),
        "{p:#?}"
    );

    // HTTP keys on a file source say where they belong.
    let p = http(
        "[job.source]\ntype = \"csv\"\npath = \"leads.csv\"\nurl = \"https://crm.example.com/x\"",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].0, p[0].1.as_str()), (Some(21), "job[1].source.url"));
    assert!(
        p[0].2.contains("only applies to an HTTP or SQL source"),
        "{}",
        p[0].2
    );
}

/// `type = "postgres"` / `"mysql"`: the URL from one source (it holds a password, which no
/// message shows), a query, the keys of files and HTTP refused with their lines.
#[test]
fn sql_source_keys_are_checked_with_their_lines() {
    let sql = |source: &str| {
        GOOD.replace(
            "[job.source]\ntype = \"csv\"\npath = \"leads.csv\"\ndelimiter = \";\"\nencoding = \"windows-1252\"",
            source,
        )
    };
    let good = sql("[job.source]\ntype = \"postgres\"\nurl_credential = \"crm-db\"\nquery = \"SELECT id AS \\\"CustomerNo\\\" FROM contacts;\"\ntimeout = \"5m\"");
    assert_eq!(problems(&good), Vec::new());
    let job = &Config::from_str(&good, Path::new("t.toml")).unwrap().jobs[0];
    assert_eq!(job.source.kind, SourceKind::Sql);
    let q = job.source.sql.as_deref().unwrap();
    assert_eq!(q.dialect, SqlDialect::Postgres);
    assert_eq!(q.url, TokenSource::Credential("crm-db".into()));
    assert_eq!(q.query, "SELECT id AS \"CustomerNo\" FROM contacts");
    assert_eq!(q.timeout, Duration::from_secs(300));
    assert_eq!(
        job.source.path,
        Path::new("PostgreSQL query (URL in credential crm-db)")
    );

    // An inline URL is shown without its user and password.
    let inline = sql("[job.source]\ntype = \"mariadb\"\nurl = \"mysql://dialsync:pa55word@db.example:3306/crm\"\nquery = \"SELECT 1\"");
    let job = &Config::from_str(&inline, Path::new("t.toml")).unwrap().jobs[0];
    assert_eq!(
        job.source.sql.as_deref().unwrap().dialect,
        SqlDialect::Mysql
    );
    assert_eq!(job.source.path, Path::new("mysql://db.example:3306/crm"));
    assert!(!format!("{job:?}").contains("pa55word"));

    let p = problems(&sql("[job.source]\ntype = \"postgres\"\nurl = \"mysql://u:pa55word@db/crm\"\nurl_env = \"X\"\nformat = \"csv\"\ndelimiter = \";\"\nca_file = \"/etc/ca.pem\"\nrecord_path = \"x\""));
    let keys: Vec<(Option<usize>, &str)> = p.iter().map(|(l, k, _)| (*l, k.as_str())).collect();
    for (line, key) in [
        (Some(20), "job[1].source.url"),
        (Some(22), "job[1].source.format"),
        (Some(23), "job[1].source.delimiter"),
        (Some(24), "job[1].source.ca_file"),
        (Some(25), "job[1].source.record_path"),
        (Some(18), "job[1].source.query"),
    ] {
        assert!(
            keys.contains(&(line, key)),
            "{key} at {line:?} missing from {p:#?}"
        );
    }
    assert!(p.iter().all(|(_, _, m)| !m.contains("pa55word")), "{p:#?}");
    let ca = p
        .iter()
        .find(|(_, k, _)| k == "job[1].source.ca_file")
        .unwrap();
    assert!(ca.2.contains("sslrootcert"), "{}", ca.2);

    // The wrong scheme, and no URL at all.
    let p = problems(&sql(
        "[job.source]\ntype = \"postgres\"\nurl = \"mysql://db/crm\"\nquery = \"SELECT 1\"",
    ));
    assert!(p[0].2.contains("not a PostgreSQL URL"), "{p:?}");
    let p = problems(&sql("[job.source]\ntype = \"mysql\"\nquery = \"SELECT 1\""));
    assert_eq!(p[0].1, "job[1].source.url", "{p:?}");
    assert!(p[0].2.contains("url_file"), "{p:?}");
    // A query on a file source.
    let p = problems(&sql(
        "[job.source]\ntype = \"csv\"\npath = \"a.csv\"\nquery = \"SELECT 1\"",
    ));
    assert_eq!(p[0].1, "job[1].source.query", "{p:?}");
    assert!(
        p[0].2.contains(
            "only applies to type = \"postgres\" or \"mysql\" (this source is a csv file)"
        ),
        "{p:?}"
    );
    // Each key says which types take it: HTTP's on a query, a query's on HTTP.
    let p = problems(&sql("[job.source]\ntype = \"postgres\"\nurl = \"postgres://db/crm\"\nquery = \"SELECT 1\"\nmethod = \"GET\""));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].2.contains("only applies to type = \"http\""), "{p:?}");
    let p = problems(&sql("[job.source]\ntype = \"http\"\nurl = \"https://crm.example.com/x\"\nformat = \"csv\"\nurl_env = \"X\""));
    assert_eq!(
        (p.len(), p[0].1.as_str()),
        (1, "job[1].source.url_env"),
        "{p:?}"
    );
    assert!(p[0].2.contains("\"postgres\" or \"mysql\""), "{p:?}");
}

#[test]
fn byte_sizes_read_as_operators_write_them() {
    use super::raw::ByteSize;
    assert_eq!(ByteSize::parse("1 GiB"), Some(1 << 30));
    assert_eq!(ByteSize::parse("500MB"), Some(500_000_000));
    assert_eq!(ByteSize::parse("42"), Some(42));
    assert_eq!(ByteSize::parse("12 parsecs"), None);
    assert_eq!(ByteSize::parse("MB"), None);
}
