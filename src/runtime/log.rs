//! Server log lines in etcd 3.4's default (capnslog) shape, on stderr:
//! `2026-11-23 23:50:00.123456 I | etcdserver: published ...`.
//!
//! Tools read these: etcd's e2e suite waits for "enabled capabilities for version" and
//! "published" before it talks to a member. Boot and rare events only; nothing on a
//! request path logs.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// "YYYY-MM-DD HH:MM:SS.ffffff" in UTC.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil-from-days algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn line(level: char, package: &str, message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{} {level} | {package}: {message}",
        timestamp(SystemTime::now())
    );
}

pub fn info(package: &str, message: &str) {
    line('I', package, message);
}

pub fn notice(package: &str, message: &str) {
    line('N', package, message);
}

pub fn warning(package: &str, message: &str) {
    line('W', package, message);
}

pub fn error(package: &str, message: &str) {
    line('E', package, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_477_800_123_456);
        assert_eq!(timestamp(t), "2026-11-23 23:50:00.123456");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000-02-29");
    }
}
