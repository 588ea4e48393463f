//! Time: the probe stamps events with `CLOCK_BOOTTIME` (it keeps counting through suspend and
//! never jumps); records carry Unix time. [`Clock`] holds the offset between the two, sampled
//! at one moment, and is re-sampled on every tick so that a stepped wall clock (NTP) is
//! followed within one drain interval.

/// Nanoseconds per second.
pub const NS_PER_S: u64 = 1_000_000_000;

/// The offset between `CLOCK_BOOTTIME` and `CLOCK_REALTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Unix time minus boot time, in ns, when sampled.
    offset_ns: i128,
}

impl Clock {
    /// The offset now.
    pub fn sample() -> Self {
        let boot = boottime_ns();
        let real = read(libc::CLOCK_REALTIME);
        Self {
            offset_ns: i128::from(real) - i128::from(boot),
        }
    }

    /// A clock whose Unix time is `boot_ns + offset_ns` (for tests).
    pub const fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix time in ns of the boot-time instant `boot_ns`.
    pub fn unix_ns(&self, boot_ns: u64) -> u64 {
        u64::try_from((i128::from(boot_ns) + self.offset_ns).max(0)).unwrap_or(u64::MAX)
    }

    /// Unix time in whole seconds of the boot-time instant `boot_ns`.
    pub fn unix_s(&self, boot_ns: u64) -> u64 {
        self.unix_ns(boot_ns) / NS_PER_S
    }
}

/// Now, in ns of `CLOCK_BOOTTIME`: the clock of the probe's timestamps.
pub fn boottime_ns() -> u64 {
    read(libc::CLOCK_BOOTTIME)
}

/// Now, in ns since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * NS_PER_S + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// `YYYY-MM-DD` and `HH` (UTC) of Unix second `unix_s`: the `dt` and `hour` partitions.
pub fn partition_date(unix_s: u64) -> (String, String) {
    let (year, month, day, hour, _, _) = civil(unix_s);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{hour:02}"),
    )
}

/// `YYYYMMDDTHHMMSSZ` (UTC) of Unix second `unix_s`, for file names.
pub fn compact_utc(unix_s: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(unix_s);
    format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) of Unix second `unix_s`, for people.
pub fn rfc3339_utc(unix_s: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(unix_s);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (or a bare Unix second count) into Unix seconds.
pub fn parse_utc(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds);
    }
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<u64>);
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(str::parse::<u64>);
    let (hour, minute, second) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if d.next().is_some() || t.next().is_some() || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    if day > 31 || hour > 23 || minute > 59 || second > 59 || year < 1970 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Year, month, day, hour, minute, second (UTC) of a Unix second (Howard Hinnant's
/// civil-from-days algorithm).
fn civil(unix_s: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = unix_s / 86_400;
    let rem = unix_s % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since the Unix epoch of a civil date (the inverse of [`civil`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
            "2026-11-25 06:07:08",
            "x",
            "2026-11-25T06:07Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn boot_time_maps_to_unix_time() {
        let clock = Clock::sample();
        let boot = boottime_ns();
        let unix = unix_now_ns();
        let mapped = clock.unix_ns(boot);
        assert!(mapped.abs_diff(unix) < NS_PER_S, "{mapped} vs {unix}");
    }
}
