//! From a fetched value to the files of one plan entry: the whole value, one JSON key, or one file
//! per top-level key (`expand`). Pure functions; errors name keys and positions, never values.

use crate::error::{Error, Result, Target};
use crate::value::{Contents, SecretValue, WipedObject, wipe};
use dso_api::contract::{PlanFile, PlanSource};
use dso_api::validate::check_path;
use serde_json::{Map, Value};

/// One file to write, relative to the DsoSecret's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    pub path: String,
    pub contents: Contents,
}

/// The files a plan entry produces from its secret's value.
pub fn files_for(at: &Target, file: &PlanFile, value: &SecretValue) -> Result<Vec<OutFile>> {
    if file.expand {
        // Wiped when it goes out of scope, like the value it was parsed from.
        let json = json_object(at, value, "expand")?;
        let mut out = Vec::new();
        for (key, v) in &json.0 {
            check_key_name(key).map_err(|why| Error::BadKeyName {
                at: at.clone(),
                key: key.clone(),
                why,
            })?;
            out.push(OutFile {
                contents: render(v),
                path: key.clone(),
            });
        }
        return Ok(out);
    }
    let path = file.path.clone().unwrap_or_default();
    let contents = match (&file.json_key, value) {
        (Some(key), _) => {
            let mut object = json_object(at, value, "jsonKey")?;
            let mut v = lookup(at, std::mem::take(&mut object.0), key)?;
            let contents = render(&v);
            wipe(&mut v);
            contents
        }
        (None, SecretValue::Text(s)) => Contents::new(s.as_bytes().to_vec()),
        (None, SecretValue::Binary(b)) => Contents::new(b.clone()),
    };
    Ok(vec![OutFile { path, contents }])
}

/// The value a `jsonKey` (a top-level key, or a JSON Pointer starting with `/`) addresses in
/// `object` (consumed: the value is moved out, not copied; the rest is wiped). A miss names the
/// key or the pointer and the part of it that was not found — spec text only, never anything of
/// the value.
pub fn lookup(at: &Target, object: Map<String, Value>, key: &str) -> Result<Value> {
    let tokens = dso_api::validate::json_pointer_tokens(key)
        .map_err(|why| Error::Plan(format!("jsonKey: {why}")))?;
    let mut object = object;
    if !key.starts_with('/') {
        let found = object.remove(key).ok_or_else(|| Error::MissingJsonKey {
            at: at.clone(),
            key: key.to_string(),
        });
        wipe(&mut Value::Object(object));
        return found;
    }
    // The first `n` tokens of the pointer as written.
    let prefix = |n: usize| key.split('/').take(n + 1).collect::<Vec<_>>().join("/");
    let missing = |why: String| Error::MissingJsonPointer {
        at: at.clone(),
        pointer: key.to_string(),
        why,
    };
    let mut current = Value::Object(object);
    for (depth, token) in tokens.iter().enumerate() {
        let next = match &mut current {
            Value::Object(m) => m.remove(token),
            Value::Array(items) => array_index(token)
                .filter(|&i| i < items.len())
                .map(|i| items.swap_remove(i)),
            other => {
                return Err(missing(format!(
                    "{:?} holds a JSON {}, which has no members",
                    prefix(depth),
                    kind(other)
                )));
            }
        };
        let found = next.ok_or_else(|| missing(format!("nothing at {:?}", prefix(depth + 1))));
        // What the pointer passed over holds other parts of the secret: wipe them.
        wipe(&mut current);
        current = found?;
    }
    Ok(current)
}

/// An RFC 6901 array index: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    (digits && (token == "0" || !token.starts_with('0')))
        .then(|| token.parse().ok())
        .flatten()
}

