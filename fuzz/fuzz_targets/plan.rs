//! dso-init's plan parser (`dso_init::plan::parse`), the one input of dso-init anyone who can
//! create a pod can write by hand (`DSO_PLAN`). Whatever it accepts writes only below
//! `<mountPath>/<DsoSecret>/`, and the fetch planning does not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = dso_init::plan::parse(text) else {
        return;
    };
    let mount = Path::new(&plan.mount_path);
    assert!(
        mount.is_absolute(),
        "relative mount path {mount:?} accepted"
    );
    for s in &plan.secrets {
        let dir = mount.join(&s.name);
        for f in &s.files {
            let _ = dso_init::plan::fetches(s, f);
            let _ = dso_init::plan::target(s, f);
            if let Some(p) = &f.path {
                let full = dir.join(p);
                assert!(
                    full.starts_with(&dir)
                        && full
                            .components()
                            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                    "{full:?} escapes {dir:?}"
                );
            }
        }
    }
    for env in &plan.env_files {
        for var in &env.vars {
            assert!(
                dso_api::env::check_env_name(&var.name).is_ok(),
                "{:?}",
                var.name
            );
            assert!(plan.secrets.iter().any(|s| s.name == var.dso_secret));
        }
    }
});
