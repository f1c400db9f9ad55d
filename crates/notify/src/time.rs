//! RFC 3339 dates of notifications (`2026-11-29T17:00:00.123Z`), from the project's one civil
//! date function (`mirrorkit_scripts::civil_from_days`; its `utc_text` writes the event log's
//! `2026-11-29 17:00:00.123 UTC`, which is not RFC 3339).

use mirrorkit_scripts::civil_from_days;

/// `time_ms` (milliseconds since the Unix epoch) as RFC 3339 in UTC with milliseconds.
pub fn rfc3339_utc(time_ms: u64) -> String {
    // u64::MAX ms is about 1.8e16 s: it fits in an i64, and so does every step below.
    let secs = i64::try_from(time_ms / 1000).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        time_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        // 2000-02-29 (leap day of a century divisible by 400), last millisecond of the day.
        assert_eq!(rfc3339_utc(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_utc(1_795_971_600_123), "2026-11-29T17:00:00.123Z");
        // No panic at the far end.
        assert!(rfc3339_utc(u64::MAX).ends_with(".615Z"));
    }
}
