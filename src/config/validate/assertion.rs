//! `identity_assertion`: the header name, the token lifetime and the signing-keys file.

use std::path::Path;
use std::time::Duration;

use super::super::{
    AssertionConfig, DEFAULT_ASSERTION_HEADER as DEFAULT_HEADER,
    MAX_ASSERTION_LIFETIME as MAX_LIFETIME,
};
use super::{Ctx, MINUTE, file};

/// Headers the assertion must not take the place of: the ones hygiene, routing, sessions and
/// the other identity headers depend on.
const RESERVED: [&str; 12] = [
    "host",
    "cookie",
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "forwarded",
    "upgrade",
    "x-otpgate-email",
    "x-otpgate-user",
    "x-otpgate-groups",
];

pub(super) fn identity_assertion(
    c: &mut Ctx<'_>,
    f: &file::IdentityAssertionFile,
    session_keys: &Path,
) -> Option<AssertionConfig> {
    let header = f.header.as_deref().unwrap_or(DEFAULT_HEADER);
    let header = match http::HeaderName::from_bytes(header.as_bytes()) {
        Ok(h) if RESERVED.contains(&h.as_str()) || h.as_str().starts_with("x-forwarded-") => {
            c.err(
                "identity_assertion.header",
                format!("{h} is a header the gateway sets or reads itself"),
            );
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            c.err("identity_assertion.header", "must be a valid header name");
            None
        }
    };
    let lifetime = f.lifetime.unwrap_or(MAX_LIFETIME);
    if !(MINUTE..=MAX_LIFETIME).contains(&lifetime) {
        c.err(
            "identity_assertion.lifetime",
            "must be between 1m and 5m (docs/security.md#34)",
        );
    }
    let keys_file = f.keys_file.as_deref().map_or_else(
        || session_keys.with_file_name("jwt_keys.json"),
        |p| c.resolve(p),
    );
    if keys_file == session_keys {
        c.err(
            "identity_assertion.keys_file",
            "must not be session.keys_file",
        );
    }
    let config = AssertionConfig {
        header: header?,
        lifetime: lifetime.min(MAX_LIFETIME).max(Duration::from_secs(1)),
        keys_file,
    };
    f.enabled.unwrap_or(true).then_some(config)
}
