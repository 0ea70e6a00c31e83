//! The DsoSecrets a pod names: looked up, validated, checked to fit the volume, and turned into
//! the entries of dso-init's plan.

use super::Catalog;
use super::settings::{FILE_CEILING_BYTES, InjectConfig};
use crate::error::{Error, Result};
use dso_api::DsoSecret;
use dso_api::allowlist::Allowlist;
use dso_api::contract::PlanSecret;
use std::sync::Arc;

/// The DsoSecrets `names` of `namespace`, in order, each valid and naming only secrets the
/// namespace's allowlist allows; refused when one is missing, invalid or not allowed.
pub(super) fn resolve(
    catalog: &(impl Catalog + ?Sized),
    namespace: &str,
    names: &[String],
    allowlist: &Allowlist,
) -> Result<Vec<(String, Arc<DsoSecret>)>> {
    let mut secrets = Vec::with_capacity(names.len());
    for name in names {
        let secret = catalog
            .dso_secret(namespace, name)
            .ok_or_else(|| Error::UnknownDsoSecret {
                namespace: namespace.to_string(),
                name: name.clone(),
            })?
            .map_err(|problems| Error::InvalidDsoSecret {
                name: name.clone(),
                problems,
            })?;
        dso_api::validate::validate_spec(&secret.spec).map_err(|errors| {
            Error::InvalidDsoSecret {
                name: name.clone(),
                problems: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        allowlist
            .check_spec(namespace, &secret.spec)
            .map_err(|errors| Error::NotAllowed {
                namespace: namespace.to_string(),
                name: name.clone(),
                problems: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        secrets.push((name.clone(), secret));
    }
    Ok(secrets)
}

/// Refuses DsoSecrets whose files, plus `env_files` env files, may not fit `--size-limit` at
/// [`FILE_CEILING_BYTES`] each (an env file holds at most 64 KiB too); an InPlace DsoSecret's
/// files count three times (generations during a swap).
pub(super) fn check_size(
    secrets: &[(String, Arc<DsoSecret>)],
    env_files: usize,
    cfg: &InjectConfig,
) -> Result<()> {
    // An InPlace DsoSecret holds up to three generations at once during a swap: the current
    // one, the previous one (kept for readers that resolved it), and the new one.
    let files: u64 = secrets
        .iter()
        .map(|(_, s)| {
            let n = s.spec.files.len() as u64;
            if s.spec.strategy() == dso_api::RefreshStrategy::InPlace {
                3 * n
            } else {
                n
            }
        })
        .sum::<u64>()
        + env_files as u64;
    let needed = files.saturating_mul(FILE_CEILING_BYTES);
    if needed > cfg.size_limit_bytes {
        return Err(Error::TooLarge {
            secrets: secrets
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            files,
            ceiling_kib: FILE_CEILING_BYTES / 1024,
            needed_kib: needed / 1024,
            limit: cfg.size_limit.clone(),
            limit_kib: cfg.size_limit_bytes / 1024,
        });
    }
    Ok(())
}

/// The plan entry of a DsoSecret, with the region its entries are fetched from written in:
/// `spec.aws.region`, else the webhook's default region (the operator's). Left `None` when
/// neither is known (dso-init then uses its environment), or when a file's ARN names another
/// region than the default: dso-init prefers the entry's region over an ARN's, while the
/// operator, like AWS, looks an ARN up in its own region; `AWS_REGION` (the default) still
/// serves the entry's other files.
pub(super) fn plan_secret(
    name: &str,
    spec: &dso_api::DsoSecretSpec,
    default_region: Option<&str>,
) -> PlanSecret {
    let mut entry = PlanSecret::from_spec(name, spec);
    if entry.region.is_none()
        && let Some(default) = default_region
        && spec
            .secret_refs()
            .iter()
            .all(|f| dso_api::validate::arn_region(f.secret_id).is_none_or(|r| r == default))
    {
        entry.region = Some(default.to_string());
    }
    entry
}
