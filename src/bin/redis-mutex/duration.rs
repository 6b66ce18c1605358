//! Durations on the command line: `500ms`, `30s`, `5m`, `1h`, and sums of them
//! (`1m30s`). Whole numbers only, a unit always (a bare `5` could mean seconds or
//! minutes); every failure is a message, never a panic.

use std::time::Duration;

const UNITS: &str = "ms, s, m or h";

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h` or `1m30s`.
pub fn parse(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("empty duration: write e.g. 500ms, 30s or 5m (units: {UNITS})"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{text:?} is not a duration: write e.g. 500ms, 30s or 5m (units: {UNITS})"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let too_long = || format!("{text:?} is too long");
        let n: u64 = number.parse().map_err(|_| too_long())?;
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" if after.starts_with('.') => {
                return Err(format!("{text:?}: whole numbers only (write 1500ms, not 1.5s)"));
            }
            "" => return Err(format!("{text:?} has no unit: write e.g. {n}s or {n}ms (units: {UNITS})")),
            other => return Err(format!("unknown unit {other:?} in {text:?}: use {UNITS}")),
        };
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(too_long)?;
        rest = after;
    }
    Ok(total)
}

/// `d` as the parser reads it: `11s`, `1500ms`, `0s`.
pub fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_parse() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn bad_input_is_an_error_that_says_what_to_write() {
        for (text, says) in [
            ("", "empty"),
            ("5", "no unit"),
            ("s", "not a duration"),
            ("-5s", "not a duration"),
            ("5 s", "no unit"),
            ("1.5s", "whole numbers only"),
            ("5sec", "unknown unit \"sec\""),
            ("5d", "unknown unit"),
            ("5s!", "not a duration"),
            ("30s ", "not a duration"),
            ("５s", "not a duration"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        for text in
            ["99999999999999999999s", "18446744073709551615h", "18446744073709551615m", "18446744073709551615s1s"]
        {
            let err = parse(text).expect_err(text);
            assert!(err.contains("too long"), "{text:?}: {err}");
        }
        assert_eq!(parse("18446744073709551615ms"), Ok(Duration::from_millis(u64::MAX)));
    }

    #[test]
    fn shown_durations_read_back() {
        for d in [Duration::ZERO, Duration::from_secs(11), Duration::from_millis(1500), Duration::from_millis(3)] {
            assert_eq!(parse(&show(d)), Ok(d), "{}", show(d));
        }
    }
}
