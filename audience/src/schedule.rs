//! Refresh schedules of dynamic packs: a five-field cron expression read in a time zone
//! (UTC unless a named zone such as `Asia/Shanghai` is given).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::error::{Error, Result};

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
    text: String,
}

impl Schedule {
    /// Checks `text` (`0 3 * * *`, `*/15 * * * *`, `0 9 * * MON-FRI`) and the zone name.
    pub fn parse(text: &str, zone: Option<&str>) -> Result<Schedule> {
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(Error::invalid(
                "schedule",
                format!(
                    "'{text}' has {fields} fields; a schedule has five: minute hour day-of-month month day-of-week"
                ),
            ));
        }
        let cron = Cron::from_str(text)
            .map_err(|e| Error::invalid("schedule", format!("'{text}': {e}")))?;
        let zone = match zone.map(str::trim).filter(|z| !z.is_empty()) {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                Error::invalid(
                    "time_zone",
                    format!("'{name}' is not a time zone name (e.g. UTC, Asia/Shanghai)"),
                )
            })?,
        };
        Ok(Schedule {
            cron,
            zone,
            text: text.to_string(),
        })
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .map(|next| next.with_timezone(&Utc))
            .map_err(|e| Error::invalid("schedule", format!("'{}' never runs: {e}", self.text)))
    }

    /// The next `n` runs after `t`, for people to check a schedule before saving it.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Result<Vec<DateTime<Utc>>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        for _ in 0..n {
            at = self.next_after(at)?;
            out.push(at);
        }
        Ok(out)
    }

    /// A sentence describing the schedule.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.cron.describe(), self.zone.name())
    }

    /// `t` as the schedule's zone shows it: `2026-11-24 03:00 CST`.
    pub fn local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.zone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    /// The zone's name.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    /// Whether a run was due after `last` and at or before `now`: a missed run (the server
    /// was down) is due once, however many were missed.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Result<bool> {
        Ok(self.next_after(last)? <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn local_times_read_in_the_zone() {
        let shanghai = Schedule::parse("0 3 * * *", Some("Asia/Shanghai")).expect("parses");
        let next = shanghai
            .next_after(at("2026-11-23T20:00:00Z"))
            .expect("next");
        assert_eq!(next, at("2026-11-24T19:00:00Z"));
        assert_eq!(shanghai.local(next), "2026-11-25 03:00 CST");
    }

    #[test]
    fn runs_follow_the_zone() {
        let utc = Schedule::parse("0 3 * * *", None).expect("parses");
        assert_eq!(
            utc.next_after(at("2026-11-23T03:00:00Z")).expect("next"),
            at("2026-11-24T03:00:00Z")
        );
        // 03:00 in Shanghai is 19:00 UTC the day before.
        let shanghai = Schedule::parse("0 3 * * *", Some("Asia/Shanghai")).expect("parses");
        assert_eq!(
            shanghai
                .next_after(at("2026-11-23T12:00:00Z"))
                .expect("next"),
            at("2026-11-23T19:00:00Z")
        );
        let weekdays = Schedule::parse("30 9 * * MON-FRI", None).expect("parses");
        // 2026-11-27 is a Friday; the next run after Friday 10:00 is Monday.
        assert_eq!(
            weekdays
                .next_after(at("2026-11-27T10:00:00Z"))
                .expect("next"),
            at("2026-11-30T09:30:00Z")
        );
        assert_eq!(
            utc.upcoming(at("2026-11-23T00:00:00Z"), 2)
                .expect("upcoming"),
            vec![at("2026-11-23T03:00:00Z"), at("2026-11-24T03:00:00Z")]
        );
    }

    #[test]
    fn a_missed_run_is_due_once() {
        let hourly = Schedule::parse("0 * * * *", None).expect("parses");
        assert!(
            hourly
                .due(at("2026-11-23T01:00:00Z"), at("2026-11-23T05:30:00Z"))
                .expect("due")
        );
        assert!(
            !hourly
                .due(at("2026-11-23T05:00:00Z"), at("2026-11-23T05:30:00Z"))
                .expect("due")
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_the_field() {
        for (text, zone, field) in [
            ("0 3 * *", None, "schedule:"),
            ("0 3 * * * *", None, "schedule:"),
            ("61 3 * * *", None, "schedule:"),
            ("0 3 * * *", Some("Mars/Olympus"), "time_zone:"),
        ] {
            let error = Schedule::parse(text, zone).expect_err(text).to_string();
            assert!(error.starts_with(field), "{text}: {error}");
        }
    }
}
