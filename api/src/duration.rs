//! Intervals written the way Kubernetes users write them: `30s`, `5m`, `1h30m`, `250ms`.
//! Whole numbers with the units `ms`, `s`, `m`, `h`: a subset of what the apiserver's CEL
//! `duration()` reads (no sign, fraction, `us` or `ns`). The CRD's pattern on `refresh.interval`
//! admits only this subset, so a value that passes the schema (pattern and CEL bounds) parses
//! here to the duration CEL checked.

use std::time::Duration;

/// Shortest allowed `refresh.interval`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Longest allowed `refresh.interval`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// `refresh.interval` when the spec leaves it out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. 30s, 5m, 1h30m)")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a Go-style duration made of `<number><unit>` parts (units `ms`, `s`, `m`, `h`).
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn rejects_what_is_not_a_duration_and_says_why() {
        for (input, reason) in [
            ("", "empty"),
            ("5", "missing unit"),
            ("m", "expected a number"),
            ("5d", "unknown unit"),
            ("-5m", "expected a number"),
            ("5m ", "expected a number"),
        ] {
            let e = parse(input).expect_err(input);
            assert_eq!(e.reason, reason, "{input}");
            assert!(e.to_string().contains("30s, 5m"));
        }
    }
}
