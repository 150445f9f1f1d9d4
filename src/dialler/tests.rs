use super::*;

impl Dialler {
    /// The same client for the dialler at `base` (the root's tests).
    fn with_base(mut self, base: &str) -> Dialler {
        self.root = format!("{base}/{}", self.client_id);
        self.root_url = transport::root_url(&self.root);
        self
    }
}

fn client(settings: &str) -> Dialler {
    let text = format!(
        "[dialler]\nbase_url = \"http://127.0.0.1:9/rest/v1.0\"\nclient_id = 7\ntoken = \"x\"\n{settings}\n\
         [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
         [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
    );
    let cfg = crate::config::Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
    Dialler::new(&cfg.dialler, &Secret::new("x")).unwrap()
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() {
    let d = client("retry_delay = \"100ms\"\nmax_retry_delay = \"1s\"");
    for _ in 0..50 {
        for (n, full) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (30, 1000),
        ] {
            let w = d.backoff(n, None).as_millis() as u64;
            assert!((full / 2..=full).contains(&w), "retry {n}: {w} ms");
        }
        assert!(d.backoff(0, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        assert_eq!(
            d.backoff(0, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }
}

/// Each request's URL, built from the root parsed once, is the one reqwest made from the
/// root and path written together, with the query added as its `query` adds it: for
/// every path the client sends to and values that need escaping.
#[test]
fn a_request_url_is_the_root_and_path_parsed_together() {
    for base in [
        "http://127.0.0.1:9/rest/v1.0",
        "https://dialler.example.com:8443/jtel/rest/v1.0",
        "http://[::1]:8080/rest/v1.0",
    ] {
        let d = client("").with_base(base);
        let root = d.root_url.clone().expect("the root parses");
        let value = "Müller & Söhne +49 /?#=%20".to_string();
        for (path, query) in [
            (
                "/dialler/contacts/import",
                vec![("overwriteDuplicates", "true".into())],
            ),
            ("/dialler/contacts/update", vec![]),
            ("/dialler/contacts/contact/123/lock", vec![]),
            (
                "/dialler/contacts/contact",
                vec![("userData", value.clone())],
            ),
            (
                "/dialler/contacts",
                vec![
                    ("DiallerCampaignsID", "538".into()),
                    ("userData", value.clone()),
                ],
            ),
        ] {
            let parsed = reqwest::Client::new()
                .get(format!("{}{path}", d.root))
                .query(&query)
                .build()
                .unwrap();
            assert_eq!(
                transport::request_url(&root, path, &query),
                *parsed.url(),
                "{base} {path}"
            );
        }
    }
}

#[test]
fn the_run_budget_is_planned_from_the_run_or_configured() {
    let d = client("");
    d.budget_retries_for(10);
    assert_eq!(d.retry_budget.load(Ordering::Relaxed), MIN_RETRY_BUDGET);
    d.budget_retries_for(10_000);
    assert_eq!(d.retry_budget.load(Ordering::Relaxed), 2_000);
    let d = client("max_retries_per_run = 7");
    d.budget_retries_for(10_000);
    assert_eq!(d.retry_budget.load(Ordering::Relaxed), 7);
    // Retries before the plan's budget is set count against it: 7 in all, not 9.
    let d = client("max_retries_per_run = 7");
    assert!(d.take_retry() && d.take_retry());
    d.budget_retries_for(10_000);
    let mut more = 0;
    while d.take_retry() {
        more += 1;
    }
    assert_eq!((more, d.retries()), (5, 7));
}

fn dialler_config(settings: &str) -> DiallerConfig {
    let text = format!(
        "[dialler]\nbase_url = \"http://127.0.0.1:9/rest/v1.0\"\nclient_id = 7\ntoken = \"x\"\n{settings}\n\
         [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
         [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
    );
    crate::config::Config::from_str(&text, std::path::Path::new("t.toml"))
        .unwrap()
        .dialler
}

/// Two "jobs" of 150 calls each, each sending 8 at a time through `tenant`, each call
/// taking `call` once admitted: the moments (ms) the calls were admitted, and the most
/// calls in flight at once.
async fn two_jobs(tenant: &Tenant, call: Duration) -> (Vec<u128>, u64) {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let peak = Arc::new(AtomicU64::new(0));
    let job = |tenant: Tenant| {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            let calls = (0..150).map(|_| {
                let tenant = tenant.clone();
                let peak = Arc::clone(&peak);
                async move {
                    let _slot = tenant.admit().await;
                    peak.fetch_max(tenant.in_flight() as u64, Ordering::Relaxed);
                    let at = (tokio::time::Instant::now() - start).as_millis();
                    tokio::time::sleep(call).await;
                    at
                }
            });
            futures_util::stream::iter(calls)
                .buffer_unordered(8)
                .collect::<Vec<u128>>()
                .await
        })
    };
    let (a, b) = (job(tenant.clone()), job(tenant.clone()));
    let mut all = a.await.unwrap();
    all.extend(b.await.unwrap());
    all.sort();
    (all, peak.load(Ordering::Relaxed))
}

/// Two jobs running at once through clients of one tenant stay within the tenant's
/// `max_requests_per_second` together (each alone would be allowed the full rate).
#[tokio::test(start_paused = true)]
async fn clients_of_one_tenant_share_its_rate() {
    let cfg = dialler_config("max_requests_per_second = 100\nmax_concurrency = 16");
    let tenant = Tenant::new(&cfg);
    let (all, _) = two_jobs(&tenant, Duration::from_millis(5)).await;
    assert_eq!(all.len(), 300);
    let busiest = all
        .iter()
        .map(|t| all.iter().filter(|u| (*t..*t + 1000).contains(*u)).count())
        .max()
        .unwrap();
    assert_eq!(busiest, 100, "calls in the busiest second");
    // 300 calls at 100 a second: the last one a little under 3 s after the first.
    assert_eq!(*all.last().unwrap(), 2990);
    assert!(tenant.fits(&cfg));
    assert!(!tenant.fits(&dialler_config(
        "max_requests_per_second = 50\nmax_concurrency = 16"
    )));
}

/// ... and within its `max_concurrency`: calls in flight of both jobs together.
#[tokio::test(start_paused = true)]
async fn clients_of_one_tenant_share_its_calls_in_flight() {
    let tenant = Tenant::new(&dialler_config("max_concurrency = 3"));
    let (all, peak) = two_jobs(&tenant, Duration::from_millis(50)).await;
    assert_eq!((all.len(), peak), (300, 3));
    // Three at a time, 50 ms each: 100 rounds.
    assert_eq!(*all.last().unwrap(), 99 * 50);
    assert_eq!(tenant.in_flight(), 0);
}

/// An import's answer is read for its record's ID alone: the ID, however much else the
/// record holds; an answer without a record, or that is not JSON, is an error that
/// says so (the import stays pending, to be looked up); a record without an ID is
/// `None` (the caller's error).
#[tokio::test]
async fn an_imports_answer_is_read_for_its_id() {
    let answers = [
        (
            r#"{"records":[{"ID":4711,"Name":"x","Notes":{"a":[1,2]}}],"more":true}"#,
            Ok(Some(4711)),
        ),
        (r#"{"records":[{"Name":"x"}]}"#, Ok(None)),
        (r#"{"records":[]}"#, Err("the answer holds no record")),
        (r#"{}"#, Err("the answer holds no record")),
        ("", Err("expected a JSON object with `records`")),
        ("<html>", Err("expected value")),
    ];
    for (body, expected) in answers {
        let app = axum::Router::new().fallback(move || async move { body });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let text = format!(
            "[dialler]\nbase_url = \"http://{addr}/rest/v1.0\"\nclient_id = 7\ntoken = \"x\"\nmax_retries = 0\n\
             [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
             [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
        );
        let cfg = crate::config::Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
        let d = Dialler::new(&cfg.dialler, &Secret::new("x")).unwrap();
        let flags = ImportFlags {
            overwrite_duplicates: true,
            reset_contact: None,
            unlock_contact: None,
        };
        let got = d
            .import_json(br#"{"UserData":"K1"}"#, "K1", 538, flags, false)
            .await;
        match (got, expected) {
            (Ok(id), Ok(want)) => assert_eq!(id, want, "{body}"),
            (Err(DiallerError::Decode(msg)), Err(want)) => {
                assert!(msg.contains(want), "{body}: {msg}")
            }
            (got, _) => panic!("{body}: {got:?}"),
        }
        assert_eq!(d.calls(), 1, "{body}: one call, not retried");
    }
}

#[test]
fn only_a_dialler_over_https_gets_the_systems_certificate_authorities() {
    assert!(!needs_system_roots("http://dialler.example/rest/v1.0"));
    assert!(!needs_system_roots("HTTP://127.0.0.1:8080/rest/v1.0"));
    assert!(needs_system_roots("https://dialler.example/rest/v1.0"));
    assert!(needs_system_roots("HTTPS://dialler.example/rest/v1.0"));
    // Whatever cannot be read as a URL is refused elsewhere; here it keeps the roots.
    assert!(needs_system_roots("dialler.example/rest/v1.0"));
}