/// What a template sees of one source: the `jsonKey`'s value, else the whole secret — its JSON
/// when the SecretString is JSON, else its text. A binary secret must be UTF-8 text.
pub fn source_value(at: &Target, src: &PlanSource, value: &SecretValue) -> Result<Value> {
    if let Some(key) = &src.json_key {
        let mut object = json_object(at, value, "jsonKey")?;
        return lookup(at, std::mem::take(&mut object.0), key);
    }
    match value {
        SecretValue::Text(s) => {
            Ok(serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.clone())))
        }
        SecretValue::Binary(b) => String::from_utf8(b.clone())
            .map(Value::String)
            .map_err(|_| Error::NotJson {
                at: at.clone(),
                why:
                    "a template reads text, but this secret holds a SecretBinary that is not UTF-8"
                        .into(),
            }),
    }
}

/// A key becomes a file name: one path segment of the same characters as a `path`.
fn check_key_name(key: &str) -> Result<(), String> {
    if key.contains('/') {
        return Err("contains '/'".into());
    }
    check_path(key)
}

/// A JSON string is written as its text; any other JSON value as compact JSON.
fn render(v: &Value) -> Contents {
    match v {
        Value::String(s) => Contents::new(s.as_bytes().to_vec()),
        other => Contents::new(other.to_string().into_bytes()),
    }
}

