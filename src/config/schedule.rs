//! Cron schedules as operators write them (crontab syntax), on top of the `cron` crate.
//!
//! The `cron` crate differs from crontab in three ways that would surprise an operator:
//! it needs a seconds field, it numbers weekdays 1 = Sunday … 7 = Saturday (crontab:
//! 0 or 7 = Sunday, 1 = Monday), and when both day-of-month and day-of-week are
//! restricted it requires both to match (crontab fires when either matches). This module
//! accepts the 5-field crontab form (and the 6/7-field forms with seconds and year),
//! rewrites weekday numbers, and represents an either-or day rule as two `cron` schedules
//! whose next fire times are merged.
//!
//! Fire times are wall-clock times in the job's time zone. On the days the clocks change
//! this module follows cron (Vixie/cronie): a time that does not exist (the hour skipped
//! in spring) fires at the first instant after the gap, so a daily 02:30 job still runs
//! once that day; a time that exists twice (the hour repeated in autumn) fires once, at
//! its first occurrence, unless the hour field is a wildcard (`*`, `*/2`), in which case
//! the job keeps its rhythm through both passes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A parsed schedule; `Display` gives back what the operator wrote.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    /// One schedule, or two whose union is the crontab meaning (day-of-month OR weekday).
    parts: Vec<cron::Schedule>,
    /// The hour field starts with `*`: such a job fires in both passes of a repeated hour.
    every_hour: bool,
}

