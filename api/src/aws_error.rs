//! What an AWS call's failure means, decided in one place for every DSO component.
//!
//! [`classify`] maps what AWS answered (its error code, the HTTP status) to an [`AwsErrorKind`];
//! [`classify_unanswered`] does the same for a request that got no answer (timeout, connection
//! failure, untrusted certificate). Each crate has a thin adapter from the SDK's error to these
//! inputs; what is retried is then [`AwsErrorKind::is_retryable`], the same everywhere.
//!
//! Retryable: throttling, 5xx, timeouts, connection failures and unreadable answers — what
//! another attempt a little later can fix. That is the AWS Secrets Manager Agent's split, plus
//! throttling (which the SDK's own retry classifier retries too), minus an untrusted
//! certificate (an I/O error to the SDK, but the next attempt meets the same certificate).
//! Everything else is permanent: retrying the same request with the same identity gets the same
//! answer.
//!
//! [`redact_principals`] takes the caller's identity out of AWS error text before it is shown to
//! someone who is not that caller (a tenant reading the operator's status).

/// The kind of failure an AWS call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AwsErrorKind {
    /// The identity's policies (or the secret's or KMS key's) do not allow the call.
    AccessDenied,
    /// No such secret, or no such version.
    ResourceNotFound,
    /// Secrets Manager could not decrypt the value with its KMS key.
    DecryptionFailure,
    /// The request is not valid in the secret's state (e.g. scheduled for deletion).
    InvalidRequest,
    /// A parameter of the request is not valid.
    InvalidParameter,
    /// No credentials, or AWS does not accept the ones sent: unknown, expired or badly signed.
    /// Not a policy problem, so not [`AccessDenied`](Self::AccessDenied): fresh credentials
    /// (a new web identity token, a restarted container, the right role) fix it, not IAM.
    Credentials,
    /// AWS asks to slow down.
    Throttling,
    /// A 5xx answer or an internal AWS error.
    ServiceUnavailable,
    /// No answer in time.
    Timeout,
    /// Connection refused, DNS failure, connection reset.
    Unreachable,
    /// The endpoint's certificate is not trusted (no CA bundle, a proxy, a wrong endpoint).
    Tls,
    /// An answer came but could not be read.
    BadResponse,
    /// Anything else.
    Other,
}

impl AwsErrorKind {
    /// Worth another attempt after a pause: throttling, 5xx, timeouts, connection failures and
    /// unreadable answers. An untrusted certificate is not: the next attempt meets the same one.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttling
                | Self::ServiceUnavailable
                | Self::Timeout
                | Self::Unreachable
                | Self::BadResponse
        )
    }

    /// The name printed in messages (AWS's own error names where they exist).
    pub fn name(self) -> &'static str {
        match self {
            Self::AccessDenied => "AccessDenied",
            Self::ResourceNotFound => "ResourceNotFound",
            Self::DecryptionFailure => "DecryptionFailure",
            Self::InvalidRequest => "InvalidRequest",
            Self::InvalidParameter => "InvalidParameter",
            Self::Credentials => "CredentialsError",
            Self::Throttling => "Throttling",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::Timeout => "Timeout",
            Self::Unreachable => "EndpointUnreachable",
            Self::Tls => "TlsError",
            Self::BadResponse => "BadResponse",
            Self::Other => "AwsError",
        }
    }

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::ResourceNotFound => "resource_not_found",
            Self::DecryptionFailure => "decryption_failure",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidParameter => "invalid_parameter",
            Self::Credentials => "credentials",
            Self::Throttling => "throttling",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Tls => "tls",
            Self::BadResponse => "bad_response",
            Self::Other => "aws_other",
        }
    }
}

