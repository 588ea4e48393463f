//! Time: the probe stamps events with `CLOCK_MONOTONIC` as of the kernel's last tick (it never
//! jumps; it stands still while the machine is suspended); records carry Unix time. [`Clock`]
//! holds the offset between the two, sampled at one moment, and is re-sampled on every tick so
//! that a stepped wall clock (NTP) is followed within one drain interval (and a resumed
//! machine's lost time, so only the events of the last drain interval before a suspension
//! are placed too early, by its length). Unix seconds become the UTC texts of partitions, file
//! names and reports, and are read back from them, with `jiff`.

use jiff::{Timestamp, fmt::strtime, tz::TimeZone};
use rustix::time::ClockId;
use tollgate_enforcer::probe::clock_ns;

/// Nanoseconds per second.
pub const NS_PER_S: u64 = 1_000_000_000;

/// The offset between `CLOCK_MONOTONIC` and `CLOCK_REALTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Unix time minus monotonic time, in ns, when sampled.
    offset_ns: i128,
}

impl Clock {
    /// The offset now.
    pub fn sample() -> Self {
        let monotonic = monotonic_ns();
        let real = unix_now_ns();
        Self {
            offset_ns: i128::from(real) - i128::from(monotonic),
        }
    }

    /// A clock whose Unix time is `monotonic_ns + offset_ns` (for tests).
    pub const fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix time in ns of the monotonic instant `monotonic_ns`.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from((i128::from(monotonic_ns) + self.offset_ns).max(0)).unwrap_or(u64::MAX)
    }

    /// Unix time in whole seconds of the monotonic instant `monotonic_ns`.
    pub fn unix_s(&self, monotonic_ns: u64) -> u64 {
        self.unix_ns(monotonic_ns) / NS_PER_S
    }
}

/// Now, in ns of `CLOCK_MONOTONIC`: the probe's clock, as the enforcer reads it.
pub use tollgate_enforcer::probe::monotonic_ns;

/// Now, in ns since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    clock_ns(ClockId::Realtime)
}

/// `YYYY-MM-DD` and `HH` (UTC) of Unix second `unix_s`: the `dt` and `hour` partitions.
pub fn partition_date(unix_s: u64) -> (String, String) {
    let at = timestamp(unix_s);
    (
        at.strftime("%Y-%m-%d").to_string(),
        at.strftime("%H").to_string(),
    )
}

/// `YYYYMMDDTHHMMSSZ` (UTC) of Unix second `unix_s`, for file names.
pub fn compact_utc(unix_s: u64) -> String {
    timestamp(unix_s).strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) of Unix second `unix_s`, for people.
pub fn rfc3339_utc(unix_s: u64) -> String {
    timestamp(unix_s).strftime(RFC3339_UTC).to_string()
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (or a bare Unix second count) into Unix seconds; `None` for
/// anything else, an impossible date, or one before 1970.
pub fn parse_utc(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds);
    }
    let civil = strtime::parse(RFC3339_UTC, text).ok()?.to_datetime().ok()?;
    let at = TimeZone::UTC.to_timestamp(civil).ok()?;
    u64::try_from(at.as_second()).ok()
}

/// The one text form of a UTC second that [`rfc3339_utc`] writes and [`parse_utc`] reads.
const RFC3339_UTC: &str = "%Y-%m-%dT%H:%M:%SZ";

/// Unix second `unix_s` as a timestamp; past jiff's range (the year 9999), its last second.
fn timestamp(unix_s: u64) -> Timestamp {
    i64::try_from(unix_s)
        .ok()
        .and_then(|second| Timestamp::from_second(second).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        // 2026-11-25T06:07:08Z
        let t = 1_795_586_828;
        assert_eq!(rfc3339_utc(t), "2026-11-25T06:07:08Z");
        assert_eq!(compact_utc(t), "20261125T060708Z");
        assert_eq!(
            partition_date(t),
            ("2026-11-25".to_owned(), "06".to_owned())
        );
        assert_eq!(parse_utc("2026-11-25T06:07:08Z"), Some(t));
        assert_eq!(parse_utc("1795586828"), Some(t));
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_utc("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-11-25 06:07:08",
            "x",
            "2026-11-25T06:07Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn monotonic_time_maps_to_unix_time() {
        let clock = Clock::sample();
        let monotonic = monotonic_ns();
        let unix = unix_now_ns();
        let mapped = clock.unix_ns(monotonic);
        assert!(mapped.abs_diff(unix) < NS_PER_S, "{mapped} vs {unix}");
    }
}
