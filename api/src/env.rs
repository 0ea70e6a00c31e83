//! `dso://` environment references and the env files that carry them (Kubernetes env files,
//! KEP-3721, `env[].valueFrom.fileKeyRef`).
//!
//! A container env entry `value: dso://<DsoSecret>/<path>` names a file a DsoSecret writes. The
//! webhook rewrites it into a `fileKeyRef` on DSO's memory volume, key = the variable's name, file
//! = [`env_file_path`] of the container; `dso-init` writes that file, one `NAME='value'` line per
//! variable. The kubelet reads it when the container starts. Nothing of the value is ever in the
//! pod spec.
//!
//! The kubelet accepts a strict subset of POSIX shell assignments: `NAME='value'`, the value in
//! single quotes taken literally (newlines included), no escapes, no concatenation — so a value
//! holding a `'` cannot be carried, nor a NUL. The file may hold at most [`MAX_ENV_FILE_BYTES`].

/// The scheme of an env reference.
pub const SCHEME: &str = "dso://";
/// Directory of the env files in the volume. It starts with a `.`, which no DsoSecret name can.
pub const ENV_DIR: &str = ".dso-env";
/// Largest env file the kubelet reads.
pub const MAX_ENV_FILE_BYTES: usize = 64 * 1024;
/// Longest key the kubelet accepts in an env file.
pub const MAX_ENV_NAME_LEN: usize = 128;

/// The env file of a container, relative to the volume: `.dso-env/<container>.env`.
pub fn env_file_path(container: &str) -> String {
    format!("{ENV_DIR}/{container}.env")
}

/// A parsed `dso://<DsoSecret>/<path>` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The DsoSecret's name.
    pub dso_secret: String,
    /// The file path the DsoSecret writes.
    pub path: String,
}

/// `None` when `value` is not a `dso://` reference at all; `Some(Err(why))` when it starts with
/// `dso://` but is not of the form `dso://<DsoSecret>/<path>`.
pub fn parse_reference(value: &str) -> Option<Result<Reference, String>> {
    let rest = value.strip_prefix(SCHEME)?;
    let form = "write dso://<DsoSecret>/<path>, the path being a file the DsoSecret writes";
    let Some((dso_secret, path)) = rest.split_once('/') else {
        return Some(Err(format!("no file path: {form}")));
    };
    if dso_secret.is_empty() {
        return Some(Err(format!("no DsoSecret name: {form}")));
    }
    if let Err(why) = crate::validate::check_path(path) {
        return Some(Err(format!("the path {why}: {form}")));
    }
    Some(Ok(Reference {
        dso_secret: dso_secret.to_string(),
        path: path.to_string(),
    }))
}

/// Checks that a variable name can be a key of an env file: a shell identifier (letters,
/// digits and `_`, not starting with a digit) of at most [`MAX_ENV_NAME_LEN`] characters — the
/// names a POSIX shell would assign, which is what the kubelet's env-file format is a subset of.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let shape =
        "an env file carries only names made of letters, digits and '_', not starting with a digit";
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(format!(
                "{name:?} does not start with a letter or '_': {shape}"
            ));
        }
        Some(_) => {}
    }
    if chars.any(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
        return Err(format!("{name:?} contains other characters: {shape}"));
    }
    if name.len() > MAX_ENV_NAME_LEN {
        return Err(format!(
            "{name:?} is longer than the {MAX_ENV_NAME_LEN} characters an env file key may have"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_dso_secret_and_a_path() {
        assert_eq!(parse_reference("postgres://x"), None);
        assert_eq!(parse_reference("plain"), None);
        assert_eq!(
            parse_reference("dso://db/password"),
            Some(Ok(Reference {
                dso_secret: "db".into(),
                path: "password".into()
            }))
        );
        assert_eq!(
            parse_reference("dso://db/conf/app.yaml")
                .and_then(Result::ok)
                .map(|r| r.path),
            Some("conf/app.yaml".into())
        );
        for bad in [
            "dso://",
            "dso://db",
            "dso://db/",
            "dso:///x",
            "dso://db/../x",
            "dso://db/a b",
        ] {
            assert!(matches!(parse_reference(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn env_file_keys_are_shell_identifiers() {
        for good in ["DB_PASSWORD", "_x", "a1", &"A".repeat(128)] {
            assert_eq!(check_env_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1A", "A-B", "A.B", "A=B", "A B", "É", &"A".repeat(129)] {
            assert!(check_env_name(bad).is_err(), "{bad}");
        }
    }
}
