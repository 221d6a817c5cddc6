//! Durations in definitions: humantime syntax (`10s`, `5m`, `7d`, `1h 30m`).

use std::time::Duration;

/// Parses a duration, or says what was wrong in the words a diagnostic uses.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!(
            "invalid duration `{}`: expected a number with a unit, e.g. 10s, 5m, 7d",
            super::diagnostic::shorten(text)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_forms_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        let expected = "invalid duration `7x`: expected a number with a unit, e.g. 10s, 5m, 7d";
        assert_eq!(parse_duration("7x").unwrap_err(), expected);
        assert!(parse_duration("10").is_err(), "a unit is required");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999999d").is_err());
    }
}
