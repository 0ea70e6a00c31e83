//! The pods of `examples/` are admitted with their DsoSecrets, as a user would apply them.

use super::*;

fn admitted(files: &[&str]) -> Pod {
    let text: String = files
        .iter()
        .map(|f| {
            let path = format!("{}/../examples/{f}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(&path).expect("example") + "\n---\n"
        })
        .collect();
    let mut cat = Fake::default();
    let mut template = None;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
        match v["kind"].as_str() {
            Some("DsoSecret") => {
                let name = v["metadata"]["name"].as_str().expect("name");
                cat = cat.with_secret(NS, name, v["spec"].clone());
            }
            Some("Deployment") => template = Some(v["spec"]["template"].clone()),
            _ => {}
        }
    }
    let t = template.expect("a Deployment");
    let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": t["metadata"], "spec": t["spec"]}))
    .expect("pod");
    for (name, s) in &cat.secrets {
        assert_eq!(
            dso_api::validate::validate_spec(&s.spec),
            Ok(()),
            "{name:?}"
        );
    }
    apply(&p, &inject(&p, &cat).patch)
}

#[test]
fn the_env_vars_example_gets_file_key_refs_and_no_values() {
    let p = admitted(&["env-vars.yaml"]);
    let env = spec(&p).containers[0].env.as_ref().expect("env");
    let refs: Vec<&str> = env
        .iter()
        .filter_map(|e| e.value_from.as_ref()?.file_key_ref.as_ref())
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(refs, ["DB_USER", "DB_PASSWORD"]);
    assert!(
        env.iter()
            .all(|e| !e.value.as_deref().unwrap_or("").starts_with("dso://"))
    );
}

#[test]
fn the_template_example_is_admitted() {
    let p = admitted(&["template.yaml"]);
    let plan: InitPlan =
        serde_json::from_str(env(init(&p), PLAN_ENV).expect("plan")).expect("plan json");
    assert!(plan.secrets[0].files.iter().all(|f| f.template.is_some()));
    assert_eq!(plan.env_files[0].vars[0].file, "database-url");
}

#[test]
fn the_deployment_example_is_admitted() {
    let p = admitted(&["dsosecret.yaml", "deployment.yaml"]);
    assert_eq!(mounts_of(&p, "app").len(), 1);
}
