//! The schema's rules as plain functions, plus those a schema cannot say (a secret ARN's region
//! against `aws.region`). The webhook runs these before it injects, so a DsoSecret that somehow
//! bypassed the schema (an older CRD) still yields a clear denial rather than a broken pod.

use crate::duration;
use crate::secret::{DsoSecretSpec, FileSpec, MAX_FILES, MAX_PATH_LEN};
use std::collections::BTreeSet;

/// Default file mode: owner and group read.
pub const DEFAULT_FILE_MODE: u32 = 0o440;

/// One broken rule, naming the field the way `kubectl` does (`spec.files[0].path`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a relative file path: segments of `[A-Za-z0-9._-]`, no `.`/`..`, no leading `/`.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("must be at most {MAX_PATH_LEN} characters"));
    }
    if path.starts_with('/') {
        return Err("must be relative (no leading '/')".into());
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err("must not contain empty segments ('//' or a trailing '/')".into());
        }
        if seg == "." || seg == ".." {
            return Err("must not contain '.' or '..' segments".into());
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "contains {c:?}: use letters, digits, '.', '_', '-' and '/'"
            ));
        }
    }
    Ok(())
}

/// Checks a `jsonKey`: a non-empty top-level key, or a JSON Pointer (RFC 6901) when it starts
/// with `/`.
pub fn check_json_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    json_pointer_tokens(key).map(|_| ())
}

/// The path a `jsonKey` addresses, as unescaped tokens: one token (the key itself) for a
/// top-level key, the RFC 6901 reference tokens for a pointer starting with `/`.
pub fn json_pointer_tokens(key: &str) -> Result<Vec<String>, String> {
    let Some(pointer) = key.strip_prefix('/') else {
        return Ok(vec![key.to_string()]);
    };
    pointer
        .split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => {
                        return Err(format!(
                            "{key:?} is not a valid JSON Pointer (RFC 6901): '~' must be followed by 0 or 1 (~0 for '~', ~1 for '/')"
                        ));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

/// Parses `fileMode` ("0440", "440").
pub fn parse_file_mode(mode: &str) -> Result<u32, String> {
    let digits = mode
        .strip_prefix('0')
        .filter(|d| d.len() == 3)
        .unwrap_or(mode);
    if digits.len() != 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "{mode:?} is not an octal file mode: write 3 or 4 octal digits such as \"0440\""
        ));
    }
    u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
}

/// The region of a Secrets Manager ARN (`arn:aws:secretsmanager:<region>:<account>:secret:<name>`).
pub fn arn_region(secret_id: &str) -> Option<&str> {
    let mut parts = secret_id.splitn(6, ':');
    let (arn, _partition, service, region) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (arn == "arn" && service == "secretsmanager" && !region.is_empty()).then_some(region)
}

fn check_file(i: usize, f: &FileSpec, region: Option<&str>, errors: &mut Vec<FieldError>) {
    let at = |field: &str| format!("spec.files[{i}].{field}");
    match (&f.path, f.expands()) {
        (Some(p), false) => {
            if let Err(m) = check_path(p) {
                errors.push(err(at("path"), m));
            }
        }
        (Some(_), true) => errors.push(err(
            at("path"),
            "expand writes one file per top-level JSON key, named after the key: leave path unset",
        )),
        (None, false) => errors.push(err(at("path"), "path is required (unless expand is true)")),
        (None, true) => {}
    }
    if f.json_key.is_some() && f.expands() {
        errors.push(err(
            at("jsonKey"),
            "jsonKey and expand are mutually exclusive: jsonKey writes one key, expand writes every key",
        ));
    }
    if let Some(key) = &f.json_key
        && let Err(m) = check_json_key(key)
    {
        errors.push(err(at("jsonKey"), m));
    }
    if f.version_stage.is_some() && f.version_id.is_some() {
        errors.push(err(
            at("versionId"),
            "versionStage and versionId are mutually exclusive: pin a versionId or follow a stage",
        ));
    }
    match (&f.template, &f.sources) {
        (None, None) => {
            if f.secret_id.is_empty() {
                errors.push(err(at("secretId"), "is required (unless template is set)"));
            }
            check_secret_id(&at("secretId"), &f.secret_id, region, errors);
        }
        (Some(template), Some(sources)) => {
            if !f.secret_id.is_empty() {
                errors.push(err(
                    at("secretId"),
                    "set exactly one of secretId (write one secret's value) and template (render from sources)",
                ));
            }
            if f.json_key.is_some()
                || f.version_stage.is_some()
                || f.version_id.is_some()
                || f.expands()
            {
                errors.push(err(
                    at("template"),
                    "a template entry reads its secrets through sources: set jsonKey, versionStage or versionId on a source; expand does not apply",
                ));
            }
            if sources.is_empty() || sources.len() > crate::template::MAX_SOURCES {
                errors.push(err(
                    at("sources"),
                    format!("must name 1 to {} secrets", crate::template::MAX_SOURCES),
                ));
            }
            for (name, src) in sources {
                let field = |f: &str| at(&format!("sources.{name}.{f}"));
                if let Err(m) = crate::template::check_source_name(name) {
                    errors.push(err(at("sources"), m));
                }
                if src.secret_id.is_empty() {
                    errors.push(err(field("secretId"), "must not be empty"));
                }
                check_secret_id(&field("secretId"), &src.secret_id, region, errors);
                if let Some(key) = &src.json_key
                    && let Err(m) = check_json_key(key)
                {
                    errors.push(err(field("jsonKey"), m));
                }
                if src.version_stage.is_some() && src.version_id.is_some() {
                    errors.push(err(
                        field("versionId"),
                        "versionStage and versionId are mutually exclusive: pin a versionId or follow a stage",
                    ));
                }
            }
            let file = f.path.as_deref().unwrap_or("template");
            if let Err(m) =
                crate::template::check(file, template, sources.keys().map(String::as_str))
            {
                errors.push(err(at("template"), m));
            }
        }
        (Some(_), None) | (None, Some(_)) => errors.push(err(
            at(if f.template.is_some() {
                "sources"
            } else {
                "template"
            }),
            "template and sources go together: sources names the secrets the template reads",
        )),
    }
}

