//! The pure core of run-time TLS (`--tls-mode=runtime`): what the leader stores in the
//! certificate Secret, when it must issue a new CA and serving certificate, and which CAs the
//! webhook configurations' `caBundle` trusts. No I/O: [`crate::runtime_tls`] is the shell.
//!
//! The Secret holds `tls.crt`, `tls.key` (the serving pair every replica serves) and `ca.crt`
//! (the bundle: the CA of the serving certificate first, then, during an overlap, the CAs of
//! the previous ones, at most [`MAX_TRUSTED_CAS`] in all). Each issue makes a fresh CA that
//! signs exactly one serving certificate, so no CA key is ever stored. Annotations on the
//! Secret record what the leader needs to decide without parsing X.509: the serving
//! certificate's expiry, a hash of its names, and until when the previous CAs stay trusted
//! (the latest expiry of the certificates they signed).

use crate::error::{Error, Result};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// Expiry of the serving certificate in `tls.crt` (RFC 3339).
pub const ANNOTATION_NOT_AFTER: &str = "dso.dev/tls-not-after";
/// Hash of the names the serving certificate was issued for.
pub const ANNOTATION_NAMES: &str = "dso.dev/tls-names";
/// Until when the CAs after the first in the bundle (the previous ones) stay trusted (RFC 3339).
pub const ANNOTATION_PREVIOUS_CA_UNTIL: &str = "dso.dev/tls-previous-ca-until";
/// Set by a person (any value) to ask for a new CA and certificate now; removed by the issue.
pub const ANNOTATION_ROTATE: &str = "dso.dev/rotate";

pub const KEY_CA: &str = "ca.crt";
pub const KEY_CERT: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

/// A certificate is used from slightly before its issue, for nodes whose clocks lag.
const BACKDATE: SignedDuration = SignedDuration::from_secs(60);

/// What the Secret says, read without its key material.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// PEM blocks of `ca.crt`, current CA first.
    pub bundle: Vec<String>,
    /// `tls.crt` and `tls.key` are both present and not empty.
    pub has_pair: bool,
    pub not_after: Option<Timestamp>,
    pub names: Option<String>,
    pub previous_ca_until: Option<Timestamp>,
    pub rotate_requested: bool,
}

impl Stored {
    /// Reads the Secret's data and annotations. Unreadable values read as absent, which the
    /// plan answers with a new issue.
    pub fn read(data: &BTreeMap<String, Vec<u8>>, annotations: &BTreeMap<String, String>) -> Self {
        let nonempty = |k: &str| data.get(k).is_some_and(|v| !v.is_empty());
        let time = |k: &str| annotations.get(k).and_then(|v| v.parse::<Timestamp>().ok());
        Stored {
            bundle: data
                .get(KEY_CA)
                .map(|v| split_pem(&String::from_utf8_lossy(v)))
                .unwrap_or_default(),
            has_pair: nonempty(KEY_CERT) && nonempty(KEY_KEY),
            not_after: time(ANNOTATION_NOT_AFTER),
            names: annotations.get(ANNOTATION_NAMES).cloned(),
            previous_ca_until: time(ANNOTATION_PREVIOUS_CA_UNTIL),
            rotate_requested: annotations.contains_key(ANNOTATION_ROTATE),
        }
    }

    /// The bundle as stored in `ca.crt` and in the `caBundle` fields.
    pub fn bundle_pem(&self) -> String {
        self.bundle.concat()
    }
}

