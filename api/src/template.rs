//! File templates: a DsoSecret file entry may carry `template:` (Jinja syntax, rendered by the
//! sandboxed minijinja engine) instead of one secret's value. The template names its secrets
//! through the entry's `sources` map (name → secret, optional `jsonKey`), so
//! `postgres://{{ db.username }}:{{ db.password }}@db:5432/app` reads the source `db`.
//!
//! Sandbox: the environment has no loader (a template can read no file, and `include`, `import`
//! and `extends` find nothing), no function that reaches the network or the process, strict
//! undefined values (a missing key is an error, never an empty string), no auto-escaping, and a
//! fuel budget that bounds any loop. The webhook checks a template here ([`check`]) before it
//! admits a pod; `dso-init` renders it with the same environment ([`render`]). A render error
//! names the file and the template's line, and the kind of error — never a value.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use std::collections::BTreeMap;

/// Longest template.
pub const MAX_TEMPLATE_LEN: usize = 16 * 1024;
/// Most sources of one template.
pub const MAX_SOURCES: usize = 16;
/// Instructions a render may execute (bounds loops).
pub const FUEL: u64 = 1_000_000;
/// Global functions a template may call without declaring them.
const GLOBALS: [&str; 3] = ["range", "dict", "namespace"];

/// The sandboxed environment every template is checked and rendered in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(FUEL));
    env
}

/// Checks a source name: an identifier a template can write (`db`, `api_key`).
pub fn check_source_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || chars.any(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
        return Err(format!(
            "{name:?} is not a name a template can use: letters, digits and '_', not starting with a digit"
        ));
    }
    if GLOBALS.contains(&name) {
        return Err(format!(
            "{name:?} is a built-in function of templates: pick another name"
        ));
    }
    Ok(())
}

/// Checks a template's syntax, and that every variable it reads is one of `sources`.
pub fn check<'a>(
    file: &str,
    template: &str,
    sources: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(format!("must be at most {MAX_TEMPLATE_LEN} bytes"));
    }
    let env = environment();
    let compiled = env.template_from_named_str(file, template).map_err(|e| {
        format!(
            "syntax error at line {}: {}",
            e.line().unwrap_or(1),
            e.detail().unwrap_or("not a valid template")
        )
    })?;
    let declared: Vec<&str> = sources.into_iter().collect();
    let mut unknown: Vec<String> = compiled
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !declared.contains(&v.as_str()) && !GLOBALS.contains(&v.as_str()))
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        return Err(format!(
            "reads {} not declared in sources (declared: {})",
            unknown
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            }
        ));
    }
    Ok(())
}

/// Why a render failed: the line of the template and the kind of error, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub line: Option<usize>,
    pub kind: String,
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} at line {line} of the template", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Renders `template` with each source's value under its name.
pub fn render(
    file: &str,
    template: &str,
    sources: &BTreeMap<String, serde_json::Value>,
) -> Result<String, RenderError> {
    // Only the kind (a fixed description) and the line: the detail of a minijinja error may
    // quote an operand, which could be a secret.
    let fail = |e: minijinja::Error| RenderError {
        line: e.line(),
        kind: e.kind().to_string(),
    };
    let env = environment();
    let compiled = env.template_from_named_str(file, template).map_err(fail)?;
    let ctx: BTreeMap<&str, minijinja::Value> = sources
        .iter()
        .map(|(k, v)| (k.as_str(), minijinja::Value::from_serialize(v)))
        .collect();
    compiled.render(ctx).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CANARY: &str = "canary-7e3f11";

    fn sources() -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([
            (
                "db".to_string(),
                json!({"username": "app", "password": CANARY, "port": 5432}),
            ),
            ("token".to_string(), json!(CANARY)),
        ])
    }

    #[test]
    fn a_template_renders_named_sources_and_keeps_its_trailing_newline() {
        let t = "url: postgres://{{ db.username }}:{{ db.password }}@db:{{ db.port }}/app\ntoken: {{ token }}\n";
        assert_eq!(check("config.yaml", t, ["db", "token"]), Ok(()));
        assert_eq!(
            render("config.yaml", t, &sources()).expect("renders"),
            format!("url: postgres://app:{CANARY}@db:5432/app\ntoken: {CANARY}\n")
        );
    }

    #[test]
    fn nothing_is_escaped() {
        let s = BTreeMap::from([("v".to_string(), json!("<a&b>\"'"))]);
        assert_eq!(render("f", "{{ v }}", &s).expect("renders"), "<a&b>\"'");
    }

    #[test]
    fn syntax_errors_and_undeclared_names_are_refused_at_admission() {
        let err = check("f", "{{ db.password ", ["db"]).expect_err("syntax");
        assert!(
            err.contains("syntax error") && err.contains("line 1"),
            "{err}"
        );
        let err = check("f", "{{ db.password }}{{ api.key }}", ["db"]).expect_err("undeclared");
        assert!(
            err.contains("\"api\"") && err.contains("declared: db"),
            "{err}"
        );
        assert_eq!(
            check("f", "{% for i in range(3) %}{{ i }}{% endfor %}", []),
            Ok(())
        );
        assert!(check("f", &"x".repeat(MAX_TEMPLATE_LEN + 1), []).is_err());
    }

    #[test]
    fn a_render_error_names_the_line_and_never_a_value() {
        for t in [
            "line one\n{{ db.missing }}",
            "line one\n{{ db.password + 1 }}",
            "line one\n{{ db.password | int }}",
            "line one\n{% include 'etc/passwd' %}",
        ] {
            let err = render("f", t, &sources()).expect_err(t);
            assert_eq!(err.line, Some(2), "{t}: {err}");
            assert!(!err.to_string().contains(CANARY), "{err}");
        }
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let t = "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}";
        let err = render("f", t, &BTreeMap::new()).expect_err("bounded");
        assert!(err.kind.contains("fuel"), "{err}");
    }

    #[test]
    fn source_names_are_identifiers_and_not_builtins() {
        assert_eq!(check_source_name("db_1"), Ok(()));
        for bad in ["", "1db", "a-b", "a.b", "range"] {
            assert!(check_source_name(bad).is_err(), "{bad}");
        }
    }
}
