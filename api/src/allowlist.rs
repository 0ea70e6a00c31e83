//! The secret allowlist: which AWS secrets the DsoSecrets of each namespace may name, set by the
//! cluster admin (`--secret-allowlist`, the chart's `secretAllowlist`). The webhook refuses pods
//! and DsoSecrets that name anything else; the operator marks such a DsoSecret `InvalidSpec`
//! and makes no AWS call for it. Without an allowlist everything is allowed, as before.
//!
//! The file (YAML):
//!
//! ```yaml
//! default:                   # every namespace, on top of its own entries
//!   - "{namespace}/"         # names starting with the namespace's own name and a '/'
//! namespaces:
//!   payments:
//!     - shared/payments-     # a name prefix
//!     - "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/*"
//! ```
//!
//! Matching, exactly:
//! - An entry that does not start with `arn:` is a **name prefix**: it allows a `secretId` that
//!   is a secret *name* (no `:`) starting with it. It never allows an ARN, whatever its account:
//!   a name is looked up in the operator's own account, an ARN may point at any account.
//!   `*` and `:` are refused in a name prefix.
//! - An entry that starts with `arn:` is an **ARN pattern**
//!   `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`: it allows a `secretId`
//!   that is an ARN (full or partial) whose fields match one by one. Partition, region and
//!   account are each a literal or `*` (any value of that one field); the name is a glob where
//!   `*` matches any run of name characters (including `/`, none at all) and `?` exactly one.
//!   No `*` crosses a `:`. An ARN pattern never allows a bare name.
//! - `{namespace}` in an entry stands for the DsoSecret's namespace (a DNS label, so it adds
//!   no pattern character).
//! - A namespace may use the `default` entries plus its own under `namespaces`; a namespace
//!   in neither may use nothing.

use crate::secret::{DsoSecretSpec, FileSpec};
use crate::validate::{FieldError, check_region, is_name_char, parse_secret_arn};
use std::collections::BTreeMap;

/// The placeholder for the DsoSecret's namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// The allowlist file as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default: Vec<String>,
    #[serde(default)]
    namespaces: BTreeMap<String, Vec<String>>,
}

/// One checked entry (`{namespace}` still in it).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A secret name prefix.
    Name(String),
    /// An ARN pattern: partition, region, account (`None`: `*`), name glob.
    Arn {
        text: String,
        partition: Option<String>,
        region: Option<String>,
        account: Option<String>,
        name: String,
    },
}

impl Entry {
    fn parse(text: &str) -> Result<Entry, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        // A namespace is a DNS label: check the entry with a name that stands for any.
        let sample = text.replace(NAMESPACE_PLACEHOLDER, "ns");
        if sample.contains(['{', '}']) {
            return Err(format!(
                "{text:?}: the only placeholder is {NAMESPACE_PLACEHOLDER}"
            ));
        }
        let Some(rest) = text.strip_prefix("arn:") else {
            return match sample.chars().find(|c| !is_name_char(*c)) {
                Some(c) => Err(format!(
                    "{text:?} is a secret name prefix, which cannot contain {c:?} (letters, digits and /_+=.@- only; write an ARN pattern starting with arn: to allow ARNs)"
                )),
                None => Ok(Entry::Name(text.to_string())),
            };
        };
        const SHAPE: &str = "arn:<partition>:secretsmanager:<region>:<account>:secret:<name>";
        let fields: Vec<&str> = rest.splitn(6, ':').collect();
        let [partition, service, region, account, resource, name] = fields[..] else {
            return Err(format!("{text:?} is not an ARN pattern {SHAPE}"));
        };
        let any = |f: &str| (f != "*").then(|| f.to_string());
        let ok_partition = partition == "*" || {
            let mut groups = partition.split('-');
            groups.next() == Some("aws")
                && groups.all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_lowercase()))
        };
        if !ok_partition {
            return Err(format!(
                "{text:?}: partition {partition:?} is neither * nor an AWS partition (aws, aws-cn, aws-us-gov, …)"
            ));
        }
        if service != "secretsmanager" || resource != "secret" {
            return Err(format!("{text:?} is not an ARN pattern {SHAPE}"));
        }
        if region != "*"
            && let Err(why) = check_region(region)
        {
            return Err(format!("{text:?}: region {why}, or *"));
        }
        if account != "*" && (account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!(
                "{text:?}: account {account:?} is neither * nor 12 digits"
            ));
        }
        let name_sample = name.replace(NAMESPACE_PLACEHOLDER, "ns");
        if name_sample.is_empty()
            || !name_sample
                .chars()
                .all(|c| is_name_char(c) || c == '*' || c == '?')
        {
            return Err(format!(
                "{text:?}: the secret name pattern {name:?} must be letters, digits, /_+=.@- and the wildcards * and ?"
            ));
        }
        Ok(Entry::Arn {
            text: text.to_string(),
            partition: any(partition),
            region: any(region),
            account: any(account),
            name: name.to_string(),
        })
    }

    fn text(&self) -> &str {
        match self {
            Entry::Name(t) | Entry::Arn { text: t, .. } => t,
        }
    }

    fn allows(&self, namespace: &str, secret_id: &str) -> bool {
        match self {
            Entry::Name(prefix) => {
                !secret_id.contains(':')
                    && secret_id.starts_with(&prefix.replace(NAMESPACE_PLACEHOLDER, namespace))
            }
            Entry::Arn {
                partition,
                region,
                account,
                name,
                ..
            } => {
                let Ok(arn) = parse_secret_arn(secret_id) else {
                    return false;
                };
                let field =
                    |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
                field(partition, arn.partition)
                    && field(region, arn.region)
                    && field(account, arn.account)
                    && glob(
                        name.replace(NAMESPACE_PLACEHOLDER, namespace).as_bytes(),
                        arn.name.as_bytes(),
                    )
            }
        }
    }
}

