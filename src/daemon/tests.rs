use super::*;
use chrono::TimeZone;

/// Wall time that moves with tokio's clock, so paused time drives the scheduler.
#[derive(Clone)]
struct TestClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TestClock {
    fn at(wall: DateTime<Utc>) -> TestClock {
        TestClock {
            wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.wall + (tokio::time::Instant::now() - self.start)
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        let left = (t - self.now()).to_std().unwrap_or_default();
        tokio::time::sleep(left).await;
    }
}

fn config(schedule: &str) -> Arc<Config> {
    let text = format!(
        r#"
[dialler]
base_url = "http://127.0.0.1:9/rest/v1.0"
client_id = 7
token = "t"
[state]
path = "/nonexistent/state"
[[job]]
name = "j"
campaign_id = 538
schedule = "{schedule}"
timezone = "Europe/Berlin"
[job.source]
type = "csv"
path = "x.csv"
[job.fields]
UserData = "id"
Name = "name"
PhoneNumber1 = "phone"
"#
    );
    Arc::new(Config::from_str(&text, Path::new("/etc/dialsync/t.toml")).unwrap())
}

/// Job `j` of `schedule` on its loop from wall time `start`; each run takes `run_time`
/// and records when it fired.
struct Sim {
    config: watch::Sender<Arc<Config>>,
    stop: watch::Sender<bool>,
    slot: Arc<Slot>,
    fired: Arc<Mutex<Vec<DateTime<Utc>>>>,
    task: JoinHandle<()>,
}

impl Sim {
    fn start(schedule: &str, start: DateTime<Utc>, run_time: Duration) -> Sim {
        let clock = TestClock::at(start);
        let (config, cfg_rx) = watch::channel(self::config(schedule));
        let (stop, stop_rx) = watch::channel(false);
        let slot = Arc::new(Slot::default());
        let fired = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::clone(&fired);
        let task = tokio::spawn(job_loop(
            clock.clone(),
            "j".into(),
            Arc::clone(&slot),
            cfg_rx,
            stop_rx,
            move |_| {
                crate::locking::lock(&f).push(clock.now());
                tokio::time::sleep(run_time)
            },
        ));
        Sim {
            config,
            stop,
            slot,
            fired,
            task,
        }
    }

    /// Stops the loop (a run in progress finishes) and returns the fire times.
    async fn end(self) -> (Vec<DateTime<Utc>>, Arc<Slot>) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        let fired = crate::locking::lock(&self.fired).clone();
        (fired, self.slot)
    }
}

/// Runs job `j` of `schedule` from `start` for `span` of simulated time; each run
/// takes `run_time`. Returns the fire times (wall clock) and the slot.
async fn simulate(
    schedule: &str,
    start: DateTime<Utc>,
    span: chrono::Duration,
    run_time: Duration,
) -> (Vec<DateTime<Utc>>, Arc<Slot>) {
    let sim = Sim::start(schedule, start, run_time);
    tokio::time::sleep(span.to_std().unwrap()).await;
    sim.end().await
}

fn berlin(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    chrono_tz::Europe::Berlin
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .unwrap()
        .with_timezone(&Utc)
}

