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

/// The shape of `aws.region` (and of the region in a secret ARN): `us-east-1`, `eu-central-2`,
/// `us-gov-west-1`, `cn-north-1`, … The same pattern as the CRD's.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$";

/// The shape of a Secrets Manager secret ARN, as the CRD's CEL rule on `secretId` checks it:
/// partition `aws`, `aws-cn`, `aws-us-gov`, `aws-iso`, `aws-iso-b`, …; service `secretsmanager`;
/// a region of [`REGION_PATTERN`]; a 12-digit account; `secret:` and a secret name.
pub const SECRET_ARN_PATTERN: &str = r"^arn:aws(-[a-z]+)*:secretsmanager:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$";

/// The characters of a secret name (Secrets Manager allows no others; no `:`).
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)
}

/// Checks an AWS region name against [`REGION_PATTERN`]. The region becomes part of a host
/// name, so nothing else may pass.
pub fn check_region(region: &str) -> Result<(), String> {
    let parts: Vec<&str> = region.split('-').collect();
    let letters = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && letters(&parts[0])
        && parts[1..parts.len() - 1].iter().all(letters)
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{region:?} is not an AWS region: use a region name such as us-east-1 or eu-central-2"
        ))
    }
}

/// The parts of a Secrets Manager secret ARN that [`parse_secret_arn`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretArn<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// The secret name (with or without the 6-character suffix AWS appends).
    pub name: &'a str,
}

/// Parses `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>` field by field
/// ([`SECRET_ARN_PATTERN`]); the error names the first field that is wrong.
pub fn parse_secret_arn(arn: &str) -> Result<SecretArn<'_>, String> {
    const SHAPE: &str = "arn:<partition>:secretsmanager:<region>:<12-digit account>:secret:<name>";
    let bad = |why: String| {
        Err(format!(
            "is not a Secrets Manager secret ARN ({SHAPE}): {why}"
        ))
    };
    if !arn.starts_with("arn:") {
        return bad("it must start with \"arn:\"".into());
    }
    let mut parts = arn.splitn(7, ':');
    let (Some(_arn), Some(partition), Some(service), Some(region), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return bad("too few ':'-separated fields".into());
    };
    let (resource, name) = (parts.next(), parts.next());
    let mut groups = partition.split('-');
    if groups.next() != Some("aws")
        || !groups.all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_lowercase()))
    {
        return bad(format!(
            "partition {partition:?} is not an AWS partition (aws, aws-cn, aws-us-gov, aws-iso, …)"
        ));
    }
    if service != "secretsmanager" {
        return bad(format!("service {service:?} is not secretsmanager"));
    }
    if let Err(why) = check_region(region) {
        return bad(format!("region {why}"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return bad(format!("account {account:?} is not 12 digits"));
    }
    if resource != Some("secret") {
        return bad("the resource must be secret:<name>".into());
    }
    match name {
        Some(name) if !name.is_empty() && name.chars().all(is_name_char) => Ok(SecretArn {
            partition,
            region,
            account,
            name,
        }),
        _ => bad("the secret name must be letters, digits and /_+=.@- (no ':')".into()),
    }
}

/// Checks a `secretId`: a secret name (letters, digits, `/_+=.@-`), or, when it contains `:`
/// (which no name may), a well-formed Secrets Manager ARN.
pub fn check_secret_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.contains(':') {
        return parse_secret_arn(id).map(|_| ());
    }
    match id.chars().find(|c| !is_name_char(*c)) {
        Some(c) => Err(format!(
            "contains {c:?}: a secret name or ARN uses letters, digits and /_+=.@:-"
        )),
        None => Ok(()),
    }
}