/// Classifies an answer from AWS by its error code (`x-amzn-ErrorType` / `__type`, as the SDK's
/// `ProvideErrorMetadata::code` gives it) and its HTTP status. A known code decides; an
/// unknown or missing one falls back on the status: 429 is throttling (whatever the code, that
/// is what the status says), 5xx is AWS being unavailable, anything else is [`Other`].
///
/// `ExpiredTokenException` (and `ExpiredToken`, STS's spelling) is
/// [`Credentials`](AwsErrorKind::Credentials), not access denied: the identity is allowed, its
/// session token has run out, and fetching credentials again fixes it — no policy change. It is
/// not retried with the same credentials, which would get the same answer.
///
/// [`Other`]: AwsErrorKind::Other
pub fn classify(code: Option<&str>, http_status: Option<u16>) -> AwsErrorKind {
    use AwsErrorKind::*;
    let by_code = match code.unwrap_or_default() {
        "AccessDeniedException" | "AccessDenied" => Some(AccessDenied),
        "ResourceNotFoundException" => Some(ResourceNotFound),
        "DecryptionFailure" => Some(DecryptionFailure),
        "InvalidRequestException" => Some(InvalidRequest),
        "InvalidParameterException" => Some(InvalidParameter),
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "SignatureDoesNotMatch" => Some(Credentials),
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "SlowDown" => Some(Throttling),
        "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
            Some(ServiceUnavailable)
        }
        "RequestTimeout" | "RequestTimeoutException" => Some(Timeout),
        _ => None,
    };
    match (by_code, http_status) {
        (Some(kind), _) => kind,
        (None, Some(429)) => Throttling,
        (None, Some(500..=599)) => ServiceUnavailable,
        (None, _) => Other,
    }
}

/// Classifies a request that got no answer from AWS: `timed_out` and `io` as the connector
/// reported them, `context` the error's message chain (which names an untrusted certificate,
/// since rustls reports it as an I/O error). Neither timeout nor I/O is [`Other`]: the request
/// could not be sent at all (a bad endpoint URL, no credentials), which waiting does not fix.
///
/// [`Other`]: AwsErrorKind::Other
pub fn classify_unanswered(timed_out: bool, io: bool, context: &str) -> AwsErrorKind {
    if context.contains("invalid peer certificate") {
        AwsErrorKind::Tls
    } else if timed_out {
        AwsErrorKind::Timeout
    } else if io {
        AwsErrorKind::Unreachable
    } else {
        AwsErrorKind::Other
    }
}

/// What replaces an ARN or a principal in AWS error text.
pub const REDACTED: &str = "<redacted>";

/// AWS error text with every ARN and every "User: <principal>" replaced by [`REDACTED`]. An
/// AccessDenied message names the caller ("User: arn:aws:sts::123456789012:assumed-role/
/// dso-operator/i-0abc is not authorized to perform …"): the operator's role, which must not
/// reach a tenant's DsoSecret status or events. Whatever else the message says (the action, the
/// reason) stays, so it remains actionable.
pub fn redact_principals(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = next_arn(rest) {
        out.push_str(&rest[..at]);
        out.push_str(REDACTED);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"'`()[]{}<>;".contains(c))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    // A principal AWS names without an ARN (an access key id, a user id).
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(start) = rest.find("User: ") {
        let after = start + "User: ".len();
        redacted.push_str(&rest[..after]);
        let tail = &rest[after..];
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        redacted.push_str(REDACTED);
        rest = &tail[end..];
    }
    redacted.push_str(rest);
    redacted
}