fn local(ts: &[DateTime<Utc>]) -> Vec<String> {
    ts.iter()
        .map(|t| {
            t.with_timezone(&chrono_tz::Europe::Berlin)
                .format("%a %d %H:%M:%S")
                .to_string()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_quarter_hour_fires_on_the_quarters() {
    let (fired, slot) = simulate(
        "*/15 * * * *",
        berlin(2026, 11, 23, 9, 58),
        chrono::Duration::minutes(64),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        local(&fired),
        [
            "Mon 23 10:00:00",
            "Mon 23 10:15:00",
            "Mon 23 10:30:00",
            "Mon 23 10:45:00",
            "Mon 23 11:00:00"
        ]
    );
    assert_eq!(slot.skipped(), 0);
}

#[tokio::test(start_paused = true)]
async fn sunday_as_zero_fires_on_sundays() {
    // Friday 2026-11-20 to Tuesday 2026-12-01.
    let (fired, _) = simulate(
        "0 9 * * 0",
        berlin(2026, 11, 20, 0, 0),
        chrono::Duration::days(11),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(local(&fired), ["Sun 22 09:00:00", "Sun 29 09:00:00"]);
}

#[tokio::test(start_paused = true)]
async fn day_of_month_or_weekday_as_in_crontab() {
    // The 1st of the month or any Monday, from Sunday 2026-11-22 for ten days.
    let (fired, _) = simulate(
        "0 6 1 * MON",
        berlin(2026, 11, 22, 0, 0),
        chrono::Duration::days(10),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        local(&fired),
        ["Mon 23 06:00:00", "Mon 30 06:00:00", "Tue 01 06:00:00"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_that_overruns_skips_the_slots_it_covered() {
    // Each run takes 20 minutes: the :15 and :45 slots fall inside a run.
    let (fired, slot) = simulate(
        "*/15 * * * *",
        berlin(2026, 11, 23, 9, 58),
        chrono::Duration::minutes(64),
        Duration::from_secs(20 * 60),
    )
    .await;
    assert_eq!(
        local(&fired),
        ["Mon 23 10:00:00", "Mon 23 10:30:00", "Mon 23 11:00:00"]
    );
    // 10:15, 10:45, and 11:15 (the 11:00 run is let finish after the stop, to 11:20).
    assert_eq!(slot.skipped(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_slot_that_finds_a_manual_run_going_is_skipped() {
    let sim = Sim::start("*/15 * * * *", berlin(2026, 11, 23, 9, 58), Duration::ZERO);
    let manual = sim.slot.run_lock.try_lock().unwrap();
    tokio::time::sleep(Duration::from_secs(5 * 60)).await; // past 10:00
    drop(manual);
    tokio::time::sleep(Duration::from_secs(15 * 60)).await; // past 10:15
    let (fired, slot) = sim.end().await;
    assert_eq!(local(&fired), ["Mon 23 10:15:00"]);
    assert_eq!(slot.skipped(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_changed_schedule_takes_effect_at_once() {
    let sim = Sim::start("0 12 * * *", berlin(2026, 11, 23, 9, 58), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(60)).await;
    sim.config.send(config("*/15 * * * *")).unwrap();
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    let (fired, _) = sim.end().await;
    assert_eq!(local(&fired), ["Mon 23 10:00:00"]);
}

/// Every request and answer of the control socket reads back as it was written (an
/// answer serde cannot write would close the connection without a word).
#[test]
fn control_messages_round_trip() {
    use control::{Event, Request};
    use history::{History, HistoryQuery, RunDetail, RunSummary};
    let requests = [
        Request::Status,
        Request::History(HistoryQuery {
            job: Some("leads".into()),
            limit: 5,
            run: None,
        }),
        Request::Sync {
            job: None,
            mode: RunMode::default(),
        },
    ];
    for r in requests {
        let line = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }
    let summary = RunSummary {
        run_id: "r1".into(),
        imported: 3,
        ..RunSummary::default()
    };
    let events = [
        Event::History { history: None },
        Event::History {
            history: Some(History::Runs {
                runs: vec![summary.clone()],
            }),
        },
        Event::History {
            history: Some(History::Run {
                run: Box::new(RunDetail {
                    summary,
                    problems: Vec::new(),
                    notes: vec!["the state was written afresh".into()],
                }),
            }),
        },
    ];
    for e in events {
        let line = serde_json::to_string(&e).unwrap();
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }
}

/// A job is overdue once the second scheduled time after its last run ended, plus as
/// long as that run took, has passed; a weekday schedule's weekend is no gap.
#[test]
fn overdue_counts_scheduled_times_not_hours() {
    let due = |expr: &str, ended: DateTime<Utc>, took_ms: u64| {
        let s = crate::config::schedule::CronSchedule::parse(expr).unwrap();
        status::due_by(&s, chrono_tz::UTC, ended, took_ms).unwrap()
    };
    let t = |d, h, m| Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
    // Every 15 minutes, a run that took a minute and ended at 10:01: due by 10:31.
    assert_eq!(due("0 */15 * * * *", t(23, 10, 1), 60_000), t(23, 10, 31));
    // Weekdays at 08:00; Friday's run ended 08:01: not overdue before Tuesday 08:01.
    assert_eq!(due("0 0 8 * * Mon-Fri", t(20, 8, 1), 60_000), t(24, 8, 1));
}
