//! Durations: humantime's syntax (`30s`, `1m30s`, `250ms`, `2h`); a unit
//! is always required, so that `--timeout 30` is an error rather than a
//! guess between seconds and milliseconds.

use std::time::Duration;

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 30s, 1m30s, 250ms, 2h)")]
pub struct DurationError {
    /// The rejected input.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Parses a duration such as `30s`, `1m30s`, `250ms` or `2h`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(input.trim()).map_err(|e| DurationError {
        input: input.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats `d` in the syntax [`parse_duration`] reads (`1m 30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime_durations() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("250ms", Duration::from_millis(250)),
            ("2h", Duration::from_secs(7200)),
            ("0s", Duration::ZERO),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn a_unit_is_required() {
        for input in ["30", "", "s", "-1s", "1.5.s", "10 parsecs"] {
            let err = parse_duration(input).unwrap_err();
            assert!(err.to_string().contains("examples"), "{input}: {err}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(90),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
