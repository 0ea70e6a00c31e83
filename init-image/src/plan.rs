//! Reading the [`InitPlan`] the webhook wrote into `DSO_PLAN`, and checking it again.
//!
//! The webhook validated the DsoSecrets before it wrote the plan, but the plan is also an input
//! anyone who can create a pod can write by hand: every path is checked here once more with the
//! same rules ([`dso_api::validate::check_path`]), so nothing is ever written outside
//! `<mountPath>/<DsoSecret name>/`.

use crate::error::{Error, Result, Target};
use dso_api::contract::{InitPlan, PLAN_VERSION, PlanFile, PlanSecret, PlanSource};
use dso_api::validate::{arn_region, check_path, check_region, check_secret_id};
use std::collections::BTreeSet;

/// The version stage fetched when an entry names neither a stage nor an id.
pub const DEFAULT_STAGE: &str = "AWSCURRENT";

/// Which version of a secret to fetch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VersionSel {
    Id(String),
    Stage(String),
}

/// One GetSecretValue call: every file that needs the same (region, secret, version) shares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchKey {
    /// The region named by the DsoSecret or the secret's ARN; `None` means the environment's.
    pub region: Option<String>,
    pub secret_id: String,
    pub version: VersionSel,
}

/// Parses and validates the plan.
pub fn parse(json: &str) -> Result<InitPlan> {
    let plan: InitPlan = serde_json::from_str(json).map_err(|e| {
        // serde_json's message names fields and positions, never the input text.
        Error::Plan(format!("not a valid plan: {e}"))
    })?;
    validate(&plan)?;
    Ok(plan)
}

/// Checks every rule the webhook should already have enforced.
pub fn validate(plan: &InitPlan) -> Result<()> {
    let bad = |field: String, why: &str| Err(Error::Plan(format!("{field}: {why}")));
    if plan.version != PLAN_VERSION {
        return bad(
            "version".into(),
            &format!(
                "this dso-init reads plan version {PLAN_VERSION}, not {}: use the dso-init image that matches the webhook",
                plan.version
            ),
        );
    }
    if !plan.mount_path.starts_with('/')
        || plan.mount_path.split('/').any(|s| s == "." || s == "..")
    {
        return bad(
            "mountPath".into(),
            "must be an absolute path without '.' or '..' segments",
        );
    }
    if plan.size_limit_bytes == 0 {
        return bad("sizeLimitBytes".into(), "must be positive");
    }
    if plan.secrets.is_empty() {
        return bad("secrets".into(), "lists no DsoSecret");
    }
    let mut names = BTreeSet::new();
    for (i, s) in plan.secrets.iter().enumerate() {
        let at = |f: &str| format!("secrets[{i}].{f}");
        if let Err(why) = check_path(&s.name) {
            return bad(at("name"), &why);
        }
        if s.name.contains('/') {
            return bad(at("name"), "must be a single path segment");
        }
        if s.name == dso_api::env::ENV_DIR {
            return bad(at("name"), "is reserved for the env files");
        }
        if !names.insert(s.name.as_str()) {
            return bad(at("name"), "names the same DsoSecret twice");
        }
        if let Some(region) = &s.region
            && let Err(why) = check_region(region)
        {
            return bad(at("region"), &why);
        }
        if s.file_mode > 0o777 {
            return bad(at("fileMode"), "must be at most 0777");
        }
        if s.files.is_empty() {
            return bad(at("files"), "lists no file");
        }
        let mut paths = BTreeSet::new();
        for (j, f) in s.files.iter().enumerate() {
            let at = |field: &str| format!("secrets[{i}].files[{j}].{field}");
            match (&f.path, f.expand) {
                (Some(p), false) => {
                    if let Err(why) = check_path(p) {
                        return bad(at("path"), &why);
                    }
                    if !paths.insert(p.as_str()) {
                        return bad(at("path"), "is written twice");
                    }
                }
                (None, true) => {}
                (Some(_), true) => return bad(at("path"), "must be unset with expand"),
                (None, false) => return bad(at("path"), "is required without expand"),
            }
            if f.expand && f.json_key.is_some() {
                return bad(at("jsonKey"), "and expand are mutually exclusive");
            }
            if let Some(key) = &f.json_key
                && let Err(why) = dso_api::validate::check_json_key(key)
            {
                return bad(at("jsonKey"), &why);
            }
            if f.version_id.is_some() && f.version_stage.is_some() {
                return bad(at("versionId"), "and versionStage are mutually exclusive");
            }
            match &f.template {
                None => {
                    if f.secret_id.is_empty() {
                        return bad(at("secretId"), "must not be empty");
                    }
                    // A secret ARN names the region, and the region the endpoint's host: only a
                    // well-formed ARN passes, whatever the AWS SDK would accept.
                    if let Err(why) = check_secret_id(&f.secret_id) {
                        return bad(at("secretId"), &why);
                    }
                    if !f.sources.is_empty() {
                        return bad(at("sources"), "needs a template");
                    }
                }
                Some(template) => {
                    if !f.secret_id.is_empty() || f.json_key.is_some() || f.expand {
                        return bad(at("template"), "excludes secretId, jsonKey and expand");
                    }
                    if f.sources.is_empty() {
                        return bad(at("sources"), "lists no secret");
                    }
                    for (name, src) in &f.sources {
                        let at =
                            |field: &str| format!("secrets[{i}].files[{j}].sources.{name}.{field}");
                        if let Err(why) = dso_api::template::check_source_name(name) {
                            return bad(at("name"), &why);
                        }
                        if src.secret_id.is_empty() {
                            return bad(at("secretId"), "must not be empty");
                        }
                        if let Err(why) = check_secret_id(&src.secret_id) {
                            return bad(at("secretId"), &why);
                        }
                        if let Some(key) = &src.json_key
                            && let Err(why) = dso_api::validate::check_json_key(key)
                        {
                            return bad(at("jsonKey"), &why);
                        }
                        if src.version_id.is_some() && src.version_stage.is_some() {
                            return bad(at("versionId"), "and versionStage are mutually exclusive");
                        }
                    }
                    let file = f.path.as_deref().unwrap_or_default();
                    if let Err(why) = dso_api::template::check(
                        file,
                        template,
                        f.sources.keys().map(String::as_str),
                    ) {
                        return bad(at("template"), &why);
                    }
                }
            }
        }
    }
    validate_env_files(plan)
}