/// Where the next ARN starts: `arn:` not preceded by a letter or digit (so "learn:" is not one).
fn next_arn(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].to_ascii_lowercase().find("arn:") {
        let at = from + i;
        let bounded = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        if bounded {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::AwsErrorKind::*;
    use super::*;
    use rstest::rstest;

    /// Every code the operator or `dso-init` handled before they shared this table, and the
    /// cases where they disagreed (429 with an unknown code; the expired token).
    #[rstest]
    #[case::access_denied("AccessDeniedException", 400, AccessDenied)]
    #[case::access_denied_query_protocol("AccessDenied", 403, AccessDenied)]
    #[case::not_found("ResourceNotFoundException", 400, ResourceNotFound)]
    #[case::kms_decryption("DecryptionFailure", 400, DecryptionFailure)]
    #[case::invalid_request("InvalidRequestException", 400, InvalidRequest)]
    #[case::invalid_parameter("InvalidParameterException", 400, InvalidParameter)]
    #[case::unknown_key("UnrecognizedClientException", 400, Credentials)]
    #[case::unknown_key_id("InvalidClientTokenId", 403, Credentials)]
    #[case::expired_token("ExpiredTokenException", 400, Credentials)]
    #[case::expired_token_sts("ExpiredToken", 400, Credentials)]
    #[case::bad_signature("InvalidSignatureException", 400, Credentials)]
    #[case::incomplete_signature("IncompleteSignature", 400, Credentials)]
    #[case::no_token("MissingAuthenticationToken", 403, Credentials)]
    #[case::signature_mismatch("SignatureDoesNotMatch", 403, Credentials)]
    #[case::throttling_exception("ThrottlingException", 400, Throttling)]
    #[case::throttling("Throttling", 400, Throttling)]
    #[case::throttled("ThrottledException", 400, Throttling)]
    #[case::request_throttled("RequestThrottledException", 400, Throttling)]
    #[case::too_many_requests("TooManyRequestsException", 400, Throttling)]
    #[case::request_limit("RequestLimitExceeded", 400, Throttling)]
    #[case::slow_down("SlowDown", 503, Throttling)]
    #[case::internal_service_error("InternalServiceError", 500, ServiceUnavailable)]
    #[case::internal_failure("InternalFailure", 500, ServiceUnavailable)]
    #[case::service_unavailable("ServiceUnavailable", 503, ServiceUnavailable)]
    #[case::request_timeout("RequestTimeout", 408, Timeout)]
    #[case::unknown_code_429_is_throttling("Whatever", 429, Throttling)]
    #[case::unknown_code_5xx("Whatever", 503, ServiceUnavailable)]
    #[case::unknown_code_4xx("Whatever", 400, Other)]
    #[case::known_code_wins_over_5xx("AccessDeniedException", 500, AccessDenied)]
    fn aws_error_codes_map_to_one_kind_everywhere(
        #[case] code: &str,
        #[case] status: u16,
        #[case] kind: AwsErrorKind,
    ) {
        assert_eq!(classify(Some(code), Some(status)), kind);
    }

    #[rstest]
    #[case::throttled(Some(429), Throttling)]
    #[case::server_error(Some(502), ServiceUnavailable)]
    #[case::client_error(Some(404), Other)]
    #[case::nothing(None, Other)]
    fn without_a_code_the_status_decides(#[case] status: Option<u16>, #[case] kind: AwsErrorKind) {
        assert_eq!(classify(None, status), kind);
    }

    #[rstest]
    #[case::tls(false, true, "io error: invalid peer certificate: UnknownIssuer", Tls)]
    #[case::timeout(true, false, "connect timed out", Timeout)]
    #[case::refused(false, true, "Connection refused (os error 111)", Unreachable)]
    #[case::not_sent(false, false, "invalid endpoint URL", Other)]
    fn unanswered_requests_are_told_apart(
        #[case] timed_out: bool,
        #[case] io: bool,
        #[case] context: &str,
        #[case] kind: AwsErrorKind,
    ) {
        assert_eq!(classify_unanswered(timed_out, io, context), kind);
    }

    #[rstest]
    #[case::assumed_role(
        "User: arn:aws:sts::123456789012:assumed-role/dso-operator/i-0abc is not authorized to perform: secretsmanager:DescribeSecret on resource: team-b/db because no identity-based policy allows the secretsmanager:DescribeSecret action",
        "User: <redacted> is not authorized to perform: secretsmanager:DescribeSecret on resource: team-b/db because no identity-based policy allows the secretsmanager:DescribeSecret action"
    )]
    #[case::resource_arn_too(
        "User: arn:aws:iam::123456789012:user/e2e is not authorized on resource: arn:aws:secretsmanager:us-east-1:123456789012:secret:x-AbCdEf.",
        "User: <redacted> is not authorized on resource: <redacted>"
    )]
    #[case::quoted(
        "role \"arn:aws:iam::1:role/r\" (arn:aws:iam::1:role/s)",
        "role \"<redacted>\" (<redacted>)"
    )]
    #[case::principal_without_arn(
        "User: AIDAEXAMPLE is not authorized",
        "User: <redacted> is not authorized"
    )]
    #[case::upper_case("ARN:AWS:IAM::1:ROLE/R denied", "<redacted> denied")]
    #[case::words_ending_in_arn_are_kept("learn: nothing; yarn:1", "learn: nothing; yarn:1")]
    #[case::nothing_to_redact(
        "Secrets Manager can't find the specified secret.",
        "Secrets Manager can't find the specified secret."
    )]
    fn principals_and_arns_are_redacted_from_aws_error_text(
        #[case] text: &str,
        #[case] want: &str,
    ) {
        assert_eq!(redact_principals(text), want);
    }

    #[test]
    fn only_what_a_later_attempt_can_fix_is_retryable() {
        let retryable = [
            Throttling,
            ServiceUnavailable,
            Timeout,
            Unreachable,
            BadResponse,
        ];
        let permanent = [
            AccessDenied,
            ResourceNotFound,
            DecryptionFailure,
            InvalidRequest,
            InvalidParameter,
            Credentials,
            Tls,
            Other,
        ];
        assert!(retryable.iter().all(|k| k.is_retryable()));
        assert!(permanent.iter().all(|k| !k.is_retryable()));
    }
}
