use super::*;

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
