//! The runtime type of the `identity_assertion` section: the signed identity assertion the
//! gateway adds to every request a session let through (docs/product.md#s4). Re-exported from
//! [`super`].

use std::path::PathBuf;
use std::time::Duration;

/// The header name used unless `identity_assertion.header` says otherwise.
pub const DEFAULT_ASSERTION_HEADER: &str = "otpgate-jwt-assertion";

/// The longest lifetime an assertion may have (`identity_assertion.lifetime`).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// `identity_assertion`; `None` in [`super::Config`] when `enabled: false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionConfig {
    /// The request header that carries it (default `Otpgate-Jwt-Assertion`).
    pub header: http::HeaderName,
    /// How long one token is valid (at most 5 minutes; re-signed before it runs out).
    pub lifetime: Duration,
    /// The signing-keys file (default `jwt_keys.json` beside `session.keys_file`).
    pub keys_file: PathBuf,
}