/// Parses a SecretString that must hold a JSON object. The parsed copy is wiped when dropped.
fn json_object(at: &Target, value: &SecretValue, what: &str) -> Result<WipedObject> {
    let not_json = |why: String| Error::NotJson {
        at: at.clone(),
        why,
    };
    let text = match value {
        SecretValue::Text(s) => s,
        SecretValue::Binary(_) => {
            return Err(not_json(format!(
                "{what} needs a JSON object in SecretString, but this secret holds a SecretBinary"
            )));
        }
    };
    // Only the position of a syntax error is reported: serde_json's message is safe too, but a
    // position is all a user needs and cannot echo the input.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(WipedObject(m)),
        Ok(mut other) => {
            let kind = kind(&other);
            wipe(&mut other);
            Err(not_json(format!(
                "{what} needs a JSON object in SecretString, but the value is a JSON {kind}"
            )))
        }
        Err(e) => Err(not_json(format!(
            "{what} needs a JSON object in SecretString, but the value is not JSON (syntax error at line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-c0ffee";

    fn at() -> Target {
        Target {
            dso_secret: "db".into(),
            file: "f".into(),
            secret_id: "s".into(),
        }
    }

    fn entry(path: Option<&str>, key: Option<&str>, expand: bool) -> PlanFile {
        PlanFile {
            path: path.map(Into::into),
            secret_id: "s".into(),
            json_key: key.map(Into::into),
            version_stage: None,
            version_id: None,
            expand,
            template: None,
            sources: Default::default(),
        }
    }

    fn text(s: &str) -> SecretValue {
        SecretValue::Text(s.into())
    }

    fn one(file: &PlanFile, v: &SecretValue) -> Vec<u8> {
        let out = files_for(&at(), file, v).expect("ok");
        assert_eq!(out.len(), 1);
        out[0].contents.as_bytes().to_vec()
    }

    #[test]
    fn a_whole_string_or_binary_value_is_written_as_is() {
        assert_eq!(
            one(&entry(Some("f"), None, false), &text(CANARY)),
            CANARY.as_bytes()
        );
        let bin = SecretValue::Binary(vec![0, 159, 146, 150, 255]);
        assert_eq!(
            one(&entry(Some("f"), None, false), &bin),
            vec![0, 159, 146, 150, 255]
        );
    }

    #[test]
    fn a_json_key_holding_a_string_is_written_without_quotes() {
        let v = text(&format!(r#"{{"password":"{CANARY}","port":5432}}"#));
        assert_eq!(
            one(&entry(Some("f"), Some("password"), false), &v),
            CANARY.as_bytes()
        );
    }

    #[test]
    fn a_json_key_holding_another_json_value_is_written_as_json() {
        let v = text(r#"{"port":5432,"hosts":["a","b"],"tls":{"on":true},"none":null}"#);
        assert_eq!(one(&entry(Some("f"), Some("port"), false), &v), b"5432");
        assert_eq!(
            one(&entry(Some("f"), Some("hosts"), false), &v),
            br#"["a","b"]"#
        );
        assert_eq!(
            one(&entry(Some("f"), Some("tls"), false), &v),
            br#"{"on":true}"#
        );
        assert_eq!(one(&entry(Some("f"), Some("none"), false), &v), b"null");
    }

    #[test]
    fn expand_writes_one_file_per_top_level_key() {
        let v = text(&format!(
            r#"{{"user":"app","password":"{CANARY}","port":1}}"#
        ));
        let out = files_for(&at(), &entry(None, None, true), &v).expect("ok");
        let names: Vec<&str> = out.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["password", "port", "user"]);
        assert_eq!(out[0].contents.as_bytes(), CANARY.as_bytes());
    }

    #[test]
    fn expand_refuses_keys_that_are_not_file_names() {
        for key in ["../x", "a/b", ".", "", "has space"] {
            let v = text(&serde_json::json!({ key: CANARY }).to_string());
            let err = files_for(&at(), &entry(None, None, true), &v).expect_err(key);
            assert_eq!(err.label(), "bad_key_name", "{key}");
            assert!(!err.to_string().contains(CANARY));
        }
    }

    #[test]
    fn a_missing_key_is_named_and_the_value_is_not() {
        let v = text(&format!(r#"{{"password":"{CANARY}"}}"#));
        let err =
            files_for(&at(), &entry(Some("f"), Some("user"), false), &v).expect_err("missing");
        assert_eq!(err.label(), "missing_json_key");
        let line = err.line();
        assert!(line.contains(r#""user""#), "{line}");
        assert!(!line.contains(CANARY), "{line}");
    }

    #[test]
    fn a_json_pointer_reaches_nested_values_and_array_elements() {
        let v = text(&format!(
            r#"{{"db":{{"primary":{{"password":"{CANARY}","port":5432}}}},"hosts":["a","b"],"a/b":{{"~k":"t"}}}}"#
        ));
        let get = |p: &str| one(&entry(Some("f"), Some(p), false), &v);
        assert_eq!(get("/db/primary/password"), CANARY.as_bytes());
        assert_eq!(get("/db/primary/port"), b"5432");
        assert_eq!(get("/hosts/1"), b"b");
        assert_eq!(get("/a~1b/~0k"), b"t");
        assert_eq!(
            get("/db/primary"),
            format!(r#"{{"password":"{CANARY}","port":5432}}"#).as_bytes()
        );
    }

    #[test]
    fn a_missing_pointer_fails_closed_naming_the_pointer_and_never_the_value() {
        let v = text(&format!(
            r#"{{"db":{{"primary":{{"password":"{CANARY}"}}}},"hosts":["a"]}}"#
        ));
        for (pointer, named) in [
            ("/db/replica/password", r#""/db/replica""#),
            ("/db/primary/password/x", r#""/db/primary/password""#),
            ("/hosts/5", r#""/hosts/5""#),
            ("/hosts/01", r#""/hosts/01""#),
            ("/nope", r#""/nope""#),
        ] {
            let err =
                files_for(&at(), &entry(Some("f"), Some(pointer), false), &v).expect_err(pointer);
            assert_eq!(err.label(), "missing_json_key", "{pointer}");
            let line = err.line();
            assert!(line.contains(&format!("{pointer:?}")), "{line}");
            assert!(line.contains(named), "{line}");
            assert!(!line.contains(CANARY), "{line}");
            assert_eq!(err.exit_code(), 5);
        }
    }

    #[test]
    fn json_key_on_a_value_that_is_not_a_json_object_fails_without_echoing_it() {
        for v in [
            text(CANARY),
            text(&format!("{{\"a\": {CANARY}")),
            text(&format!("[\"{CANARY}\"]")),
            SecretValue::Binary(CANARY.as_bytes().to_vec()),
        ] {
            let err =
                files_for(&at(), &entry(Some("f"), Some("k"), false), &v).expect_err("not json");
            assert_eq!(err.label(), "not_json");
            assert!(!err.line().contains(CANARY), "{}", err.line());
        }
    }
}
