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