/// Splits PEM text into its `CERTIFICATE` blocks (each ending in a newline); anything else is
/// dropped.
pub fn split_pem(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// The SHA-256 of the names, sorted and deduplicated: changes exactly when the certificate
/// must be issued again for other names.
pub fn names_hash(names: &[String]) -> String {
    use sha2::Digest;
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let digest = sha2::Sha256::digest(sorted.join(",").as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// When a certificate valid for `validity` is renewed: a third of its life before its expiry.
pub fn renew_before(validity: Duration) -> Duration {
    validity / 3
}

/// What the leader does about the stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Issue a new CA and serving certificate, for this reason (logged).
    Issue(&'static str),
    /// The overlap is over: keep only the current CA in the bundle.
    DropPreviousCa,
    /// Nothing to do before `next` (the renewal or the end of the overlap).
    Keep { next: Timestamp },
}

/// Decides what the stored state needs at `now`, for certificates valid `validity` and issued
/// for names hashing to `names`.
pub fn plan(stored: &Stored, names: &str, now: Timestamp, validity: Duration) -> Plan {
    let Some(not_after) = stored.not_after.filter(|_| stored.has_pair) else {
        return Plan::Issue("no certificate yet");
    };
    if stored.bundle.is_empty() {
        return Plan::Issue("no CA in the bundle");
    }
    if stored.names.as_deref() != Some(names) {
        return Plan::Issue("the certificate's names changed");
    }
    if stored.rotate_requested {
        return Plan::Issue("rotation requested (dso.dev/rotate)");
    }
    let renew_at = not_after - signed(renew_before(validity));
    if now >= renew_at {
        return Plan::Issue("renewal due");
    }
    if stored.bundle.len() > 1 {
        match stored.previous_ca_until {
            Some(until) if now < until => {
                return Plan::Keep {
                    next: until.min(renew_at),
                };
            }
            _ => return Plan::DropPreviousCa,
        }
    }
    Plan::Keep { next: renew_at }
}

/// Most CAs the bundle holds: the current one and the previous ones still in their overlap.
pub const MAX_TRUSTED_CAS: usize = 3;

/// The bundle after issuing a certificate signed by `new_ca`: the new CA first, then the CA of
/// the certificate served until now while that certificate is still valid (replicas swap
/// within seconds, but the API server must trust both until they have), then the CAs of an
/// overlap still running (a second rotation seconds after the first: a replica may still
/// serve the certificate before the last), at most [`MAX_TRUSTED_CAS`] in all. Returns the
/// bundle and until when the CAs after the first stay: the latest expiry among the
/// certificates they signed.
pub fn rotated_bundle(
    stored: &Stored,
    new_ca: &str,
    now: Timestamp,
) -> (Vec<String>, Option<Timestamp>) {
    let mut bundle = vec![new_ca.to_string()];
    let current = stored
        .not_after
        .filter(|until| stored.has_pair && *until > now);
    let Some(current_until) = current else {
        return (bundle, None);
    };
    let overlap = stored.previous_ca_until.filter(|until| *until > now);
    let kept = stored
        .bundle
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || overlap.is_some());
    for (_, ca) in kept {
        if bundle.len() < MAX_TRUSTED_CAS && !bundle.contains(ca) {
            bundle.push(ca.clone());
        }
    }
    if bundle.len() == 1 {
        return (bundle, None);
    }
    let until = overlap.map_or(current_until, |o| o.max(current_until));
    (bundle, Some(until))
}

/// A freshly issued CA and serving certificate. Holds the private key: no `Debug`.
pub struct Issued {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: Timestamp,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|e| Error::Tls(format!("certificate time {t}: {e}")))
}

/// Issues a new CA (ECDSA P-256, `CN=<common_name>-ca`) and a serving certificate it signs, for
/// `names` (DNS names, or IP addresses), valid from a minute before `now` for `validity`.
pub fn issue(names: &[String], now: Timestamp, validity: Duration) -> Result<Issued> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let tls = |e: rcgen::Error| Error::Tls(format!("cannot issue the serving certificate: {e}"));
    let first = names
        .first()
        .ok_or_else(|| Error::Config("--tls-san: at least one name is required".into()))?;
    let not_before = offset(now - BACKDATE)?;
    let not_after_ts = now + signed(validity);
    let not_after = offset(not_after_ts)?;

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{first}-ca"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names.to_vec()).map_err(tls)?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, first.clone());
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate().map_err(tls)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls)?;
    Ok(Issued {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
        not_after: not_after_ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn pem(n: u8) -> String {
        format!("-----BEGIN CERTIFICATE-----\nCA{n}\n-----END CERTIFICATE-----\n")
    }

    fn stored(not_after: &str) -> Stored {
        Stored {
            bundle: vec![pem(1)],
            has_pair: true,
            not_after: Some(at(not_after)),
            names: Some("h".into()),
            previous_ca_until: None,
            rotate_requested: false,
        }
    }

    #[test]
    fn an_empty_secret_gets_a_certificate() {
        let s = Stored::read(&BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            plan(&s, "h", at("2030-01-01T00:00:00Z"), YEAR),
            Plan::Issue("no certificate yet")
        );
    }

    #[test]
    fn a_certificate_is_renewed_when_a_third_of_its_life_is_left() {
        let s = stored("2031-01-01T00:00:00Z");
        // Renewal at not_after - 365d/3 (121d 16h) = 2030-09-01T08:00Z.
        assert_eq!(
            plan(&s, "h", at("2030-09-01T07:59:59Z"), YEAR),
            Plan::Keep {
                next: at("2030-09-01T08:00:00Z")
            }
        );
        assert_eq!(
            plan(&s, "h", at("2030-09-01T08:00:00Z"), YEAR),
            Plan::Issue("renewal due")
        );
    }

    #[test]
    fn new_names_or_a_request_or_a_missing_key_issue_at_once() {
        let now = at("2030-01-01T00:00:00Z");
        let s = stored("2031-01-01T00:00:00Z");
        assert_eq!(
            plan(&s, "other", now, YEAR),
            Plan::Issue("the certificate's names changed")
        );
        let asked = Stored {
            rotate_requested: true,
            ..s.clone()
        };
        assert_eq!(
            plan(&asked, "h", now, YEAR),
            Plan::Issue("rotation requested (dso.dev/rotate)")
        );
        let no_key = Stored {
            has_pair: false,
            ..s
        };
        assert_eq!(
            plan(&no_key, "h", now, YEAR),
            Plan::Issue("no certificate yet")
        );
    }

    #[test]
    fn the_previous_ca_is_trusted_until_the_previous_certificate_expires() {
        let s = Stored {
            bundle: vec![pem(2), pem(1)],
            previous_ca_until: Some(at("2030-02-01T00:00:00Z")),
            ..stored("2031-01-01T00:00:00Z")
        };
        assert_eq!(
            plan(&s, "h", at("2030-01-15T00:00:00Z"), YEAR),
            Plan::Keep {
                next: at("2030-02-01T00:00:00Z")
            }
        );
        assert_eq!(
            plan(&s, "h", at("2030-02-01T00:00:00Z"), YEAR),
            Plan::DropPreviousCa
        );
    }

    #[test]
    fn a_rotation_keeps_the_ca_of_the_certificate_still_served() {
        let now = at("2030-09-03T00:00:00Z");
        // The previous overlap is over: the new CA first, the current one second, the one
        // before dropped.
        let s = Stored {
            bundle: vec![pem(1), pem(0)],
            previous_ca_until: Some(at("2030-09-01T00:00:00Z")),
            ..stored("2031-01-01T00:00:00Z")
        };
        let (bundle, until) = rotated_bundle(&s, &pem(2), now);
        assert_eq!(bundle, vec![pem(2), pem(1)]);
        assert_eq!(until, Some(at("2031-01-01T00:00:00Z")));
        // An expired certificate, or none at all, leaves nothing to overlap with.
        let expired = stored("2030-09-01T00:00:00Z");
        assert_eq!(rotated_bundle(&expired, &pem(2), now), (vec![pem(2)], None));
        assert_eq!(
            rotated_bundle(&Stored::default(), &pem(2), now),
            (vec![pem(2)], None)
        );
    }

    #[test]
    fn a_second_rotation_during_an_overlap_keeps_every_ca_a_replica_may_still_serve() {
        let now = at("2030-09-03T00:00:00Z");
        // Rotated seconds ago: a lagging replica may still serve the certificate of CA0.
        let s = Stored {
            bundle: vec![pem(1), pem(0)],
            previous_ca_until: Some(at("2031-03-01T00:00:00Z")),
            ..stored("2031-01-01T00:00:00Z")
        };
        let (bundle, until) = rotated_bundle(&s, &pem(2), now);
        assert_eq!(bundle, vec![pem(2), pem(1), pem(0)]);
        assert_eq!(until, Some(at("2031-03-01T00:00:00Z")));
        // A third one in a row stays bounded: the oldest goes.
        let s = Stored {
            bundle: bundle.clone(),
            previous_ca_until: until,
            ..stored("2031-02-01T00:00:00Z")
        };
        let (bundle, _) = rotated_bundle(&s, &pem(3), now);
        assert_eq!(bundle, vec![pem(3), pem(2), pem(1)]);
        // Re-issuing with the current CA never lists it twice.
        assert_eq!(
            rotated_bundle(&s, &pem(2), now).0,
            vec![pem(2), pem(1), pem(0)]
        );
    }

    #[test]
    fn pem_text_splits_into_certificate_blocks() {
        let text = format!("junk\n{}{}-----BEGIN CERTIFICATE-----\ncut", pem(1), pem(2));
        assert_eq!(split_pem(&text), vec![pem(1), pem(2)]);
        assert!(split_pem("").is_empty());
    }

    #[test]
    fn names_hash_ignores_order_and_repeats() {
        let a = names_hash(&["b".into(), "a".into(), "a".into()]);
        assert_eq!(a, names_hash(&["a".into(), "b".into()]));
        assert_ne!(a, names_hash(&["a".into()]));
    }

    #[test]
    fn an_issued_certificate_is_served_and_verified_against_its_ca() {
        crate::tls::install_crypto_provider();
        let now = Timestamp::now();
        let names = vec!["dso-webhook.dso-system.svc".to_string(), "127.0.0.1".into()];
        let issued = issue(&names, now, Duration::from_secs(3600)).expect("issued");
        assert_eq!(issued.not_after, now + SignedDuration::from_secs(3600));
        let stored = Stored::read(
            &BTreeMap::from([
                (KEY_CA.to_string(), issued.ca_pem.clone().into_bytes()),
                (KEY_CERT.to_string(), issued.cert_pem.clone().into_bytes()),
                (KEY_KEY.to_string(), issued.key_pem.clone().into_bytes()),
            ]),
            &BTreeMap::new(),
        );
        assert!(stored.has_pair);
        assert_eq!(stored.bundle, vec![issued.ca_pem.clone()]);

        // A client trusting only the CA accepts the certificate for each name.
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(issued.ca_pem.as_bytes()).expect("CA PEM"))
            .expect("CA");
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("leaf");
        for name in &names {
            let server = ServerName::try_from(name.clone()).expect("name");
            verifier
                .verify_server_cert(&leaf, &[], &server, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = ServerName::try_from("other.svc").expect("name");
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], UnixTime::now())
                .is_err()
        );
    }

    use rustls::client::danger::ServerCertVerifier;
    use std::sync::Arc;
}