/// Checks a secret name or ARN (when not empty), and an ARN's region against `spec.aws.region`.
fn check_secret_id(field: &str, id: &str, region: Option<&str>, errors: &mut Vec<FieldError>) {
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/_+=.@:-".contains(*c)))
    {
        errors.push(err(
            field,
            format!("contains {c:?}: a secret name or ARN uses letters, digits and /_+=.@:-"),
        ));
    }
    if let (Some(want), Some(got)) = (region, arn_region(id))
        && want != got
    {
        errors.push(err(
            field,
            format!("the ARN is in region {got} but spec.aws.region is {want}"),
        ));
    }
}

/// Validates a whole spec; returns every broken rule, not just the first.
pub fn validate_spec(spec: &DsoSecretSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if spec.files.is_empty() {
        errors.push(err("spec.files", "must list at least one file"));
    }
    if spec.files.len() > MAX_FILES {
        errors.push(err(
            "spec.files",
            format!("must list at most {MAX_FILES} files"),
        ));
    }
    let region = spec.aws.as_ref().and_then(|a| a.region.as_deref());
    let mut seen = BTreeSet::new();
    for (i, f) in spec.files.iter().enumerate() {
        check_file(i, f, region, &mut errors);
        if let Some(p) = &f.path
            && !seen.insert(p.as_str())
        {
            errors.push(err(
                format!("spec.files[{i}].path"),
                format!("{p:?} is written by an earlier entry: every path must be unique within a DsoSecret"),
            ));
        }
    }
    for (i, f) in spec.files.iter().enumerate() {
        let Some(p) = &f.path else { continue };
        if let Some(dir) = seen
            .iter()
            .find(|other| p.starts_with(&format!("{other}/")))
        {
            errors.push(err(
                format!("spec.files[{i}].path"),
                format!("{p:?} is inside {dir:?}, which another entry writes as a file: a path cannot be both"),
            ));
        }
    }
    if let Some(mode) = &spec.file_mode
        && let Err(m) = parse_file_mode(mode)
    {
        errors.push(err("spec.fileMode", m));
    }
    if let Some(interval) = spec.refresh.as_ref().and_then(|r| r.interval.as_deref()) {
        match duration::parse(interval) {
            Err(e) => errors.push(err("spec.refresh.interval", e.to_string())),
            Ok(d) if d < duration::MIN_INTERVAL || d > duration::MAX_INTERVAL => errors.push(err(
                "spec.refresh.interval",
                "interval must be between 10s and 24h",
            )),
            Ok(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The refresh interval of a spec, defaulted (call after [`validate_spec`]).
pub fn interval(spec: &DsoSecretSpec) -> std::time::Duration {
    spec.refresh
        .as_ref()
        .and_then(|r| r.interval.as_deref())
        .and_then(|i| duration::parse(i).ok())
        .unwrap_or(duration::DEFAULT_INTERVAL)
}

/// The file mode of a spec, defaulted (call after [`validate_spec`]).
pub fn file_mode(spec: &DsoSecretSpec) -> u32 {
    spec.file_mode
        .as_deref()
        .and_then(|m| parse_file_mode(m).ok())
        .unwrap_or(DEFAULT_FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{AwsSpec, RefreshSpec};

    fn file(path: &str, id: &str) -> FileSpec {
        FileSpec {
            path: Some(path.into()),
            secret_id: id.into(),
            ..Default::default()
        }
    }

    fn spec(files: Vec<FileSpec>) -> DsoSecretSpec {
        DsoSecretSpec {
            aws: None,
            files,
            file_mode: None,
            refresh: None,
        }
    }

    fn fields(s: &DsoSecretSpec) -> Vec<String> {
        validate_spec(s)
            .expect_err("should be invalid")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn the_design_example_is_valid() {
        let mut s = spec(vec![
            FileSpec {
                json_key: Some("password".into()),
                version_stage: Some("AWSCURRENT".into()),
                ..file("password", "prod/shop/db")
            },
            file("db.json", "prod/shop/db"),
            FileSpec {
                path: None,
                expand: Some(true),
                ..file("", "prod/shop/api")
            },
        ]);
        s.file_mode = Some("0440".into());
        s.refresh = Some(RefreshSpec {
            interval: Some("5m".into()),
            strategy: None,
        });
        s.aws = Some(AwsSpec {
            region: Some("us-east-1".into()),
            role_arn: None,
        });
        assert_eq!(validate_spec(&s), Ok(()));
        assert_eq!(interval(&s).as_secs(), 300);
        assert_eq!(file_mode(&s), 0o440);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(DsoSecretSpec, &str)> = vec![
            (spec(vec![]), "spec.files"),
            (spec(vec![file("/etc/passwd", "a")]), "spec.files[0].path"),
            (spec(vec![file("a/../b", "a")]), "spec.files[0].path"),
            (spec(vec![file("./b", "a")]), "spec.files[0].path"),
            (spec(vec![file("a b", "a")]), "spec.files[0].path"),
            (
                spec(vec![file("x", "a"), file("x", "b")]),
                "spec.files[1].path",
            ),
            (
                spec(vec![FileSpec {
                    path: None,
                    expand: Some(true),
                    json_key: Some("k".into()),
                    ..file("", "a")
                }]),
                "spec.files[0].jsonKey",
            ),
            (
                spec(vec![FileSpec {
                    version_stage: Some("AWSCURRENT".into()),
                    version_id: Some("0123456789abcdef0123456789abcdef".into()),
                    ..file("x", "a")
                }]),
                "spec.files[0].versionId",
            ),
            (
                spec(vec![FileSpec {
                    expand: Some(true),
                    ..file("x", "a")
                }]),
                "spec.files[0].path",
            ),
            (
                spec(vec![FileSpec {
                    path: None,
                    ..file("", "a")
                }]),
                "spec.files[0].path",
            ),
            (spec(vec![file("x", "bad id")]), "spec.files[0].secretId"),
            (
                spec(vec![file("conf", "a"), file("conf/app", "b")]),
                "spec.files[1].path",
            ),
            (
                spec(vec![file("conf/app", "a"), file("conf", "b")]),
                "spec.files[0].path",
            ),
            (
                DsoSecretSpec {
                    file_mode: Some("0999".into()),
                    ..spec(vec![file("x", "a")])
                },
                "spec.fileMode",
            ),
            (
                DsoSecretSpec {
                    refresh: Some(RefreshSpec {
                        interval: Some("1s".into()),
                        strategy: None,
                    }),
                    ..spec(vec![file("x", "a")])
                },
                "spec.refresh.interval",
            ),
            (
                DsoSecretSpec {
                    refresh: Some(RefreshSpec {
                        interval: Some("soon".into()),
                        strategy: None,
                    }),
                    ..spec(vec![file("x", "a")])
                },
                "spec.refresh.interval",
            ),
            (
                DsoSecretSpec {
                    aws: Some(AwsSpec {
                        region: Some("us-east-1".into()),
                        role_arn: None,
                    }),
                    ..spec(vec![file(
                        "x",
                        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
                    )])
                },
                "spec.files[0].secretId",
            ),
        ];
        for (s, field) in cases {
            assert_eq!(fields(&s), vec![field.to_string()], "{s:?}");
        }
    }

    #[test]
    fn json_keys_are_top_level_keys_or_json_pointers() {
        assert_eq!(json_pointer_tokens("password"), Ok(vec!["password".into()]));
        assert_eq!(
            json_pointer_tokens("a/b"),
            Ok(vec!["a/b".into()]),
            "no leading '/': one key"
        );
        assert_eq!(
            json_pointer_tokens("/db/primary/password"),
            Ok(vec!["db".into(), "primary".into(), "password".into()])
        );
        assert_eq!(
            json_pointer_tokens("/a~1b/c~0d/~01"),
            Ok(vec!["a/b".into(), "c~d".into(), "~1".into()])
        );
        assert_eq!(
            json_pointer_tokens("/hosts/0"),
            Ok(vec!["hosts".into(), "0".into()])
        );
        assert_eq!(json_pointer_tokens("/"), Ok(vec![String::new()]));
        for bad in ["/a~2", "/a~", "/~x/b", ""] {
            assert!(check_json_key(bad).is_err(), "{bad}");
        }
        let s = spec(vec![FileSpec {
            json_key: Some("/db/~password".into()),
            ..file("x", "a")
        }]);
        assert_eq!(fields(&s), vec!["spec.files[0].jsonKey".to_string()]);
    }

    fn templated(template: &str, sources: serde_json::Value) -> FileSpec {
        FileSpec {
            template: Some(template.into()),
            sources: Some(serde_json::from_value(sources).expect("sources")),
            ..file("conf/db-url", "")
        }
    }

    #[test]
    fn a_template_entry_reads_its_declared_sources() {
        let s = spec(vec![templated(
            "postgres://{{ db.username }}:{{ db.password }}@db:5432/{{ name }}",
            serde_json::json!({"db": {"secretId": "prod/shop/db"},
                               "name": {"secretId": "prod/shop/app", "jsonKey": "/db/name"}}),
        )]);
        assert_eq!(validate_spec(&s), Ok(()));
        let refs: Vec<&str> = s.secret_refs().iter().map(|r| r.secret_id).collect();
        assert_eq!(refs, ["prod/shop/db", "prod/shop/app"]);
    }

    #[test]
    fn broken_templates_are_refused_naming_the_field() {
        let src = || serde_json::json!({"db": {"secretId": "a"}});
        let cases: Vec<(FileSpec, &str, &str)> = vec![
            (
                templated("{{ db.password", src()),
                "spec.files[0].template",
                "syntax error at line 1",
            ),
            (
                templated("{{ api.key }}", src()),
                "spec.files[0].template",
                "\"api\"",
            ),
            (
                templated("{{ db }}", serde_json::json!({"1db": {"secretId": "a"}})),
                "spec.files[0].sources",
                "1db",
            ),
            (
                templated(
                    "{{ db }}",
                    serde_json::json!({"db": {"secretId": "a", "jsonKey": "/~x"}}),
                ),
                "spec.files[0].sources.db.jsonKey",
                "JSON Pointer",
            ),
            (
                FileSpec {
                    secret_id: "a".into(),
                    ..templated("{{ db }}", src())
                },
                "spec.files[0].secretId",
                "exactly one",
            ),
            (
                FileSpec {
                    json_key: Some("k".into()),
                    ..templated("{{ db }}", src())
                },
                "spec.files[0].template",
                "through sources",
            ),
            (
                FileSpec {
                    sources: None,
                    ..templated("{{ db }}", src())
                },
                "spec.files[0].sources",
                "go together",
            ),
            (file("x", ""), "spec.files[0].secretId", "required"),
        ];
        for (f, field, message) in cases {
            let errors = validate_spec(&spec(vec![f])).expect_err("invalid");
            assert!(
                errors
                    .iter()
                    .any(|e| e.field == field && e.message.contains(message)),
                "{field} / {message}: {errors:?}"
            );
        }
    }

    #[test]
    fn file_modes_are_octal() {
        assert_eq!(parse_file_mode("0440"), Ok(0o440));
        assert_eq!(parse_file_mode("600"), Ok(0o600));
        for bad in ["0999", "44", "04400", "rw-r", ""] {
            assert!(parse_file_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arn_regions_are_read() {
        assert_eq!(
            arn_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"),
            Some("eu-west-1")
        );
        assert_eq!(arn_region("prod/db"), None);
    }

    proptest::proptest! {
        #[test]
        fn accepted_paths_never_escape_the_directory(p in "[a-z./]{1,12}") {
            if check_path(&p).is_ok() {
                proptest::prop_assert!(!p.starts_with('/'));
                proptest::prop_assert!(!p.split('/').any(|s| s == ".." || s == "." || s.is_empty()));
            }
        }
    }
}
