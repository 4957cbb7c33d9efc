//! Text forms shared by the scripting output and the interactive client: timestamps, ages, sizes.

/// Milliseconds in a second, a minute, an hour and a day.
const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn timestamp(ms: u64) -> String {
    let days = ms / DAY_MS;
    let in_day = ms % DAY_MS;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        in_day / HOUR_MS,
        in_day % HOUR_MS / MINUTE_MS,
        in_day % MINUTE_MS / SECOND_MS
    )
}

/// A Unix time in milliseconds as `HH:MM` (UTC).
pub(crate) fn clock(ms: u64) -> String {
    let in_day = ms % DAY_MS;
    format!(
        "{:02}:{:02}",
        in_day / HOUR_MS,
        in_day % HOUR_MS / MINUTE_MS
    )
}

/// How long ago `then_ms` was at `now_ms`, roughly: `just now`, `5 min ago`, `3 h ago`, `2 d ago`.
pub(crate) fn ago(then_ms: u64, now_ms: u64) -> String {
    let age = now_ms.saturating_sub(then_ms);
    if age < MINUTE_MS {
        "just now".to_owned()
    } else if age < HOUR_MS {
        format!("{} min ago", age / MINUTE_MS)
    } else if age < DAY_MS {
        format!("{} h ago", age / HOUR_MS)
    } else {
        format!("{} d ago", age / DAY_MS)
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < KIB * KIB {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (KIB * KIB) as f64)
    }
}

/// The (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known dates, including a leap day, come out right.
    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        // 2024-02-29T12:34:56Z
        assert_eq!(timestamp(1_709_210_096_000), "2024-02-29 12:34:56");
        assert_eq!(clock(1_709_210_096_000), "12:34");
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(ago(0, 30 * SECOND_MS), "just now");
        assert_eq!(ago(0, 5 * MINUTE_MS), "5 min ago");
        assert_eq!(ago(0, 3 * HOUR_MS), "3 h ago");
        assert_eq!(ago(10, 0), "just now");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
