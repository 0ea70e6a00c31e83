//! The env files the kubelet reads for `dso://` env references (KEP-3721, `fileKeyRef`).
//!
//! The kubelet accepts a strict subset of POSIX shell assignments: one `NAME='value'` per
//! variable, the value in single quotes and taken literally — newlines, `=`, `"`, `#`, `$`, `\`
//! and any Unicode text included — with no escape sequences and no concatenation of quoted
//! strings. So a value can be carried unless it holds a `'` or a NUL, or is not UTF-8 (the
//! kubelet hands values to the runtime as strings); the whole file may hold at most
//! [`MAX_ENV_FILE_BYTES`]. A value that cannot be carried is refused, never altered: the caller
//! fails closed naming the variable, and nothing of the value.

pub use dso_api::env::MAX_ENV_FILE_BYTES;

/// Why a value cannot be carried by an env file. Names the problem, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncarriable {
    NotUtf8,
    Nul,
    SingleQuote,
    /// The file would exceed [`MAX_ENV_FILE_BYTES`]; this variable's line alone is `line_bytes`.
    TooLarge {
        file_bytes: usize,
        line_bytes: usize,
    },
}

impl std::fmt::Display for Uncarriable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uncarriable::NotUtf8 => write!(
                f,
                "the value is not UTF-8 text, which an environment variable set by the kubelet must be"
            ),
            Uncarriable::Nul => write!(
                f,
                "the value holds a NUL byte, which no environment variable can"
            ),
            Uncarriable::SingleQuote => write!(
                f,
                "the value holds a single quote ('), which the kubelet's env-file format cannot carry (values are single-quoted, without escapes): read it from the file instead"
            ),
            Uncarriable::TooLarge {
                file_bytes,
                line_bytes,
            } => write!(
                f,
                "the container's env file would be {file_bytes} bytes (this variable {line_bytes}), over the kubelet's limit of {MAX_ENV_FILE_BYTES}: read large values from files instead"
            ),
        }
    }
}

/// One `NAME='value'\n` line, or why `value` cannot be carried.
pub fn line(name: &str, value: &[u8]) -> Result<String, Uncarriable> {
    let text = std::str::from_utf8(value).map_err(|_| Uncarriable::NotUtf8)?;
    if text.contains('\0') {
        return Err(Uncarriable::Nul);
    }
    if text.contains('\'') {
        return Err(Uncarriable::SingleQuote);
    }
    Ok(format!("{name}='{text}'\n"))
}

/// The whole env file for `vars` (name, value), or the index of the first variable that cannot
/// be carried and why. Later entries of one name win, as in a container's `env` list: only the
/// last is written.
pub fn render(vars: &[(&str, &[u8])]) -> Result<Vec<u8>, (usize, Uncarriable)> {
    let mut out = String::new();
    for (i, (name, value)) in vars.iter().enumerate() {
        if vars[i + 1..].iter().any(|(later, _)| later == name) {
            continue;
        }
        let l = line(name, value).map_err(|why| (i, why))?;
        if out.len() + l.len() > MAX_ENV_FILE_BYTES {
            return Err((
                i,
                Uncarriable::TooLarge {
                    file_bytes: out.len() + l.len(),
                    line_bytes: l.len(),
                },
            ));
        }
        out.push_str(&l);
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The kubelet's env-file rules as documented (kubernetes.io, "Env file syntax"): `NAME='value'`;
    /// spaces around `=` and leading spaces ignored; blank lines and `#` lines ignored; the
    /// single-quoted value is literal and may span lines; unquoted values, double-quoted values,
    /// adjacent quoted strings and expansions are refused.
    fn kubelet_parse(file: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        let mut rest = file;
        while !rest.is_empty() {
            let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
            let trimmed = line.trim_start_matches([' ', '\t']);
            if trimmed.trim().is_empty() || trimmed.starts_with('#') {
                rest = after;
                continue;
            }
            let eq = trimmed.find('=').ok_or("no '='")?;
            let name = trimmed[..eq].trim_end_matches([' ', '\t']);
            if name.is_empty() || name.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(format!("bad name {name:?}"));
            }
            // The quoted value may continue over lines: read it from `rest`, not `line`.
            let value_at = line.len() - trimmed.len() + eq + 1;
            let value_text = rest[value_at..].trim_start_matches([' ', '\t']);
            let body = value_text
                .strip_prefix('\'')
                .ok_or("value not single-quoted")?;
            let close = body.find('\'').ok_or("unterminated quote")?;
            let (v, tail) = (&body[..close], &body[close + 1..]);
            let (tail_line, next) = tail.split_once('\n').unwrap_or((tail, ""));
            if !tail_line.trim().is_empty() {
                return Err(format!(
                    "trailing text after the quoted value: {tail_line:?}"
                ));
            }
            out.insert(name.to_string(), v.to_string());
            rest = next;
        }
        Ok(out)
    }

    fn round_trip(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        let raw: Vec<(&str, &[u8])> = vars.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let file = render(&raw).expect("carriable");
        kubelet_parse(&String::from_utf8(file).expect("utf-8")).expect("the kubelet reads it")
    }

    #[test]
    fn values_the_format_can_carry_come_back_unchanged() {
        let cases = [
            ("EQUALS", "a=b==c"),
            ("DOUBLE", r#"say "hi""#),
            ("NEWLINES", "line1\nline2\n\n"),
            ("CRLF", "a\r\nb"),
            ("UNICODE", "pässwörd 🔑 日本"),
            ("EMPTY", ""),
            ("SHELLISH", r"$HOME ${X} `id` \n \\ # not a comment"),
            ("SPACES", "  padded  "),
            ("HASH_LINE", "x\n# looks like a comment\ny"),
        ];
        let got = round_trip(&cases);
        for (name, value) in cases {
            assert_eq!(got.get(name).map(String::as_str), Some(value), "{name}");
        }
    }

    #[test]
    fn the_last_of_two_entries_of_one_name_wins() {
        let got = round_trip(&[("A", "first"), ("B", "b"), ("A", "second")]);
        assert_eq!(got.get("A").map(String::as_str), Some("second"));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn values_the_format_cannot_carry_are_refused_naming_the_variable_not_the_value() {
        let canary = "canary-5ec2e7";
        for (value, want) in [
            (
                format!("it's {canary}").into_bytes(),
                Uncarriable::SingleQuote,
            ),
            (format!("{canary}\0").into_bytes(), Uncarriable::Nul),
            (vec![0xff, 0xfe, b'x'], Uncarriable::NotUtf8),
        ] {
            let err = render(&[("OK", b"fine"), ("BAD", &value)]).expect_err("refused");
            assert_eq!(err, (1, want.clone()));
            assert!(!err.1.to_string().contains(canary));
        }
    }

    #[test]
    fn the_file_stays_within_the_kubelets_size_limit() {
        let big = "x".repeat(MAX_ENV_FILE_BYTES - 10);
        assert!(render(&[("A", big.as_bytes())]).is_ok());
        let err = render(&[("A", big.as_bytes()), ("B", b"0123456789")]).expect_err("too big");
        assert_eq!(err.0, 1);
        assert!(matches!(err.1, Uncarriable::TooLarge { .. }));
    }

    proptest::proptest! {
        #[test]
        fn any_carriable_text_round_trips(value in "[^'\u{0}]{0,64}", name in "[A-Za-z_][A-Za-z0-9_]{0,12}") {
            let got = round_trip(&[(name.as_str(), value.as_str())]);
            proptest::prop_assert_eq!(got.get(&name), Some(&value));
        }
    }
}