/// Env files: one per container, keys an env file can carry, references to planned DsoSecrets.
fn validate_env_files(plan: &InitPlan) -> Result<()> {
    let bad = |field: String, why: &str| Err(Error::Plan(format!("{field}: {why}")));
    let mut containers = BTreeSet::new();
    for (i, env) in plan.env_files.iter().enumerate() {
        let at = |f: &str| format!("envFiles[{i}].{f}");
        if check_path(&env.container).is_err() || env.container.contains('/') {
            return bad(at("container"), "must be a container name");
        }
        if !containers.insert(env.container.as_str()) {
            return bad(at("container"), "has two env files");
        }
        if env.vars.is_empty() {
            return bad(at("vars"), "lists no variable");
        }
        for (j, var) in env.vars.iter().enumerate() {
            let at = |f: &str| format!("envFiles[{i}].vars[{j}].{f}");
            if let Err(why) = dso_api::env::check_env_name(&var.name) {
                return bad(at("name"), &why);
            }
            if !plan.secrets.iter().any(|s| s.name == var.dso_secret) {
                return bad(at("dsoSecret"), "is not a DsoSecret of the plan");
            }
            if let Err(why) = check_path(&var.file) {
                return bad(at("file"), &why);
            }
        }
    }
    Ok(())
}

/// The call that serves a file (a file that is not a template).
pub fn fetch_key(secret: &PlanSecret, file: &PlanFile) -> FetchKey {
    key_for(
        secret,
        &file.secret_id,
        file.version_id.as_ref(),
        file.version_stage.as_ref(),
    )
}

/// The call that serves one source of a template.
pub fn source_key(secret: &PlanSecret, source: &PlanSource) -> FetchKey {
    key_for(
        secret,
        &source.secret_id,
        source.version_id.as_ref(),
        source.version_stage.as_ref(),
    )
}

/// Every call a file needs, with how each is named in messages: its own secret, or one per
/// template source.
pub fn fetches(secret: &PlanSecret, file: &PlanFile) -> Vec<(FetchKey, Target)> {
    if file.template.is_none() {
        return vec![(fetch_key(secret, file), target(secret, file))];
    }
    file.sources
        .values()
        .map(|src| {
            let mut at = target(secret, file);
            at.secret_id = src.secret_id.clone();
            (source_key(secret, src), at)
        })
        .collect()
}

fn key_for(
    secret: &PlanSecret,
    secret_id: &str,
    version_id: Option<&String>,
    version_stage: Option<&String>,
) -> FetchKey {
    FetchKey {
        region: secret
            .region
            .clone()
            .or_else(|| arn_region(secret_id).map(str::to_string)),
        secret_id: secret_id.to_string(),
        version: match (version_id, version_stage) {
            (Some(id), _) => VersionSel::Id(id.clone()),
            (None, Some(stage)) => VersionSel::Stage(stage.clone()),
            (None, None) => VersionSel::Stage(DEFAULT_STAGE.into()),
        },
    }
}