/// `*` matches any run of bytes, `?` one byte, anything else itself; the whole of `text`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The allowlist: [`Allowlist::default`] allows everything (none configured).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// `None`: no allowlist configured.
    rules: Option<Rules>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rules {
    default: Vec<Entry>,
    namespaces: BTreeMap<String, Vec<Entry>>,
}

impl Allowlist {
    /// Parses and checks an allowlist file. The error names every bad entry by its place
    /// (`namespaces.payments[1]`).
    pub fn from_yaml(text: &str) -> Result<Allowlist, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| {
            format!(
                "not an allowlist ({e}); expected `default: [entries]` and/or `namespaces: {{<namespace>: [entries]}}`"
            )
        })?;
        let mut problems = Vec::new();
        let mut entries = |place: &str, list: &[String]| -> Vec<Entry> {
            list.iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    Entry::parse(e)
                        .map_err(|why| problems.push(format!("{place}[{i}]: {why}")))
                        .ok()
                })
                .collect()
        };
        let default = entries("default", &file.default);
        let namespaces = file
            .namespaces
            .iter()
            .map(|(ns, list)| (ns.clone(), entries(&format!("namespaces.{ns}"), list)))
            .collect::<BTreeMap<_, _>>();
        for ns in namespaces.keys() {
            let label = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if !label {
                problems.push(format!(
                    "namespaces: {ns:?} is not a namespace name (a DNS label)"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Allowlist {
            rules: Some(Rules {
                default,
                namespaces,
            }),
        })
    }

    /// True when an allowlist is configured.
    pub fn is_configured(&self) -> bool {
        self.rules.is_some()
    }

    fn entries<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.rules.iter().flat_map(move |r| {
            r.default
                .iter()
                .chain(r.namespaces.get(namespace).into_iter().flatten())
        })
    }

    /// Whether the DsoSecrets of `namespace` may name `secret_id`.
    pub fn allows(&self, namespace: &str, secret_id: &str) -> bool {
        self.rules.is_none()
            || self
                .entries(namespace)
                .any(|e| e.allows(namespace, secret_id))
    }

    /// What `namespace` may name, as written (with `{namespace}` filled in): for messages to
    /// that namespace's users, never another namespace's entries.
    pub fn entries_of(&self, namespace: &str) -> Vec<String> {
        self.entries(namespace)
            .map(|e| e.text().replace(NAMESPACE_PLACEHOLDER, namespace))
            .collect()
    }

    /// Checks every secret a DsoSecret of `namespace` names: each file's `secretId` and each of
    /// its template `sources` (whether or not the file has a template). One error per secret
    /// refused, naming the field, the file and the secret id.
    pub fn check_spec(&self, namespace: &str, spec: &DsoSecretSpec) -> Result<(), Vec<FieldError>> {
        if self.rules.is_none() {
            return Ok(());
        }
        let mut errors = Vec::new();
        for (i, file) in spec.files.iter().enumerate() {
            for (field, id) in named_secrets(file) {
                if !self.allows(namespace, id) {
                    let what = match &file.path {
                        Some(p) => format!("file {p:?}"),
                        None => format!("file entry {i}"),
                    };
                    errors.push(FieldError {
                        field: format!("spec.files[{i}].{field}"),
                        message: format!(
                            "secret {id:?} ({what}) is not in the secret allowlist of namespace {namespace} (it may use: {}); ask the cluster admin to allow it",
                            self.allowed_summary(namespace)
                        ),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn allowed_summary(&self, namespace: &str) -> String {
        let entries = self.entries_of(namespace);
        if entries.is_empty() {
            "nothing".into()
        } else {
            entries.join(", ")
        }
    }
}

/// Every secret id a file entry names, with its field (`secretId`, `sources.db.secretId`).
fn named_secrets(file: &FileSpec) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if !file.secret_id.is_empty() {
        out.push(("secretId".to_string(), file.secret_id.as_str()));
    }
    for (name, source) in file.sources.iter().flatten() {
        out.push((
            format!("sources.{name}.secretId"),
            source.secret_id.as_str(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const FILE: &str = r#"
default:
  - "{namespace}/"
namespaces:
  payments:
    - shared/payments-
    - "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/*"
    - "arn:*:secretsmanager:*:210987654321:secret:pay-??????"
  ops:
    - "arn:aws:secretsmanager:us-east-1:*:secret:{namespace}-*"
"#;

    fn list() -> Allowlist {
        Allowlist::from_yaml(FILE).expect("allowlist")
    }

    #[rstest]
    // Name prefixes, own namespace placeholder.
    #[case::own_prefix("payments", "payments/db", true)]
    #[case::default_applies_to_every_namespace("web", "web/db", true)]
    #[case::prefix_is_literal_not_a_segment("web", "web-admin/db", false)]
    #[case::other_namespace_prefix("web", "payments/db", false)]
    #[case::namespace_prefix_without_slash("payments", "payments", false)]
    #[case::listed_prefix("payments", "shared/payments-db", true)]
    #[case::listed_prefix_elsewhere("web", "shared/payments-db", false)]
    #[case::prefix_is_case_sensitive("payments", "Shared/payments-db", false)]
    // A bare prefix never allows an ARN, same account or another.
    #[case::prefix_does_not_allow_a_cross_account_arn(
        "web",
        "arn:aws:secretsmanager:us-east-1:999999999999:secret:web/db",
        false
    )]
    #[case::prefix_does_not_allow_any_arn(
        "payments",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shared/payments-db",
        false
    )]
    // ARN patterns, field by field.
    #[case::arn_in_pattern(
        "payments",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/db-AbCdEf",
        true
    )]
    #[case::partial_arn_in_pattern(
        "payments",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/db",
        true
    )]
    #[case::arn_other_region(
        "payments",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:payments/db",
        false
    )]
    #[case::arn_other_account(
        "payments",
        "arn:aws:secretsmanager:eu-west-1:999999999999:secret:payments/db",
        false
    )]
    #[case::arn_other_partition(
        "payments",
        "arn:aws-cn:secretsmanager:eu-west-1:123456789012:secret:payments/db",
        false
    )]
    #[case::arn_name_must_match_whole(
        "payments",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:xpayments/db",
        false
    )]
    #[case::arn_pattern_does_not_allow_the_bare_name("payments", "payments-other", false)]
    #[case::question_marks_are_one_char_each(
        "payments",
        "arn:aws-us-gov:secretsmanager:us-gov-west-1:210987654321:secret:pay-AbCdEf",
        true
    )]
    #[case::question_marks_are_exact_count(
        "payments",
        "arn:aws:secretsmanager:us-east-1:210987654321:secret:pay-AbCdEfG",
        false
    )]
    #[case::any_account_with_namespace_in_name(
        "ops",
        "arn:aws:secretsmanager:us-east-1:555555555555:secret:ops-db",
        true
    )]
    #[case::namespace_in_arn_is_the_callers(
        "web",
        "arn:aws:secretsmanager:us-east-1:555555555555:secret:ops-db",
        false
    )]
    fn the_allowlist_matches_exactly(#[case] ns: &str, #[case] id: &str, #[case] allowed: bool) {
        assert_eq!(list().allows(ns, id), allowed, "{ns} {id}");
    }

    #[test]
    fn without_an_allowlist_everything_is_allowed_and_an_empty_one_allows_nothing() {
        let none = Allowlist::default();
        assert!(!none.is_configured());
        assert!(none.allows(
            "any",
            "arn:aws:secretsmanager:us-east-1:999999999999:secret:x"
        ));
        let empty = Allowlist::from_yaml("{}").expect("empty");
        assert!(empty.is_configured());
        assert!(!empty.allows("any", "any/db"));
    }

    #[rstest]
    #[case::star_in_prefix("default: [\"team-*\"]", "default[0]")]
    #[case::colon_in_prefix("default: [\"a:b\"]", "default[0]")]
    #[case::empty("namespaces: {a: [\"\"]}", "namespaces.a[0]")]
    #[case::other_placeholder("default: [\"{team}/\"]", "only placeholder")]
    #[case::short_arn("default: [\"arn:aws:secretsmanager:*:*\"]", "default[0]")]
    #[case::other_service("default: [\"arn:aws:ssm:*:*:secret:x\"]", "default[0]")]
    #[case::partial_region_glob("default: [\"arn:aws:secretsmanager:us-*:*:secret:x\"]", "region")]
    #[case::partial_account_glob(
        "default: [\"arn:aws:secretsmanager:*:1234*:secret:x\"]",
        "account"
    )]
    #[case::placeholder_outside_the_name(
        "default: [\"arn:aws:secretsmanager:{namespace}:*:secret:x\"]",
        "region"
    )]
    #[case::bad_namespace("namespaces: {Team_A: [\"a/\"]}", "Team_A")]
    #[case::unknown_key("defaults: [\"a/\"]", "unknown field")]
    #[case::not_a_list("namespaces: {a: \"a/\"}", "not an allowlist")]
    fn a_bad_allowlist_is_refused_naming_the_entry(#[case] text: &str, #[case] names: &str) {
        let e = Allowlist::from_yaml(text).expect_err(text);
        assert!(e.contains(names), "{text}: {e}");
    }

    fn spec(files: serde_json::Value) -> DsoSecretSpec {
        serde_json::from_value(serde_json::json!({"files": files})).expect("spec")
    }

    #[test]
    fn every_file_and_template_source_is_checked_and_named() {
        let s = spec(serde_json::json!([
            {"path": "a", "secretId": "web/a"},
            {"path": "b", "secretId": "payments/b"},
            {"path": "url", "template": "{{ x }}{{ y }}", "sources": {
                "x": {"secretId": "web/x"},
                "y": {"secretId": "arn:aws:secretsmanager:us-east-1:999999999999:secret:web/y"}
            }},
            {"secretId": "other/c", "expand": true}
        ]));
        let errors = list().check_spec("web", &s).expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.files[1].secretId",
                "spec.files[2].sources.y.secretId",
                "spec.files[3].secretId"
            ]
        );
        let first = errors[0].to_string();
        assert!(first.contains("\"payments/b\""), "{first}");
        assert!(first.contains("file \"b\""), "{first}");
        assert!(first.contains("namespace web"), "{first}");
        assert!(errors[2].message.contains("file entry 3"), "{}", errors[2]);
        for e in &errors {
            let m = e.to_string();
            assert!(m.contains("web/"), "its own entries are named: {m}");
            assert!(
                !m.contains("shared/payments-") && !m.contains("123456789012"),
                "another namespace's entries never appear: {m}"
            );
        }
        assert_eq!(
            list().check_spec(
                "web",
                &spec(serde_json::json!([{"path": "a", "secretId": "web/a"}]))
            ),
            Ok(())
        );
    }

    #[test]
    fn a_source_is_checked_even_beside_a_plain_secret_id() {
        // Validation refuses this shape; the allowlist does not rely on it.
        let s = spec(serde_json::json!([
            {"path": "a", "secretId": "web/a", "sources": {"x": {"secretId": "payments/x"}}}
        ]));
        let errors = list().check_spec("web", &s).expect_err("refused");
        assert_eq!(errors[0].field, "spec.files[0].sources.x.secretId");
    }

    #[rstest]
    #[case(b"*", b"", true)]
    #[case(b"a*", b"abc/d", true)]
    #[case(b"a*c", b"abcbc", true)]
    #[case(b"a*c", b"abcb", false)]
    #[case(b"a?c", b"abc", true)]
    #[case(b"a?c", b"ac", false)]
    #[case(b"*/*", b"ab", false)]
    #[case(b"abc", b"abcd", false)]
    fn globs_match_the_whole_name(#[case] p: &[u8], #[case] t: &[u8], #[case] m: bool) {
        assert_eq!(glob(p, t), m);
    }
}
