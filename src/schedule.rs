//! Cron schedules as operators write them (crontab syntax), on top of the `cron` crate.
//!
//! The `cron` crate differs from crontab in three ways that would surprise an operator:
//! it needs a seconds field, it numbers weekdays 1 = Sunday … 7 = Saturday (crontab:
//! 0 or 7 = Sunday, 1 = Monday), and when both day-of-month and day-of-week are
//! restricted it requires both to match (crontab fires when either matches). This module
//! accepts the 5-field crontab form (and the 6/7-field forms with seconds and year),
//! rewrites weekday numbers, and represents an either-or day rule as two `cron` schedules
//! whose next fire times are merged.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone};

/// A parsed schedule; `Display` gives back what the operator wrote.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    /// One schedule, or two whose union is the crontab meaning (day-of-month OR weekday).
    parts: Vec<cron::Schedule>,
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
}
