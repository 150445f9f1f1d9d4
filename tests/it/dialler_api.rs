//! Every dialler function of the client against the emulator: the client's paths and
//! error typing, and the emulator's documented semantics, checked together.

use dialsync::{record_id, Dialler, DiallerError, ImportFlags, Target};
use dialsync::{Config, Secret};
use dialsync::{Emulator, EmulatorConfig};
use serde_json::{json, Value};

/// A client of the emulator at `base_url` with `token`.
fn client(base_url: &str, token: &str) -> Dialler {
    let text = format!(
        "[dialler]\nbase_url = \"{base_url}\"\nclient_id = 7\ntoken = \"x\"\n\
         [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
         [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
    );
    let cfg = Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
    Dialler::new(&cfg.dialler, &Secret::new(token)).unwrap()
}

async fn setup_with_url() -> (Emulator, Dialler, String) {
    let emu = Emulator::new(EmulatorConfig::default());
    let addr = emu.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{addr}/rest/v1.0");
    let dialler = client(&base, &emu.config().token);
    (emu, dialler, base)
}

async fn setup() -> (Emulator, Dialler) {
    let (emu, d, _) = setup_with_url().await;
    (emu, d)
}

fn contact(user_data: &str, name: &str) -> Value {
    json!({"DiallerCampaignsID": 538, "UserData": user_data, "Name": name, "PhoneNumber1": "+498912345678"})
}

const OVERWRITE: ImportFlags = ImportFlags {
    overwrite_duplicates: true,
    reset_contact: None,
    unlock_contact: None,
};

#[tokio::test]
async fn import_flags_follow_the_documentation() {
    let (emu, d) = setup().await;
    let a = record_id(&d.import(&contact("U1", "A"), OVERWRITE).await.unwrap()).unwrap();
    // overwriteDuplicates=true: the same contact, overwritten.
    let again = d.import(&contact("U1", "A2"), OVERWRITE).await.unwrap();
    assert_eq!(record_id(&again), Some(a));
    assert_eq!(again["Name"], "A2");
    assert_eq!(emu.contacts().len(), 1);

    // resetContact=true resets the existing contact; unlockContact=false leaves it locked.
    d.lock(Target::Id(a)).await.unwrap();
    emu.add_tries(a, 3);
    let flags = ImportFlags {
        overwrite_duplicates: true,
        reset_contact: Some(true),
        unlock_contact: Some(false),
    };
    d.import(&contact("U1", "A3"), flags).await.unwrap();
    let c = &emu.contacts()[0];
    assert_eq!((c.locked, c.tries, c.reset_count), (true, 0, 1));
    // Without the flag, the old behaviour: unlocked.
    d.import(&contact("U1", "A4"), OVERWRITE).await.unwrap();
    assert!(!emu.contacts()[0].locked);

    // overwriteDuplicates=false creates a duplicate, as the real server does.
    let no_overwrite = ImportFlags {
        overwrite_duplicates: false,
        ..OVERWRITE
    };
    let b = record_id(&d.import(&contact("U1", "B"), no_overwrite).await.unwrap()).unwrap();
    assert_ne!(a, b);
    let both = d.contacts_by_user_data("U1").await.unwrap();
    assert_eq!(
        both.iter()
            .map(|r| record_id(r).unwrap())
            .collect::<Vec<_>>(),
        vec![a, b]
    );
    // By-UserData calls act on the first one found.
    d.lock(Target::UserData("U1")).await.unwrap();
    let locked: Vec<_> = emu.contacts().iter().map(|c| (c.id, c.locked)).collect();
    assert_eq!(locked, vec![(a, true), (b, false)]);
}

#[tokio::test]
async fn mandatory_fields_and_unknown_campaigns() {
    let (_emu, d) = setup().await;
    let err = d
        .import(&json!({"DiallerCampaignsID": 538, "Name": "A"}), OVERWRITE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DiallerError::BadRequest { message } if message.contains("PhoneNumber")),
        "{err}"
    );
    let err = d
        .import(
            &json!({"DiallerCampaignsID": 538, "PhoneNumber1": "+4989"}),
            OVERWRITE,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DiallerError::BadRequest { message } if message.contains("Name")),
        "{err}"
    );
    let mut c = contact("U1", "A");
    c["DiallerCampaignsID"] = json!(1);
    let err = d.import(&c, OVERWRITE).await.unwrap_err();
    assert!(
        matches!(&err, DiallerError::NotFound { message } if message.contains("campaign")),
        "{err}"
    );
    // By name works too.
    let by_name = json!({"DiallerCampaignsName": "My Campaign", "UserData": "U2", "Name": "N", "PhoneNumber2": "+4930123456"});
    assert!(d.import(&by_name, OVERWRITE).await.is_ok());

    // Agents: an import names a user by login, a known one; the update takes no agent.
    assert_eq!(
        d.user_logins().await.unwrap(),
        ["agent1", "agent2", "supervisor"]
    );
    let mut c = contact("U3", "A");
    c["ReservedUsersUID"] = json!("nobody");
    let err = d.import(&c, OVERWRITE).await.unwrap_err();
    assert!(
        matches!(&err, DiallerError::BadRequest { message } if message.contains("ReservedUsersUID")),
        "{err}"
    );
    c["ReservedUsersUID"] = json!("agent1");
    let id = record_id(&d.import(&c, OVERWRITE).await.unwrap()).unwrap();
    let err = d
        .update(&json!({"ID": id, "FollowUpUsersUID": "agent2"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DiallerError::BadRequest { message } if message.contains("FollowUpUsersUID")),
        "{err}"
    );
}

