//! The windows limits count in, shared by the state machine (which opens and
//! closes them from the times inside commands) and the data plane (which
//! stops spending a window's lease when its own clock passes the end).

use time::{Date, Month, OffsetDateTime, Time};

use crate::config::v1::{Limit, LimitUnit, LimitWindow};

/// `[start, end)` in Unix milliseconds of the `window` that contains
/// `at_ms`, aligned to UTC; None for an unspecified window or a time out of
/// the calendar's range.
pub fn window_bounds(window: LimitWindow, at_ms: i64) -> Option<(i64, i64)> {
    let fixed = |len: i64| {
        let start = at_ms.div_euclid(len) * len;
        Some((start, start + len))
    };
    match window {
        LimitWindow::Unspecified => None,
        LimitWindow::Second => fixed(1_000),
        LimitWindow::Minute => fixed(60_000),
        LimitWindow::Hour => fixed(3_600_000),
        LimitWindow::Day => fixed(86_400_000),
        LimitWindow::Month => month_bounds(at_ms),
    }
}

fn month_bounds(at_ms: i64) -> Option<(i64, i64)> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).ok()?;
    let first = Date::from_calendar_date(at.year(), at.month(), 1).ok()?;
    let (next_year, next_month) = match at.month() {
        Month::December => (at.year() + 1, Month::January),
        month => (at.year(), month.next()),
    };
    let next = Date::from_calendar_date(next_year, next_month, 1).ok()?;
    let ms = |date: Date| (date.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    Some((ms(first), ms(next)))
}

impl Limit {
    /// Whether the limit counts tokens or money, which are known only once an
    /// AI call ends: reserved from an estimate, reconciled after.
    pub fn counts_usage(&self) -> bool {
        !matches!(self.unit(), LimitUnit::Requests | LimitUnit::Unspecified)
    }

    /// How people read the unit: "requests", "input tokens", "micro-dollars".
    pub fn unit_text(&self) -> &'static str {
        match self.unit() {
            LimitUnit::Unspecified => "units",
            LimitUnit::Requests => "requests",
            LimitUnit::InputTokens => "input tokens",
            LimitUnit::OutputTokens => "output tokens",
            LimitUnit::TotalTokens => "tokens",
            LimitUnit::CostMicros => "micro-dollars",
        }
    }

    /// The limit's id ("" before it is stored).
    pub fn id(&self) -> &str {
        self.meta.as_ref().map_or("", |m| m.id.as_str())
    }

    /// The window's length in seconds, as `RateLimit-Policy`'s `w` gives it
    /// (a month as 30 days).
    pub fn window_secs(&self) -> u64 {
        match self.window() {
            LimitWindow::Second | LimitWindow::Unspecified => 1,
            LimitWindow::Minute => 60,
            LimitWindow::Hour => 3_600,
            LimitWindow::Day => 86_400,
            LimitWindow::Month => 30 * 86_400,
        }
    }

    /// "second", "minute", …, as in "100 requests per minute".
    pub fn window_text(&self) -> &'static str {
        match self.window() {
            LimitWindow::Unspecified => "window",
            LimitWindow::Second => "second",
            LimitWindow::Minute => "minute",
            LimitWindow::Hour => "hour",
            LimitWindow::Day => "day",
            LimitWindow::Month => "month",
        }
    }
}

/// The id of a limit's quota window record for one value of its scope.
pub fn quota_window_id(limit_id: &str, bucket: &str) -> String {
    format!("{limit_id}/{bucket}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_align_to_utc() {
        assert_eq!(window_bounds(LimitWindow::Second, 1_500), Some((1_000, 2_000)));
        assert_eq!(window_bounds(LimitWindow::Minute, 61_000), Some((60_000, 120_000)));
        assert_eq!(window_bounds(LimitWindow::Day, 86_400_000), Some((86_400_000, 172_800_000)));
        assert_eq!(window_bounds(LimitWindow::Second, -1), Some((-1_000, 0)));
        assert_eq!(window_bounds(LimitWindow::Unspecified, 5), None);
    }

    #[test]
    fn months_follow_the_calendar() {
        // 2024-02-15T12:00:00Z: a leap February.
        let (start, end) = window_bounds(LimitWindow::Month, 1_707_998_400_000).unwrap();
        assert_eq!(start, 1_706_745_600_000, "2024-02-01T00:00:00Z");
        assert_eq!(end, 1_709_251_200_000, "2024-03-01T00:00:00Z");
        // 2026-12-31T23:59:59.999Z rolls into January of the next year.
        let (start, end) = window_bounds(LimitWindow::Month, 1_798_761_599_999).unwrap();
        assert_eq!((start, end), (1_796_083_200_000, 1_798_761_600_000));
        assert_eq!(window_bounds(LimitWindow::Month, end), Some((end, 1_801_440_000_000)));
    }
}