/// Two schedules written alike are the same schedule.
impl PartialEq for CronSchedule {
    fn eq(&self, other: &CronSchedule) -> bool {
        self.expr == other.expr
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.expr)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{expr}` is not a cron schedule: {reason}")]
pub struct ScheduleError {
    expr: String,
    reason: String,
}

const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronSchedule {
    pub fn parse(expr: &str) -> Result<CronSchedule, ScheduleError> {
        let err = |reason: String| ScheduleError {
            expr: expr.to_string(),
            reason,
        };
        let trimmed = expr.trim();
        let expanded = match trimmed {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let mut f: Vec<String> = expanded.split_whitespace().map(str::to_string).collect();
        match f.len() {
            5 => f.insert(0, "0".to_string()),
            6 | 7 => {}
            n => {
                return Err(err(format!(
                    "it has {n} fields; write 5 as in crontab (minute hour day-of-month month weekday), \
                     or 6 with seconds first"
                )))
            }
        }
        let (dom, dow) = (f[3].clone(), f[5].clone());
        let dow_days = weekday_set(&dow).map_err(err)?;
        let dow_cron = match &dow_days {
            None => "*".to_string(),
            Some(days) => days
                .iter()
                .map(|d| (d + 1).to_string())
                .collect::<Vec<_>>()
                .join(","),
        };
        let restricted = |s: &str| !s.starts_with('*') && s != "?";
        let mut variants = Vec::new();
        if restricted(&dom) && restricted(&dow) {
            variants.push((dom.clone(), "*".to_string()));
            variants.push(("*".to_string(), dow_cron));
        } else {
            let dom = if dom == "?" { "*".to_string() } else { dom };
            variants.push((dom, dow_cron));
        }
        let mut parts = Vec::new();
        for (d, w) in variants {
            let mut fields = f.clone();
            fields[3] = d;
            fields[5] = w;
            let s = fields.join(" ");
            parts.push(cron::Schedule::from_str(&s).map_err(|e| err(e.to_string()))?);
        }
        Ok(CronSchedule {
            expr: trimmed.to_string(),
            every_hour: f[2].starts_with('*'),
            parts,
        })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after<Z: TimeZone>(&self, after: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.parts
            .iter()
            .filter_map(|p| p.after(after).next())
            .min()
    }
}

impl CronSchedule {
    /// The first fire time strictly after the instant `now`, for wall-clock times in `tz`
    /// (see the module notes for the days the clocks change).
    pub fn next_fire(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let first = self.next_local(now, tz)?;
        // Walking local times misses the second pass of a repeated hour when `now` is in
        // the first: after 02:45 CEST the next local time is 03:00, which is after the
        // repeated 02:00-02:59 CET. Jobs with a wildcard hour get the second pass too.
        if !self.every_hour || offset(tz, first) >= offset(tz, now) {
            return Some(first);
        }
        let change = transition(tz, now, first);
        let local = change.with_timezone(&tz).naive_local() - chrono::Duration::seconds(1);
        let second_pass = self
            .next_after(&Utc.from_utc_datetime(&local))
            .and_then(|n| tz.from_local_datetime(&n.naive_utc()).latest())
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t > now && *t < first);
        Some(second_pass.unwrap_or(first))
    }

    fn next_local(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Walk the matching wall-clock times after the local time of `now`, treating them as
        // naive (as UTC, which has no gaps), and map each to an instant in `tz`.
        let local_now = now.with_timezone(&tz).naive_local();
        let mut naive = Utc.from_utc_datetime(&local_now);
        // A few candidates can fall into the past (the second pass of a repeated hour);
        // the bound only guards against a schedule that never matches again.
        for _ in 0..10_000 {
            naive = self.next_after(&naive)?;
            let candidate = match tz.from_local_datetime(&naive.naive_utc()) {
                LocalResult::Single(t) => Some(t),
                LocalResult::Ambiguous(first, second) => {
                    if first.with_timezone(&Utc) > now {
                        Some(first)
                    } else if self.every_hour {
                        Some(second)
                    } else {
                        None
                    }
                }
                LocalResult::None => Some(after_gap(tz, naive.naive_utc())),
            };
            if let Some(t) = candidate.map(|t| t.with_timezone(&Utc)) {
                if t > now {
                    return Some(t);
                }
            }
        }
        None
    }
}

/// The UTC offset in seconds of `tz` at instant `t`.
fn offset(tz: Tz, t: DateTime<Utc>) -> i32 {
    use chrono::Offset;
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

/// The instant (to the second) at which the offset changes between `from` and `to`.
fn transition(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> DateTime<Utc> {
    let before = offset(tz, from);
    let (mut lo, mut hi) = (from, to);
    while hi - lo > chrono::Duration::seconds(1) {
        let mid = lo + (hi - lo) / 2;
        if offset(tz, mid) == before {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The first instant after a gap in local time (the hour skipped when clocks go forward).
fn after_gap(tz: Tz, inside: NaiveDateTime) -> DateTime<Tz> {
    use chrono::{Duration, Timelike};
    let mut t = inside.with_second(0).unwrap_or(inside);
    // Gaps are whole minutes and at most a few hours (a day for a time-zone change at a
    // date line); step minute by minute to the first local time that exists.
    for _ in 0..(26 * 60) {
        t += Duration::minutes(1);
        if let Some(found) = tz.from_local_datetime(&t).earliest() {
            return found;
        }
    }
    // Unreachable with real time-zone data; fall back to reading the time as standard time.
    tz.from_utc_datetime(&inside)
}

/// The crontab weekdays (0 = Sunday … 6 = Saturday) a weekday field selects;
/// `None` when it selects every day.
fn weekday_set(field: &str) -> Result<Option<Vec<u8>>, String> {
    if field == "*" || field == "?" {
        return Ok(None);
    }
    let day = |s: &str| -> Result<u8, String> {
        if let Ok(n) = s.parse::<u8>() {
            return match n {
                0..=6 => Ok(n),
                7 => Ok(0),
                _ => Err(format!(
                    "weekday {n} is out of range (0-7, 0 and 7 = Sunday)"
                )),
            };
        }
        let upper = s.to_ascii_uppercase();
        WEEKDAYS
            .iter()
            .position(|w| *w == upper)
            .map(|p| p as u8)
            .ok_or_else(|| format!("`{s}` is not a weekday (0-7 or SUN-SAT)"))
    };
    let mut set = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u8>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("`{s}` is not a step"))?,
            ),
            None => (item, 1),
        };
        // Work in 0..=7 so that ranges ending in 7 (Sunday) such as 5-7 keep their meaning.
        let (lo, hi) = if range == "*" {
            (0u8, 6u8)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = day(a)?;
            let b = if b.trim() == "7" { 7 } else { day(b)? };
            if a > b {
                return Err(format!("weekday range `{range}` runs backwards"));
            }
            (a, b)
        } else {
            let a = day(range)?;
            (a, if step > 1 { 6 } else { a })
        };
        let mut d = lo;
        while d <= hi {
            set[(d % 7) as usize] = true;
            d += step;
        }
    }
    Ok(Some((0..7u8).filter(|d| set[*d as usize]).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Utc};

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn five_fields_fire_on_the_minute() {
        let s = CronSchedule::parse("*/15 * * * *").unwrap();
        let mut t = at(2026, 11, 22, 10, 1);
        let mut mins = Vec::new();
        for _ in 0..4 {
            t = s.next_after(&t).unwrap();
            assert_eq!(t.second(), 0);
            mins.push(t.minute());
        }
        assert_eq!(mins, vec![15, 30, 45, 0]);
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        // 2026-11-22 is a Sunday.
        for expr in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
            let s = CronSchedule::parse(expr).unwrap();
            let next = s.next_after(&at(2026, 11, 20, 0, 0)).unwrap();
            assert_eq!((next.day(), next.hour()), (22, 9), "{expr}");
        }
        let s = CronSchedule::parse("0 7-19 * * MON-FRI").unwrap();
        let next = s.next_after(&at(2026, 11, 21, 12, 0)).unwrap(); // Saturday noon
        assert_eq!((next.day(), next.hour()), (23, 7));
        let s = CronSchedule::parse("0 0 * * 5-7").unwrap(); // Fri, Sat, Sun
        let next = s.next_after(&at(2026, 11, 22, 1, 0)).unwrap();
        assert_eq!(next.weekday(), chrono::Weekday::Fri);
    }

    #[test]
    fn day_of_month_or_weekday() {
        // Fires on the 1st of the month and on every Monday.
        let s = CronSchedule::parse("0 6 1 * 1").unwrap();
        let mut t = at(2026, 11, 22, 0, 0);
        let mut days = Vec::new();
        for _ in 0..3 {
            t = s.next_after(&t).unwrap();
            days.push((t.month(), t.day()));
        }
        assert_eq!(days, vec![(11, 23), (11, 30), (12, 1)]);
    }

    #[test]
    fn bad_expressions_say_why() {
        assert!(CronSchedule::parse("* * *")
            .unwrap_err()
            .to_string()
            .contains("3 fields"));
        assert!(CronSchedule::parse("0 9 * * 8")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(CronSchedule::parse("61 * * * *").is_err());
    }

    fn fires(expr: &str, tz: &str, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let s = CronSchedule::parse(expr).unwrap();
        let tz: Tz = tz.parse().unwrap();
        let mut t = from;
        (0..n)
            .map(|_| {
                t = s.next_fire(t, tz).unwrap();
                t
            })
            .collect()
    }

    fn hm(ts: &[DateTime<Utc>]) -> Vec<String> {
        ts.iter()
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .collect()
    }

    #[test]
    fn fixed_time_keeps_local_time_across_dst() {
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        let f = fires("0 9 * * *", "Europe/Berlin", at(2026, 3, 27, 12, 0), 3);
        assert_eq!(hm(&f), ["03-28 08:00", "03-29 07:00", "03-30 07:00"]);
        let f = fires("0 9 * * *", "Europe/Berlin", at(2026, 10, 24, 12, 0), 2);
        assert_eq!(hm(&f), ["10-25 08:00", "10-26 08:00"]);
    }

    #[test]
    fn skipped_hour_fires_once_right_after_the_gap() {
        // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC). A daily 02:30
        // job runs at 03:00 CEST that day, not never.
        let f = fires("30 2 * * *", "Europe/Berlin", at(2026, 3, 28, 12, 0), 2);
        assert_eq!(hm(&f), ["03-29 01:00", "03-30 00:30"]);
        // Every 15 minutes: 01:45 CET, then 03:00 CEST, then on; 15 minutes apart.
        let f = fires("*/15 * * * *", "Europe/Berlin", at(2026, 3, 29, 0, 30), 3);
        assert_eq!(hm(&f), ["03-29 00:45", "03-29 01:00", "03-29 01:15"]);
    }

    #[test]
    fn repeated_hour_fires_fixed_times_once_and_wildcards_in_both_passes() {
        // 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET (01:00 UTC).
        let f = fires("30 2 * * *", "Europe/Berlin", at(2026, 10, 24, 12, 0), 2);
        assert_eq!(hm(&f), ["10-25 00:30", "10-26 01:30"]);
        // Every 15 minutes, from 00:00 CEST to 04:00 CET: 5 hours of wall time, 20 fires,
        // each exactly 15 minutes after the one before.
        let f = fires("*/15 * * * *", "Europe/Berlin", at(2026, 10, 24, 22, 0), 20);
        for w in f.windows(2) {
            assert_eq!(w[1] - w[0], chrono::Duration::minutes(15), "{:?}", hm(&f));
        }
        assert_eq!(hm(&f[..1]), ["10-24 22:15"]);
        assert_eq!(hm(&f[19..]), ["10-25 03:00"]);
        // Hourly keeps firing every hour, both 02:00 CEST and 02:00 CET included.
        let f = fires("0 * * * *", "Europe/Berlin", at(2026, 10, 24, 23, 30), 3);
        assert_eq!(hm(&f), ["10-25 00:00", "10-25 01:00", "10-25 02:00"]);
    }

    #[test]
    fn utc_fires_on_the_quarter_hours() {
        let f = fires("*/15 * * * *", "UTC", at(2026, 11, 22, 9, 59), 5);
        assert_eq!(
            hm(&f),
            [
                "11-22 10:00",
                "11-22 10:15",
                "11-22 10:30",
                "11-22 10:45",
                "11-22 11:00"
            ]
        );
        // Sundays only, 09:00 Berlin time: 2026-11-22 and -29 are Sundays.
        let f = fires("0 9 * * 0", "Europe/Berlin", at(2026, 11, 20, 0, 0), 2);
        assert_eq!(hm(&f), ["11-22 08:00", "11-29 08:00"]);
    }
}