#[tokio::test]
async fn reads_updates_and_by_id_functions() {
    let (emu, d) = setup().await;
    let a = record_id(&d.import(&contact("U1", "A"), OVERWRITE).await.unwrap()).unwrap();
    let b = record_id(&d.import(&contact("U2", "B"), OVERWRITE).await.unwrap()).unwrap();

    assert_eq!(d.list_contacts(Some(538)).await.unwrap().len(), 2);
    assert_eq!(d.list_contacts(None).await.unwrap().len(), 2);
    assert!(d.list_contacts(Some(1)).await.unwrap().is_empty());
    assert_eq!(d.get_contact(a).await.unwrap().unwrap()["Name"], "A");
    assert_eq!(
        d.get_contact(999).await.unwrap(),
        None,
        "a JSON 404 is 'no such contact'"
    );
    assert!(d.contacts_by_user_data("nope").await.unwrap().is_empty());

    // Update by ID changes only the fields sent, UserData included.
    let updated = d
        .update(&json!({"ID": a, "UserData": "U1b", "City": "Bonn"}))
        .await
        .unwrap();
    assert_eq!(
        (
            updated["UserData"].as_str(),
            updated["Name"].as_str(),
            updated["City"].as_str()
        ),
        (Some("U1b"), Some("A"), Some("Bonn"))
    );
    assert_eq!(d.contacts_by_user_data("U1b").await.unwrap().len(), 1);
    // Update by UserData.
    d.update(&json!({"UserData": "U2", "Name": "B2"}))
        .await
        .unwrap();
    assert_eq!(d.get_contact(b).await.unwrap().unwrap()["Name"], "B2");
    let err = d
        .update(&json!({"ID": 999, "Name": "x"}))
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    let err = d.update(&json!({"Name": "x"})).await.unwrap_err();
    assert!(matches!(err, DiallerError::BadRequest { .. }));

    for t in [Target::Id(a), Target::UserData("U2")] {
        d.lock(t).await.unwrap();
        d.unlock(t).await.unwrap();
        d.reset(t).await.unwrap();
        assert!(d.history(t).await.unwrap().is_empty());
    }
    assert!(emu
        .contacts()
        .iter()
        .all(|c| !c.locked && c.reset_count == 1));

    d.delete(Target::Id(a)).await.unwrap();
    d.delete(Target::UserData("U2")).await.unwrap();
    assert!(emu.contacts().is_empty());
    for t in [Target::Id(a), Target::UserData("U2")] {
        assert!(d.lock(t).await.unwrap_err().is_not_found());
        assert!(d.delete(t).await.unwrap_err().is_not_found());
        assert!(d.history(t).await.unwrap_err().is_not_found());
    }
}