/// How a file is named in messages.
pub fn target(secret: &PlanSecret, file: &PlanFile) -> Target {
    Target {
        dso_secret: secret.name.clone(),
        file: file.path.clone().unwrap_or_else(|| "(expand)".into()),
        secret_id: if file.template.is_some() {
            "(template)".into()
        } else {
            file.secret_id.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn plan_json(files: &str) -> String {
        format!(
            r#"{{"version":1,"mountPath":"/run/secrets/dso","sizeLimitBytes":1048576,
                "secrets":[{{"name":"db","fileMode":288,"files":{files}}}]}}"#
        )
    }

    #[test]
    fn a_valid_plan_is_read() {
        let plan = parse(&plan_json(
            r#"[{"path":"password","secretId":"prod/db","jsonKey":"password"},
                {"secretId":"prod/api","expand":true}]"#,
        ))
        .expect("valid");
        assert_eq!(plan.secrets[0].files.len(), 2);
    }

    #[rstest]
    #[case::escaping_path(r#"[{"path":"../etc/passwd","secretId":"a"}]"#, "files[0].path")]
    #[case::absolute_path(r#"[{"path":"/etc/passwd","secretId":"a"}]"#, "files[0].path")]
    #[case::dot_segment(r#"[{"path":"a/./b","secretId":"a"}]"#, "files[0].path")]
    #[case::no_path(r#"[{"secretId":"a"}]"#, "files[0].path")]
    #[case::path_and_expand(r#"[{"path":"x","secretId":"a","expand":true}]"#, "files[0].path")]
    #[case::twice(
        r#"[{"path":"x","secretId":"a"},{"path":"x","secretId":"b"}]"#,
        "files[1].path"
    )]
    #[case::key_and_expand(
        r#"[{"secretId":"a","expand":true,"jsonKey":"k"}]"#,
        "files[0].jsonKey"
    )]
    #[case::empty_key(r#"[{"path":"x","secretId":"a","jsonKey":""}]"#, "files[0].jsonKey")]
    #[case::bad_pointer(
        r#"[{"path":"x","secretId":"a","jsonKey":"/a~2"}]"#,
        "files[0].jsonKey"
    )]
    #[case::id_and_stage(
        r#"[{"path":"x","secretId":"a","versionId":"v","versionStage":"AWSCURRENT"}]"#,
        "files[0].versionId"
    )]
    #[case::empty_id(r#"[{"path":"x","secretId":""}]"#, "files[0].secretId")]
    #[case::host_for_a_region(
        r#"[{"path":"x","secretId":"arn:aws:secretsmanager:x@127.0.0.1/:123456789012:secret:db"}]"#,
        "files[0].secretId"
    )]
    #[case::other_service(
        r#"[{"path":"x","secretId":"arn:aws:s3:us-east-1:123456789012:secret:db"}]"#,
        "files[0].secretId"
    )]
    #[case::bad_character(r#"[{"path":"x","secretId":"a b"}]"#, "files[0].secretId")]
    #[case::broken_template(
        r#"[{"path":"x","template":"{{ db","sources":{"db":{"secretId":"a"}}}]"#,
        "files[0].template"
    )]
    #[case::template_reads_an_undeclared_source(
        r#"[{"path":"x","template":"{{ api }}","sources":{"db":{"secretId":"a"}}}]"#,
        "files[0].template"
    )]
    #[case::template_without_sources(r#"[{"path":"x","template":"x"}]"#, "files[0].sources")]
    #[case::sources_without_template(
        r#"[{"path":"x","secretId":"a","sources":{"db":{"secretId":"a"}}}]"#,
        "files[0].sources"
    )]
    #[case::no_files("[]", "files")]
    fn a_bad_plan_entry_is_refused_naming_its_field(#[case] files: &str, #[case] field: &str) {
        let err = parse(&plan_json(files)).expect_err("invalid");
        assert!(err.to_string().contains(field), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[rstest]
    #[case::wrong_version(r#"{"version":2,"mountPath":"/m","sizeLimitBytes":1,"secrets":[]}"#)]
    #[case::relative_mount(r#"{"version":1,"mountPath":"m","sizeLimitBytes":1,"secrets":[]}"#)]
    #[case::dotdot_mount(
        r#"{"version":1,"mountPath":"/m/../etc","sizeLimitBytes":1,"secrets":[]}"#
    )]
    #[case::zero_size(r#"{"version":1,"mountPath":"/m","sizeLimitBytes":0,"secrets":[]}"#)]
    #[case::no_secrets(r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[]}"#)]
    #[case::bad_name(
        r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[{"name":"..","fileMode":288,"files":[{"path":"x","secretId":"a"}]}]}"#
    )]
    #[case::nested_name(
        r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[{"name":"a/b","fileMode":288,"files":[{"path":"x","secretId":"a"}]}]}"#
    )]
    #[case::wide_mode(
        r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[{"name":"a","fileMode":4095,"files":[{"path":"x","secretId":"a"}]}]}"#
    )]
    #[case::host_for_a_region(
        r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[{"name":"a","region":"x@127.0.0.1/","fileMode":288,"files":[{"path":"x","secretId":"a"}]}]}"#
    )]
    #[case::unknown_field(
        r#"{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[],"x":1}"#
    )]
    #[case::not_json("{")]
    fn a_bad_plan_is_refused(#[case] json: &str) {
        assert_eq!(parse(json).expect_err("invalid").label(), "plan");
    }

    fn env_plan(env_files: &str) -> String {
        format!(
            r#"{{"version":1,"mountPath":"/m","sizeLimitBytes":1,
                "secrets":[{{"name":"db","fileMode":288,"files":[{{"path":"password","secretId":"a"}}]}}],
                "envFiles":{env_files}}}"#
        )
    }

    #[test]
    fn env_files_are_read() {
        let plan = parse(&env_plan(
            r#"[{"container":"app","vars":[{"name":"DB_PASSWORD","dsoSecret":"db","file":"password"}]}]"#,
        ))
        .expect("valid");
        assert_eq!(plan.env_files[0].vars[0].name, "DB_PASSWORD");
    }

    #[rstest]
    #[case::bad_name(
        r#"[{"container":"app","vars":[{"name":"A-B","dsoSecret":"db","file":"password"}]}]"#,
        "vars[0].name"
    )]
    #[case::unknown_secret(
        r#"[{"container":"app","vars":[{"name":"A","dsoSecret":"api","file":"password"}]}]"#,
        "vars[0].dsoSecret"
    )]
    #[case::escaping_file(
        r#"[{"container":"app","vars":[{"name":"A","dsoSecret":"db","file":"../x"}]}]"#,
        "vars[0].file"
    )]
    #[case::escaping_container(
        r#"[{"container":"../x","vars":[{"name":"A","dsoSecret":"db","file":"password"}]}]"#,
        "envFiles[0].container"
    )]
    #[case::twice(r#"[{"container":"app","vars":[{"name":"A","dsoSecret":"db","file":"password"}]},{"container":"app","vars":[{"name":"B","dsoSecret":"db","file":"password"}]}]"#, "envFiles[1].container")]
    #[case::no_vars(r#"[{"container":"app","vars":[]}]"#, "envFiles[0].vars")]
    fn a_bad_env_file_is_refused_naming_its_field(#[case] env: &str, #[case] field: &str) {
        let err = parse(&env_plan(env)).expect_err("invalid");
        assert!(err.to_string().contains(field), "{err}");
    }

    #[test]
    fn the_same_dso_secret_twice_is_refused() {
        let one = r#"{"name":"db","fileMode":288,"files":[{"path":"x","secretId":"a"}]}"#;
        let json = format!(
            r#"{{"version":1,"mountPath":"/m","sizeLimitBytes":1,"secrets":[{one},{one}]}}"#
        );
        assert!(parse(&json).expect_err("dup").to_string().contains("twice"));
    }

    #[test]
    fn the_call_follows_the_version_and_the_region() {
        let plan = parse(&plan_json(
            r#"[{"path":"a","secretId":"arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"},
                {"path":"b","secretId":"x","versionId":"v1"},
                {"path":"c","secretId":"x","versionStage":"AWSPREVIOUS"}]"#,
        ))
        .expect("valid");
        let s = &plan.secrets[0];
        let keys: Vec<FetchKey> = s.files.iter().map(|f| fetch_key(s, f)).collect();
        assert_eq!(keys[0].region.as_deref(), Some("eu-west-1"));
        assert_eq!(keys[0].version, VersionSel::Stage("AWSCURRENT".into()));
        assert_eq!(keys[1].region, None);
        assert_eq!(keys[1].version, VersionSel::Id("v1".into()));
        assert_eq!(keys[2].version, VersionSel::Stage("AWSPREVIOUS".into()));
    }
}