/// The region of a well-formed Secrets Manager ARN; `None` for a name (or anything that does
/// not pass [`parse_secret_arn`], which validation refuses anyway).
pub fn arn_region(secret_id: &str) -> Option<&str> {
    parse_secret_arn(secret_id).ok().map(|a| a.region)
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
            check_secret_id_at(&at("secretId"), &f.secret_id, region, errors);
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
                check_secret_id_at(&field("secretId"), &src.secret_id, region, errors);
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

/// Checks a secret name or ARN (when not empty: emptiness is the caller's rule), and an ARN's
/// region against `spec.aws.region`.
fn check_secret_id_at(field: &str, id: &str, region: Option<&str>, errors: &mut Vec<FieldError>) {
    if id.is_empty() {
        return;
    }
    if let Err(m) = check_secret_id(id) {
        errors.push(err(field, m));
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
    if let Some(r) = region
        && let Err(m) = check_region(r)
    {
        errors.push(err("spec.aws.region", m));
    }
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
    if let Some(signal) = spec.refresh.as_ref().and_then(|r| r.signal)
        && spec.strategy() != crate::RefreshStrategy::InPlace
    {
        errors.push(err(
            "spec.refresh.signal",
            format!(
                "{} requires strategy: InPlace (the dso-refresh sidecar sends it after it swaps the files; Rollout restarts the pods instead)",
                signal.name()
            ),
        ));
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
            ..Default::default()
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
                        ..Default::default()
                    }),
                    ..spec(vec![file("x", "a")])
                },
                "spec.refresh.interval",
            ),
            (
                DsoSecretSpec {
                    refresh: Some(RefreshSpec {
                        interval: Some("soon".into()),
                        ..Default::default()
                    }),
                    ..spec(vec![file("x", "a")])
                },
                "spec.refresh.interval",
            ),
            (
                DsoSecretSpec {
                    refresh: Some(RefreshSpec {
                        signal: Some(crate::RefreshSignal::Sighup),
                        ..Default::default()
                    }),
                    ..spec(vec![file("x", "a")])
                },
                "spec.refresh.signal",
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
    fn a_signal_goes_with_in_place_and_only_reload_signals_parse() {
        let in_place: DsoSecretSpec = serde_json::from_value(serde_json::json!({
            "files": [{"path": "x", "secretId": "a"}],
            "refresh": {"strategy": "InPlace", "signal": "SIGUSR1"}
        }))
        .expect("parses");
        assert_eq!(validate_spec(&in_place), Ok(()));
        assert_eq!(in_place.signal(), Some(crate::RefreshSignal::Sigusr1));
        for bad in ["SIGTERM", "SIGKILL", "HUP", "sighup", "1"] {
            let parsed = serde_json::from_value::<DsoSecretSpec>(serde_json::json!({
                "files": [{"path": "x", "secretId": "a"}],
                "refresh": {"strategy": "InPlace", "signal": bad}
            }));
            assert!(parsed.is_err(), "{bad} accepted");
        }
        let rollout: DsoSecretSpec = serde_json::from_value(serde_json::json!({
            "files": [{"path": "x", "secretId": "a"}],
            "refresh": {"signal": "SIGHUP"}
        }))
        .expect("parses");
        let errors = validate_spec(&rollout).expect_err("refused");
        assert_eq!(errors[0].field, "spec.refresh.signal");
        assert!(errors[0].message.contains("InPlace"), "{}", errors[0]);
        assert_eq!(rollout.signal(), None);
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

    #[rstest::rstest]
    #[case::commercial("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf")]
    #[case::partial_arn("arn:aws:secretsmanager:eu-central-2:123456789012:secret:db")]
    #[case::china("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:db")]
    #[case::gov_cloud("arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:db")]
    #[case::iso_b("arn:aws-iso-b:secretsmanager:us-isob-east-1:123456789012:secret:db")]
    #[case::name_characters(
        "arn:aws:secretsmanager:ap-southeast-3:123456789012:secret:a/b_c+d=e.f@g-h"
    )]
    fn well_formed_secret_arns_are_accepted(#[case] arn: &str) {
        assert_eq!(check_secret_id(arn), Ok(()));
        let parsed = parse_secret_arn(arn).expect("valid");
        assert_eq!(arn_region(arn), Some(parsed.region));
        assert_eq!(parsed.account, "123456789012");
    }

    #[rstest::rstest]
    #[case::host_in_region("arn:aws:secretsmanager:x@127.0.0.1/:123456789012:secret:db", "region")]
    #[case::dotted_region(
        "arn:aws:secretsmanager:us-east-1.evil.example:123456789012:secret:db",
        "region"
    )]
    #[case::empty_region("arn:aws:secretsmanager::123456789012:secret:db", "region")]
    #[case::upper_region("arn:aws:secretsmanager:US-EAST-1:123456789012:secret:db", "region")]
    #[case::region_without_number(
        "arn:aws:secretsmanager:us-east:123456789012:secret:db",
        "region"
    )]
    #[case::unknown_partition(
        "arn:azure:secretsmanager:us-east-1:123456789012:secret:db",
        "partition"
    )]
    #[case::partition_with_dot(
        "arn:aws.evil:secretsmanager:us-east-1:123456789012:secret:db",
        "partition"
    )]
    #[case::other_service("arn:aws:s3:us-east-1:123456789012:secret:db", "service")]
    #[case::short_account("arn:aws:secretsmanager:us-east-1:12345:secret:db", "account")]
    #[case::account_with_letters(
        "arn:aws:secretsmanager:us-east-1:12345678901a:secret:db",
        "account"
    )]
    #[case::no_secret_prefix("arn:aws:secretsmanager:us-east-1:123456789012:db", "resource")]
    #[case::other_resource("arn:aws:secretsmanager:us-east-1:123456789012:key:db", "resource")]
    #[case::empty_name("arn:aws:secretsmanager:us-east-1:123456789012:secret:", "name")]
    #[case::colon_in_name("arn:aws:secretsmanager:us-east-1:123456789012:secret:db:x", "name")]
    #[case::too_short("arn:aws:secretsmanager", "fields")]
    #[case::not_arn(
        "urn:aws:secretsmanager:us-east-1:123456789012:secret:db",
        "start with"
    )]
    #[case::colon_in_a_name("prod:db", "start with")]
    fn malformed_secret_arns_are_refused_naming_the_wrong_part(
        #[case] arn: &str,
        #[case] part: &str,
    ) {
        let why = check_secret_id(arn).expect_err("invalid");
        assert!(why.contains(part), "{why}");
        assert!(
            why.contains("arn:<partition>:secretsmanager:"),
            "says the shape: {why}"
        );
        assert_eq!(arn_region(arn), None, "no region is taken from it");
        let s = spec(vec![file("x", arn)]);
        assert_eq!(fields(&s), vec!["spec.files[0].secretId".to_string()]);
    }

    #[test]
    fn a_malformed_region_is_refused() {
        for bad in [
            "x@127.0.0.1/",
            "us-east-1.",
            "useast1",
            "u-east-1",
            "us--1",
            "",
        ] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        for good in [
            "us-east-1",
            "us-gov-west-1",
            "cn-northwest-1",
            "eu-central-2",
        ] {
            assert_eq!(check_region(good), Ok(()), "{good}");
        }
        let s = DsoSecretSpec {
            aws: Some(AwsSpec {
                region: Some("x@127.0.0.1/".into()),
                role_arn: None,
            }),
            ..spec(vec![file("x", "prod/db")])
        };
        assert_eq!(fields(&s), vec!["spec.aws.region".to_string()]);
    }

    /// The CRD says the same as this module: the CEL rule on `secretId` is
    /// [`SECRET_ARN_PATTERN`], and `aws.region`'s pattern is [`REGION_PATTERN`].
    #[test]
    fn the_crd_checks_arns_and_regions_with_the_same_patterns() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::DsoSecret::crd()).expect("crd");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["aws"]["properties"]["region"]["pattern"],
            REGION_PATTERN
        );
        let rule = spec["files"]["items"]["properties"]["secretId"]["x-kubernetes-validations"][0]
            ["rule"]
            .as_str()
            .expect("a CEL rule on secretId");
        assert!(
            rule.contains(&format!("self.matches('{SECRET_ARN_PATTERN}')")),
            "{rule}"
        );
        let region_core = REGION_PATTERN.trim_start_matches('^').trim_end_matches('$');
        assert!(SECRET_ARN_PATTERN.contains(&format!(":{region_core}:")));
    }

    proptest::proptest! {
        #[test]
        fn a_region_taken_from_an_accepted_arn_is_a_plain_region_name(
            id in "arn:aws(-[a-z]{1,4}|[a-z.-]{0,4}):secretsmanager:([a-z]{2}-[a-z]{1,5}-[0-9]{1,2}|[a-z0-9@./:-]{0,16}):([0-9]{12}|[0-9a]{11,13}):secret:([a-z]{1,4}|[a-z:]{0,4})"
        ) {
            if let Some(region) = arn_region(&id) {
                proptest::prop_assert!(check_region(region).is_ok());
                proptest::prop_assert!(region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                proptest::prop_assert!(check_secret_id(&id).is_ok());
            }
        }
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