#[tokio::test]
async fn campaigns_and_typed_errors() {
    let (emu, d, base) = setup_with_url().await;
    assert!(!d.token_accepted(), "no answer yet");
    assert_eq!(d.campaigns().await.unwrap().len(), 1);
    assert!(d.token_accepted(), "a success proves the token");
    assert_eq!(
        d.campaign(538).await.unwrap().unwrap()["Name"],
        "My Campaign"
    );
    assert_eq!(d.campaign(1).await.unwrap(), None);
    assert_eq!(
        d.campaigns_by_name("camp").await.unwrap().len(),
        1,
        "partial match"
    );
    assert_eq!(d.resolve_campaign("My Campaign").await.unwrap(), 538);
    let err = d.resolve_campaign("My").await.unwrap_err();
    assert!(
        matches!(&err, DiallerError::CampaignNotFound { similar, .. } if similar.len() == 1),
        "{err}"
    );
    assert!(err.is_fatal());

    // A wrong token is typed, fatal, and says nothing of the token itself.
    let before = emu.requests().len();
    let wrong = client(&base, "s3cret");
    let err = wrong.campaigns().await.unwrap_err();
    assert!(matches!(err, DiallerError::Unauthorized { client_id: 7 }) && err.is_fatal());
    assert!(!wrong.token_accepted());
    assert!(!format!("{err} {err:?} {wrong:?}").contains("s3cret"));
    assert_eq!(emu.requests().len(), before + 1);
    // A 404 of the API itself comes past its token check.
    let fresh = client(&base, &emu.config().token);
    assert_eq!(fresh.campaign(1).await.unwrap(), None);
    assert!(fresh.token_accepted());
}

/// An emulator with `faults` and a client that gives up on a call after 300 ms and never
/// retries.
async fn faulty(faults: dialsync::Faults) -> (Emulator, Dialler) {
    faulty_with(faults, "max_retries = 0").await
}

/// An emulator with `faults` and a client with `settings` in its [dialler] section.
async fn faulty_with(faults: dialsync::Faults, settings: &str) -> (Emulator, Dialler) {
    let (emu, cfg) = faulty_config(faults, settings).await;
    let d = Dialler::new(&cfg.dialler, &Secret::new(&emu.config().token)).unwrap();
    (emu, d)
}

/// An emulator with `faults`, and a config for it with `settings` in [dialler].
async fn faulty_config(faults: dialsync::Faults, settings: &str) -> (Emulator, Config) {
    let emu = Emulator::new(EmulatorConfig {
        faults,
        ..EmulatorConfig::default()
    });
    let addr = emu.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let text = format!(
        "[dialler]\nbase_url = \"http://{addr}/rest/v1.0\"\nclient_id = 7\ntoken = \"x\"\n\
         timeout = \"300ms\"\n{settings}\n\
         [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
         [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
    );
    let cfg = Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
    (emu, cfg)
}

#[tokio::test]
async fn injected_faults_do_what_their_flags_say() {
    use dialsync::Faults;
    // 5xx and 429: answered, not carried out.
    let (emu, d) = faulty(Faults {
        error_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let err = d.import(&contact("U1", "A"), OVERWRITE).await.unwrap_err();
    assert!(matches!(err, DiallerError::Server { .. }), "{err:?}");
    assert!(emu.contacts().is_empty());
    assert!([500, 502, 503, 504].contains(&emu.requests()[0].status));
    // A 5xx (a proxy's, perhaps) proves nothing of the token.
    assert!(!d.token_accepted());

    let (emu, d) = faulty(Faults {
        throttle_rate: 1.0,
        retry_after: 7,
        ..Faults::default()
    })
    .await;
    let err = d.import(&contact("U1", "A"), OVERWRITE).await.unwrap_err();
    assert!(emu.contacts().is_empty(), "{err:?}");
    assert_eq!(emu.requests()[0].status, 429);
    assert!(!d.token_accepted());

    // Dropped: no answer, not carried out.
    let (emu, d) = faulty(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    })
    .await;
    assert!(d.import(&contact("U1", "A"), OVERWRITE).await.is_err());
    assert!(emu.contacts().is_empty());

    // Timeout: carried out, never answered.
    let (emu, d) = faulty(Faults {
        timeout_rate: 1.0,
        ..Faults::default()
    })
    .await;
    assert!(d.import(&contact("U1", "A"), OVERWRITE).await.is_err());
    assert_eq!(emu.contacts().len(), 1);

    // A rate of 0.3 hits about 30% of calls, the same ones for the same seed.
    let run = |seed| async move {
        let (emu, d) = faulty(Faults {
            error_rate: 0.3,
            seed,
            ..Faults::default()
        })
        .await;
        for i in 0..200 {
            let _ = d.import(&contact(&format!("U{i}"), "A"), OVERWRITE).await;
        }
        emu.requests().iter().map(|r| r.status).collect::<Vec<_>>()
    };
    let first = run(5).await;
    let failed = first.iter().filter(|s| **s >= 500).count();
    assert!((30..=90).contains(&failed), "{failed} of 200");
    assert_eq!(first, run(5).await);
    assert_ne!(first, run(6).await);
}

/// A dialler that answers every call 429 (with no wait asked).
fn always_throttled() -> dialsync::Faults {
    dialsync::Faults {
        throttle_rate: 1.0,
        retry_after: 0,
        ..dialsync::Faults::default()
    }
}

/// A client that retries a call 3 times, quickly.
const THREE_QUICK_RETRIES: &str = "max_retries = 3\nretry_delay = \"1ms\"";

/// The API metrics count every attempt by endpoint and status, and every retry, of all
/// clients of the tenant; nothing stays in flight.
#[tokio::test]
async fn the_api_metrics_count_attempts_and_retries() {
    use dialsync::{Metrics, Tenant};
    let (emu, cfg) = faulty_config(always_throttled(), THREE_QUICK_RETRIES).await;
    let metrics = Metrics::new();
    let tenant = Tenant::with_metrics(&cfg.dialler, metrics.api());
    let token = Secret::new(&emu.config().token);
    for _ in 0..2 {
        let d = Dialler::for_tenant(&cfg.dialler, &token, &tenant).unwrap();
        d.import(&contact("U1", "A"), OVERWRITE).await.unwrap_err();
    }
    let page = metrics.encode();
    for line in [
        "dialsync_api_requests_total{endpoint=\"/dialler/contacts/import\",status=\"429\"} 8",
        "dialsync_api_retries_total 6",
        "dialsync_api_request_duration_seconds_count{endpoint=\"/dialler/contacts/import\"} 8",
        "dialsync_api_in_flight 0",
    ] {
        assert!(page.lines().any(|l| l == line), "{line} not in:\n{page}");
    }
}

#[tokio::test]
async fn passing_failures_are_retried_within_the_call_and_run_bounds() {
    use dialsync::Faults;
    // 429 every time: 1 + max_retries attempts, then the call gives up (and that ends a run).
    let (emu, d) = faulty_with(always_throttled(), THREE_QUICK_RETRIES).await;
    let err = d.import(&contact("U1", "A"), OVERWRITE).await.unwrap_err();
    assert!(
        matches!(&err, DiallerError::GaveUp { attempts: 4, last } if matches!(**last, DiallerError::Throttled { .. })),
        "{err:?}"
    );
    assert!(err.is_fatal());
    assert_eq!(emu.requests().len(), 4);
    assert_eq!(d.retries(), 3);

    // The run's budget is shared by all calls: 2 retries in all, then every call fails.
    let (emu, d) = faulty_with(
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        "max_retries = 5\nretry_delay = \"1ms\"\nmax_retries_per_run = 2",
    )
    .await;
    let err = d.campaigns().await.unwrap_err();
    assert!(
        matches!(err, DiallerError::RetryBudget { retries: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_retries_per_run"), "{err}");
    assert_eq!(emu.requests().len(), 3);

    // Permanent errors are not retried.
    let (emu, d) = faulty_with(Faults::default(), "retry_delay = \"1ms\"").await;
    let err = d.lock(Target::Id(999_999)).await.unwrap_err();
    assert!(err.is_not_found() && !err.is_fatal(), "{err:?}");
    assert_eq!(emu.requests().len(), 1);
}

#[tokio::test]
async fn an_import_without_overwrite_is_looked_up_before_it_is_sent_again() {
    use dialsync::Faults;
    // Half the calls are carried out but never answered: a blind retry of such an import
    // would make a second contact, since it may not overwrite.
    let (emu, d) = faulty_with(
        Faults {
            timeout_rate: 0.5,
            seed: 11,
            ..Faults::default()
        },
        "max_retries = 20\nretry_delay = \"1ms\"\nmax_retry_delay = \"2ms\"",
    )
    .await;
    let flags = ImportFlags {
        overwrite_duplicates: false,
        reset_contact: None,
        unlock_contact: None,
    };
    for i in 0..20 {
        let c = contact(&format!("U{i}"), "A");
        let r = d.import(&c, flags).await.unwrap();
        assert_eq!(r["UserData"], format!("U{i}"));
    }
    assert!(d.retries() > 0, "the seed must make some imports time out");
    let mut keys: Vec<_> = emu
        .contacts()
        .iter()
        .map(|c| c.fields["UserData"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!((before, keys.len()), (20, 20));
}

#[tokio::test]
async fn max_requests_per_second_spaces_the_calls() {
    let (emu, d) = faulty_with(Default::default(), "max_requests_per_second = 50").await;
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..11).map(|_| d.campaigns()).collect();
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    // 11 calls at 50 per second are spread over at least 10 intervals of 20 ms. (A lower
    // bound only: a slow machine can only make it longer.)
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(emu.requests().len(), 11);
}

/// Promise: no redirects. A 302 would turn an import into a GET whose answer looks like a
/// confirmation; a 307 would send names and numbers to another host. Neither is followed:
/// the call fails naming base_url and the Location, the run stops, and the place the
/// redirect points to receives nothing.
#[tokio::test]
async fn a_redirect_is_an_error_naming_base_url_and_is_never_followed() {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let (emu, _, emu_base) = setup_with_url().await;
    for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
        let target = format!("{emu_base}/7/dialler/contacts/import?overwriteDuplicates=true");
        let app = axum::Router::new().fallback({
            let target = target.clone();
            move || async move { (status, [(header::LOCATION, target)]).into_response() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let base = format!("http://{addr}/rest/v1.0");
        let d = client(&base, &emu.config().token);
        let err = d.import(&contact("U1", "A"), OVERWRITE).await.unwrap_err();
        assert!(
            matches!(err, DiallerError::Redirect { status: s, .. } if s == status.as_u16()),
            "{err:?}"
        );
        assert!(err.is_fatal(), "a redirect stops the run");
        let msg = err.to_string();
        assert!(msg.contains(&base) && msg.contains(&target), "{msg}");
        assert_eq!(d.calls(), 1, "not retried");
    }
    assert!(emu.requests().is_empty(), "{:?}", emu.requests());
    assert!(emu.contacts().is_empty());
}

/// A TLS server with the untrusted certificate of tests/data, answering every request
/// with an empty record list; its base URL.
async fn tls_server() -> String {
    let body = br#"{"records": [], "count": 0, "status": 200}"#.to_vec();
    let port = crate::common::tls_server("application/json", body).await;
    format!("https://127.0.0.1:{port}/rest/v1.0")
}

/// An untrusted certificate is a certificate problem, said as such and naming ca_file;
/// it is not retried like a passing network failure. With the certificate's CA in
/// ca_file, the same server is trusted.
#[tokio::test]
async fn an_untrusted_certificate_is_named_as_such_and_not_retried() {
    let base = tls_server().await;
    let d = client(&base, "t");
    let err = d.campaigns().await.unwrap_err();
    assert!(matches!(err, DiallerError::Certificate { .. }), "{err:?}");
    assert!(err.is_fatal());
    let msg = err.to_string();
    assert!(
        msg.contains("certificate") && msg.contains("ca_file") && msg.contains(&base),
        "{msg}"
    );
    assert!(!msg.contains("is the server up"), "{msg}");
    assert_eq!(d.calls(), 1, "not retried");

    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/untrusted-cert.pem");
    let text = format!(
        "[dialler]\nbase_url = \"{base}\"\nclient_id = 7\ntoken = \"x\"\nca_file = \"{}\"\n\
         [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
         [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n",
        ca.display()
    );
    let cfg = Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
    let trusting = Dialler::new(&cfg.dialler, &Secret::new("t")).unwrap();
    assert!(trusting.campaigns().await.unwrap().is_empty());
}

/// A long-running emulator keeps only the last `keep_requests` API calls in its log.
#[tokio::test]
async fn the_emulator_keeps_only_the_last_requests() {
    let emu = Emulator::new(EmulatorConfig {
        keep_requests: 10,
        ..EmulatorConfig::default()
    });
    let addr = emu.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let d = client(&format!("http://{addr}/rest/v1.0"), &emu.config().token);
    for i in 0..25 {
        d.import(&contact(&format!("U{i}"), "A"), OVERWRITE)
            .await
            .unwrap();
    }
    let kept = emu.requests();
    assert_eq!(kept.len(), 10);
    let users: Vec<_> = kept
        .iter()
        .map(|r| {
            r.body.as_ref().unwrap()["UserData"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<_> = (15..25).map(|i| format!("U{i}")).collect();
    assert_eq!(users, expected, "the last ten, oldest first");
    assert_eq!(emu.contacts().len(), 25);
}

/// The emulator dials: each campaign's result codes as seed 003 lists them, and a call
/// recorded through `POST /_emulator/calls` leaves what the dialler's own call leaves: a
/// history entry (seed 001's fields), one more try, the result code on the contact,
/// `dtNextTry` for a call-back code; a reset deletes the result code and the tries, not
/// the history; a locked contact is not dialled.
#[tokio::test]
async fn the_emulator_dials_and_records_results_history_and_tries() {
    let (emu, d, base) = setup_with_url().await;
    let codes = d.result_codes(538).await.unwrap();
    let keys: Vec<&str> = codes
        .iter()
        .map(|c| c["ExportKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ABG", "Aufleger", "WV", "Termin"]);
    assert_eq!(codes[0]["bDone"], true);
    assert_eq!(codes[1]["bAborted"], true);
    assert_eq!(codes[2]["bDelay"], true);
    assert_eq!(codes[3]["bAppointment"], true);
    assert_eq!(codes[0]["DiallerResultCodesTypesContent"], "Done");
    assert!(matches!(
        d.result_codes(999).await,
        Err(DiallerError::NotFound { .. })
    ));

    let a = record_id(&d.import(&contact("U1", "A"), OVERWRITE).await.unwrap()).unwrap();
    let b = record_id(&d.import(&contact("U2", "B"), OVERWRITE).await.unwrap()).unwrap();
    let http = reqwest::Client::new();
    let emulator = base.replace("/rest/v1.0", "/_emulator");
    let call = |body: Value| {
        let http = http.clone();
        let url = format!("{emulator}/calls");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = call(json!({"UserData": "U1", "ExportKey": "WV"})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = call(json!({"ID": a, "ExportKey": "ABG", "UsersID": 3})).await;
    assert_eq!(status, 200);
    let (status, answer) = call(json!({"ID": b, "ExportKey": "NOPE"})).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("ABG, Aufleger, WV, Termin"),
        "{answer}"
    );
    let (status, _) = call(json!({"UserData": "U9", "ExportKey": "ABG"})).await;
    assert_eq!(status, 404);

    let c = d.get_contact(a).await.unwrap().unwrap();
    assert_eq!(c["DiallerCampaignsResultCodesID"], codes[0]["ID"]);
    assert_eq!(c["nTriesPhoneNumber1"], 2);
    assert_eq!(
        c["dtNextTry"],
        Value::Null,
        "the last call was not a call-back"
    );
    let history = d.history(Target::Id(a)).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["DiallerCampaignsResultCodesID"], codes[2]["ID"]);
    assert_eq!(history[0]["DiallerResultCodesTypesID"], 3);
    assert_eq!(history[1]["UsersID"], 3);
    assert_eq!(history[1]["UserData"], "U1");
    assert_eq!(history[1]["DiallerContactsID"], a);
    assert_eq!(history[1]["PhoneNumber"], "498912345678");
    assert!(
        history[1]["dtCallEnd"].as_str().unwrap() > history[1]["dtCallStart"].as_str().unwrap()
    );
    assert_eq!(d.history(Target::UserData("U1")).await.unwrap().len(), 2);
    assert!(d.history(Target::Id(b)).await.unwrap().is_empty());

    // A call-back code sets the next try; a reset deletes result and tries, keeps history.
    call(json!({"ID": b, "ExportKey": "WV"})).await;
    let c = d.get_contact(b).await.unwrap().unwrap();
    assert!(c["dtNextTry"].is_string(), "{c:?}");
    d.reset(Target::Id(b)).await.unwrap();
    let c = d.get_contact(b).await.unwrap().unwrap();
    assert_eq!(c["DiallerCampaignsResultCodesID"], Value::Null);
    assert_eq!(c["nTriesPhoneNumber1"], 0);
    assert_eq!(c["dtNextTry"], Value::Null);
    assert_eq!(d.history(Target::Id(b)).await.unwrap().len(), 1);

    // The dialler does not dial a locked contact.
    d.lock(Target::Id(b)).await.unwrap();
    let (status, _) = call(json!({"ID": b, "ExportKey": "ABG"})).await;
    assert_eq!(status, 409);
    assert_eq!(
        emu.contacts()
            .iter()
            .map(|c| c.history.len())
            .sum::<usize>(),
        3
    );
}

/// `--dial-rate`'s calls: round-robin by ID over the contacts the dialler would still
/// call (a locked one is skipped), each with a result of its campaign, until every
/// contact has a done or aborted result; the same seed draws the same results.
#[tokio::test]
async fn the_emulator_dials_on_its_own_until_every_contact_is_finished() {
    let (emu, d) = setup().await;
    let a = record_id(&d.import(&contact("U1", "A"), OVERWRITE).await.unwrap()).unwrap();
    let b = record_id(&d.import(&contact("U2", "B"), OVERWRITE).await.unwrap()).unwrap();
    let c = record_id(&d.import(&contact("U3", "C"), OVERWRITE).await.unwrap()).unwrap();
    d.lock(Target::Id(b)).await.unwrap();
    let dial_all = |seed: u64| {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut after = 0;
        let mut called = Vec::new();
        while let Some(record) = emu.dial_once(&mut after, &mut rng) {
            called.push((
                record["DiallerContactsID"].as_i64().unwrap(),
                record["DiallerCampaignsResultCodesID"].as_i64().unwrap(),
            ));
            assert!(called.len() < 1000, "never finished: {called:?}");
        }
        called
    };
    let called = dial_all(7);
    assert_eq!(called[0].0, a, "{called:?}");
    assert_eq!(called[1].0, c, "{called:?}");
    assert!(
        called.iter().all(|(id, _)| *id != b),
        "a locked contact is not dialled"
    );
    let finals: Vec<i64> = d
        .result_codes(538)
        .await
        .unwrap()
        .iter()
        .filter(|r| r["bDone"] == true || r["bAborted"] == true)
        .map(|r| r["ID"].as_i64().unwrap())
        .collect();
    for id in [a, c] {
        let contact = d.get_contact(id).await.unwrap().unwrap();
        let code = contact["DiallerCampaignsResultCodesID"].as_i64().unwrap();
        assert!(finals.contains(&code), "{id}: {code}");
        let tries = called.iter().filter(|(x, _)| *x == id).count();
        assert_eq!(contact["nTriesPhoneNumber1"], tries as u64);
    }
    // The same seed, from the same start, draws the same results.
    for id in [a, c] {
        d.reset(Target::Id(id)).await.unwrap();
    }
    let again: Vec<i64> = dial_all(7).iter().map(|(_, code)| *code).collect();
    let first: Vec<i64> = called.iter().map(|(_, code)| *code).collect();
    assert_eq!(again, first);
}
